//! Passwords out of URLs before they are shown (CONTRACT.md section 1, Secrets).

/// What a password is shown as.
pub const REDACTED: &str = "***";

/// `url` with any password replaced by `***`: the one of `user:password@` (URL form, also
/// when the rest does not parse) and a `password=` parameter (query or `key=value` form).
///
/// It errs on the side of hiding: in a malformed string everything between the first `:`
/// of the user part and the last `@` counts as the password.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let rest = if scheme.is_empty() {
        rest.to_string()
    } else {
        redact_userinfo(rest)
    };
    format!("{scheme}{}", redact_password_params(&rest))
}

/// `user:password@host...` -> `user:***@host...`, cut at the last `@` so that an unescaped
/// `@` or `/` in the password does not leave part of it in view.
fn redact_userinfo(rest: &str) -> String {
    let Some(at) = rest.rfind('@') else {
        return rest.to_string();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{REDACTED}{host}"),
        None => rest.to_string(),
    }
}

/// `password=...` (after `?`, `&` or whitespace, or at the start) -> `password=***`; a quoted
/// value in the `key=value` form is hidden up to its closing quote.
fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = find_key(rest, KEY) {
        let value_start = i + KEY.len();
        out.push_str(&rest[..value_start]);
        out.push_str(REDACTED);
        let value = &rest[value_start..];
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // libpq quoting: backslash escapes, a closing quote ends it.
            let mut escaped = false;
            let close = quoted.char_indices().find(|&(_, c)| {
                let closes = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            });
            close.map_or(value.len(), |(j, _)| j + 2)
        } else {
            value
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Where `key` starts a parameter in `s`.
fn find_key(s: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(j) = s[from..].find(key) {
        let i = from + j;
        let starts_param = i == 0
            || s[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c == '?' || c == '&' || c.is_whitespace());
        if starts_param {
            return Some(i);
        }
        from = i + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn the_password_of_a_url_is_shown_as_stars() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(
            redact_url("amqps://guest:guest@rabbit/%2f"),
            "amqps://guest:***@rabbit/%2f"
        );
    }

    #[test]
    fn a_url_without_a_password_is_unchanged() {
        for url in [
            "postgres://u@h/db",
            "postgres://h/db?sslmode=verify-full&sslrootcert=/x.pem",
            "amqp://127.0.0.1:5672/%2f",
            "host=h user=u dbname=d",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn a_malformed_url_does_not_leak_its_password() {
        for (url, secret) in [
            ("postgres://u:s3cret@h:notaport/db", "s3cret"),
            ("postgres://u:s3/cr@et@h/db", "s3/cr"),
            ("postgres://u:pa?ss@h/db", "pa?ss"),
            ("amqp://u:p4ss@", "p4ss"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn a_password_parameter_is_shown_as_stars() {
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=s3cret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("host=h password=s3cret dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            redact_url("host=h password='s3 c\\'ret' dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(redact_url("password=s3cret"), "password=***");
        assert_eq!(redact_url("host=h mypassword=x"), "host=h mypassword=x");
    }
}
