//! What the cluster fault tests share: instances with short leases, a plan of sagas
//! started on whichever instance answers, signals aimed at one child, metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use saga_service::cluster::partition_of;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;
use crate::run::{Rng, Run};

/// `SAGA_LEASE_MS` of the cluster tests: short, so that a test outlasts several leases.
pub const LEASE_MS: u64 = 3_000;
/// `SAGA_LEASE_RENEW_MS` of the cluster tests.
pub const RENEW_MS: u64 = 500;

/// One lease.
pub fn lease() -> Duration {
    Duration::from_millis(LEASE_MS)
}

/// The environment of an instance `id` with short leases, on `db_url` when given (e.g.
/// through a proxy), plus `more`.
pub fn cluster_env(id: &str, db_url: Option<&str>, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("SAGA_INSTANCE_ID".to_string(), id.to_string()),
        ("SAGA_LEASE_MS".into(), LEASE_MS.to_string()),
        ("SAGA_LEASE_RENEW_MS".into(), RENEW_MS.to_string()),
    ];
    if let Some(url) = db_url {
        env.push(("SAGA_DATABASE_URL".into(), url.to_string()));
    }
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Starts an instance `id` with short leases (on `db_url` when given) and waits until it
/// is ready.
pub async fn instance(run: &Run, id: &str, db_url: Option<&str>) -> ChildApp {
    let env = cluster_env(id, db_url, &[]);
    ChildApp::start_with(&run.names, &run.http, &borrowed(&env)).await
}

/// Starts an instance (with `more` environment) without waiting for it to be ready.
pub fn spawn_instance(
    run: &Run,
    id: &str,
    db_url: Option<&str>,
    more: &[(&str, &str)],
) -> ChildApp {
    let env = cluster_env(id, db_url, more);
    ChildApp::spawn_with(&run.names, &borrowed(&env))
}

/// Sends `signal` to the child's own pid (never a process group).
pub fn signal(app: &ChildApp, signal: libc::c_int) {
    let pid = app.pid() as libc::pid_t;
    assert!(pid > 0, "a child pid");
    // SAFETY: kill(2) has no memory effects; the pid is our own child's.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "signal {signal} to pid {pid}");
}

/// Waits until the partitions are spread over exactly `ids`, each with at least a fair
/// share less 8, all 64 held.
pub async fn wait_spread(names: &Names, ids: &[&str], within: Duration) -> bool {
    let floor = (64 / ids.len() as i64).saturating_sub(8);
    poll_until(within, Duration::from_millis(100), || async {
        let h = lease_holders(names).await;
        h.len() == ids.len()
            && h.values().sum::<i64>() == 64
            && ids.iter().all(|id| h.get(*id).is_some_and(|&n| n >= floor))
    })
    .await
}

/// `(labels, value)` of every sample of the metric `name` on an instance.
pub async fn samples(http: &reqwest::Client, base: &str, name: &str) -> Vec<(String, f64)> {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return Vec::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Partitions an instance says it dropped: `saga_partition_changes_total` of every change
/// but `acquired` and `released` (today `lost`; a lease that expired locally counts too,
/// whatever its label).
pub async fn partitions_dropped(http: &reqwest::Client, base: &str) -> f64 {
    samples(http, base, "saga_partition_changes_total")
        .await
        .iter()
        .filter(|(l, _)| !l.contains("\"acquired\"") && !l.contains("\"released\""))
        .map(|(_, v)| v)
        .sum()
}

/// An HTTP client whose requests give up after 3 s (an instance may hang or be frozen).
pub fn impatient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client")
}

/// The sagas of a test: ids in start order, and which step each failing one fails at.
pub struct Plan {
    rng: Rng,
    http: reqwest::Client,
    /// Every saga started, in order.
    pub ids: Vec<Uuid>,
    /// Failing sagas: the step (1-based) their payload makes fail.
    pub fails: BTreeMap<Uuid, usize>,
    /// Starts that no instance accepted within 90 s.
    pub refused: usize,
}

impl Plan {
    /// A plan drawn from `seed`.
    pub fn new(seed: u64) -> Plan {
        Plan {
            rng: Rng(seed | 1),
            http: impatient(),
            ids: Vec::new(),
            fails: BTreeMap::new(),
            refused: 0,
        }
    }

    /// Starts `n` new sagas (one in 10 failing at a random step), 30 at a time, spread over
    /// `bases`: each goes to the next base that answers 200 (a start is idempotent).
    pub async fn start(&mut self, run: &Run, bases: &[String], n: usize) {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        self.start_ids(run, bases, ids).await;
    }

    /// Like [`Plan::start`], with ids of one partition (of 64).
    pub async fn start_in_partition(&mut self, run: &Run, bases: &[String], n: usize, p: u32) {
        let ids: Vec<Uuid> = std::iter::repeat_with(Uuid::new_v4)
            .filter(|id| partition_of(id, 64) == p)
            .take(n)
            .collect();
        self.start_ids(run, bases, ids).await;
    }

    async fn start_ids(&mut self, run: &Run, bases: &[String], ids: Vec<Uuid>) {
        let mut batch = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            let fail = (self.rng.below(10) == 0).then(|| 1 + self.rng.below(3) as usize);
            if let Some(k) = fail {
                self.fails.insert(id, k);
            }
            self.ids.push(id);
            batch.push((id, fail, i));
        }
        for chunk in batch.chunks(30) {
            let starts = chunk.iter().map(|&(id, fail, i)| {
                let payload = match fail {
                    Some(k) => json!({ "fail_steps": [format!("s{k}")] }),
                    None => json!({}),
                };
                let body = json!({"saga_id": id, "saga": run.names.saga, "payload": payload});
                start_anywhere(&self.http, bases, body, i)
            });
            let ok = futures_util::future::join_all(starts).await;
            self.refused += ok.iter().filter(|ok| !**ok).count();
        }
    }
}

/// Posts a start to the bases in turn, from `first`, until one answers 200 (90 s at most).
async fn start_anywhere(
    http: &reqwest::Client,
    bases: &[String],
    body: serde_json::Value,
    first: usize,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = first;
    while Instant::now() < deadline {
        let base = &bases[i % bases.len()];
        if let Ok(r) = http.post(format!("{base}/start")).json(&body).send().await {
            if r.status() == 200 {
                return true;
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sagas not yet `completed` or `compensated` (None when the database does not answer).
pub async fn unfinished(names: &Names) -> Option<i64> {
    let (client, conn) = tokio_postgres::connect(&names.db_url(), tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM sagas WHERE status NOT IN ('completed', 'compensated')",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Waits until every saga is finished; returns how long that took, or None past `within`.
pub async fn wait_all_finished(names: &Names, within: Duration) -> Option<Duration> {
    let from = Instant::now();
    poll_until(within, Duration::from_millis(250), || async {
        unfinished(names).await == Some(0)
    })
    .await
    .then(|| from.elapsed())
}

/// Polls `check` every `every` until it returns true or `within` passes.
pub async fn poll_until<F, Fut>(within: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether `/readiness` answers `status` with a body containing `text`.
pub async fn readiness_is(http: &reqwest::Client, base: &str, status: u16, text: &str) -> bool {
    match http.get(format!("{base}/readiness")).send().await {
        Ok(r) => r.status() == status && r.text().await.unwrap_or_default().contains(text),
        Err(_) => false,
    }
}

/// What `/readiness` answers now, for a report.
pub async fn readiness(http: &reqwest::Client, base: &str) -> String {
    match http.get(format!("{base}/readiness")).send().await {
        Ok(r) => format!(
            "{} {}",
            r.status().as_u16(),
            r.text().await.unwrap_or_default()
        ),
        Err(e) => format!("no answer ({e})"),
    }
}
