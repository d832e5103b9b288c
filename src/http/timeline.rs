//! The `steps` of `GET /sagas/{id}`: each step of the saga's definition with its state,
//! attempts, times, output and error, as the saga browser's timeline shows them.
//!
//! Added to the response beside the existing fields (the contract only grows). Built from
//! the snapshot (`state`), the definition the saga runs on, and the history's times. The
//! page also carries the saga's deadline, when its definition sets one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::domain::{OnError, SagaDefinition};
use crate::saga::{Pending, SagaState, StepStatus};
use crate::store::{HistoryRow, SagaView};

/// `GET /sagas/{id}`: the saga's row, payload, state and history, plus its steps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SagaDetail)]
pub struct SagaPage {
    /// Everything the response held before `steps` existed.
    #[serde(flatten)]
    pub view: SagaView,
    /// One entry per step of the definition, in order (absent if the definition is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
    /// When a saga still running is aborted (or paused past its pivot): its start plus the
    /// definition's `deadline_ms`; absent when the definition sets none or the start is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    /// Whether the deadline went off (history event `deadline`).
    pub deadline_passed: bool,
}

/// One step of one saga.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepView {
    /// Step name.
    pub name: String,
    /// The participant's command queue.
    pub queue: String,
    /// Whether a later failure compensates it.
    pub compensate: bool,
    /// Sends before it counts as failed.
    pub max_attempts: u32,
    /// Time-out of one send.
    pub timeout_ms: u64,
    /// Its parallel group: consecutive steps with the same group run together.
    pub group: Option<String>,
    /// Once done, the saga never compensates.
    pub pivot: bool,
    /// What its failure does: `compensate` or `pause`.
    pub on_error: OnError,
    /// Where it is (`not_started`, `executing`, `done`, `failed`, `compensated`, ...).
    pub status: StepStatus,
    /// Execute sends so far.
    pub attempts: u32,
    /// Compensate sends so far.
    pub compensate_attempts: u32,
    /// Its `output`, once done.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// The last error a participant gave for it.
    pub error: Option<String>,
    /// The command the saga waits on, when it is this step's.
    pub pending: Option<Pending>,
    /// When its execute command was first sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// The latest history event about this step.
    pub last_event: Option<String>,
    /// When that event was committed.
    pub last_event_at: Option<DateTime<Utc>>,
}

impl SagaPage {
    /// Adds the steps when the definition is known and the snapshot decodes; their times
    /// come from the view's landmarks, so they hold whatever page of history is shown.
    pub fn new(view: SagaView, def: Option<&SagaDefinition>) -> Self {
        let state = serde_json::from_value::<SagaState>(view.state.clone())
            .ok()
            .map(SagaState::upgraded);
        let steps = def
            .zip(state.as_ref())
            .and_then(|(def, state)| steps(state, def, &view.landmarks));
        SagaPage {
            deadline_at: def.zip(state.as_ref()).and_then(|(d, s)| deadline_at(s, d)),
            deadline_passed: state.as_ref().is_some_and(|s| s.deadline_passed),
            view,
            steps,
        }
    }
}

/// The saga's start plus its definition's `deadline_ms`, when both are known.
pub fn deadline_at(state: &SagaState, def: &SagaDefinition) -> Option<DateTime<Utc>> {
    let ms = i64::try_from(def.deadline_ms?).ok()?;
    DateTime::from_timestamp_millis(state.started_at_ms?.checked_add(ms)?)
}

/// The steps of a saga, or `None` when its snapshot does not match the definition.
/// `history` holds, oldest first, at least the saga's `started` row and each step's first
/// `step_done` and latest row (the whole history does; `SagaView::landmarks` is just those).
pub fn steps(
    state: &SagaState,
    def: &SagaDefinition,
    history: &[HistoryRow],
) -> Option<Vec<StepView>> {
    if state.steps.len() != def.steps.len() {
        return None;
    }
    fn about<'a>(history: &'a [HistoryRow], name: &'a str) -> impl Iterator<Item = &'a HistoryRow> {
        history
            .iter()
            .filter(move |h| h.step.as_deref() == Some(name))
    }
    let views = def
        .steps
        .iter()
        .zip(&state.steps)
        .enumerate()
        .map(|(k, (sd, rec))| {
            // The first stage (a step, or a group's steps together) is sent by `started`;
            // the next one when the last step of the stage before it is done (or skipped).
            let stage = def.stage(k);
            let sent_at = match stage.start.checked_sub(1) {
                None => history.iter().find(|h| h.event == "started").map(|h| h.at),
                Some(j) => def.steps[def.stage(j)]
                    .iter()
                    .map(|prev| {
                        about(history, &prev.name)
                            .find(|h| h.event == "step_done" || h.event == "step_skipped")
                            .map(|h| h.at)
                    })
                    .try_fold(None, |latest, at| at.map(|at| latest.max(Some(at))))
                    .flatten(),
            };
            let last = about(history, &sd.name).last();
            StepView {
                name: sd.name.clone(),
                queue: sd.queue.clone(),
                compensate: sd.compensate,
                max_attempts: sd.max_attempts,
                timeout_ms: sd.timeout_ms,
                group: sd.group.clone(),
                pivot: sd.pivot,
                on_error: sd.on_error,
                status: rec.status,
                attempts: rec.attempts,
                compensate_attempts: rec.compensate_attempts,
                output: state.results.get(&sd.name).cloned(),
                error: rec.error.clone(),
                pending: state.pending.iter().find(|p| p.step == k).cloned(),
                sent_at,
                last_event: last.map(|h| h.event.clone()),
                last_event_at: last.map(|h| h.at),
            }
        })
        .collect();
    Some(views)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::StepDefinition;
    use crate::saga::{Phase, StepAction, StepRecord};

    fn def() -> SagaDefinition {
        SagaDefinition {
            name: "trip".into(),
            version: 1,
            deadline_ms: None,
            steps: ["flight", "hotel", "car"]
                .iter()
                .map(|n| StepDefinition {
                    timeout_ms: 1000,
                    ..StepDefinition::new(*n, format!("{n}.commands"))
                })
                .collect(),
        }
    }

    fn row(version: i64, event: &str, step: &str, s: u32) -> HistoryRow {
        HistoryRow {
            version,
            event: event.into(),
            step: Some(step.into()),
            status: "running".into(),
            detail: None,
            traceparent: None,
            at: Utc
                .with_ymd_and_hms(2025, 1, 1, 0, 0, s)
                .single()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn each_step_gets_its_state_output_pending_command_and_times_from_the_history() {
        let record = |status, attempts| StepRecord {
            status,
            attempts,
            compensate_attempts: 0,
            error: None,
        };
        let state = SagaState {
            saga_id: uuid::Uuid::nil(),
            saga: "trip".into(),
            definition_version: 1,
            payload: json!({}),
            status: crate::saga::Status::Running,
            version: 3,
            results: serde_json::from_value(json!({"flight": {"seat": "3A"}})).unwrap_or_default(),
            steps: vec![
                record(StepStatus::Done, 1),
                record(StepStatus::Executing, 2),
                record(StepStatus::NotStarted, 0),
            ],
            pending: vec![Pending {
                step: 1,
                action: StepAction::Execute,
                command_id: "x/hotel/execute".into(),
                attempt: 2,
                phase: Phase::AwaitingReply,
                timer: 3,
            }],
            to_compensate: vec![],
            nonce: String::new(),
            timer: 0,
            deadline_passed: false,
            started_at_ms: None,
            traceparent: None,
        };
        let history = [
            row(1, "started", "flight", 1),
            row(2, "step_done", "flight", 2),
            row(3, "step_resent", "hotel", 4),
        ];
        let steps = steps(&state, &def(), &history).unwrap_or_default();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].output, Some(json!({"seat": "3A"})));
        assert_eq!(steps[0].sent_at, Some(history[0].at));
        assert_eq!(steps[0].last_event.as_deref(), Some("step_done"));
        assert_eq!(steps[1].sent_at, Some(history[1].at));
        assert_eq!(steps[1].last_event_at, Some(history[2].at));
        assert_eq!(steps[1].pending.as_ref().map(|p| p.attempt), Some(2));
        assert!(steps[0].pending.is_none());
        assert_eq!(steps[2].sent_at, None);
        assert_eq!(steps[2].status, StepStatus::NotStarted);
        assert_eq!(
            serde_json::to_value(&steps[1]).unwrap_or_default()["status"],
            json!("executing")
        );
    }

    #[test]
    fn a_groups_steps_are_pending_together_and_the_page_carries_the_deadline() {
        let mut d = def();
        d.deadline_ms = Some(60_000);
        for s in &mut d.steps[..2] {
            s.group = Some("book".into());
        }
        d.steps[2].pivot = true;
        d.steps[2].on_error = OnError::Pause;
        let mut state = crate::saga::start(&d, uuid::Uuid::nil(), json!({}), "").state;
        let started = Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        state.started_at_ms = Some(started.timestamp_millis());
        state.deadline_passed = true;
        let history = [
            row(1, "started", "flight", 0),
            row(2, "step_done", "hotel", 3),
            row(3, "step_done", "flight", 5),
        ];
        let view = SagaView {
            row: crate::store::SagaRow {
                saga_id: uuid::Uuid::nil(),
                code: "0".into(),
                saga: "trip".into(),
                definition_version: 1,
                status: "running".into(),
                step: Some("flight".into()),
                version: 1,
                created_at: started,
                updated_at: started,
            },
            payload: json!({}),
            state: serde_json::to_value(&state).unwrap_or_default(),
            history: history.to_vec(),
            history_more: false,
            history_total: 3,
            quarantined: vec![],
            quarantined_more: false,
            quarantined_total: 0,
            landmarks: history.to_vec(),
        };
        let page = serde_json::to_value(SagaPage::new(view, Some(&d))).unwrap_or_default();
        let steps = &page["steps"];
        assert_eq!(steps[0]["group"], json!("book"));
        assert_eq!(steps[1]["group"], json!("book"));
        assert_eq!(steps[2]["group"], Value::Null);
        for s in [&steps[0], &steps[1]] {
            assert_eq!(s["status"], json!("executing"), "{s}");
            assert_eq!(s["pending"]["action"], json!("execute"), "{s}");
            assert_eq!(s["sent_at"], json!(history[0].at), "both sent by the start");
        }
        assert_eq!(
            steps[2]["sent_at"],
            json!(history[2].at),
            "sent when the last of the group was done"
        );
        assert!(steps[2]["pending"].is_null());
        assert_eq!(
            [&steps[0]["pivot"], &steps[2]["pivot"]],
            [&json!(false), &json!(true)]
        );
        assert_eq!(steps[0]["on_error"], json!("compensate"));
        assert_eq!(steps[2]["on_error"], json!("pause"));
        assert_eq!(page["deadline_at"], json!("2025-01-01T00:01:00Z"));
        assert_eq!(page["deadline_passed"], json!(true));

        d.deadline_ms = None;
        assert_eq!(
            deadline_at(&state, &d),
            None,
            "no deadline without deadline_ms"
        );
        d.deadline_ms = Some(1);
        state.started_at_ms = None;
        assert_eq!(deadline_at(&state, &d), None, "nor without a known start");
    }

    #[test]
    fn a_snapshot_with_another_number_of_steps_gives_no_steps() {
        let mut d = def();
        d.steps.pop();
        let state = crate::saga::start(&def(), uuid::Uuid::nil(), json!({}), "").state;
        assert!(steps(&state, &d, &[]).is_none());
    }
}
