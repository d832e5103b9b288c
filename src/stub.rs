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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::AmqpTls;
use crate::config::StubArgs;

#[derive(Debug, Deserialize)]
struct Command {
    command_id: String,
    saga_id: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    payload: Value,
}

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
        let (reply, effect) = if cmd.action == "compensate" {
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
    tls: AmqpTls,
    service: String,
    memory: Mutex<Memory>,
    effects: Option<Mutex<std::fs::File>>,
}

impl Stub {
    fn load(args: StubArgs, tls: AmqpTls) -> anyhow::Result<Self> {
        let service = args.service.clone().unwrap_or_else(|| args.queue.clone());
        let mut memory = Memory::default();
        let effects = match &args.effects {
            Some(path) => Some(Mutex::new(open_effects(path, &mut memory)?)),
            None => None,
        };
        Ok(Stub {
            args,
            tls,
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

/// Runs the stub until the process is stopped; reconnects whenever the broker drops.
pub async fn run(args: StubArgs, tls: AmqpTls) -> anyhow::Result<()> {
    let stub = Arc::new(Stub::load(args, tls)?);
    let mut delay = Duration::from_millis(200);
    loop {
        match serve(stub.clone()).await {
            Ok(()) => log::warn!("command stream ended; reconnecting"),
            Err(e) => log::warn!("stub connection failed: {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn serve(stub: Arc<Stub>) -> anyhow::Result<()> {
    let conn = crate::broker::connect_amqp(
        &stub.args.amqp_url,
        ConnectionProperties::default(),
        &stub.tls,
    )
    .await?;
    let consume = conn.create_channel().await?;
    let queue = ShortString::from(stub.args.queue.as_str());
    if consume
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_err()
    {
        // Declared by the orchestrator with other arguments (quorum): consume it as it is.
        return serve_existing(stub, conn).await;
    }
    consume_on(stub, &conn, consume).await
}

async fn serve_existing(stub: Arc<Stub>, conn: Connection) -> anyhow::Result<()> {
    let consume = conn.create_channel().await?;
    consume_on(stub, &conn, consume).await
}

async fn consume_on(stub: Arc<Stub>, conn: &Connection, consume: Channel) -> anyhow::Result<()> {
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    consume
        .basic_qos(stub.args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            ShortString::from(stub.args.queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    log::info!("stub {} consuming {}", stub.service, stub.args.queue);
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let stub = stub.clone();
        let publish = publish.clone();
        tokio::spawn(async move {
            let cmd: Command = match serde_json::from_slice(&delivery.data) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("unreadable command dropped: {e}");
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    return;
                }
            };
            if stub.args.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(stub.args.delay_ms)).await;
            }
            let reply = match stub.answer(&cmd) {
                Reply::Done => json!({
                    "command_id": cmd.command_id, "saga_id": cmd.saga_id, "status": "done",
                    "service": stub.service, "error": null,
                    "output": {"service": stub.service, "step": cmd.step},
                }),
                Reply::Error(error) => json!({
                    "command_id": cmd.command_id, "saga_id": cmd.saga_id, "status": "error",
                    "service": stub.service, "output": {}, "error": error,
                }),
                Reply::Retryable(error) => json!({
                    "command_id": cmd.command_id, "saga_id": cmd.saga_id, "status": "error",
                    "retryable": true, "service": stub.service, "output": {}, "error": error,
                }),
            };
            let reply_to = delivery
                .properties
                .reply_to()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "responses".into());
            let props = BasicProperties::default()
                .with_correlation_id(ShortString::from(cmd.command_id.as_str()))
                .with_content_type(ShortString::from("application/json"))
                .with_delivery_mode(2);
            let body = reply.to_string();
            let sent = match publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(reply_to.as_str()),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
            {
                Ok(confirm) => confirm.await.is_ok(),
                Err(_) => false,
            };
            // Unanswered commands are redelivered when the channel closes; the answer is remembered.
            if sent {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str, action: &str) -> Command {
        Command {
            command_id: id.into(),
            saga_id: "s".into(),
            step: "a".into(),
            action: action.into(),
            payload: Value::Null,
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
        let cmd = command("c1", "execute");
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
        let cmd = command("c1", "execute");
        let (first, _) = mem.answer(&cmd, || Verdict::Fail);
        let (again, effect) = mem.answer(&cmd, || Verdict::Run);
        assert!(matches!(first, Reply::Error(_)));
        assert_eq!((again, effect), (first, None));
    }

    #[test]
    fn a_compensate_after_a_retryable_error_fences_the_step_it_never_ran() {
        let mut mem = Memory::default();
        mem.answer(&command("c1", "execute"), || Verdict::RetryLater);
        let (reply, effect) = mem.answer(&command("c2", "compensate"), || Verdict::Run);
        assert_eq!((reply, effect), (Reply::Done, Some("fence")));
        let (reply, effect) = mem.answer(&command("c1", "execute"), || Verdict::Run);
        assert_eq!(effect, None, "fenced: not run");
        assert!(
            matches!(reply, Reply::Error(_)),
            "answered error: {reply:?}"
        );
        assert!(!mem.executed.contains(&("s".into(), "a".into())));
    }
}
