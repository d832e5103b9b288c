//! The participant stub: consumes one command queue and replies per CONTRACT.md section 3.
//!
//! It executes each `command_id` at most once (a re-sent command gets the first answer
//! again), answers `done` to a compensate for a step it never executed (and `error`, without
//! running it, to that step's execute if it arrives afterwards), fails an execute
//! with `--error-rate` probability or when the saga's payload lists the step in
//! `fail_steps`, answers a retryable error (not remembered: a re-send runs again) with
//! `--retryable-error-rate` probability, and can append every effect to a file that
//! survives its restarts.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use saga_participant::{Action, Command, Config, KitError, Outcome, Participant, Processor};
use serde_json::{json, Value};

use crate::broker::AmqpTls;
use crate::config::StubArgs;

/// What the stub remembers: which commands it answered how, which steps ran.
#[derive(Default)]
struct Memory {
    answered: HashMap<String, (bool, Option<String>)>,
    executed: HashSet<(String, String)>,
    /// Steps compensated before their execute arrived (reordered delivery): a later
    /// execute must not run, or its effect would never be undone.
    fenced: HashSet<(String, String)>,
}

/// The stub's answer to one command.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// `done`.
    Done,
    /// `error`: the command's outcome, given again to every re-send of it.
    Error(String),
    /// `error` with `"retryable": true`: not the command's outcome, a re-send runs it again.
    Retryable(String),
}

/// What an execute does that is neither a repeat nor fenced by an earlier compensate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// Run it: `done`.
    Run,
    /// Refuse it (its local transaction failed): `error`, for good.
    Fail,
    /// A transient failure: a retryable `error`, nothing run, nothing remembered.
    RetryLater,
}

/// Decides an execute from two uniform draws in `[0, 1)`: a retryable error at
/// `retryable_rate` (it comes first: the local transaction never got to decide), then a
/// plain error at `error_rate` or when the saga's payload lists the step (`listed`).
fn verdict(listed: bool, error_rate: f64, retryable_rate: f64, rolls: (f64, f64)) -> Verdict {
    if retryable_rate > 0.0 && rolls.0 < retryable_rate {
        Verdict::RetryLater
    } else if listed || (error_rate > 0.0 && rolls.1 < error_rate) {
        Verdict::Fail
    } else {
        Verdict::Run
    }
}

impl Memory {
    /// Answers a command, at most once per `command_id` (a retryable error excepted);
    /// returns the reply and the effect to log, if any. `decide` is asked only for an
    /// execute that is neither a repeat nor fenced.
    fn answer(
        &mut self,
        cmd: &Command,
        decide: impl FnOnce() -> Verdict,
    ) -> (Reply, Option<&'static str>) {
        if let Some((done, error)) = self.answered.get(&cmd.command_id) {
            let reply = match (done, error) {
                (true, _) => Reply::Done,
                (false, e) => Reply::Error(e.clone().unwrap_or_default()),
            };
            return (reply, None);
        }
        let key = (cmd.saga_id.clone(), cmd.step.clone());
        let (reply, effect) = if cmd.action == Action::Compensate {
            if self.executed.remove(&key) {
                (Reply::Done, Some("compensate"))
            } else {
                self.fenced.insert(key);
                (Reply::Done, Some("fence"))
            }
        } else if self.fenced.contains(&key) {
            // Compensated already: it must not run (its effect would never be undone), and
            // the answer is `error` (CONTRACT.md section 3).
            (
                Reply::Error(format!(
                    "step {} was compensated before it ran: not run",
                    cmd.step
                )),
                None,
            )
        } else {
            match decide() {
                Verdict::RetryLater => {
                    // Not the command's outcome: a re-send of it is decided afresh.
                    return (
                        Reply::Retryable(format!("step {} is unavailable for now", cmd.step)),
                        Some("retryable"),
                    );
                }
                Verdict::Fail => (
                    Reply::Error(format!("refused step {}", cmd.step)),
                    Some("error"),
                ),
                Verdict::Run => {
                    self.executed.insert(key);
                    (Reply::Done, Some("execute"))
                }
            }
        };
        let remembered = match &reply {
            Reply::Done => (true, None),
            Reply::Error(e) | Reply::Retryable(e) => (false, Some(e.clone())),
        };
        self.answered.insert(cmd.command_id.clone(), remembered);
        (reply, effect)
    }
}

struct Stub {
    args: StubArgs,
    service: String,
    delay: Duration,
    memory: Mutex<Memory>,
    effects: Option<Mutex<std::fs::File>>,
}

impl Stub {
    fn load(args: StubArgs) -> anyhow::Result<Self> {
        let service = args.service.clone().unwrap_or_else(|| args.queue.clone());
        let mut memory = Memory::default();
        let effects = match &args.effects {
            Some(path) => Some(Mutex::new(open_effects(path, &mut memory)?)),
            None => None,
        };
        Ok(Stub {
            delay: Duration::from_millis(args.delay_ms),
            args,
            service,
            memory: Mutex::new(memory),
            effects,
        })
    }

    /// Decides the answer to a command, performing its effect at most once.
    fn answer(&self, cmd: &Command) -> Reply {
        let Ok(mut mem) = self.memory.lock() else {
            return Reply::Error("stub memory poisoned".into());
        };
        let (reply, effect) = mem.answer(cmd, || self.verdict(cmd));
        if let Some(kind) = effect {
            self.record(kind, cmd);
        }
        match reply {
            Reply::Error(e) => Reply::Error(format!("{} {e}", self.service)),
            Reply::Retryable(e) => Reply::Retryable(format!("{} {e}", self.service)),
            Reply::Done => Reply::Done,
        }
    }

    fn verdict(&self, cmd: &Command) -> Verdict {
        let listed = cmd
            .payload
            .get("fail_steps")
            .and_then(Value::as_array)
            .is_some_and(|steps| steps.iter().any(|s| s.as_str() == Some(cmd.step.as_str())));
        verdict(
            listed,
            self.args.error_rate,
            self.args.retryable_error_rate,
            (rand::random::<f64>(), rand::random::<f64>()),
        )
    }

    fn record(&self, kind: &str, cmd: &Command) {
        if let Some(file) = &self.effects {
            if let Ok(mut f) = file.lock() {
                let line = format!("{kind} {} {} {}\n", cmd.command_id, cmd.saga_id, cmd.step);
                if let Err(e) = f.write_all(line.as_bytes()) {
                    log::error!("cannot write effect log: {e}");
                }
            }
        }
    }
}

fn open_effects(path: &PathBuf, memory: &mut Memory) -> anyhow::Result<std::fs::File> {
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if let [kind, command_id, saga_id, step] = parts[..] {
                let key = (saga_id.to_string(), step.to_string());
                match kind {
                    "execute" => {
                        memory.executed.insert(key);
                        memory.answered.insert(command_id.into(), (true, None));
                    }
                    "error" => {
                        memory
                            .answered
                            .insert(command_id.into(), (false, Some("refused".into())));
                    }
                    "compensate" => {
                        memory.executed.remove(&key);
                        memory.answered.insert(command_id.into(), (true, None));
                    }
                    "fence" => {
                        memory.fenced.insert(key);
                        memory.answered.insert(command_id.into(), (true, None));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

impl Processor for Stub {
    async fn process(&self, cmd: &Command) -> Result<Outcome, KitError> {
        if self.delay > Duration::ZERO {
            tokio::time::sleep(self.delay).await;
        }
        Ok(match self.answer(cmd) {
            Reply::Done => Outcome::Done(json!({"service": self.service, "step": cmd.step})),
            Reply::Error(error) => Outcome::Error(error),
            Reply::Retryable(error) => Outcome::Retryable(error),
        })
    }
}

/// Runs the stub until the process is stopped. The transport is the `saga-participant`
/// kit's (replies with publisher confirms, ack after the confirm, reconnection with
/// back-off); the stub's memory replaces the kit's database inbox.
pub async fn run(args: StubArgs, tls: AmqpTls) -> anyhow::Result<()> {
    let mut config = Config::new(args.amqp.amqp_url.clone(), args.queue.clone());
    config.prefetch = args.prefetch;
    config.ca_pem = tls.ca_pem().map(str::to_string);
    let stub = Stub::load(args)?;
    config.service = stub.service.clone();
    Participant::with_processor(config, stub).run().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str, action: Action) -> Command {
        Command {
            command_id: id.into(),
            saga_id: "s".into(),
            saga: "default".into(),
            step: "a".into(),
            action,
            attempt: 1,
            payload: Value::Null,
            results: Value::Null,
        }
    }

    #[test]
    fn the_retryable_rate_is_rolled_first_then_the_error_rate() {
        assert_eq!(verdict(false, 0.0, 0.0, (0.0, 0.0)), Verdict::Run);
        assert_eq!(verdict(false, 0.0, 0.5, (0.4, 0.9)), Verdict::RetryLater);
        assert_eq!(verdict(false, 0.0, 0.5, (0.6, 0.0)), Verdict::Run);
        assert_eq!(verdict(false, 0.5, 0.5, (0.6, 0.4)), Verdict::Fail);
        assert_eq!(verdict(true, 0.0, 0.0, (0.9, 0.9)), Verdict::Fail);
        assert_eq!(verdict(true, 0.0, 1.0, (0.9, 0.9)), Verdict::RetryLater);
        assert_eq!(verdict(false, 1.0, 0.0, (0.0, 0.99)), Verdict::Fail);
    }

    #[test]
    fn a_retryable_error_is_not_the_outcome_so_a_resend_runs_again() {
        let mut mem = Memory::default();
        let cmd = command("c1", Action::Execute);
        let (reply, effect) = mem.answer(&cmd, || Verdict::RetryLater);
        assert!(matches!(reply, Reply::Retryable(_)), "{reply:?}");
        assert_eq!(effect, Some("retryable"));
        assert!(!mem.executed.contains(&("s".into(), "a".into())));
        // The re-send is decided afresh and runs; from then on its outcome is `done`.
        let (reply, effect) = mem.answer(&cmd, || Verdict::Run);
        assert_eq!((reply, effect), (Reply::Done, Some("execute")));
        let (reply, effect) = mem.answer(&cmd, || Verdict::RetryLater);
        assert_eq!((reply, effect), (Reply::Done, None));
    }

    #[test]
    fn a_plain_error_is_the_outcome_given_again_to_every_resend() {
        let mut mem = Memory::default();
        let cmd = command("c1", Action::Execute);
        let (first, _) = mem.answer(&cmd, || Verdict::Fail);
        let (again, effect) = mem.answer(&cmd, || Verdict::Run);
        assert!(matches!(first, Reply::Error(_)));
        assert_eq!((again, effect), (first, None));
    }

    #[test]
    fn a_compensate_after_a_retryable_error_fences_the_step_it_never_ran() {
        let mut mem = Memory::default();
        mem.answer(&command("c1", Action::Execute), || Verdict::RetryLater);
        let (reply, effect) = mem.answer(&command("c2", Action::Compensate), || Verdict::Run);
        assert_eq!((reply, effect), (Reply::Done, Some("fence")));
        let (reply, effect) = mem.answer(&command("c1", Action::Execute), || Verdict::Run);
        assert_eq!(effect, None, "fenced: not run");
        assert!(
            matches!(reply, Reply::Error(_)),
            "answered error: {reply:?}"
        );
        assert!(!mem.executed.contains(&("s".into(), "a".into())));
    }
}
