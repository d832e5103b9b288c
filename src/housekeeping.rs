//! Background upkeep of the database, done by one instance at a time: the holder of
//! partition 0 (see [`crate::cluster`]). Two instances may both believe they hold it for
//! a moment around a hand-over; both loops are safe to overlap (a deleted row is deleted
//! once, `SKIP LOCKED` keeps them off each other's rows), so no further lock is taken.
//!
//! - The retention sweep (CONTRACT.md section 4): every min(60 s, retention / 2), delete
//!   completed and compensated sagas idle longer than `SAGA_RETENTION`, with their history
//!   and quarantined replies, in batches of [`BATCH`] sagas, each its own short
//!   transaction; and trim instance heartbeats gone for a day.
//! - The status gauges `saga_sagas{status}`: exact counts of the statuses a partial index
//!   covers, every 15 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use crate::app_state::Drain;
use crate::cluster::Ownership;
use crate::domain::Retention;
use crate::metrics::Metrics;
use crate::store::retention::{self, Position, DELETABLE};
use crate::store::StoreError;

/// Sagas deleted per statement: with their ~4-8 history rows, a few thousand rows and some
/// tens of milliseconds per transaction.
pub const BATCH: i64 = 1_000;

/// How often the status gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(15);

/// The statuses `saga_sagas` counts, as [`retention::count_unfinished`] does.
const COUNTED: [&str; 4] = ["running", "compensating", "paused", "failed"];

/// What the sweep needs; cloned into its task.
#[derive(Clone)]
pub struct Housekeeping {
    /// The database.
    pub pool: Pool,
    /// Which partitions this instance holds (it sweeps while it holds partition 0).
    pub ownership: Arc<Ownership>,
    /// Where deletions are counted.
    pub metrics: Metrics,
    /// Shutdown: the loops stop when the service drains.
    pub drain: Arc<Drain>,
}

impl Housekeeping {
    /// Whether this instance is the one that sweeps and counts.
    fn in_charge(&self) -> bool {
        self.ownership.epoch(0).is_some() && !self.drain.is_draining()
    }

    /// Sweeps every `retention.sweep_every()` while this instance holds partition 0.
    pub async fn run_retention(self, retention: Retention) {
        let every = retention.sweep_every();
        log::info!("retention: finished sagas kept {retention}; checked every {every:?}");
        while !self.drain.is_draining() {
            if self.in_charge() {
                if let Err(e) = self.sweep(retention).await {
                    log::warn!("retention sweep failed: {e}; trying again in {every:?}");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One sweep: every expired saga of each deletable status, batch after batch, then the
    /// instance heartbeats. Stops early when partition 0 changes hands or the service drains.
    pub async fn sweep(&self, retention: Retention) -> Result<(), StoreError> {
        let instances = retention::trim_instances(&self.pool).await?;
        self.count("saga_instances", instances);
        let Some(keep) = retention.keep() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut total = retention::Deleted::default();
        for status in DELETABLE {
            let mut from = Position::start();
            while self.in_charge() {
                let batch_started = Instant::now();
                let d = retention::delete_expired_batch(
                    &self.pool,
                    status,
                    keep.as_secs_f64(),
                    from,
                    BATCH,
                )
                .await?;
                self.count("sagas", d.sagas);
                self.count("saga_events", d.events);
                self.count("saga_quarantine", d.quarantined);
                total.sagas += d.sagas;
                total.events += d.events;
                total.quarantined += d.quarantined;
                match d.next {
                    Some(next) if d.sagas >= BATCH as u64 => from = next,
                    _ => break,
                }
                // Paced: as long a rest as the batch took, so a backlog is worked off on at
                // most half of one connection and transitions keep their share of the database.
                tokio::time::sleep(batch_started.elapsed()).await;
            }
        }
        if total.sagas > 0 {
            log::info!(
                "retention: deleted {} sagas, {} history rows and {} quarantined replies idle over {retention} in {} ms",
                total.sagas,
                total.events,
                total.quarantined,
                started.elapsed().as_millis()
            );
        }
        Ok(())
    }

    fn count(&self, table: &str, n: u64) {
        if n > 0 {
            self.metrics
                .retention_deleted
                .with_label_values(&[table])
                .inc_by(n);
        }
    }

    /// Keeps `saga_sagas{status}` up to date on the holder of partition 0; the other
    /// instances export no such series, so a sum over instances is the count.
    pub async fn run_status_gauges(self) {
        let gauge = &self.metrics.sagas_by_status;
        while !self.drain.is_draining() {
            if !self.in_charge() {
                gauge.reset();
            } else {
                match retention::count_unfinished(&self.pool).await {
                    Ok(counts) => {
                        for status in COUNTED {
                            let n = counts
                                .iter()
                                .find(|(s, _)| s == status)
                                .map_or(0, |(_, n)| *n);
                            gauge.with_label_values(&[status]).set(n);
                        }
                    }
                    Err(e) => log::debug!("status gauges not refreshed: {e}"),
                }
            }
            tokio::time::sleep(GAUGE_EVERY).await;
        }
    }
}
