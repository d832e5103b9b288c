//! The invariants of a chaos run, checked from the participants' effect logs, each saga's
//! history and what is left in the broker's queues.
//!
//! For every saga, with `fail` the step its payload makes fail (if any):
//! - **finished**: `completed` when nothing was meant to fail, else `compensated`;
//! - **history**: versions 1..n with n the row's version, nothing after the final event;
//! - **once**: each step executed at most once, under one `command_id`, compensated at
//!   most once; no step after `fail` executed;
//! - **lost reply**: a step its participant executed (an `execute` line) that the saga
//!   never recorded done (`step_done`, or `completed` for the last), or refused (an `error`
//!   line) that the saga never recorded failed: the participant's answer was lost;
//! - **completed then compensated**: a step recorded done, later compensated, while no
//!   later step was refused by its participant (the saga compensated for a time-out, or a
//!   failure that never happened);
//! - **time-outs**: a `step_timed_out` event at all (participants answer within
//!   milliseconds; a time-out means commands or replies went missing).
//!
//! And for the run: no reply left in the reply, partition or dead-letter queues.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use uuid::Uuid;

use crate::helpers::*;

/// What the participants logged for one step of one saga.
#[derive(Debug, Default, Clone)]
struct StepLog {
    execute: Vec<String>,
    error: Vec<String>,
    compensate: Vec<String>,
}

/// One history row.
struct Event {
    version: i64,
    event: String,
    step: Option<String>,
}

/// The findings of an audit, by kind.
#[derive(Debug, Default)]
pub struct Audit {
    /// Sagas in the database.
    pub sagas: usize,
    /// Sagas `completed`.
    pub completed: usize,
    /// Sagas `compensated`.
    pub compensated: usize,
    /// `step_resent` events (time-outs that re-sent a command).
    pub resends: usize,
    /// Violations by kind, each with its description.
    pub violations: BTreeMap<&'static str, Vec<String>>,
}

impl Audit {
    fn add(&mut self, kind: &'static str, what: String) {
        self.violations.entry(kind).or_default().push(what);
    }

    /// Adds a violation found outside the audit (a time limit missed, a metric...).
    pub fn fail(&mut self, what: String) {
        self.add("scenario", what);
    }

    /// Violations of one kind.
    pub fn count(&self, kind: &str) -> usize {
        self.violations.get(kind).map_or(0, Vec::len)
    }

    /// A table of counts by kind, then up to 5 examples of each.
    pub fn report(&self) -> String {
        let mut out = format!(
            "sagas {}, completed {}, compensated {}, step_resent {}\n",
            self.sagas, self.completed, self.compensated, self.resends
        );
        for kind in KINDS {
            let _ = writeln!(out, "  {kind:<28} {}", self.count(kind));
        }
        for (kind, list) in &self.violations {
            for what in list.iter().take(5) {
                let _ = writeln!(out, "  [{kind}] {what}");
            }
            if list.len() > 5 {
                let _ = writeln!(out, "  [{kind}] ... and {} more", list.len() - 5);
            }
        }
        out
    }

    /// Panics with the counts unless no invariant was violated (print [`Audit::report`]
    /// first for the examples).
    pub fn assert_clean(&self, what: &str) {
        let counts: Vec<String> = self
            .violations
            .iter()
            .map(|(kind, list)| format!("{kind}: {}", list.len()))
            .collect();
        assert!(
            self.violations.is_empty(),
            "{what}: invariants violated ({})",
            counts.join(", ")
        );
    }
}

/// Every kind the audit counts, in report order.
pub const KINDS: [&str; 9] = [
    "unfinished",
    "wrong outcome",
    "history",
    "doubled effect",
    "lost reply",
    "completed then compensated",
    "timed out",
    "left in a queue",
    "scenario",
];

fn read_logs(paths: &[PathBuf]) -> BTreeMap<(String, String), StepLog> {
    let mut logs: BTreeMap<(String, String), StepLog> = BTreeMap::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let [kind, cid, saga, step] = parts[..] else {
                continue;
            };
            let log = logs
                .entry((saga.to_string(), step.to_string()))
                .or_default();
            match kind {
                "execute" => log.execute.push(cid.to_string()),
                "error" => log.error.push(cid.to_string()),
                "compensate" => log.compensate.push(cid.to_string()),
                _ => {}
            }
        }
    }
    logs
}

/// Audits a run of `steps`-step sagas (`s1..`), `fails` saying which step each failing
/// saga's payload makes fail (1-based).
pub async fn audit(
    names: &Names,
    effects: &[PathBuf],
    fails: &BTreeMap<Uuid, usize>,
    steps: usize,
) -> Audit {
    audit_grouped(names, effects, fails, steps, None).await
}

/// Like [`audit`], for sagas whose steps `group` (1-based, inclusive) run in parallel: a
/// failure of one of them compensates its siblings too (done, or pending: they may have
/// run), and a sibling may run after the failing step was refused.
pub async fn audit_grouped(
    names: &Names,
    effects: &[PathBuf],
    fails: &BTreeMap<Uuid, usize>,
    steps: usize,
    group: Option<std::ops::RangeInclusive<usize>>,
) -> Audit {
    let logs = read_logs(effects);
    let db = db(names).await;
    let mut history: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
    for row in db
        .query(
            "SELECT saga_id, version, event, step FROM saga_events ORDER BY saga_id, version",
            &[],
        )
        .await
        .expect("history")
    {
        history.entry(row.get(0)).or_default().push(Event {
            version: row.get(1),
            event: row.get(2),
            step: row.get(3),
        });
    }
    let mut audit = Audit::default();
    let rows = db
        .query("SELECT id, status, version, step FROM sagas", &[])
        .await
        .expect("sagas");
    audit.sagas = rows.len();
    for row in rows {
        let id: Uuid = row.get(0);
        let status: String = row.get(1);
        let version: i64 = row.get(2);
        let at: Option<String> = row.get(3);
        let events = history.remove(&id).unwrap_or_default();
        audit.resends += events.iter().filter(|e| e.event == "step_resent").count();
        match status.as_str() {
            "completed" => audit.completed += 1,
            "compensated" => audit.compensated += 1,
            _ => audit.add(
                "unfinished",
                format!("saga {id} still {status} at step {at:?}, version {version}"),
            ),
        }
        let fail = fails.get(&id).copied();
        let want = if fail.is_some() {
            "compensated"
        } else {
            "completed"
        };
        if matches!(status.as_str(), "completed" | "compensated") && status != want {
            audit.add(
                "wrong outcome",
                format!("saga {id} ended {status}, its payload meant {want}"),
            );
        }
        check_history(&mut audit, id, version, &events);
        check_steps(&mut audit, id, steps, fail, group.clone(), &events, &logs);
    }
    for id in history.keys() {
        audit.add(
            "history",
            format!("history rows for saga {id} without its row"),
        );
    }
    check_queues(&mut audit, names).await;
    audit
}

fn check_history(audit: &mut Audit, id: Uuid, version: i64, events: &[Event]) {
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    if versions != (1..=version).collect::<Vec<_>>() {
        audit.add(
            "history",
            format!("saga {id}: versions {versions:?}, row at version {version}"),
        );
    }
    let last = ["completed", "compensated", "step_failed_compensated"];
    if let Some(end) = events.iter().position(|e| last.contains(&e.event.as_str())) {
        if end + 1 < events.len() {
            let after: Vec<&str> = events[end + 1..].iter().map(|e| e.event.as_str()).collect();
            audit.add(
                "history",
                format!("saga {id} moved on after {}: {after:?}", events[end].event),
            );
        }
    }
}

fn step_events<'a>(events: &'a [Event], step: &str) -> impl Iterator<Item = &'a Event> + 'a {
    let step = step.to_string();
    events
        .iter()
        .filter(move |e| e.step.as_deref() == Some(step.as_str()))
}

fn check_steps(
    audit: &mut Audit,
    id: Uuid,
    steps: usize,
    fail: Option<usize>,
    group: Option<std::ops::RangeInclusive<usize>>,
    events: &[Event],
    logs: &BTreeMap<(String, String), StepLog>,
) {
    // The last step of `k`'s stage: `k`, or the end of its group.
    let stage_end = |k: usize| match &group {
        Some(g) if g.contains(&k) => *g.end(),
        _ => k,
    };
    let stage_start = |k: usize| match &group {
        Some(g) if g.contains(&k) => *g.start(),
        _ => k,
    };
    let empty = StepLog::default();
    let log_of = |k: usize| {
        logs.get(&(id.to_string(), format!("s{k}")))
            .unwrap_or(&empty)
    };
    let trail = |k: usize| -> Vec<String> {
        step_events(events, &format!("s{k}"))
            .map(|e| format!("v{} {}", e.version, e.event))
            .collect()
    };
    // The first step its participant refused, as the saga saw it.
    let refused_at = (1..=steps).find(|&k| {
        step_events(events, &format!("s{k}")).any(|e| e.event.starts_with("step_failed"))
    });
    for k in 1..=steps {
        let step = format!("s{k}");
        let log = log_of(k);
        let mut cids = log.execute.clone();
        cids.sort();
        cids.dedup();
        if cids.len() > 1 || log.execute.len() > 1 || log.compensate.len() > 1 {
            audit.add(
                "doubled effect",
                format!(
                    "saga {id} {step}: executed {} times under {} command_ids, compensated {} times",
                    log.execute.len(),
                    cids.len(),
                    log.compensate.len()
                ),
            );
        }
        if fail.is_some_and(|f| k > stage_end(f)) && !log.execute.is_empty() {
            audit.add(
                "doubled effect",
                format!("saga {id} {step} executed after its saga failed at s{fail:?}"),
            );
        }
        let recorded_done = step_events(events, &step)
            .find(|e| e.event == "step_done" || e.event == "completed")
            .map(|e| e.version);
        let recorded_failed =
            step_events(events, &step).any(|e| e.event.starts_with("step_failed"));
        // A group sibling's `done` that comes after the group began compensating is ignored
        // by design; its compensate undoes it.
        let undone = !log.compensate.is_empty();
        if !log.execute.is_empty() && recorded_done.is_none() && !undone {
            audit.add(
                "lost reply",
                format!(
                    "saga {id} {step}: executed by its participant, never recorded done: {:?}",
                    trail(k)
                ),
            );
        }
        if !log.error.is_empty() && !recorded_failed {
            audit.add(
                "lost reply",
                format!(
                    "saga {id} {step}: refused by its participant, never recorded failed: {:?}",
                    trail(k)
                ),
            );
        }
        if step_events(events, &step).any(|e| e.event == "step_timed_out") {
            audit.add("timed out", format!("saga {id} {step}: {:?}", trail(k)));
        }
        if let Some(done_at) = recorded_done {
            let compensated = !log.compensate.is_empty()
                || step_events(events, &step).any(|e| {
                    e.version > done_at
                        && (e.event == "step_compensated" || e.event == "compensated")
                });
            // Compensated rightly only when a later step, or a sibling in its group, was refused.
            let rightly = |r: usize| r > k || (r != k && stage_start(r) == stage_start(k));
            if compensated && refused_at.is_none_or(|r| !rightly(r)) {
                audit.add(
                    "completed then compensated",
                    format!(
                        "saga {id} {step} done at v{done_at}, then compensated with no later step \
                         refused: {:?}",
                        events
                            .iter()
                            .map(|e| format!(
                                "v{} {} {}",
                                e.version,
                                e.event,
                                e.step.as_deref().unwrap_or("-")
                            ))
                            .collect::<Vec<_>>()
                    ),
                );
            }
        }
    }
}

/// Messages left in the run's reply queue, its dead-letter queue, its partition queues and
/// its instances' queues, once late duplicates had up to 10 s to be acked.
async fn check_queues(audit: &mut Audit, names: &Names) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = leftovers(names).await;
        if left.is_empty() || std::time::Instant::now() >= deadline {
            for what in left {
                audit.add("left in a queue", what);
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn leftovers(names: &Names) -> Vec<String> {
    let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
        return vec!["cannot connect to RabbitMQ to inspect the queues".into()];
    };
    let mut queues = vec![
        names.reply_queue.clone(),
        format!("{}.dlq", names.reply_queue),
    ];
    queues.extend((0..64).map(|p| format!("{}.p{p}", names.reply_queue)));
    // A dead instance's queue too: what it held left for the reply queue after its lease.
    queues.extend(names.instance_queues());
    let mut left = Vec::new();
    for q in queues {
        // A failed passive declare closes the channel: one channel per queue.
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        let declared = ch
            .queue_declare(
                ShortString::from(q.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if let Ok(info) = declared {
            if info.message_count() > 0 {
                left.push(format!(
                    "{} messages in {q} ({} consumers)",
                    info.message_count(),
                    info.consumer_count()
                ));
            }
            let _ = ch.close(200, ShortString::from("bye")).await;
        }
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    left
}
