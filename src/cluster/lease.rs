//! The lease loop: every `SAGA_LEASE_RENEW_MS` this instance
//!
//! 1. records its heartbeat and counts the live instances (`saga_instances`);
//! 2. renews the leases it holds; one it no longer holds (taken after it expired) is
//!    dropped at once: its consumer is cancelled and its saga actors stop without writing;
//! 3. takes free or expired partitions up to its fair share, ⌈partitions / live instances⌉,
//!    loads their unfinished sagas, re-sends their pending commands and consumes their
//!    queues; or hands back what it holds beyond that share, for a newcomer to take;
//! 4. every tenth round, drives sagas of its partitions that were started on another
//!    instance and never advanced (a hand-over that was lost).
//!
//! Safety does not rest on timing: every snapshot write names the lease's epoch and is
//! refused once the partition changed hands (see `store::snapshots`).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use deadpool_postgres::Pool;

use crate::actors::messages::{EnsureLive, RehydrateSagas, ReleasePartitions};
use crate::actors::{Env, Registry, ReplyConsumer};
use crate::broker::PartitionConsumer;
use crate::cluster::Ownership;
use crate::config::ClusterSettings;
use crate::store::{leases, queries, StoreError};

/// Sagas at version 1 this many seconds after their start are checked for a lost hand-over.
const UNADVANCED_AFTER_S: f64 = 10.0;

/// The state of the lease loop.
pub struct LeaseLoop {
    /// A pool of its own (statements time out): the lease is never starved by HTTP
    /// listings, snapshot writers or reloads.
    pool: Pool,
    env: Arc<Env>,
    registry: Addr<Registry>,
    settings: ClusterSettings,
    prefetch: u16,
    consumers: HashMap<u32, Consuming>,
    /// Partitions taken whose sagas are not loaded yet.
    unloaded: Vec<u32>,
    /// Partitions whose sagas are being loaded, outside the renewal path.
    loading: Option<Vec<u32>>,
    loaded_tx: tokio::sync::mpsc::UnboundedSender<(Vec<u32>, bool)>,
    loaded_rx: tokio::sync::mpsc::UnboundedReceiver<(Vec<u32>, bool)>,
    rounds: u64,
}

impl LeaseLoop {
    /// A loop for this instance; nothing is held until it runs.
    pub fn new(
        pool: Pool,
        env: Arc<Env>,
        registry: Addr<Registry>,
        settings: ClusterSettings,
        prefetch: u16,
    ) -> Self {
        let (loaded_tx, loaded_rx) = tokio::sync::mpsc::unbounded_channel();
        LeaseLoop {
            pool,
            env,
            registry,
            settings,
            prefetch,
            consumers: HashMap::new(),
            unloaded: Vec::new(),
            loading: None,
            loaded_tx,
            loaded_rx,
            rounds: 0,
        }
    }

    /// Runs until the service drains; `ready` fires after the first complete round (the
    /// partitions taken then are loaded and their commands re-sent).
    pub async fn run(mut self, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut failing = false;
        // A round that hangs (a database that black-holes) must not outlive the lease.
        let round_limit = self.settings.lease / 2;
        loop {
            if self.env.drain.is_draining() {
                return;
            }
            let outcome = match tokio::time::timeout(round_limit, self.round()).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "lease round took longer than {round_limit:?}"
                ))),
            };
            match outcome {
                Ok(()) => {
                    if failing {
                        log::info!("partition leases renewed again");
                        failing = false;
                    }
                    if self.unloaded.is_empty() && self.loading.is_none() {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        log::warn!("partition leases: {e}; trying again every round");
                    }
                    failing = true;
                }
            }
            // Leases not renewed in time: stop acting on them before anyone can take them.
            let expired = self.env.ownership.expired();
            if !expired.is_empty() {
                log::warn!(
                    "partitions {expired:?}: lease not renewed in time; no longer acting on them"
                );
                self.drop_partitions(&expired, "expired").await;
            }
            // The loop's period (or sooner when a fenced write was refused, or a load ended).
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_every) => {}
                _ = self.env.ownership.recheck_asked() => {}
                done = self.loaded_rx.recv() => {
                    if let Some(done) = done {
                        self.loaded(done);
                    }
                }
            }
        }
    }

    /// A load of taken partitions ended (`ok`: every saga is registered).
    fn loaded(&mut self, (parts, ok): (Vec<u32>, bool)) {
        self.loading = None;
        if ok {
            self.unloaded.retain(|p| !parts.contains(p));
        }
    }

    async fn round(&mut self) -> Result<(), StoreError> {
        self.rounds += 1;
        while let Ok(done) = self.loaded_rx.try_recv() {
            self.loaded(done);
        }
        let ownership = self.env.ownership.clone();
        let instance = ownership.instance().to_string();
        let n = ownership.partitions();
        let lease = self.settings.lease;
        let sent = std::time::Instant::now();
        let Some(peers) =
            leases::heartbeat(&self.pool, &instance, ownership.incarnation(), n, lease).await?
        else {
            if !ownership.is_twin() {
                log::error!(
                    "SAGA_INSTANCE_ID {instance} is in use by another live process: taking no \
                     partitions until it has been silent for {lease:?}"
                );
            }
            ownership.set_twin(true);
            let mine: Vec<u32> = ownership.recorded().iter().map(|&(p, _)| p).collect();
            if !mine.is_empty() {
                self.drop_partitions(&mine, "lost").await;
            }
            return Ok(());
        };
        if ownership.is_twin() {
            log::info!("SAGA_INSTANCE_ID {instance} is free again: taking partitions");
            ownership.set_twin(false);
        }
        // A lease that lapsed locally is not renewed in place, even if nobody took it: its
        // sagas may have dropped timers or sends meanwhile (nothing is acted on past the local
        // expiry). It is dropped and taken back under a new epoch, which reloads its sagas.
        let lapsed = ownership.expired();
        if !lapsed.is_empty() {
            log::warn!("partitions {lapsed:?}: lease lapsed locally; reloading them");
            self.drop_partitions(&lapsed, "expired").await;
        }
        let held = ownership.recorded();
        let sent_renew = std::time::Instant::now();
        let kept = leases::renew(&self.pool, &instance, &held, lease).await?;
        ownership.extend(
            &kept,
            Ownership::lease_valid_until(sent_renew.min(sent), lease),
        );
        let lost: Vec<u32> = held
            .iter()
            .map(|&(p, _)| p)
            .filter(|p| !kept.contains(p))
            .collect();
        if !lost.is_empty() {
            log::warn!("partitions {lost:?} were taken over by another instance; dropping them");
            self.drop_partitions(&lost, "lost").await;
        }
        let mismatch = peers.mismatch.clone();
        if let Some((other, theirs)) = &mismatch {
            log::error!(
                "instance {other} runs with SAGA_PARTITIONS={theirs} but this one with {n}: \
                 every instance on one database must use the same; taking no more partitions"
            );
        }
        let live = peers.live.max(1) as u32;
        let fair = n.div_ceil(live) as usize;
        if self.env.drain.is_draining() {
            return Ok(());
        }
        if kept.len() > fair {
            let mut mine = ownership.held();
            mine.sort_unstable();
            let surplus = mine.split_off(fair.min(mine.len()));
            let parts: Vec<u32> = surplus.iter().map(|&(p, _)| p).collect();
            log::info!("{live} instances live: handing back partitions {parts:?} (keeping {fair})");
            self.drop_partitions(&parts, "released").await;
            leases::release(&self.pool, &instance, &surplus).await?;
        } else if kept.len() < fair && mismatch.is_none() {
            let sent_acquire = std::time::Instant::now();
            let got =
                leases::acquire(&self.pool, &instance, &kept, fair - kept.len(), n, lease).await?;
            if !got.is_empty() {
                let parts: Vec<u32> = got.iter().map(|&(p, _)| p).collect();
                log::info!("took partitions {parts:?}");
                for &(p, epoch) in &got {
                    ownership.set(p, epoch);
                }
                ownership.extend(&parts, Ownership::lease_valid_until(sent_acquire, lease));
                self.env
                    .metrics
                    .partition_changes
                    .with_label_values(&["acquired"])
                    .inc_by(got.len() as u64);
                self.unloaded.extend(parts);
            }
        }
        self.load_taken();
        self.ensure_consumers().await;
        if self.rounds.is_multiple_of(10) {
            self.drive_unadvanced().await?;
        }
        self.refresh_metrics();
        Ok(())
    }

    fn refresh_metrics(&self) {
        self.env
            .metrics
            .partitions_held
            .set(self.env.ownership.held().len() as i64);
    }

    /// Loads the unfinished sagas of newly taken partitions on a task of its own (a
    /// partition of many sagas must not hold up the next renewal); they are registered,
    /// their pending commands re-sent (same `command_id`) and their timers armed.
    fn load_taken(&mut self) {
        let ownership = self.env.ownership.clone();
        self.unloaded.retain(|&p| ownership.epoch(p).is_some());
        if self.unloaded.is_empty() || self.loading.is_some() {
            return;
        }
        let parts = self.unloaded.clone();
        let epochs: Vec<(u32, i64)> = parts
            .iter()
            .filter_map(|&p| ownership.epoch(p).map(|e| (p, e)))
            .collect();
        self.loading = Some(parts.clone());
        // The main pool: loading is the work of the service, not of the lease.
        let pool = self.env.writer.pool().clone();
        let env = self.env.clone();
        let registry = self.registry.clone();
        let done = self.loaded_tx.clone();
        actix::spawn(async move {
            let ok = match load_partitions(&pool, &env, &registry, &epochs).await {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("loading the sagas of partitions {parts:?} failed: {e}; next round");
                    false
                }
            };
            let _ = done.send((parts, ok));
        });
    }

    /// Consumes the queue of every held partition on the current connection: one never
    /// consumed yet, one whose consumer stopped (the broker deleted its queue, cancelled it
    /// or closed its channel) and every one after a reconnection. Each queue is declared
    /// again first, and a closed channel reopened.
    async fn ensure_consumers(&mut self) {
        let broker = &self.env.broker;
        let generation = broker.generation();
        if generation == 0 {
            return;
        }
        let mut stopped = Vec::new();
        self.consumers.retain(|&p, c| {
            let running = c.is_running(generation);
            if !running && c.consumer.generation() == generation {
                stopped.push(p);
            }
            running
        });
        if !stopped.is_empty() {
            stopped.sort_unstable();
            log::warn!("the consumers of partitions {stopped:?} stopped; declaring and consuming their queues again");
        }
        let wanted: Vec<u32> = self
            .env
            .ownership
            .held()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !self.unloaded.contains(p) && !self.consumers.contains_key(p))
            .collect();
        let (started, failed) = broker.consume_partitions(&wanted, self.prefetch).await;
        for (p, stream, consumer) in started {
            let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
            ReplyConsumer::new(
                self.env.clone(),
                self.registry.clone(),
                stream,
                stopped_tx,
                Some(p),
            )
            .start();
            self.consumers.insert(p, Consuming { consumer, stopped });
        }
        if let Some((p, e)) = failed {
            log::warn!("consuming the queue of partition {p} failed: {e}; next round");
        }
    }

    /// Stops driving partitions: no new writes under their leases, their consumers
    /// cancelled, their actors stopped.
    async fn drop_partitions(&mut self, parts: &[u32], change: &str) {
        for &p in parts {
            self.env.ownership.clear(p);
        }
        // The registry first: were the round cut short while the broker hangs, the sagas
        // must still be forgotten here (a later take-over reloads them from scratch).
        let _ = self.registry.send(ReleasePartitions(parts.to_vec())).await;
        for p in parts {
            if let Some(c) = self.consumers.remove(p) {
                let cancel = self.env.broker.cancel_partition(&c.consumer);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), cancel).await;
            }
        }
        self.env
            .metrics
            .partition_changes
            .with_label_values(&[change])
            .inc_by(parts.len() as u64);
    }

    /// Drives sagas of held partitions that were started elsewhere and never advanced.
    async fn drive_unadvanced(&self) -> Result<(), StoreError> {
        let parts: Vec<i32> = self
            .env
            .ownership
            .held()
            .iter()
            .map(|&(p, _)| p as i32)
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        let n = self.env.ownership.partitions();
        for id in queries::unadvanced_in(&self.pool, &parts, n, UNADVANCED_AFTER_S).await? {
            self.registry.do_send(EnsureLive(id));
        }
        Ok(())
    }
}

/// Loads the unfinished sagas of `parts` (and any definition version not known here yet)
/// and registers them with the registry.
async fn load_partitions(
    pool: &Pool,
    env: &Env,
    registry: &Addr<Registry>,
    epochs: &[(u32, i64)],
) -> Result<(), StoreError> {
    let parts: Vec<u32> = epochs.iter().map(|&(p, _)| p).collect();
    let ids: Vec<i32> = parts.iter().map(|&p| p as i32).collect();
    let states = queries::load_unfinished_in(pool, &ids, env.ownership.partitions()).await?;
    let versions: std::collections::BTreeSet<(String, i32)> = states
        .iter()
        .map(|s| (s.saga.clone(), s.definition_version))
        .collect();
    for (name, version) in versions {
        env.catalog.fetch(pool, &name, version).await?;
    }
    // Loaded under these leases: if one changed hands (or was dropped and taken again)
    // meanwhile, these snapshots may be stale; the partition is loaded again.
    if epochs
        .iter()
        .any(|&(p, e)| env.ownership.epoch(p) != Some(e))
    {
        return Err(StoreError::NotOwner(uuid::Uuid::nil()));
    }
    let total = states.len();
    let n = registry
        .send(RehydrateSagas(states))
        .await
        .map_err(|e| StoreError::Corrupt(format!("registry unreachable: {e}")))?;
    log::info!("rehydrated {n} of {total} unfinished sagas of partitions {parts:?}");
    Ok(())
}

/// A partition queue's consumer: its broker handle, and the signal of its actor's end.
struct Consuming {
    consumer: PartitionConsumer,
    /// Fires (or is dropped) when the consumer actor stopped: its stream ended.
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Consuming {
    /// Whether it still takes deliveries on connection `generation`.
    fn is_running(&mut self, generation: u64) -> bool {
        self.consumer.generation() == generation
            && matches!(
                self.stopped.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            )
    }
}

/// Hands every held partition back and removes this instance's heartbeat (on shutdown,
/// after in-flight work has settled), so the others take over at once.
pub async fn leave(pool: &Pool, env: &Env, registry: &Addr<Registry>) {
    let held = env.ownership.recorded();
    for &(p, _) in &held {
        env.ownership.clear(p);
    }
    let parts: Vec<u32> = held.iter().map(|&(p, _)| p).collect();
    let _ = registry.send(ReleasePartitions(parts)).await;
    let instance = env.ownership.instance();
    if let Err(e) = leases::release(pool, instance, &held).await {
        log::warn!("handing back partitions on shutdown failed ({e}); they expire instead");
    }
    let _ = leases::leave(pool, instance, env.ownership.incarnation()).await;
}
