//! The outbox relay: publishes the lifecycle events that snapshot transactions wrote to
//! `saga_outbox`, and deletes each once the broker confirmed it. Woken by every commit that
//! wrote one, and every second regardless (for events left by a crash or an outage).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::store::outbox::{self, OutboxRow};

/// Most events published per transaction.
const BATCH: i64 = 500;

/// Runs until the process ends.
pub async fn run(pool: Pool, broker: Broker, wake: Arc<Notify>, metrics: Metrics) {
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        loop {
            let broker = broker.clone();
            let result = outbox::relay_batch(&pool, BATCH, |rows| publish(broker, rows)).await;
            match result {
                Ok((claimed, deleted)) => {
                    metrics.events_announced.inc_by(deleted as u64);
                    if claimed == 0 {
                        delay = Duration::from_millis(100);
                        break;
                    }
                    if deleted < claimed {
                        // The broker refused or is away: keep them, try again later.
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        break;
                    }
                    delay = Duration::from_millis(100);
                }
                Err(e) => {
                    log::warn!("outbox relay: {e}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

/// Publishes every row at once (confirms pipelined); returns the ids confirmed.
async fn publish(broker: Broker, rows: Vec<OutboxRow>) -> Vec<i64> {
    let sends = rows.iter().map(|row| {
        let broker = &broker;
        async move {
            let body = serde_json::to_vec(&row.body).ok()?;
            broker
                .announce(&row.routing_key, &body)
                .await
                .ok()
                .map(|()| row.id)
        }
    });
    join_all(sends).await.into_iter().flatten().collect()
}
