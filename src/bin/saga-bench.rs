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
    /// RabbitMQ (to observe saga.events).
    #[command(flatten)]
    amqp: saga_service::config::AmqpArgs,
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
    /// Also print, per second of the run, the starts of that second with their p50, p99 and
    /// worst latency, and the machine's busy share then: to tell a steady tail (queueing)
    /// from spikes (something periodic).
    #[arg(long)]
    timeline: bool,
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The process groups whose CPU the benchmark splits per saga, by `/proc/<pid>/comm`.
const CPU_GROUPS: [(&str, &str); 5] = [
    ("postgres", "postgres"),
    ("beam.smp", "rabbitmq"),
    ("saga-service", "saga-service"),
    ("saga-stub", "participants"),
    ("saga-bench", "driver"),
];

/// CPU seconds used so far by every live process of each group (PostgreSQL's backends,
/// RabbitMQ's VM, the orchestrator instances, the stubs, this driver), by group name. A
/// process that exits between two samples takes its seconds with it; the pools keep
/// connections open, so none does during a run.
fn cpu_by_group() -> HashMap<&'static str, f64> {
    let mut by_group = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return by_group;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let Some((_, group)) = CPU_GROUPS.iter().find(|(c, _)| *c == comm.trim()) else {
            continue;
        };
        if let Some(secs) = proc_cpu_seconds(pid) {
            *by_group.entry(*group).or_insert(0.0) += secs;
        }
    }
    by_group
}

/// (busy, total) jiffies of the whole machine, from the first line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The machine's busy share (%) between two `machine_jiffies` samples.
fn busy_pct((b0, t0): (u64, u64), (b1, t1): (u64, u64)) -> Option<f64> {
    (t1 > t0).then(|| b1.saturating_sub(b0) as f64 * 100.0 / (t1 - t0) as f64)
}

/// `cpu_ms_per_saga=postgres:0.48,rabbitmq:0.45,...` and the machine's busy share.
fn cpu_split(
    before: &HashMap<&'static str, f64>,
    after: &HashMap<&'static str, f64>,
    sagas: usize,
    machine: Option<((u64, u64), (u64, u64))>,
) -> String {
    let per_saga: Vec<String> = CPU_GROUPS
        .iter()
        .map(|(_, g)| {
            let used = after.get(g).copied().unwrap_or(0.0) - before.get(g).copied().unwrap_or(0.0);
            format!("{g}:{:.3}", used.max(0.0) * 1000.0 / sagas.max(1) as f64)
        })
        .collect();
    let busy = machine
        .and_then(|(a, b)| busy_pct(a, b))
        .map_or("-".into(), |b| format!("{b:.0}"));
    format!(
        "cpu_ms_per_saga={} machine_busy_pct={busy}",
        per_saga.join(",")
    )
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

/// The machine's busy share in each second of the run: entry `s` covers second `s` (`None`
/// when `/proc/stat` could not be read then).
async fn sample_busy_per_second(into: Arc<Mutex<Vec<Option<f64>>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The first tick is immediate: it marks the start of second 0.
    tick.tick().await;
    let mut last = machine_jiffies();
    loop {
        tick.tick().await;
        let now = machine_jiffies();
        let share = last.zip(now).and_then(|(a, b)| busy_pct(a, b));
        if let Ok(mut v) = into.lock() {
            v.push(share);
        }
        last = now;
    }
}

/// One line per second of the run: sagas started in it, their p50, p99 and worst latency,
/// and how busy the machine was in that second. `finished`: (start offset, latency ms).
fn timeline(finished: &[(Duration, f64)], busy: &[Option<f64>]) -> Vec<String> {
    let mut by_second: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (at, ms) in finished {
        by_second.entry(at.as_secs()).or_default().push(*ms);
    }
    by_second
        .into_iter()
        .map(|(s, mut lat)| {
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let busy = busy
                .get(s as usize)
                .copied()
                .flatten()
                .map_or("-".to_string(), |b| format!("{b:.0}"));
            format!(
                "  t={s:>4}s started={:>5} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} machine_busy_pct={busy}",
                lat.len(),
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or(0.0),
            )
        })
        .collect()
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
    let tls = args.amqp.check()?;
    let conn = saga_service::broker::connect_amqp(
        &args.amqp.amqp_url,
        ConnectionProperties::default(),
        &tls,
    )
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

fn log_retry(id: &Uuid, e: &reqwest::Error) {
    eprintln!("saga-bench: start of {id} sent again: {e}");
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let _conn = observe(&args, waiters.clone()).await?;
    // Idle connections are dropped before the server's keep-alive (5 s) closes them, so a
    // start is never sent on a connection the server is closing at that moment.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .pool_idle_timeout(Duration::from_secs(3))
        .build()?;
    let cpu0 = args.pid.and_then(proc_cpu_seconds);
    let groups0 = cpu_by_group();
    let machine0 = machine_jiffies();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    // Per finished saga: when it started (from `began`) and its latency in ms.
    let latencies = Arc::new(Mutex::new(Vec::<(Duration, f64)>::with_capacity(
        args.sagas,
    )));
    let transitions = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    let busy_by_second = Arc::new(Mutex::new(Vec::new()));
    let sampler = args
        .timeline
        .then(|| tokio::spawn(sample_busy_per_second(busy_by_second.clone())));
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
        let (args, http, waiters, latencies, transitions, failures, refusals) = (
            args.clone(),
            http.clone(),
            waiters.clone(),
            latencies.clone(),
            transitions.clone(),
            failures.clone(),
            refusals.clone(),
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
            // A start is idempotent (same saga_id and payload): one whose request failed
            // on the way (a connection closed under it) is sent again, twice at most.
            let mut attempts = 0;
            let refused = loop {
                attempts += 1;
                match http.post(format!("{base}/start")).json(&body).send().await {
                    Ok(r) if r.status() == 200 => break None,
                    Ok(r) => {
                        let status = r.status();
                        break Some(format!("{status} {}", r.text().await.unwrap_or_default()));
                    }
                    Err(e) if attempts < 3 => log_retry(&id, &e),
                    Err(e) => break Some(format!("request failed: {e}")),
                }
            };
            if let Some(why) = refused {
                // Told apart from sagas that started and never finished (`failed`): a
                // refused start is the HTTP side's answer, printed so that it can be read.
                if refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                    eprintln!("saga-bench: start of {id} refused: {why}");
                }
                return drop(permit);
            }
            if hold {
                return drop(permit);
            }
            match tokio::time::timeout(Duration::from_secs(120), rx).await {
                Ok(Ok(version)) => {
                    transitions.fetch_add(version, std::sync::atomic::Ordering::Relaxed);
                    if let Ok(mut l) = latencies.lock() {
                        l.push((
                            t0.duration_since(began),
                            t0.elapsed().as_secs_f64() * 1000.0,
                        ));
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
    let split = cpu_split(
        &groups0,
        &cpu_by_group(),
        args.sagas,
        machine0.zip(machine_jiffies()),
    );
    let finished = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let mut lat: Vec<f64> = finished.iter().map(|(_, ms)| *ms).collect();
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
        "workload={:?}{} sagas={} concurrency={}{} finished={} refused={} failed={} elapsed_s={:.2} sagas_per_s={:.0} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1} transitions_per_s={:.0} orchestrator_cpu_s={} peak_rss_mib={} rss_mib={} {}",
        args.workload,
        if args.label.is_empty() { String::new() } else { format!("[{}]", args.label) },
        args.sagas,
        args.concurrency,
        args.rate.map(|r| format!(" rate={r}")).unwrap_or_default(),
        done,
        refusals.load(std::sync::atomic::Ordering::Relaxed),
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
        split,
    );
    if let Some(sampler) = sampler {
        sampler.abort();
        let busy = busy_by_second.lock().map(|b| b.clone()).unwrap_or_default();
        for line in timeline(&finished, &busy) {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_groups_sagas_by_the_second_they_started_in_with_that_seconds_busy_share() {
        let ms = Duration::from_millis;
        let finished = [(ms(100), 10.0), (ms(900), 30.0), (ms(2_500), 5.0)];
        let lines = timeline(&finished, &[Some(91.4), None, Some(50.0)]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("t=   0s started=    2 p50_ms=30.0"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("max_ms=30.0 machine_busy_pct=91"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("t=   2s started=    1"), "{}", lines[1]);
        assert!(lines[1].ends_with("machine_busy_pct=50"), "{}", lines[1]);
    }

    #[test]
    fn the_busy_share_needs_time_to_have_passed() {
        assert_eq!(busy_pct((10, 100), (60, 200)), Some(50.0));
        assert_eq!(busy_pct((10, 100), (10, 100)), None);
    }
}
