//! Logging: env_logger, as text or (with `SAGA_LOG_FORMAT=json`) one JSON object per line.

use std::io::Write;

use serde_json::{json, Map, Value};

/// Default filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn,tracing=warn";

/// Installs the logger; `SAGA_LOG_FORMAT=json` selects JSON lines.
pub fn init() {
    init_with(DEFAULT_FILTER);
}

/// Installs the logger of the operator commands: silent unless `RUST_LOG` asks, so that
/// their own lines (and the tables on stdout) are all an operator sees.
pub fn init_quiet() {
    init_with("off");
}

fn init_with(default_filter: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    if std::env::var("SAGA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.format(|buf, record| {
            let line = json_line(
                &chrono::Utc::now().to_rfc3339(),
                record.level().as_str(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// An error and its causes, `: `-separated; a cause whose text the line already holds (an
/// error that prints its source itself) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// One log line as JSON; a message that starts `saga=<id> step=<name>` gets those as fields.
pub fn json_line(ts: &str, level: &str, target: &str, message: &str) -> Value {
    let mut obj = Map::new();
    obj.insert("ts".into(), json!(ts));
    obj.insert("level".into(), json!(level));
    obj.insert("target".into(), json!(target));
    let mut rest = message;
    for key in ["saga", "step"] {
        if let Some(after) = rest.strip_prefix(&format!("{key}=")) {
            let (value, tail) = after.split_once(' ').unwrap_or((after, ""));
            if value != "-" {
                obj.insert(key.into(), json!(value));
            }
            rest = tail;
        }
    }
    obj.insert("msg".into(), json!(rest));
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::json_line;
    use serde_json::json;

    #[test]
    fn saga_and_step_prefixes_become_fields() {
        let v = json_line("t", "WARN", "x", "saga=abc step=s1 publish failed");
        assert_eq!(v["saga"], json!("abc"));
        assert_eq!(v["step"], json!("s1"));
        assert_eq!(v["msg"], json!("publish failed"));
        let v = json_line("t", "INFO", "x", "ready");
        assert_eq!(v["msg"], json!("ready"));
        assert!(v.get("saga").is_none());
        let v = json_line("t", "INFO", "x", "saga=abc step=- late");
        assert!(v.get("step").is_none());
    }
}
