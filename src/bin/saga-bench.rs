//! `saga-bench`: drives a running orchestrator through `POST /start`, observes completions
//! on `saga.events`, and prints one result line per run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// Every step answers done.
    Happy,
    /// The last step answers error; the earlier ones compensate.
    Compensate,
    /// 10% of sagas fail at a random step.
    Mixed,
    /// Start sagas and leave them waiting (a held participant): for rehydrate and idle.
    Hold,
}

/// Benchmark against a running orchestrator and its participants.
#[derive(Parser)]
#[command(name = "saga-bench", version)]
struct Args {
    /// Orchestrator base URL; several, comma-separated, spread the starts round-robin
    /// over instances of one database.
    #[arg(long, default_value = "http://127.0.0.1:3000", value_delimiter = ',')]
    url: Vec<String>,
    /// RabbitMQ URL (to observe saga.events); `amqps://` connects with TLS
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f].
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// PEM file of CA certificates trusted for `amqps://`, besides the system's.
    #[arg(long, env = "SAGA_AMQP_CA_FILE")]
    amqp_ca_file: Option<std::path::PathBuf>,
    /// What to run.
    #[arg(long, value_enum, default_value = "happy")]
    workload: Workload,
    /// Sagas to start.
    #[arg(long, default_value_t = 10_000)]
    sagas: usize,
    /// Sagas in flight at most.
    #[arg(long, default_value_t = 1_000)]
    concurrency: usize,
    /// Saga type.
    #[arg(long, default_value = "default")]
    saga: String,
    /// Step names of the saga, in order (for failure injection).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "service1,service2,service3"
    )]
    steps: Vec<String>,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// PID of the orchestrator, for CPU seconds and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Offer this many starts per second (open loop) instead of keeping C in flight.
    #[arg(long)]
    rate: Option<f64>,
    /// A label printed in the result line.
    #[arg(long, default_value = "")]
    label: String,
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn proc_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<i64>>>>;

async fn observe(args: &Args, waiters: Waiters) -> anyhow::Result<Connection> {
    let tls = saga_service::config::amqp_tls(args.amqp_ca_file.as_deref())?;
    saga_service::config::check_amqp_url(&args.amqp_url)?;
    let conn =
        saga_service::broker::connect_amqp(&args.amqp_url, ConnectionProperties::default(), &tls)
            .await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        ShortString::from("saga.events"),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
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
        .await?;
    ch.queue_bind(
        q.name().clone(),
        ShortString::from("saga.events"),
        ShortString::from(format!("{}.#", args.saga).as_str()),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let Ok(v) = serde_json::from_slice::<Value>(&d.data) else {
                continue;
            };
            let Some(id) = v["saga_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            let version = v["version"].as_i64().unwrap_or(0);
            if let Some(tx) = waiters.lock().ok().and_then(|mut w| w.remove(&id)) {
                let _ = tx.send(version);
            }
        }
    });
    Ok(conn)
}

fn payload_for(args: &Args, i: usize) -> Value {
    let mut p = json!({ "n": i });
    match args.workload {
        Workload::Compensate => {
            if let Some(last) = args.steps.last() {
                p["fail_steps"] = json!([last]);
            }
        }
        Workload::Mixed if i.is_multiple_of(10) && !args.steps.is_empty() => {
            p["fail_steps"] = json!([args.steps[(i / 10) % args.steps.len()]]);
        }
        _ => {}
    }
    if args.payload_bytes > 0 {
        p["pad"] = json!("x".repeat(args.payload_bytes));
    }
    p
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let _conn = observe(&args, waiters.clone()).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let cpu0 = args.pid.and_then(proc_cpu_seconds);
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.sagas)));
    let transitions = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(args.sagas);
    let mut ticker = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    for i in 0..args.sagas {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (args, http, waiters, latencies, transitions, failures) = (
            args.clone(),
            http.clone(),
            waiters.clone(),
            latencies.clone(),
            transitions.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            let (tx, rx) = oneshot::channel();
            let hold = matches!(args.workload, Workload::Hold);
            if !hold {
                if let Ok(mut w) = waiters.lock() {
                    w.insert(id, tx);
                }
            }
            let t0 = Instant::now();
            let body = json!({"saga_id": id, "saga": args.saga, "payload": payload_for(&args, i)});
            let base = &args.url[i % args.url.len().max(1)];
            let ok = matches!(http.post(format!("{base}/start")).json(&body).send().await, Ok(r) if r.status() == 200);
            if !ok {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return drop(permit);
            }
            if hold {
                return drop(permit);
            }
            match tokio::time::timeout(Duration::from_secs(120), rx).await {
                Ok(Ok(version)) => {
                    transitions.fetch_add(version, std::sync::atomic::Ordering::Relaxed);
                    if let Ok(mut l) = latencies.lock() {
                        l.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                _ => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let done = lat.len();
    let cpu = match (args.pid.and_then(proc_cpu_seconds), cpu0) {
        (Some(b), Some(a)) => format!("{:.1}", b - a),
        _ => "-".into(),
    };
    let hwm = args
        .pid
        .and_then(|p| proc_kib(p, "VmHWM:"))
        .map(|k| format!("{}", k / 1024))
        .unwrap_or("-".into());
    let rss = args
        .pid
        .and_then(|p| proc_kib(p, "VmRSS:"))
        .map(|k| format!("{}", k / 1024))
        .unwrap_or("-".into());
    println!(
        "workload={:?}{} sagas={} concurrency={}{} finished={} failed={} elapsed_s={:.2} sagas_per_s={:.0} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1} transitions_per_s={:.0} orchestrator_cpu_s={} peak_rss_mib={} rss_mib={}",
        args.workload,
        if args.label.is_empty() { String::new() } else { format!("[{}]", args.label) },
        args.sagas,
        args.concurrency,
        args.rate.map(|r| format!(" rate={r}")).unwrap_or_default(),
        done,
        failures.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        if matches!(args.workload, Workload::Hold) { args.sagas as f64 / elapsed } else { done as f64 / elapsed },
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        transitions.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed,
        cpu,
        hwm,
        rss,
    );
    Ok(())
}
