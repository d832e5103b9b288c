//! `SAGA_RETENTION`: how long a finished saga is kept after its last transition.

use std::fmt;
use std::time::Duration;

/// Longest sweep period, whatever the retention (CONTRACT.md section 4).
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// Longest retention accepted: 100 years, far beyond any use, well inside PostgreSQL's
/// interval and timestamp ranges.
const MAX_RETENTION_S: u64 = 100 * 365 * 24 * 3600;

/// How long finished sagas are kept: `<n>s`, `<n>m`, `<n>h` or `<n>d`, or `0` for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(Option<Duration>);

impl Retention {
    /// Keeps finished sagas for ever (`0`).
    pub const FOREVER: Retention = Retention(None);

    /// Finished sagas are deleted this long after their last transition.
    pub fn after(keep: Duration) -> Self {
        if keep.is_zero() {
            Retention::FOREVER
        } else {
            Retention(Some(keep))
        }
    }

    /// Parses `0`, `<n>s`, `<n>m`, `<n>h` or `<n>d` (`n` a whole number, at least 1).
    pub fn parse(raw: &str) -> Result<Retention, String> {
        let s = raw.trim();
        if s == "0" {
            return Ok(Retention::FOREVER);
        }
        let bad = || {
            format!("invalid SAGA_RETENTION `{raw}`: expected `0` (keep for ever) or a whole number followed by s, m, h or d (e.g. 30d)")
        };
        let unit_at = s.len().checked_sub(1).ok_or_else(bad)?;
        let (digits, unit) = (s.get(..unit_at).ok_or_else(bad)?, &s[unit_at..]);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        match n.checked_mul(scale) {
            Some(0) => Err(bad()),
            Some(secs) if secs <= MAX_RETENTION_S => Ok(Retention(Some(Duration::from_secs(secs)))),
            _ => Err(format!(
                "invalid SAGA_RETENTION `{raw}`: at most 36500d (use `0` to keep for ever)"
            )),
        }
    }

    /// How long finished sagas are kept; `None` for ever.
    pub fn keep(&self) -> Option<Duration> {
        self.0
    }

    /// How often the sweep looks for expired sagas: min(60 s, retention / 2).
    pub fn sweep_every(&self) -> Duration {
        match self.0 {
            Some(keep) => (keep / 2).min(MAX_SWEEP_PERIOD),
            None => MAX_SWEEP_PERIOD,
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("0"),
            Some(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_of_seconds_minutes_hours_and_days_parse() {
        let secs = |s: &str| Retention::parse(s).map(|r| r.keep().map(|d| d.as_secs()));
        assert_eq!(secs("0"), Ok(None));
        assert_eq!(secs("90s"), Ok(Some(90)));
        assert_eq!(secs("15m"), Ok(Some(900)));
        assert_eq!(secs("2h"), Ok(Some(7200)));
        assert_eq!(secs("30d"), Ok(Some(2_592_000)));
        assert_eq!(secs(" 7d "), Ok(Some(604_800)));
    }

    #[test]
    fn anything_else_is_refused_naming_the_variable_and_the_value() {
        for bad in [
            "",
            "d",
            "30",
            "-1d",
            "1.5h",
            "0s",
            "1w",
            "1 d",
            "3D",
            "+3d",
            "٣d",
            "99999999999999999999d",
            "36501d",
        ] {
            let e = Retention::parse(bad).expect_err(bad);
            assert!(
                e.contains("SAGA_RETENTION") && e.contains(bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_sweep_runs_every_half_retention_at_most_every_minute() {
        let every = |s: &str| Retention::parse(s).map(|r| r.sweep_every().as_millis());
        assert_eq!(every("2s"), Ok(1_000));
        assert_eq!(every("1s"), Ok(500));
        assert_eq!(every("90s"), Ok(45_000));
        assert_eq!(every("30d"), Ok(60_000));
        assert_eq!(every("0"), Ok(60_000));
    }
}
