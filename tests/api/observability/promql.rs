//! Just enough PromQL to find what an expression selects: each vector selector's metric
//! name and label matchers. Functions and aggregations (a name followed by `(`), keywords,
//! `by (...)`-style label lists, strings, numbers and `[...]` ranges are skipped. The same
//! reader takes the text exposition's sample lines (`name{label="value"} 1`).

/// One vector selector: `name{label op "value", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The metric name.
    pub name: String,
    /// Its label matchers, in order.
    pub matchers: Vec<Matcher>,
}

/// `label op "value"` inside braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// The string, unescaped.
    pub value: String,
}

/// Aggregation operators (which may take `by (...)` before their parenthesis) and keywords.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_ws(s: &[char], mut i: usize) -> usize {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The string starting at `s[i]` (a quote) unescaped, and the index after it.
fn string(s: &[char], mut i: usize) -> (String, usize) {
    let quote = s[i];
    let mut out = String::new();
    i += 1;
    while i < s.len() && s[i] != quote {
        if s[i] == '\\' && quote != '`' && i + 1 < s.len() {
            i += 1;
        }
        out.push(s[i]);
        i += 1;
    }
    (out, i + 1)
}

/// The matchers of the braces opening at `s[i]`, and the index after the closing one.
fn matchers(s: &[char], mut i: usize) -> (Vec<Matcher>, usize) {
    let mut out = Vec::new();
    i += 1;
    loop {
        while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
            i += 1;
        }
        if i >= s.len() || s[i] == '}' {
            return (out, i + 1);
        }
        let start = i;
        while i < s.len() && is_name_char(s[i]) {
            i += 1;
        }
        let label: String = s[start..i].iter().collect();
        i = skip_ws(s, i);
        let op_start = i;
        while i < s.len() && matches!(s[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = s[op_start..i].iter().collect();
        i = skip_ws(s, i);
        if label.is_empty() || op.is_empty() || i >= s.len() || !matches!(s[i], '"' | '\'' | '`') {
            panic!(
                "cannot read the label matchers in {:?}",
                s.iter().collect::<String>()
            );
        }
        let (value, next) = string(s, i);
        i = next;
        out.push(Matcher { label, op, value });
    }
}

/// Every vector selector of `expr` that names a metric, in order.
pub fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i = string(&s, i).1;
            continue;
        } else if c == '[' {
            while i < s.len() && s[i] != ']' {
                i += 1;
            }
        } else if c == '{' {
            i = matchers(&s, i).1;
            continue;
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || matches!(s[i], '.' | '+')) {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && is_name_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = skip_ws(&s, i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if s.get(next) == Some(&'(') {
                    i = next;
                    while i < s.len() && s[i] != ')' {
                        i += 1;
                    }
                }
            } else if !(KEYWORDS.contains(&lower.as_str()) || s.get(next) == Some(&'(')) {
                let mut selector = Selector {
                    name: word,
                    matchers: Vec::new(),
                };
                if s.get(next) == Some(&'{') {
                    let (m, after) = matchers(&s, next);
                    selector.matchers = m;
                    i = after;
                }
                out.push(selector);
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn selectors_skip_functions_keywords_label_lists_strings_and_ranges() {
    let expr = r#"histogram_quantile(0.99, sum by (saga, le) (rate(a_bucket{saga=~"$saga"}[$__rate_interval])))
        * on () (sum(increase(b_total{x="y\"z",w!="v"}[10m] offset 5m)) == bool 0)
        and ignoring (instance) c > 1e3 or absent(up{job="j"} == 1) # d_total"#;
    let got = selectors(expr);
    let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b_total", "c", "up"]);
    assert_eq!(got[1].matchers[0].value, "y\"z");
    assert_eq!(got[1].matchers[1].op, "!=");
    assert_eq!(got[0].matchers[0].op, "=~");
}
