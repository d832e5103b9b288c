//! The wire: a command as the orchestrator sends it, and the reply the kit sends back
//! (CONTRACT.md section 3).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Which half of a step a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Do the step's local work.
    Execute,
    /// Undo it (only ever run after the step's execute ran here and succeeded).
    Compensate,
}

impl Action {
    /// As stored in `saga_inbox.action` and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Execute => "execute",
            Action::Compensate => "compensate",
        }
    }
}

/// One command from the orchestrator: one action of one step of one saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Opaque; the same on every re-send of this action: the inbox's key.
    pub command_id: String,
    /// The saga (a UUID, as text).
    pub saga_id: String,
    /// The saga's type (definition name).
    #[serde(default)]
    pub saga: String,
    /// The step's name.
    pub step: String,
    /// Execute or compensate.
    pub action: Action,
    /// Which send of this command it is (1 first).
    #[serde(default)]
    pub attempt: u32,
    /// The saga's start payload (`{}` when none was given).
    #[serde(default)]
    pub payload: Value,
    /// Each earlier step's output, by step name.
    #[serde(default)]
    pub results: Value,
}

/// What a command came to: recorded (done, error) or not (retryable).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `done` with the handler's output (recorded).
    Done(Value),
    /// `error` (recorded: every re-send gets it again).
    Error(String),
    /// `error` with `"retryable": true` (not recorded: a re-send runs again).
    Retryable(String),
}

impl Outcome {
    /// The reply body for `cmd`, from `service`.
    pub(crate) fn reply(&self, cmd: &Command, service: &str) -> Value {
        let mut reply = json!({
            "command_id": cmd.command_id, "saga_id": cmd.saga_id, "service": service,
        });
        let fields = match self {
            Outcome::Done(output) => json!({"status": "done", "output": output, "error": null}),
            Outcome::Error(e) => json!({"status": "error", "output": {}, "error": e}),
            Outcome::Retryable(e) => {
                json!({"status": "error", "output": {}, "error": e, "retryable": true})
            }
        };
        if let (Some(r), Value::Object(f)) = (reply.as_object_mut(), fields) {
            r.extend(f);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_parses_from_the_contract_example() {
        let cmd: Command = serde_json::from_value(json!({
            "command_id": "c", "saga_id": "s", "saga": "trip", "step": "flight",
            "action": "compensate", "attempt": 2, "payload": {"a": 1}, "results": {}
        }))
        .unwrap();
        assert_eq!(cmd.action, Action::Compensate);
        assert_eq!(cmd.attempt, 2);
    }

    #[test]
    fn only_a_retryable_outcome_says_retryable() {
        let cmd: Command = serde_json::from_value(
            json!({"command_id": "c", "saga_id": "s", "step": "x", "action": "execute"}),
        )
        .unwrap();
        let r = Outcome::Retryable("later".into()).reply(&cmd, "svc");
        assert_eq!(r["retryable"], json!(true));
        assert_eq!(r["status"], "error");
        let e = Outcome::Error("no".into()).reply(&cmd, "svc");
        assert!(e.get("retryable").is_none());
        let d = Outcome::Done(json!({"k": 1})).reply(&cmd, "svc");
        assert_eq!(d["status"], "done");
        assert_eq!(d["output"]["k"], 1);
        assert_eq!(d["command_id"], "c");
    }
}
