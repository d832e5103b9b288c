#![allow(dead_code)]
//! A test rig: a fresh database with `saga_inbox` and an `effects` table, a participant
//! with a scripted handler on a fresh command queue, and a reply queue whose replies are
//! collected; polling waits with deadlines.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use saga_participant::{Command, Config, Handler, Participant, Pool, StepError, Transaction};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The PostgreSQL server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("SAGA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL: is it running? (make services)");
    tokio::spawn(conn);
    client
}

/// The scripted handler: `payload.mode` says what it does (see [`Script::act`]); every
/// call is counted.
#[derive(Clone, Default)]
pub struct Script {
    /// Calls of the handler.
    pub runs: Arc<AtomicUsize>,
    /// Command ids whose "once" mode already fired.
    fired: Arc<Mutex<HashSet<String>>>,
}

impl Script {
    fn first_time(&self, cmd: &Command) -> bool {
        self.fired.lock().unwrap().insert(cmd.command_id.clone())
    }
}

impl Handler for Script {
    /// Writes the effect row `(command_id, saga_id, step, action)`, then per `mode`:
    /// `ok` (default), `fail_after_write`, `retry_after_write`, `retry_once`, `violate`
    /// (divides by zero through `?`), `slow`
    /// (holds the transaction 500 ms), `kill_once` (terminates its own database session).
    async fn handle(&self, tx: &Transaction<'_>, cmd: &Command) -> Result<Value, StepError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tx.execute(
            "INSERT INTO effects (command_id, saga_id, step, action) VALUES ($1, $2, $3, $4)",
            &[
                &cmd.command_id,
                &cmd.saga_id,
                &cmd.step,
                &cmd.action.as_str(),
            ],
        )
        .await?;
        match cmd.payload["mode"].as_str().unwrap_or("ok") {
            "fail_after_write" => Err(StepError::Failed("refused after writing".into())),
            "retry_after_write" => Err(StepError::Retryable("busy after writing".into())),
            "retry_once" if self.first_time(cmd) => Err(StepError::Retryable("busy".into())),
            "violate" => {
                // A data exception through `?`: a failure for good, in PostgreSQL's words.
                tx.execute("SELECT 1 / 0", &[]).await?;
                Ok(json!({"unreachable": true}))
            }
            "slow" => {
                tx.execute("SELECT pg_sleep(0.5)", &[]).await?;
                Ok(json!({"step": cmd.step, "run": Uuid::new_v4().to_string()}))
            }
            "kill_once" if self.first_time(cmd) => {
                // The session dies mid-transaction, after the effect was written.
                tx.execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                    .await?;
                Ok(json!({"unreachable": true}))
            }
            _ => Ok(json!({"step": cmd.step, "run": Uuid::new_v4().to_string()})),
        }
    }
}

/// A reply as received on the reply queue.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body.
    pub body: Value,
    /// The AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// The AMQP `delivery_mode` (2: persistent).
    pub delivery_mode: Option<u8>,
}

/// One test's database, queues and participant.
pub struct Rig {
    /// The database's name.
    pub db: String,
    /// Its pool.
    pub pool: Pool,
    /// The command queue.
    pub queue: String,
    /// The reply queue.
    pub reply_queue: String,
    /// The handler (its run counter).
    pub script: Script,
    /// Replies received, in order.
    pub replies: Arc<Mutex<Vec<Received>>>,
    /// A channel with confirms to publish commands on.
    pub channel: Channel,
    conn: Connection,
    stop: Option<oneshot::Sender<()>>,
    participant: Option<tokio::task::JoinHandle<()>>,
}

impl Rig {
    /// A fresh database and queues, and a participant running on them.
    pub async fn start() -> Rig {
        let prefix = format!("kit{}", &Uuid::new_v4().simple().to_string()[..12]);
        let db = prefix.clone();
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .expect("create database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
        let url = match std::env::var("SAGA_TEST_DATABASE_URL") {
            Ok(admin) => match admin.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{db}"),
                None => url,
            },
            Err(_) => url,
        };
        let pool = saga_participant::pool(&url, 8).expect("pool");
        saga_participant::migrate(&pool).await.expect("migrate");
        let client = pool.get().await.expect("connection");
        client
            .batch_execute(
                "CREATE TABLE effects (command_id text, saga_id text, step text, action text)",
            )
            .await
            .expect("effects table");
        drop(client);

        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ: is it running? (make services)");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let queue = format!("{prefix}.payments");
        let reply_queue = format!("{prefix}.responses");
        for q in [&queue, &reply_queue] {
            declare(&channel, q).await;
        }
        let replies = Arc::new(Mutex::new(Vec::new()));
        collect(&conn, &reply_queue, replies.clone()).await;
        let mut rig = Rig {
            db,
            pool,
            queue,
            reply_queue,
            script: Script::default(),
            replies,
            channel,
            conn,
            stop: None,
            participant: None,
        };
        rig.start_participant(4);
        rig
    }

    /// Starts the participant (again) with this prefetch.
    pub fn start_participant(&mut self, prefetch: u16) {
        let mut config = Config::new(amqp_url(), self.queue.clone());
        config.service = "payments".into();
        config.prefetch = prefetch;
        let participant = Participant::new(config, self.pool.clone(), self.script.clone());
        let (tx, rx) = oneshot::channel();
        self.stop = Some(tx);
        self.participant = Some(tokio::spawn(participant.run_until(async {
            let _ = rx.await;
        })));
    }

    /// Stops the participant and waits until it closed its connection.
    pub async fn stop_participant(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.participant.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// A command body (a new `command_id`) for the saga and step, with `payload.mode`.
    pub fn command(&self, saga_id: &str, step: &str, action: &str, mode: &str) -> Value {
        json!({
            "command_id": format!("{saga_id}/{step}/{action}/{}", Uuid::new_v4().simple()),
            "saga_id": saga_id, "saga": "trip", "step": step, "action": action,
            "attempt": 1, "payload": {"mode": mode}, "results": {},
        })
    }

    /// Publishes a command to the participant with `reply_to` = the rig's reply queue.
    pub async fn send(&self, cmd: &Value) {
        self.send_to(cmd, &self.reply_queue.clone()).await;
    }

    /// Publishes a command with this `reply_to`; waits for the broker's confirm.
    pub async fn send_to(&self, cmd: &Value, reply_to: &str) {
        let id = cmd["command_id"].as_str().unwrap_or_default();
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(id))
            .with_correlation_id(ShortString::from(id))
            .with_reply_to(ShortString::from(reply_to))
            .with_type(ShortString::from(
                cmd["action"].as_str().unwrap_or_default(),
            ))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.queue.as_str()),
                BasicPublishOptions::default(),
                cmd.to_string().as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// The replies for `command_id` so far.
    pub fn replies_for(&self, command_id: &str) -> Vec<Received> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.body["command_id"] == command_id)
            .cloned()
            .collect()
    }

    /// Waits (10 s at most) for `n` replies to `cmd`; returns them (panics if too few).
    pub async fn wait_replies(&self, cmd: &Value, n: usize) -> Vec<Received> {
        let id = cmd["command_id"].as_str().unwrap_or_default().to_string();
        let got = wait_until(Duration::from_secs(10), || async {
            self.replies_for(&id).len() >= n
        })
        .await;
        assert!(got, "{n} replies to {id}: got {:?}", self.replies_for(&id));
        self.replies_for(&id)
    }

    /// Effect rows of a command.
    pub async fn effects(&self, command_id: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM effects WHERE command_id = $1",
            command_id,
        )
        .await
    }

    /// Inbox rows of a command.
    pub async fn inbox_rows(&self, command_id: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM saga_inbox WHERE command_id = $1",
            command_id,
        )
        .await
    }

    /// The recorded status of a command, if any.
    pub async fn inbox_status(&self, command_id: &str) -> Option<String> {
        let client = self.pool.get().await.expect("connection");
        client
            .query_opt(
                "SELECT status FROM saga_inbox WHERE command_id = $1",
                &[&command_id],
            )
            .await
            .expect("inbox")
            .map(|r| r.get(0))
    }

    async fn count(&self, sql: &str, id: &str) -> i64 {
        let client = self.pool.get().await.expect("connection");
        client.query_one(sql, &[&id]).await.expect("count").get(0)
    }

    /// Handler calls so far.
    pub fn runs(&self) -> usize {
        self.script.runs.load(Ordering::SeqCst)
    }

    /// Stops the participant, deletes the queues and drops the database.
    pub async fn finish(mut self) {
        self.stop_participant().await;
        for q in [&self.queue, &self.reply_queue] {
            let _ = self
                .channel
                .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, ShortString::from("bye")).await;
        self.pool.close();
        let _ = admin()
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            ))
            .await;
    }
}

/// Declares a durable queue.
pub async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
}

/// Consumes `queue` into `into` (acking each message).
pub async fn collect(conn: &Connection, queue: &str, into: Arc<Mutex<Vec<Received>>>) {
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    tokio::spawn(async move {
        let _keep = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let received = Received {
                body: serde_json::from_slice(&d.data).unwrap_or(Value::Null),
                correlation_id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_string()),
                delivery_mode: *d.properties.delivery_mode(),
            };
            into.lock().unwrap().push(received);
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
}

/// A new saga id.
pub fn saga_id() -> String {
    Uuid::new_v4().to_string()
}
