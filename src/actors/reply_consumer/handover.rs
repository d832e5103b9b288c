//! Hand-overs from another instance (`type` = `saga.control` on a partition queue): drive a
//! saga started there, or apply an operator action asked there. Only signed ones get here
//! (see `broker::signing`); whatever they hold, they settle once: applied, refused,
//! dead-lettered, or handed back only while the failure is transient.

use actix::prelude::*;

use super::{elsewhere, Settle};
use crate::actors::messages::{Applied, DeliverError, DeliverEvent, EnsureLive};
use crate::actors::{Env, Registry};
use crate::broker::wire::Control;
use crate::broker::ReplyDelivery;

/// The longest note kept: `by <500 chars>: <500 chars>`, as the HTTP API clips it.
const MAX_NOTE_CHARS: usize = 1_010;

/// A note as it may be stored: no U+0000 (which PostgreSQL refuses), bounded.
pub(super) fn clean_note(note: Option<String>) -> Option<String> {
    note.map(|n| {
        n.chars()
            .filter(|c| *c != '\0')
            .take(MAX_NOTE_CHARS)
            .collect()
    })
}

/// Applies a signed hand-over for a saga of a partition this instance holds.
pub(super) async fn control(
    env: &Env,
    registry: &Addr<Registry>,
    delivery: &ReplyDelivery,
    source: Option<u32>,
) -> Settle {
    let c: Control = match serde_json::from_slice(delivery.data()) {
        Ok(c) => c,
        Err(e) => return Settle::DeadLetter(format!("hand-over does not decode: {e}"), None),
    };
    let partition = env.ownership.partition(&c.saga_id);
    if !env.ownership.owns(&c.saga_id) {
        return elsewhere(partition, source);
    }
    if c.op == crate::broker::wire::ControlOp::Wake {
        registry.do_send(EnsureLive(c.saga_id));
        return Settle::Ack("handed_over");
    }
    let Some(event) = c.event() else {
        return Settle::DeadLetter("hand-over of a skip names no step".into(), None);
    };
    let answer = registry
        .send(DeliverEvent {
            saga_id: c.saga_id,
            event,
            note: clean_note(c.note.clone()),
            trace: None,
            guard: c.guard(),
        })
        .await;
    match answer {
        Ok(Ok(Applied::Transitioned)) => Settle::Ack("handed_over"),
        Ok(Ok(Applied::Ignored(e))) => {
            log::warn!(
                "saga={} step=- operator {:?} asked on another instance refused here: {e}",
                c.saga_id,
                c.op
            );
            Settle::Ack("handed_over")
        }
        // The saga moved on since the asker checked it, or the asker's deadline passed: the
        // asker tells its caller (412 or 503); the action never happens later.
        Ok(Err(DeliverError::UnknownSaga(_)))
        | Ok(Err(DeliverError::Precondition { .. }))
        | Ok(Err(DeliverError::Store(crate::store::StoreError::DeadlinePassed))) => {
            Settle::Ack("handed_over")
        }
        Ok(Err(DeliverError::NotOwner(p))) => elsewhere(p, source),
        // Handing it back could only fail again: record why instead of looping.
        Ok(Err(DeliverError::Store(e))) if !e.is_transient() => {
            Settle::DeadLetter(format!("hand-over could not be applied: {e}"), None)
        }
        Ok(Err(_)) | Err(_) => Settle::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_loses_its_nul_characters_and_is_bounded() {
        assert_eq!(
            clean_note(Some("by alice\0: \0x".into())),
            Some("by alice: x".into())
        );
        assert_eq!(clean_note(None), None);
        let long = clean_note(Some("é".repeat(5_000))).unwrap_or_default();
        assert_eq!(long.chars().count(), MAX_NOTE_CHARS);
    }
}
