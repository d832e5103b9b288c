//! The outbox of lifecycle events (`sql/0009_outbox_incarnation.sql`): rows are written by
//! the snapshot writer in the transition's own transaction; the relay claims a batch, has
//! the broker confirm each, and deletes those confirmed.

use deadpool_postgres::Pool;
use serde_json::Value;

use super::StoreError;

/// One event waiting to be announced.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its row id.
    pub id: i64,
    /// `<saga>.<status>`.
    pub routing_key: String,
    /// The event's JSON body.
    pub body: Value,
}

/// Claims up to `limit` events (skipping those another instance is publishing), hands them
/// to `publish`, which returns the ids the broker confirmed, and deletes those, all in one
/// transaction: an event is deleted only once confirmed, and a crash in between leaves it
/// to be published again (at least once). Returns (claimed, deleted).
pub async fn relay_batch<F, Fut>(
    pool: &Pool,
    limit: i64,
    publish: F,
) -> Result<(usize, usize), StoreError>
where
    F: FnOnce(Vec<OutboxRow>) -> Fut,
    Fut: std::future::Future<Output = Vec<i64>>,
{
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached(
            "SELECT id, routing_key, body FROM saga_outbox
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let rows: Vec<OutboxRow> = tx
        .query(&stmt, &[&limit])
        .await?
        .into_iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            routing_key: r.get(1),
            body: r.get(2),
        })
        .collect();
    let claimed = rows.len();
    if claimed == 0 {
        return Ok((0, 0));
    }
    let confirmed = publish(rows).await;
    if !confirmed.is_empty() {
        let del = tx
            .prepare_cached("DELETE FROM saga_outbox WHERE id = ANY($1)")
            .await?;
        tx.execute(&del, &[&confirmed]).await?;
    }
    tx.commit().await?;
    Ok((claimed, confirmed.len()))
}

/// Events not yet announced (for the `saga_outbox_pending` gauge).
pub async fn pending(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT count(*) FROM saga_outbox", &[])
        .await?;
    Ok(row.get(0))
}
