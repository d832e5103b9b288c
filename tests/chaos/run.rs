//! The participant stubs and one run's resources (database, queues, effect logs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

/// A saga-stub process on one queue with an effect log.
pub struct Stub {
    child: Child,
}

impl Stub {
    /// With `extra` flags (e.g. `--retryable-error-rate`).
    pub fn start_with(
        names: &Names,
        step: usize,
        effects: &std::path::Path,
        delay_ms: u64,
        extra: &[&str],
    ) -> Stub {
        let child = Command::new(env!("CARGO_BIN_EXE_saga-stub"))
            .args([
                "--queue",
                &names.queue(step),
                "--service",
                &format!("s{step}"),
            ])
            .args(["--effects", effects.to_str().unwrap_or_default()])
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(extra)
            .env("SAGA_AMQP_URL", amqp_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn saga-stub");
        Stub { child }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run: names, database, definitions, stubs with effect logs; cleaned up on drop.
pub struct Run {
    /// The run's names.
    pub names: Names,
    /// One effect log per step's stub.
    pub effects: Vec<PathBuf>,
    /// The stubs (stopped on drop).
    pub stubs: Vec<Stub>,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Run {
    pub async fn new(delay_ms: u64) -> Run {
        Run::with_steps(delay_ms, 2_000, 5).await
    }

    /// Like [`Run::new`], with the steps' `timeout_ms` and `max_attempts`.
    pub async fn with_steps(delay_ms: u64, timeout_ms: u64, max_attempts: u32) -> Run {
        Run::shaped(3, delay_ms, &[], |names| {
            steps(names, 3, timeout_ms, max_attempts)
        })
        .await
    }

    /// A run of `n` steps on the definition `def` builds, its stubs started with `extra` flags.
    pub async fn shaped(
        n: usize,
        delay_ms: u64,
        extra: &[&str],
        def: impl FnOnce(&Names) -> saga_service::domain::SagaDefinition,
    ) -> Run {
        let names = Names::new();
        write_definitions(&names, &[def(&names)]);
        create_database(&names).await;
        let effects: Vec<PathBuf> = (1..=n)
            .map(|i| std::env::temp_dir().join(format!("{}-effects-{i}.log", names.prefix)))
            .collect();
        let stubs = (1..=n)
            .map(|i| Stub::start_with(&names, i, &effects[i - 1], delay_ms, extra))
            .collect();
        Run {
            names,
            effects,
            stubs,
            http: reqwest::Client::new(),
        }
    }

    /// Starts a saga, retrying the same id until the service answers 200 (idempotent).
    pub async fn start(&self, base: &str, id: Uuid, fail: Option<&str>) -> bool {
        let payload = match fail {
            Some(step) => json!({ "fail_steps": [step] }),
            None => json!({}),
        };
        let body = json!({"saga_id": id, "saga": self.names.saga, "payload": payload});
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .http
                .post(format!("{base}/start"))
                .json(&body)
                .send()
                .await
            {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until every saga is completed or compensated.
    pub async fn wait_finished(&self, n: usize, within: Duration) -> bool {
        wait_until(within, || async {
            let Ok((client, conn)) =
                tokio_postgres::connect(&self.names.db_url(), tokio_postgres::NoTls).await
            else {
                return false;
            };
            tokio::spawn(conn);
            client
                .query_one(
                    "SELECT count(*) FROM sagas WHERE status IN ('completed', 'compensated')",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) as usize == n)
                .unwrap_or(false)
        })
        .await
    }

    /// Checks the effect logs against the final statuses: exactly-once effects, one command_id per step.
    pub async fn check_effects(&self, fails: &BTreeMap<Uuid, usize>) {
        // (saga, step) -> command ids executed, compensations, errors
        let mut executed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut compensated: BTreeMap<(String, String), usize> = BTreeMap::new();
        for path in &self.effects {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for line in text.lines() {
                let parts: Vec<&str> = line.split(' ').collect();
                let [kind, cid, saga, step] = parts[..] else {
                    continue;
                };
                let key = (saga.to_string(), step.to_string());
                match kind {
                    "execute" => executed.entry(key).or_default().push(cid.to_string()),
                    "compensate" => *compensated.entry(key).or_default() += 1,
                    _ => {}
                }
            }
        }
        let db = db(&self.names).await;
        let rows = db
            .query("SELECT id, status, version FROM sagas", &[])
            .await
            .expect("sagas");
        for row in rows {
            let id: Uuid = row.get(0);
            let status: String = row.get(1);
            let version: i64 = row.get(2);
            let history: Vec<i64> = db
                .query(
                    "SELECT version FROM saga_events WHERE saga_id = $1 ORDER BY version",
                    &[&id],
                )
                .await
                .expect("history")
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(
                history,
                (1..=version).collect::<Vec<_>>(),
                "saga {id}: consecutive history versions"
            );
            let ran_until = fails.get(&id).copied().unwrap_or(4); // failing step index (1-based), 4 = none
            for step in 1..=3usize {
                let key = (id.to_string(), format!("s{step}"));
                let execs = executed.get(&key).cloned().unwrap_or_default();
                let comps = compensated.get(&key).copied().unwrap_or(0);
                let distinct: BTreeSet<&String> = execs.iter().collect();
                assert!(
                    distinct.len() <= 1,
                    "saga {id} s{step} executed under {} command_ids",
                    distinct.len()
                );
                if step < ran_until {
                    assert_eq!(
                        execs.len(),
                        1,
                        "saga {id} ({status}) s{step} executed {} times",
                        execs.len()
                    );
                    let want = usize::from(status == "compensated");
                    assert_eq!(
                        comps, want,
                        "saga {id} ({status}) s{step} compensated {comps} times"
                    );
                } else {
                    assert!(
                        execs.is_empty(),
                        "saga {id} s{step} ran after its saga failed at s{ran_until}"
                    );
                }
            }
            let expected = if ran_until == 4 {
                "completed"
            } else {
                "compensated"
            };
            assert_eq!(status, expected, "saga {id}");
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stubs.clear();
        for p in &self.effects {
            let _ = std::fs::remove_file(p);
        }
        let names = self.names.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_resources(&names));
            }
        })
        .join();
    }
}

/// A seed for [`Rng`] from the clock (printed by each test, so a run can be replayed).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1
}

/// A tiny deterministic PRNG (xorshift) so a failing run can be replayed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
