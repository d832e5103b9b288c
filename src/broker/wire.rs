//! Wire envelopes of CONTRACT.md section 3: commands, replies, lifecycle events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::saga::ReplyOutcome;

/// Replies larger than this are dead-lettered unread.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// A command's body.
#[derive(Debug, Serialize, PartialEq)]
pub struct CommandBody<'a> {
    /// Stable id of this step action.
    pub command_id: &'a str,
    /// The saga.
    pub saga_id: Uuid,
    /// The saga type.
    pub saga: &'a str,
    /// The step's name.
    pub step: &'a str,
    /// `execute` or `compensate`.
    pub action: &'a str,
    /// Which send this is (1-based).
    pub attempt: u32,
    /// The saga's start payload.
    pub payload: &'a Value,
    /// Outputs of the steps done so far, by step name.
    pub results: &'a Map<String, Value>,
}

/// A reply that decoded: one that names a saga and a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The command it answers.
    pub command_id: String,
    /// The saga it is for.
    pub saga_id: Uuid,
    /// Done with output, or error.
    pub outcome: ReplyOutcome,
}

/// Why a reply cannot be applied: it goes to `<reply queue>.dlq` with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    /// Empty body.
    #[error("empty body")]
    Empty,
    /// Over [`MAX_REPLY_BYTES`].
    #[error("body of {0} bytes is over the limit of 1 MiB")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// Not a JSON object, or a field of the wrong type.
    #[error("body is not a valid reply: {0}")]
    Invalid(String),
    /// Neither `command_id` in the body nor a `correlation_id` property.
    #[error("missing field `command_id` (and no correlation_id property)")]
    NoCommandId,
    /// `saga_id` is not a UUID.
    #[error("saga_id `{0}` is not a UUID")]
    BadSagaId(String),
    /// A string holds U+0000, which PostgreSQL cannot store.
    #[error("body holds a NUL character (U+0000), which cannot be stored")]
    Nul,
    /// `status` is neither `done` nor `error`.
    #[error("status `{0}` is neither done nor error")]
    BadStatus(String),
    /// No saga has this id.
    #[error("unknown saga_id {0}")]
    UnknownSaga(Uuid),
    /// The saga exists but could not take the reply.
    #[error("{0}")]
    Rejected(String),
}

#[derive(Deserialize)]
struct RawReply {
    #[serde(default)]
    command_id: Option<String>,
    saga_id: String,
    status: String,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    /// Only JSON `true` asks for a re-send; anything else is a plain error.
    #[serde(default)]
    retryable: Option<Value>,
}

/// Decodes a reply body; `correlation_id` stands in for a missing `command_id`.
pub fn decode_reply(body: &[u8], correlation_id: Option<&str>) -> Result<Reply, PoisonReason> {
    if body.is_empty() {
        return Err(PoisonReason::Empty);
    }
    if body.len() > MAX_REPLY_BYTES {
        return Err(PoisonReason::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| PoisonReason::NotUtf8)?;
    let raw: RawReply =
        serde_json::from_str(text).map_err(|e| PoisonReason::Invalid(e.to_string()))?;
    let has_nul = |v: &Option<Value>| v.as_ref().is_some_and(crate::domain::contains_nul);
    if has_nul(&raw.output)
        || has_nul(&raw.error)
        || raw.command_id.as_deref().is_some_and(|c| c.contains('\0'))
    {
        return Err(PoisonReason::Nul);
    }
    let saga_id = Uuid::parse_str(&raw.saga_id)
        .map_err(|_| PoisonReason::BadSagaId(raw.saga_id.chars().take(64).collect()))?;
    let command_id = match raw.command_id.filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => correlation_id
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .ok_or(PoisonReason::NoCommandId)?,
    };
    let outcome = match raw.status.as_str() {
        "done" => ReplyOutcome::Done {
            output: raw.output.unwrap_or_else(|| Value::Object(Map::new())),
        },
        "error" => ReplyOutcome::Error {
            error: raw.error.map(|e| match e {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            retryable: raw.retryable == Some(Value::Bool(true)),
        },
        other => return Err(PoisonReason::BadStatus(other.chars().take(64).collect())),
    };
    Ok(Reply {
        command_id,
        saga_id,
        outcome,
    })
}

/// The `saga_id` of a reply that did not decode, if its body names one (for quarantine).
pub fn salvage_saga_id(body: &[u8]) -> Option<Uuid> {
    if body.is_empty() || body.len() > MAX_REPLY_BYTES {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_str(&text).ok()?;
    Uuid::parse_str(value.get("saga_id")?.as_str()?).ok()
}

/// Body of a lifecycle event on `saga.events`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct LifecycleEvent {
    /// The saga.
    pub saga_id: Uuid,
    /// Its type.
    pub saga: String,
    /// Its new status.
    pub status: String,
    /// Its version after the transition.
    pub version: i64,
    /// When it was announced (RFC 3339).
    pub at: String,
}

/// A hand-over from one instance to the owner of a saga's partition, on the partition's
/// queue with AMQP `type` = `saga.control`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Control {
    /// The saga.
    pub saga_id: Uuid,
    /// What the owner is asked to do.
    pub op: ControlOp,
    /// Who asked and why (operator actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The step a `skip` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The version the asking instance checked the action against: the owner applies it
    /// only at that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<i64>,
    /// The action is committed before this instant or never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
}

impl Control {
    /// Asks the owner to drive a saga started on another instance.
    pub fn wake(saga_id: Uuid) -> Self {
        Control {
            saga_id,
            op: ControlOp::Wake,
            note: None,
            step: None,
            if_version: None,
            deadline: None,
        }
    }

    /// The operator event it stands for (None for a wake, or a skip without its step).
    pub fn event(&self) -> Option<crate::saga::Event> {
        use crate::saga::Event;
        match self.op {
            ControlOp::Wake => None,
            ControlOp::Abort => Some(Event::Abort),
            ControlOp::Retry => Some(Event::Retry),
            ControlOp::Skip => self.step.clone().map(|step| Event::Skip { step }),
            ControlOp::Resume => Some(Event::Resume),
        }
    }

    /// The guard the owner applies the action under.
    pub fn guard(&self) -> Option<crate::actors::messages::ActionGuard> {
        self.deadline
            .map(|deadline| crate::actors::messages::ActionGuard {
                if_version: self.if_version,
                deadline,
            })
    }
}

/// What a [`Control`] asks of the owner.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ControlOp {
    /// Drive the saga: it was started (or started again) on another instance.
    Wake,
    /// Operator abort.
    Abort,
    /// Operator retry.
    Retry,
    /// Operator skip.
    Skip,
    /// Operator resume.
    Resume,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trips() {
        let c = Control {
            saga_id: Uuid::from_u128(9),
            op: ControlOp::Abort,
            note: Some("by ops: stuck".into()),
            step: None,
            if_version: Some(3),
            deadline: None,
        };
        let bytes = serde_json::to_vec(&c).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#""op":"abort""#));
        assert_eq!(serde_json::from_slice::<Control>(&bytes).unwrap(), c);
    }

    const ID: &str = "0b6e8f5e-3f55-4a8e-9c39-1b1a4c3f1f00";

    #[test]
    fn a_done_reply_decodes_with_output() {
        let body = format!(
            r#"{{"command_id":"c","saga_id":"{ID}","status":"done","output":{{"x":1}},"extra":true}}"#
        );
        let r = decode_reply(body.as_bytes(), None).unwrap();
        assert_eq!(r.command_id, "c");
        assert_eq!(
            r.outcome,
            ReplyOutcome::Done {
                output: serde_json::json!({"x":1})
            }
        );
    }

    #[test]
    fn correlation_id_stands_in_for_command_id() {
        let body = format!(r#"{{"saga_id":"{ID}","status":"error","error":"no stock"}}"#);
        let r = decode_reply(body.as_bytes(), Some("c2")).unwrap();
        assert_eq!(r.command_id, "c2");
        assert_eq!(
            r.outcome,
            ReplyOutcome::Error {
                error: Some("no stock".into()),
                retryable: false,
            }
        );
        assert_eq!(
            decode_reply(body.as_bytes(), None),
            Err(PoisonReason::NoCommandId)
        );
    }

    #[test]
    fn only_json_true_makes_an_error_retryable() {
        for (flag, retryable) in [
            ("true", true),
            ("false", false),
            ("\"true\"", false),
            ("1", false),
        ] {
            let body = format!(
                r#"{{"command_id":"c","saga_id":"{ID}","status":"error","retryable":{flag}}}"#
            );
            let r = decode_reply(body.as_bytes(), None).unwrap();
            assert_eq!(
                r.outcome,
                ReplyOutcome::Error {
                    error: None,
                    retryable
                },
                "{flag}"
            );
        }
    }

    #[test]
    fn poison_kinds_are_named() {
        assert_eq!(decode_reply(b"", None), Err(PoisonReason::Empty));
        assert_eq!(
            decode_reply(&[0xff, 0xfe], None),
            Err(PoisonReason::NotUtf8)
        );
        assert!(matches!(
            decode_reply(b"nope", None),
            Err(PoisonReason::Invalid(_))
        ));
        assert!(matches!(
            decode_reply(br#"{"status":"done"}"#, Some("c")),
            Err(PoisonReason::Invalid(_))
        ));
        assert!(matches!(
            decode_reply(br#"{"saga_id":"x","status":"done"}"#, Some("c")),
            Err(PoisonReason::BadSagaId(_))
        ));
        let body = format!(r#"{{"saga_id":"{ID}","status":"maybe"}}"#);
        assert!(matches!(
            decode_reply(body.as_bytes(), Some("c")),
            Err(PoisonReason::BadStatus(_))
        ));
        let body = format!(r#"{{"saga_id":"{ID}","status":5}}"#);
        assert!(matches!(
            decode_reply(body.as_bytes(), Some("c")),
            Err(PoisonReason::Invalid(_))
        ));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            decode_reply(deep.as_bytes(), Some("c")),
            Err(PoisonReason::Invalid(_))
        ));
        let big = vec![b' '; MAX_REPLY_BYTES + 1];
        assert!(matches!(
            decode_reply(&big, None),
            Err(PoisonReason::TooLarge(_))
        ));
    }

    /// A xorshift generator: deterministic, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn any_bytes_decode_to_a_reply_or_a_named_reason_never_a_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pieces: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"saga_id",
            b"status",
            b"done",
            b"error",
            b"command_id",
            b"output",
            ID.as_bytes(),
            b"null",
            b"1e999",
            b"\\u0000",
            &[0xff],
            &[0xc3],
        ];
        for _ in 0..20_000 {
            let mut body = Vec::new();
            for _ in 0..(rng.next() % 24) {
                if rng.next().is_multiple_of(4) {
                    body.push(rng.next() as u8);
                } else {
                    body.extend_from_slice(pieces[(rng.next() % pieces.len() as u64) as usize]);
                }
            }
            let cid = if rng.next().is_multiple_of(2) {
                Some("c")
            } else {
                None
            };
            match decode_reply(&body, cid) {
                Ok(r) => assert!(!r.command_id.is_empty()),
                Err(reason) => assert!(!reason.to_string().is_empty()),
            }
            let _ = salvage_saga_id(&body);
        }
    }

    #[test]
    fn a_valid_reply_survives_any_extra_fields_and_types_in_optional_fields() {
        let mut rng = Rng(42);
        let extras = [
            r#""x":1"#,
            r#""output":[1,2]"#,
            r#""error":{"a":1}"#,
            r#""service":5"#,
            r#""output":null"#,
        ];
        for _ in 0..1_000 {
            let extra = extras[(rng.next() % extras.len() as u64) as usize];
            let body = format!(r#"{{"command_id":"c","saga_id":"{ID}","status":"done",{extra}}}"#);
            assert!(decode_reply(body.as_bytes(), None).is_ok(), "{body}");
        }
    }
}
