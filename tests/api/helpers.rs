#![allow(dead_code)] // shared by several test binaries; each uses a part
//! Test harness: an app per test on its own database, queues and saga type; scripted
//! participants on real RabbitMQ; an observer of lifecycle events; polling waits.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use saga_service::config::{QueueType, Settings};
use saga_service::domain::{SagaDefinition, StepDefinition};
use saga_service::startup::Application;
use serde_json::{json, Value};
use uuid::Uuid;

/// PostgreSQL server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ the tests use.
pub fn amqp_url() -> String {
    std::env::var("SAGA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Polls `check` every 20 ms until it returns true or `within` passes.
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

/// A test's own resources: database, queue names, saga type, definitions file.
#[derive(Clone)]
pub struct Names {
    /// Unique per test.
    pub prefix: String,
    /// Database name.
    pub db: String,
    /// Reply queue.
    pub reply_queue: String,
    /// The saga type of this test.
    pub saga: String,
    /// Definitions file.
    pub defs_path: PathBuf,
}

/// The instance ids the tests run apps under: the default (the host name) and those they
/// set (`SAGA_INSTANCE_ID`, `cluster.instance_id`).
const TEST_INSTANCE_IDS: &[&str] = &[
    "second", "twin", "a", "b", "c", "solo", "i1", "i2", "i3", "i4", "n1", "n2", "n3",
];

impl Names {
    /// The queue of an app started without an instance id (its id is the host name).
    pub fn default_instance_queue(&self) -> String {
        let host = saga_service::config::default_instance_id();
        format!("{}.i.{host}", self.reply_queue)
    }

    /// The queues of the instances the tests run (`<reply queue>.i.<instance>`), to delete.
    pub fn instance_queues(&self) -> Vec<String> {
        let set = TEST_INSTANCE_IDS
            .iter()
            .map(|id| format!("{}.i.{id}", self.reply_queue));
        std::iter::once(self.default_instance_queue())
            .chain(set)
            .collect()
    }

    /// Fresh names.
    pub fn new() -> Self {
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        Names {
            db: format!("saga_{prefix}"),
            reply_queue: format!("{prefix}.responses"),
            saga: format!("{prefix}_saga"),
            defs_path: std::env::temp_dir().join(format!("{prefix}.toml")),
            prefix,
        }
    }

    /// Queue of step `i` (1-based).
    pub fn queue(&self, i: usize) -> String {
        format!("{}.commands{i}", self.prefix)
    }

    /// Database URL.
    pub fn db_url(&self) -> String {
        with_database(&admin_url(), &self.db)
    }
}

/// A definition of `n` steps `s1..sn` on this test's queues.
pub fn steps(names: &Names, n: usize, timeout_ms: u64, max_attempts: u32) -> SagaDefinition {
    SagaDefinition {
        name: names.saga.clone(),
        version: 0,
        deadline_ms: None,
        steps: (1..=n)
            .map(|i| StepDefinition {
                timeout_ms,
                max_attempts,
                ..StepDefinition::new(format!("s{i}"), names.queue(i))
            })
            .collect(),
    }
}

/// Writes definitions as the TOML file `SAGA_DEFINITIONS` would name.
pub fn write_definitions(names: &Names, defs: &[SagaDefinition]) {
    // Every key the definition has, optional ones included (defaults are left out).
    let text = toml::to_string(&serde_json::json!({ "sagas": defs })).expect("definitions as TOML");
    std::fs::write(&names.defs_path, text).expect("write definitions");
}

/// A connection to `url`, TLS as the service does it (`sslmode`, `sslrootcert`).
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let db = saga_service::config::parse_database_url(url).map_err(|e| e.to_string())?;
    let (client, conn) = db
        .config
        .connect(db.connector.make_tls_connect())
        .await
        .map_err(|e| saga_service::logging::error_chain(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// `url` with its database name replaced by `db` (a query string kept as it is).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |j| j + 2) => {
            format!("{}/{db}{query}", &base[..i])
        }
        _ => format!("{base}/{db}{query}"),
    }
}

/// Creates the test database.
pub async fn create_database(names: &Names) {
    let client = pg_connect(&admin_url())
        .await
        .expect("connect to PostgreSQL: is it running? (make services)");
    client
        .batch_execute(&format!("CREATE DATABASE \"{}\"", names.db))
        .await
        .expect("create test database");
}

/// Settings of an app on port 0 for these names.
pub fn settings(names: &Names) -> Settings {
    let args = saga_service::config::ServeArgs {
        database_url: names.db_url(),
        amqp: saga_service::config::AmqpArgs::local(amqp_url()),
        http_addr: "127.0.0.1:0".into(),
        definitions: Some(names.defs_path.clone()),
        reply_queue: names.reply_queue.clone(),
        queue_type: QueueType::Classic,
        prefetch: 200,
        db_pool_size: 4,
        snapshot_writers: 2,
        snapshot_batch: 64,
        http_workers: 1,
        shutdown_timeout_s: 1,
        passivate_after_ms: 10_000,
        admin_token: None,
        instance_id: None,
        partitions: 64,
        lease_ms: 5_000,
        lease_renew_ms: 1_000,
        retention: "30d".into(),
    };
    args.settings().expect("valid test settings")
}

/// One running app of a test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The test's names.
    pub names: Names,
    /// The app's shared state.
    pub state: actix_web::web::Data<saga_service::app_state::AppState>,
    server: actix_web::dev::ServerHandle,
    cleanup: bool,
}

/// Starts an app for a new test with the given definitions (`None`: three steps, 30 s time-outs).
pub async fn spawn_app(defs: Option<Vec<SagaDefinition>>) -> TestApp {
    let names = Names::new();
    let defs = defs.unwrap_or_else(|| vec![steps(&names, 3, 30_000, 3)]);
    write_definitions(&names, &defs);
    create_database(&names).await;
    start_app(names, true).await
}

/// Starts an app on existing names (a restart); waits until it is ready.
pub async fn start_app(names: Names, cleanup: bool) -> TestApp {
    start_app_with(names, cleanup, |_| {}).await
}

/// Like [`start_app`], with settings adjusted by `tweak`.
pub async fn start_app_with(
    names: Names,
    cleanup: bool,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let test = launch_app_with(names, cleanup, tweak);
    let ready = wait_until(Duration::from_secs(30), || async {
        matches!(test.http.get(test.url("/readiness")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "app did not become ready");
    test
}

/// Starts an app with settings adjusted by `tweak`, without waiting for it to be ready.
pub fn launch_app_with(names: Names, cleanup: bool, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = settings(&names);
    tweak(&mut settings);
    let app = Application::build(settings, false).expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let server = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        http: reqwest::Client::new(),
        names,
        state,
        server,
        cleanup,
    }
}

/// A client of the PostgreSQL server the tests run on (its admin database).
pub async fn admin_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A fresh saga id whose partition (of 64) `owner` holds, read from the database.
pub async fn id_held_by(names: &Names, owner: &str) -> Uuid {
    let db = db(names).await;
    let rows = db
        .query(
            "SELECT partition FROM saga_partitions WHERE owner = $1",
            &[&owner],
        )
        .await
        .expect("partitions");
    let held: Vec<u32> = rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
    assert!(!held.is_empty(), "{owner} holds no partition");
    loop {
        let id = Uuid::new_v4();
        if held.contains(&saga_service::cluster::partition_of(&id, 64)) {
            return id;
        }
    }
}

/// Runs `rabbitmqctl` with `args`; true when it succeeded. Async: the app under test shares
/// the test's thread, and a blocking wait would freeze it.
pub async fn rabbitmqctl(args: &[&str]) -> bool {
    tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A RabbitMQ policy that makes a queue refuse (nack) every publish: as the broker does
/// when it is out of resources. Cleared when lifted (or, as a last resort, when dropped).
pub struct RefusePublishes(String);

impl RefusePublishes {
    /// Applies it to `queue` only.
    pub async fn on(queue: &str) -> Self {
        let name = format!("refuse-{queue}");
        let pattern = format!("^{queue}$");
        let set = rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "99",
            &name,
            &pattern,
            r#"{"max-length":0,"overflow":"reject-publish"}"#,
        ])
        .await;
        assert!(set, "rabbitmqctl set_policy");
        RefusePublishes(name)
    }

    /// Lifts it now.
    pub async fn lift(&self) {
        rabbitmqctl(&["clear_policy", &self.0]).await;
    }
}

impl Drop for RefusePublishes {
    fn drop(&mut self) {
        // Only reached blocking when a test failed before lifting it; clearing twice is harmless.
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .output();
    }
}

/// Starts an app whose database is never created, so PostgreSQL is unreachable for it: it
/// keeps retrying start-up and answers 503 (readiness 500) meanwhile. Does not wait.
pub async fn spawn_unreachable_app() -> TestApp {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 1)]);
    let app = Application::build(settings(&names), false).expect("build app");
    let test = TestApp {
        address: format!("http://127.0.0.1:{}", app.port()),
        http: reqwest::Client::new(),
        state: app.state(),
        server: app.server_handle(),
        names,
        cleanup: true,
    };
    actix_web::rt::spawn(app.run_until_stopped());
    test
}

impl TestApp {
    /// Full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// This test's saga type.
    pub fn saga(&self) -> &str {
        &self.names.saga
    }

    /// `POST /start` as JSON.
    pub async fn start(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/start"))
            .json(&body)
            .send()
            .await
            .expect("POST /start")
    }

    /// Starts a saga of this test's type with a new id; asserts 200; returns the id.
    pub async fn start_saga(&self, payload: Value) -> Uuid {
        let id = Uuid::new_v4();
        let r = self
            .start(json!({"saga_id": id, "saga": self.saga(), "payload": payload}))
            .await;
        assert_eq!(r.status(), 200, "start: {:?}", r.text().await);
        id
    }

    /// `GET /sagas/{id}` body (panics unless 200).
    pub async fn saga_view(&self, id: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/sagas/{id}")))
            .send()
            .await
            .expect("GET saga");
        assert_eq!(r.status(), 200);
        r.json().await.expect("saga JSON")
    }

    /// The saga's status.
    pub async fn status(&self, id: Uuid) -> String {
        self.saga_view(&id.to_string()).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the saga has `status`; returns whether it did within `within`.
    pub async fn wait_status(&self, id: Uuid, status: &str, within: Duration) -> bool {
        wait_until(within, || async { self.status(id).await == status }).await
    }

    /// The value of one sample of `/metrics` (`name{labels}` exactly as exported), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Stops the HTTP server and, with it, the app's broker connection.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if !self.cleanup {
            return;
        }
        let names = self.names.clone();
        let server = self.server.clone();
        // Async clean-up on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop(server.stop(false));
                drop_resources(&names).await;
            });
        })
        .join();
    }
}

/// Drops the test's database and queues.
pub async fn drop_resources(names: &Names) {
    if let Ok(client) = pg_connect(&admin_url()).await {
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                names.db
            ))
            .await;
    }
    if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            let mut queues = vec![
                names.reply_queue.clone(),
                format!("{}.dlq", names.reply_queue),
            ];
            queues.extend((1..=10).map(|i| names.queue(i)));
            queues.extend((0..64).map(|p| format!("{}.p{p}", names.reply_queue)));
            queues.extend(names.instance_queues());
            for q in queues {
                let _ = ch
                    .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, ShortString::from("bye")).await;
    }
    let _ = std::fs::remove_file(&names.defs_path);
}

/// A command as a participant received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Parsed body.
    pub body: Value,
    /// AMQP properties.
    pub message_id: Option<String>,
    /// AMQP correlation id.
    pub correlation_id: Option<String>,
    /// AMQP reply_to.
    pub reply_to: Option<String>,
    /// AMQP type.
    pub kind: Option<String>,
    /// AMQP content type.
    pub content_type: Option<String>,
    /// AMQP delivery mode.
    pub delivery_mode: Option<u8>,
    /// The `traceparent` header.
    pub traceparent: Option<String>,
}

/// The span id participants put in the `traceparent` of their replies.
pub const PARTICIPANT_SPAN: &str = "1a2b3c4d5e6f7081";

/// The `traceparent` a participant replies with: the command's trace, its own span.
pub fn child_traceparent(parent: &str) -> Option<String> {
    let trace_id = parent.split('-').nth(1)?;
    Some(format!("00-{trace_id}-{PARTICIPANT_SPAN}-01"))
}

impl Received {
    /// `command_id` of the body.
    pub fn command_id(&self) -> &str {
        self.body["command_id"].as_str().unwrap_or_default()
    }
    /// `action` of the body.
    pub fn action(&self) -> &str {
        self.body["action"].as_str().unwrap_or_default()
    }
    /// `step` of the body.
    pub fn step(&self) -> &str {
        self.body["step"].as_str().unwrap_or_default()
    }
    /// `saga_id` of the body.
    pub fn saga_id(&self) -> &str {
        self.body["saga_id"].as_str().unwrap_or_default()
    }
}

/// What a scripted participant does with a command.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Reply `done` with this output.
    Done(Value),
    /// Reply `error`.
    Error(String),
    /// Reply `error` with `"retryable": true`.
    Retryable(String),
    /// Do not reply.
    Silent,
}

/// A participant's script.
pub type Script = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

/// Replies `done` with `{"step": <step>}` to everything.
pub fn always_done() -> Script {
    Arc::new(|c: &Received| Answer::Done(json!({ "step": c.step() })))
}

/// Participants on a test's queues, recording every command they receive (all queues, in order).
pub struct Participants {
    /// Every command received, in arrival order.
    pub log: Arc<Mutex<Vec<Received>>>,
    conn: Connection,
    /// A channel to publish raw replies on.
    pub channel: Channel,
}

impl Participants {
    /// Consumes queues `1..=n` of the test with one script.
    pub async fn start(names: &Names, n: usize, script: Script) -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ: is it running? (make services)");
        let channel = conn.create_channel().await.expect("channel");
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 1..=n {
            let queue = names.queue(i);
            let ch = conn.create_channel().await.expect("channel");
            ch.queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare");
            let mut consumer = ch
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from(""),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            let log = log.clone();
            let script = script.clone();
            let publish = channel.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = consumer.next().await {
                    let p = &d.properties;
                    let s = |v: &Option<ShortString>| v.as_ref().map(|x| x.as_str().to_string());
                    let rec = Received {
                        body: serde_json::from_slice(&d.data).unwrap_or(Value::Null),
                        message_id: s(p.message_id()),
                        correlation_id: s(p.correlation_id()),
                        reply_to: s(p.reply_to()),
                        kind: s(p.kind()),
                        content_type: s(p.content_type()),
                        delivery_mode: *p.delivery_mode(),
                        traceparent: p.headers().as_ref().and_then(|h| {
                            match h.inner().get("traceparent") {
                                Some(lapin::types::AMQPValue::LongString(s)) => {
                                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                                }
                                _ => None,
                            }
                        }),
                    };
                    if let Ok(mut l) = log.lock() {
                        l.push(rec.clone());
                    }
                    let answer = script(&rec);
                    let reply = match answer {
                        Answer::Done(output) => Some(
                            json!({"command_id": rec.command_id(), "saga_id": rec.saga_id(), "status": "done", "output": output}),
                        ),
                        Answer::Error(e) => Some(
                            json!({"command_id": rec.command_id(), "saga_id": rec.saga_id(), "status": "error", "error": e}),
                        ),
                        Answer::Retryable(e) => Some(
                            json!({"command_id": rec.command_id(), "saga_id": rec.saga_id(), "status": "error", "error": e, "retryable": true}),
                        ),
                        Answer::Silent => None,
                    };
                    if let (Some(reply), Some(to)) = (reply, rec.reply_to.clone()) {
                        let trace = rec.traceparent.as_deref().and_then(child_traceparent);
                        let _ =
                            publish_reply(&publish, &to, reply.to_string().as_bytes(), trace).await;
                    }
                    let _ = d.ack(BasicAckOptions::default()).await;
                }
            });
        }
        Participants { log, conn, channel }
    }

    /// Every command received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Commands received for one saga.
    pub fn for_saga(&self, id: Uuid) -> Vec<Received> {
        let id = id.to_string();
        self.received()
            .into_iter()
            .filter(|r| r.saga_id() == id)
            .collect()
    }

    /// Distinct command ids per (saga, step, action).
    pub fn distinct_ids(&self, id: Uuid, step: &str, action: &str) -> BTreeSet<String> {
        self.for_saga(id)
            .iter()
            .filter(|r| r.step() == step && r.action() == action)
            .map(|r| r.command_id().to_string())
            .collect()
    }

    /// Closes the connection (ends the consumers).
    pub async fn close(self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

/// Publishes a reply (persistent) with a `traceparent` header, if given.
pub async fn publish_reply(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    traceparent: Option<String>,
) -> bool {
    let mut props = BasicProperties::default();
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("traceparent"),
            lapin::types::AMQPValue::LongString(tp.into()),
        );
        props = props.with_headers(headers);
    }
    publish_with(ch, queue, body, props).await
}

/// Publishes a raw reply body (persistent) to a queue on the default exchange.
pub async fn publish_raw(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    correlation_id: Option<&str>,
) -> bool {
    let mut props = BasicProperties::default();
    if let Some(c) = correlation_id {
        props = props.with_correlation_id(ShortString::from(c));
    }
    publish_with(ch, queue, body, props).await
}

/// Publishes on the default exchange with these properties (persistent); true once the
/// broker took it.
pub async fn publish_with(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) -> bool {
    match ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            body,
            props.with_delivery_mode(2),
        )
        .await
    {
        Ok(confirm) => confirm.await.is_ok(),
        Err(_) => false,
    }
}

/// Partitions held per instance, from `saga_partitions` (live leases only).
pub async fn lease_holders(names: &Names) -> std::collections::BTreeMap<String, i64> {
    db(names)
        .await
        .query(
            "SELECT owner, count(*) FROM saga_partitions
              WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// The live owner of each held partition.
pub async fn partition_owners(names: &Names) -> std::collections::BTreeMap<i32, String> {
    db(names)
        .await
        .query(
            "SELECT partition, owner FROM saga_partitions
              WHERE owner IS NOT NULL AND expires_at > now()",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// Collects lifecycle events of one saga type from `saga.events`.
pub struct EventObserver {
    /// Bodies received.
    pub events: Arc<Mutex<Vec<Value>>>,
    _conn: Connection,
}

impl EventObserver {
    /// Binds an exclusive queue to `saga.events` with `<saga>.#`.
    pub async fn start(saga: &str) -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            ShortString::from("saga.events"),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        let q = ch
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        let qname = q.name().clone();
        ch.queue_bind(
            qname.clone(),
            ShortString::from("saga.events"),
            ShortString::from(format!("{saga}.#").as_str()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let mut consumer = ch
            .basic_consume(
                qname,
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let mut v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                v["routing_key"] = json!(d.routing_key.as_str());
                if let Ok(mut e) = sink.lock() {
                    e.push(v);
                }
            }
        });
        EventObserver {
            events,
            _conn: conn,
        }
    }

    /// Events so far.
    pub fn all(&self) -> Vec<Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Messages waiting in a queue and its consumers (declared passively), None when it does
/// not exist.
pub async fn queue_stats(queue: &str) -> Option<(u32, u32)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    let stats = ch
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()));
    let _ = conn.close(200, ShortString::from("bye")).await;
    stats
}

/// Messages waiting in a queue (0 when it does not exist).
pub async fn queue_depth(queue: &str) -> u32 {
    queue_stats(queue).await.map_or(0, |(messages, _)| messages)
}

/// Fetches every message of a queue with basic.get: (body, headers as text).
pub async fn drain_queue(queue: &str) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
        return out;
    };
    let Ok(ch) = conn.create_channel().await else {
        return out;
    };
    while let Ok(Some(msg)) = ch
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
    {
        let headers = format!("{:?}", msg.delivery.properties.headers());
        out.push((msg.delivery.data.clone(), headers));
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    out
}

/// A connection to the test's database, for assertions.
pub async fn db(names: &Names) -> tokio_postgres::Client {
    pg_connect(&names.db_url()).await.expect("connect test db")
}

/// The real `saga-service serve` binary as a child process, for kill -9 and restarts.
pub struct ChildApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Where its stderr goes.
    pub log_path: PathBuf,
    child: std::process::Child,
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ChildApp {
    /// Starts the binary for these names and waits until `/readiness` answers 200.
    pub async fn start(names: &Names, http: &reqwest::Client) -> ChildApp {
        Self::start_with(names, http, &[]).await
    }

    /// Like [`ChildApp::start`], with more environment variables (`SAGA_INSTANCE_ID`, ...).
    pub async fn start_with(
        names: &Names,
        http: &reqwest::Client,
        env: &[(&str, &str)],
    ) -> ChildApp {
        let app = Self::spawn_with(names, env);
        let ready = wait_until(Duration::from_secs(30), || async {
            matches!(http.get(format!("{}/readiness", app.address)).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ready, "saga-service child did not become ready");
        app
    }

    /// Starts the binary without waiting for it to be ready (an instance expected to stay
    /// unready, such as a twin instance id).
    pub fn spawn_with(names: &Names, env: &[(&str, &str)]) -> ChildApp {
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!("{}-{port}.log", names.prefix));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_saga-service"))
            .arg("serve")
            .env("SAGA_DATABASE_URL", names.db_url())
            .env("SAGA_AMQP_URL", amqp_url())
            .env("SAGA_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("SAGA_DEFINITIONS", &names.defs_path)
            .env("SAGA_REPLY_QUEUE", &names.reply_queue)
            .env("SAGA_HTTP_WORKERS", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn saga-service");
        ChildApp {
            address: format!("http://127.0.0.1:{port}"),
            log_path,
            child,
        }
    }

    /// The process id of the child itself (for signals aimed at it alone).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// What the child logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` for the exit; returns its code.
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status of a saga read straight from the test database.
pub async fn db_status(client: &tokio_postgres::Client, id: Uuid) -> Option<String> {
    client
        .query_opt("SELECT status FROM sagas WHERE id = $1", &[&id])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}
