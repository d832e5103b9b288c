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
use crate::config::ClusterSettings;
use crate::store::{leases, queries, StoreError};

/// Sagas at version 1 this many seconds after their start are checked for a lost hand-over.
const UNADVANCED_AFTER_S: f64 = 10.0;

/// The state of the lease loop.
pub struct LeaseLoop {
    pool: Pool,
    env: Arc<Env>,
    registry: Addr<Registry>,
    settings: ClusterSettings,
    prefetch: u16,
    consumers: HashMap<u32, Consuming>,
    /// Partitions taken whose sagas could not be loaded yet.
    unloaded: Vec<u32>,
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
        LeaseLoop {
            pool,
            env,
            registry,
            settings,
            prefetch,
            consumers: HashMap::new(),
            unloaded: Vec::new(),
            rounds: 0,
        }
    }

    /// Runs until the service drains; `ready` fires after the first complete round (the
    /// partitions taken then are loaded and their commands re-sent).
    pub async fn run(mut self, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut failing = false;
        loop {
            if self.env.drain.is_draining() {
                return;
            }
            match self.round().await {
                Ok(()) => {
                    if failing {
                        log::info!("partition leases renewed again");
                        failing = false;
                    }
                    if self.unloaded.is_empty() {
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
            // The loop's period (or sooner when a fenced write was refused).
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_every) => {}
                _ = self.env.ownership.recheck_asked() => {}
            }
        }
    }

    async fn round(&mut self) -> Result<(), StoreError> {
        self.rounds += 1;
        let ownership = self.env.ownership.clone();
        let instance = ownership.instance().to_string();
        let n = ownership.partitions();
        let lease = self.settings.lease;
        let peers = leases::heartbeat(&self.pool, &instance, n, lease).await?;
        let held = ownership.held();
        let kept = leases::renew(&self.pool, &instance, &held, lease).await?;
        let lost: Vec<u32> = held
            .iter()
            .map(|&(p, _)| p)
            .filter(|p| !kept.contains(p))
            .collect();
        if !lost.is_empty() {
            log::warn!("partitions {lost:?} were taken over by another instance; dropping them");
            self.drop_partitions(&lost, "lost").await;
        }
        if let Some((other, theirs)) = &peers.mismatch {
            self.refresh_metrics();
            return Err(StoreError::Corrupt(format!(
                "instance {other} runs with SAGA_PARTITIONS={theirs} but this one with {n}: \
                 every instance on one database must use the same; taking no partitions"
            )));
        }
        let live = peers.live.max(1) as u32;
        let fair = n.div_ceil(live) as usize;
        if self.env.drain.is_draining() {
            return Ok(());
        }
        if kept.len() > fair {
            let mut mine = ownership.held();
            mine.sort_unstable();
            let surplus = mine.split_off(fair);
            let parts: Vec<u32> = surplus.iter().map(|&(p, _)| p).collect();
            log::info!("{live} instances live: handing back partitions {parts:?} (keeping {fair})");
            self.drop_partitions(&parts, "released").await;
            leases::release(&self.pool, &instance, &surplus).await?;
        } else if kept.len() < fair {
            let got =
                leases::acquire(&self.pool, &instance, &kept, fair - kept.len(), n, lease).await?;
            if !got.is_empty() {
                let parts: Vec<u32> = got.iter().map(|&(p, _)| p).collect();
                log::info!("took partitions {parts:?}");
                for &(p, epoch) in &got {
                    ownership.set(p, epoch);
                }
                self.env
                    .metrics
                    .partition_changes
                    .with_label_values(&["acquired"])
                    .inc_by(got.len() as u64);
                self.unloaded.extend(parts);
            }
        }
        self.load_taken().await?;
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

    /// Loads the unfinished sagas of newly taken partitions; they are registered, their
    /// timers armed and their pending commands re-sent (same `command_id`).
    async fn load_taken(&mut self) -> Result<(), StoreError> {
        let ownership = &self.env.ownership;
        self.unloaded.retain(|&p| ownership.epoch(p).is_some());
        if self.unloaded.is_empty() {
            return Ok(());
        }
        let parts: Vec<i32> = self.unloaded.iter().map(|&p| p as i32).collect();
        let states =
            queries::load_unfinished_in(&self.pool, &parts, ownership.partitions()).await?;
        let total = states.len();
        match self.registry.send(RehydrateSagas(states)).await {
            Ok(n) => {
                log::info!(
                    "rehydrated {n} of {total} unfinished sagas of partitions {:?}",
                    self.unloaded
                );
                self.unloaded.clear();
                Ok(())
            }
            Err(e) => Err(StoreError::Corrupt(format!("registry unreachable: {e}"))),
        }
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
        for p in parts {
            if let Some(c) = self.consumers.remove(p) {
                self.env.broker.cancel_partition(&c.consumer).await;
            }
        }
        let _ = self.registry.send(ReleasePartitions(parts.to_vec())).await;
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
    let held = env.ownership.held();
    for &(p, _) in &held {
        env.ownership.clear(p);
    }
    let parts: Vec<u32> = held.iter().map(|&(p, _)| p).collect();
    let _ = registry.send(ReleasePartitions(parts)).await;
    let instance = env.ownership.instance();
    if let Err(e) = leases::release(pool, instance, &held).await {
        log::warn!("handing back partitions on shutdown failed ({e}); they expire instead");
    }
    let _ = leases::leave(pool, instance).await;
}
