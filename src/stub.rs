//! The participant stub: consumes one command queue and replies per CONTRACT.md section 3.
//!
//! It executes each `command_id` at most once (a re-sent command gets the first answer
//! again), answers `done` to a compensate for a step it never executed, fails an execute
//! with `--error-rate` probability or when the saga's payload lists the step in
//! `fail_steps`, and can append every effect to a file that survives its restarts.

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
    fn answer(&self, cmd: &Command) -> (bool, Option<String>) {
        let Ok(mut mem) = self.memory.lock() else {
            return (false, Some("stub memory poisoned".into()));
        };
        if let Some(previous) = mem.answered.get(&cmd.command_id) {
            return previous.clone();
        }
        let key = (cmd.saga_id.clone(), cmd.step.clone());
        let answer = if cmd.action == "compensate" {
            if mem.executed.remove(&key) {
                self.record("compensate", cmd);
            } else {
                self.record("fence", cmd);
                mem.fenced.insert(key);
            }
            (true, None)
        } else if mem.fenced.contains(&key) {
            // Compensated already: acknowledge without running it.
            (true, None)
        } else if self.should_fail(cmd) {
            self.record("error", cmd);
            (
                false,
                Some(format!("{} refused step {}", self.service, cmd.step)),
            )
        } else {
            mem.executed.insert(key);
            self.record("execute", cmd);
            (true, None)
        };
        mem.answered.insert(cmd.command_id.clone(), answer.clone());
        answer
    }

    fn should_fail(&self, cmd: &Command) -> bool {
        let listed = cmd
            .payload
            .get("fail_steps")
            .and_then(Value::as_array)
            .is_some_and(|steps| steps.iter().any(|s| s.as_str() == Some(cmd.step.as_str())));
        listed || (self.args.error_rate > 0.0 && rand::random::<f64>() < self.args.error_rate)
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
            let (done, error) = stub.answer(&cmd);
            let reply = json!({
                "command_id": cmd.command_id,
                "saga_id": cmd.saga_id,
                "status": if done { "done" } else { "error" },
                "service": stub.service,
                "output": if done { json!({"service": stub.service, "step": cmd.step}) } else { json!({}) },
                "error": error,
            });
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
