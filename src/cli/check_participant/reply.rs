//! Replies as `check-participant` reads them: checked against CONTRACT.md section 3, and
//! compared with each other. Pure functions, no I/O.

use serde_json::Value;

/// A reply as it arrived on the reply queue.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// The body.
    pub body: Vec<u8>,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// The routing key it was published with (the queue, on the default exchange).
    pub routing_key: String,
    /// The exchange it was published to (empty: the default one).
    pub exchange: String,
    /// AMQP `delivery_mode`.
    pub delivery_mode: Option<u8>,
}

/// A reply that holds every required field.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `command_id` of the body, or the `correlation_id`.
    pub command_id: String,
    /// `saga_id`.
    pub saga_id: String,
    /// `done` or `error`.
    pub status: String,
    /// `output` (null when absent).
    pub output: Value,
    /// `error` (null when absent).
    pub error: Value,
    /// `"retryable": true`.
    pub retryable: bool,
}

impl Answer {
    /// `done`, `error` or `retryable error`, for the report.
    pub fn outcome(&self) -> &'static str {
        match (self.status.as_str(), self.retryable) {
            ("done", _) => "done",
            (_, true) => "retryable error",
            _ => "error",
        }
    }
}

/// Reads a reply: JSON with `saga_id` and `status` (`done` or `error`), and `command_id` in
/// the body or as `correlation_id`; the reason when it is not one.
pub fn read(arrived: &Arrived) -> Result<Answer, String> {
    let value: Value = serde_json::from_slice(&arrived.body)
        .map_err(|e| format!("the reply is not JSON ({e})"))?;
    let Value::Object(body) = value else {
        return Err("the reply is not a JSON object".into());
    };
    let saga_id = body
        .get("saga_id")
        .and_then(Value::as_str)
        .ok_or("the reply has no `saga_id` string")?
        .to_string();
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .ok_or("the reply has no `status` string")?
        .to_string();
    if status != "done" && status != "error" {
        return Err(format!(
            "the reply's status `{status}` is neither done nor error"
        ));
    }
    let command_id = body
        .get("command_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| arrived.correlation_id.clone().filter(|c| !c.is_empty()))
        .ok_or("the reply has neither `command_id` nor a correlation_id")?;
    Ok(Answer {
        command_id,
        saga_id,
        status,
        output: body.get("output").cloned().unwrap_or(Value::Null),
        error: body.get("error").cloned().unwrap_or(Value::Null),
        retryable: body.get("retryable") == Some(&Value::Bool(true)),
    })
}

/// Whether it came the way replies must: to the `reply_to` queue on the default exchange,
/// persistent.
pub fn delivered_as_asked(arrived: &Arrived, reply_to: &str) -> Result<(), String> {
    if !arrived.exchange.is_empty() || arrived.routing_key != reply_to {
        return Err(format!(
            "a reply was published to exchange `{}` with key `{}`, not to the reply_to queue",
            arrived.exchange, arrived.routing_key
        ));
    }
    if arrived.delivery_mode != Some(2) {
        return Err("a reply was not persistent (delivery_mode 2)".into());
    }
    Ok(())
}

/// Whether `again` answers a command as `first` did: the same status, the same output
/// (what later steps receive in `results`), retryable alike. Error texts may differ.
pub fn same_outcome(first: &Answer, again: &Answer) -> Result<(), String> {
    if first.status != again.status || first.retryable != again.retryable {
        return Err(format!(
            "answered {} the first time, {} now",
            first.outcome(),
            again.outcome()
        ));
    }
    if first.status == "done" && first.output != again.output {
        return Err(format!(
            "answered done with output {} the first time, {} now: it ran again",
            clip(&first.output),
            clip(&again.output)
        ));
    }
    Ok(())
}

fn clip(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrived(body: &str, correlation_id: Option<&str>) -> Arrived {
        Arrived {
            body: body.as_bytes().to_vec(),
            correlation_id: correlation_id.map(str::to_string),
            routing_key: "r".into(),
            exchange: String::new(),
            delivery_mode: Some(2),
        }
    }

    #[test]
    fn a_reply_needs_saga_id_status_and_a_command_id() {
        let a = read(&arrived(
            r#"{"saga_id":"s","status":"done","output":{"x":1}}"#,
            Some("c"),
        ))
        .unwrap();
        assert_eq!(a.command_id, "c");
        assert_eq!(a.output["x"], 1);
        for (body, why) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"status":"done","command_id":"c"}"#, "saga_id"),
            (r#"{"saga_id":"s","command_id":"c"}"#, "status"),
            (
                r#"{"saga_id":"s","status":"ok","command_id":"c"}"#,
                "neither done nor error",
            ),
            (r#"{"saga_id":"s","status":"done"}"#, "command_id"),
        ] {
            let e = read(&arrived(body, None)).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn only_the_reply_to_queue_on_the_default_exchange_and_persistent_will_do() {
        let ok = arrived("{}", None);
        assert!(delivered_as_asked(&ok, "r").is_ok());
        assert!(delivered_as_asked(&ok, "other").is_err());
        let transient = Arrived {
            delivery_mode: Some(1),
            ..ok.clone()
        };
        assert!(delivered_as_asked(&transient, "r")
            .unwrap_err()
            .contains("persistent"));
        let routed = Arrived {
            exchange: "x".into(),
            ..ok
        };
        assert!(delivered_as_asked(&routed, "r").is_err());
    }

    #[test]
    fn the_same_outcome_is_the_same_status_and_output() {
        let done = |n: i64| Answer {
            command_id: "c".into(),
            saga_id: "s".into(),
            status: "done".into(),
            output: serde_json::json!({ "n": n }),
            error: Value::Null,
            retryable: false,
        };
        assert!(same_outcome(&done(1), &done(1)).is_ok());
        assert!(same_outcome(&done(1), &done(2))
            .unwrap_err()
            .contains("ran again"));
        let error = Answer {
            status: "error".into(),
            error: "x".into(),
            ..done(1)
        };
        let other_text = Answer {
            error: "y".into(),
            output: Value::Null,
            ..error.clone()
        };
        assert!(same_outcome(&error, &other_text).is_ok());
        assert!(same_outcome(&done(1), &error)
            .unwrap_err()
            .contains("done the first time, error now"));
    }
}
