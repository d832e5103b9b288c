//! Retention (CONTRACT.md section 4): deleting finished sagas with their history and
//! quarantined replies, trimming long-expired instance heartbeats, and the cheap counts of
//! the status gauges. The loop that calls these lives in `crate::housekeeping`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::StoreError;

/// The statuses a sweep deletes, one pass each: a saga in any other status (`running`,
/// `compensating`, `paused`, `failed`) is never deleted.
pub const DELETABLE: [&str; 2] = ["completed", "compensated"];

/// Where a pass over one status has got to: the last saga of the previous batch in
/// `(created_at, id)` order. The next batch starts after it, so a pass never walks again
/// over the index entries of rows it has just deleted (dead until vacuum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// `created_at` of the last saga seen.
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: Uuid,
}

impl Position {
    /// Before every saga: 0001-01-01 (within PostgreSQL's range, unlike chrono's minimum).
    pub fn start() -> Self {
        Position {
            created_at: DateTime::<Utc>::from_timestamp(-62_135_596_800, 0)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            id: Uuid::nil(),
        }
    }
}

/// What one batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows of `sagas`.
    pub sagas: u64,
    /// Rows of `saga_events` (their history).
    pub events: u64,
    /// Rows of `saga_quarantine` (their quarantined replies).
    pub quarantined: u64,
    /// Where the next batch of this pass starts; `None` when this batch found nothing, so
    /// the pass is over.
    pub next: Option<Position>,
}

/// Deletes up to `batch` sagas in `status` (one of [`DELETABLE`]) whose last transition
/// is more than `keep_s` seconds old (by the database's clock, which wrote `updated_at`),
/// after `from` in `(created_at, id)` order, with their history and quarantined replies:
/// one statement, so one short transaction.
///
/// Rows another transaction holds are skipped (`SKIP LOCKED`), never waited for; a later
/// sweep takes them. `updated_at >= created_at` (both are `now()` of their transaction),
/// so `created_at` is past the cut-off too for every expired saga: with it, the statement walks
/// `sagas_status_created_idx` (`sql/0001_init.sql`) from the oldest saga of that status
/// and leaves after one batch; no index of its own is needed, and none is maintained on
/// the hot path (README "Retention" has the plan).
pub async fn delete_expired_batch(
    pool: &Pool,
    status: &str,
    keep_s: f64,
    from: Position,
    batch: i64,
) -> Result<Deleted, StoreError> {
    let client = pool.get().await?;
    // `saga_outbox` is not touched: its rows stand alone (no reference to `sagas`) and the
    // relay deletes each once the broker confirmed it, so an event still waiting (a broker
    // outage longer than the retention) is announced even after its saga is gone.
    let stmt = client
        .prepare_cached(
            "WITH doomed AS (
                 SELECT id, created_at FROM sagas
                  WHERE status = $1
                    AND created_at < now() - make_interval(secs => $2)
                    AND updated_at < now() - make_interval(secs => $2)
                    AND (created_at, id) > ($3, $4)
                  ORDER BY created_at, id
                  LIMIT $5
                    FOR UPDATE SKIP LOCKED),
             q AS (DELETE FROM saga_quarantine q USING doomed d WHERE q.saga_id = d.id RETURNING 1),
             e AS (DELETE FROM saga_events e USING doomed d WHERE e.saga_id = d.id RETURNING 1),
             s AS (DELETE FROM sagas s USING doomed d WHERE s.id = d.id RETURNING 1)
             SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM e), (SELECT count(*) FROM q),
                    last.created_at, last.id
               FROM (SELECT 1) one
               LEFT JOIN LATERAL (SELECT created_at, id FROM doomed
                                   ORDER BY created_at DESC, id DESC LIMIT 1) last ON true",
        )
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[&status, &keep_s, &from.created_at, &from.id, &batch],
        )
        .await?;
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    let next = match (row.get(3), row.get(4)) {
        (Some(created_at), Some(id)) => Some(Position { created_at, id }),
        _ => None,
    };
    Ok(Deleted {
        sagas: count(0),
        events: count(1),
        quarantined: count(2),
        next,
    })
}

/// Deletes heartbeats of instances gone for more than a day (`saga_instances` gains a row
/// per instance name, and names change with every pod); returns how many.
pub async fn trim_instances(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("DELETE FROM saga_instances WHERE expires_at < now() - interval '1 day'")
        .await?;
    Ok(client.execute(&stmt, &[]).await?)
}

/// Exact counts of the statuses the partial indexes of unfinished sagas cover (`running`,
/// `compensating`, `failed`: `sagas_unfinished_idx`, `sql/0001_init.sql`): those few
/// rows are read from an index (their ranges of `sagas_status_created_idx`, index only,
/// or the partial one), never the table. Statuses with no saga are absent.
///
/// The list is literal, not a parameter, so that the planner can also prove a partial
/// index applies. PAUSED: when `paused` joins the partial indexes (another branch), add it
/// here and to `housekeeping::COUNTED`.
pub async fn count_unfinished(pool: &Pool) -> Result<Vec<(String, i64)>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT status, count(*) FROM sagas
              WHERE status IN ('running', 'compensating', 'paused', 'failed') GROUP BY status",
        )
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
