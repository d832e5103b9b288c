//! Reads: snapshots for rehydration, the paginated list (one saga: `saga_view`).

pub use super::saga_view::{view, HistoryRow, QuarantineRow, SagaView, ViewPage};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::StoreError;
use crate::saga::SagaState;

/// Decodes a stored snapshot.
fn decode(id: Uuid, state: Value) -> Result<SagaState, StoreError> {
    serde_json::from_value::<SagaState>(state)
        .map(SagaState::upgraded)
        .map_err(|e| StoreError::Corrupt(format!("saga {id}: {e}")))
}

/// The snapshot of one saga, if it exists.
pub async fn load(pool: &Pool, id: Uuid) -> Result<Option<SagaState>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT state FROM sagas WHERE id = $1")
        .await?;
    match client.query_opt(&stmt, &[&id]).await? {
        Some(row) => Ok(Some(decode(id, row.get(0))?)),
        None => Ok(None),
    }
}

/// The snapshot of one saga, if it exists, provided `instance` still holds its partition
/// under `fence`'s epoch (`NotOwner` otherwise): a saga is only resumed by its owner.
pub async fn load_owned(
    pool: &Pool,
    id: Uuid,
    instance: &str,
    fence: crate::cluster::Fence,
) -> Result<Option<SagaState>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT s.state, EXISTS (SELECT 1 FROM saga_partitions p
                     WHERE p.partition = $2 AND p.epoch = $3 AND p.owner = $4)
               FROM sagas s WHERE s.id = $1",
        )
        .await?;
    match client
        .query_opt(&stmt, &[&id, &fence.partition, &fence.epoch, &instance])
        .await?
    {
        Some(row) if row.get::<_, bool>(1) => Ok(Some(decode(id, row.get(0))?)),
        Some(_) => Err(StoreError::NotOwner(id)),
        None => Ok(None),
    }
}

/// Every unfinished saga of some partitions (out of `n`).
pub async fn load_unfinished_in(
    pool: &Pool,
    partitions: &[i32],
    n: u32,
) -> Result<Vec<SagaState>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, state FROM sagas
              WHERE status IN ('running', 'compensating', 'paused', 'failed')
                AND saga_partition(id, $2) = ANY($1)",
            &[&partitions, &(n as i32)],
        )
        .await?;
    Ok(decode_drivable(rows))
}

/// The snapshots of `(id, state)` rows. One that does not decode must not keep the other
/// sagas from being driven: it is logged (and shows on `GET /sagas/{id}`) and left for an
/// operator.
fn decode_drivable(rows: Vec<tokio_postgres::Row>) -> Vec<SagaState> {
    rows.into_iter()
        .filter_map(|row| {
            let id: Uuid = row.get(0);
            match decode(id, row.get(1)) {
                Ok(state) => Some(state),
                Err(e) => {
                    log::error!("saga={id} step=- snapshot does not decode, not driven: {e}");
                    None
                }
            }
        })
        .collect()
}

/// Running sagas of some partitions started in the last ten minutes that have not moved
/// for `idle_s` seconds since their start: those whose hand-over to this owner may have
/// been lost (see `cluster::lease`).
pub async fn unadvanced_in(
    pool: &Pool,
    partitions: &[i32],
    n: u32,
    idle_s: f64,
) -> Result<Vec<Uuid>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id FROM sagas
              WHERE status = 'running' AND version = 1
                AND created_at > now() - interval '10 minutes'
                AND created_at < now() - $3 * interval '1 second'
                AND saga_partition(id, $2) = ANY($1)",
            &[&partitions, &(n as i32), &idle_s],
        )
        .await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}

/// One saga as the list shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaRow {
    /// UUID.
    pub saga_id: Uuid,
    /// Base62 code.
    pub code: String,
    /// Type.
    pub saga: String,
    /// Definition version it runs on.
    pub definition_version: i32,
    /// Status.
    #[schema(value_type = crate::saga::Status)]
    pub status: String,
    /// Current step or null.
    pub step: Option<String>,
    /// Transitions so far.
    pub version: i64,
    /// Start time.
    pub created_at: DateTime<Utc>,
    /// Last transition time.
    pub updated_at: DateTime<Utc>,
}

/// Body bytes kept in quarantine at most.
const QUARANTINE_BODY_MAX: usize = 64 * 1024;

/// Records a reply against a saga, if the saga exists; returns whether it does.
pub async fn quarantine(
    pool: &Pool,
    saga_id: Uuid,
    reason: &str,
    body: &[u8],
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let kept = &body[..body.len().min(QUARANTINE_BODY_MAX)];
    // PostgreSQL text cannot hold NUL bytes.
    let text = String::from_utf8_lossy(kept).replace('\0', "\u{FFFD}");
    let n = client
        .execute(
            "INSERT INTO saga_quarantine (saga_id, reason, body) SELECT id, $2, $3 FROM sagas WHERE id = $1",
            &[&saga_id, &reason, &text],
        )
        .await?;
    Ok(n == 1)
}

/// The columns [`saga_row`] reads, in its order.
pub(super) const ROW_COLUMNS: &str =
    "id, saga, definition_version, status, step, version, created_at, updated_at";

/// A [`SagaRow`] from a row of [`ROW_COLUMNS`].
pub(super) fn saga_row(row: &tokio_postgres::Row) -> SagaRow {
    let id: Uuid = row.get(0);
    SagaRow {
        saga_id: id,
        code: crate::domain::SagaId(id).code(),
        saga: row.get(1),
        definition_version: row.get(2),
        status: row.get(3),
        step: row.get(4),
        version: row.get(5),
        created_at: row.get(6),
        updated_at: row.get(7),
    }
}

/// Keyset position in the list: the last row seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its `created_at`, in microseconds since the epoch.
    pub created_at_us: i64,
    /// Its id.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form given to clients as `next`.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at_us,
            crate::domain::SagaId(self.id).code()
        )
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (ts, code) = s.split_once('_')?;
        let created_at_us: i64 = ts.parse().ok()?;
        // Sagas are created after 1970 and before the year 9999: anything else is no cursor of ours.
        let ts = DateTime::<Utc>::from_timestamp_micros(created_at_us)?;
        if created_at_us < 0 || ts.format("%Y").to_string().len() > 4 {
            return None;
        }
        Some(Cursor {
            created_at_us,
            id: crate::domain::SagaId::parse_any(code).ok()?.0,
        })
    }
}

/// Filters of `GET /sagas`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this type.
    pub saga: Option<String>,
    /// Only sagas created after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only sagas created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only unfinished sagas with no transition since this time ("stuck").
    pub idle_since: Option<DateTime<Utc>>,
    /// At most this many rows.
    pub limit: i64,
    /// Rows after this position.
    pub after: Option<Cursor>,
}

/// Newest first, filtered, one page; the cursor of the next page if there may be one.
///
/// Only the predicates a request uses are in the statement (each a fixed fragment with
/// a parameter), so PostgreSQL plans each shape on an index it walks in list order and
/// leaves after one page: `(created_at, id)` and `(status|saga, created_at, id)`
/// (`sql/0001_init.sql`); for a type with an unfinished status, and for stuck sagas, the
/// partial `(saga, created_at, id)` and `(created_at, id)` indexes of unfinished sagas
/// (`sql/0005_list_indexes.sql`), from the idle time on (no index looks at `updated_at`,
/// so that a step's update is HOT: `sql/0011_hot_updates.sql`). `scripts/list-bench.sh` times each shape at a
/// million rows and shows its plan.
pub async fn list(
    pool: &Pool,
    f: &ListFilter,
) -> Result<(Vec<SagaRow>, Option<Cursor>), StoreError> {
    let client = pool.get().await?;
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
    let mut add = |clause: &str, value: Box<dyn tokio_postgres::types::ToSql + Sync + Send>| {
        params.push(value);
        clauses.push(clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(status) = &f.status {
        add("status = ?", Box::new(status.clone()));
    }
    if let Some(saga) = &f.saga {
        add("saga = ?", Box::new(saga.clone()));
    }
    if let Some(t) = f.created_after {
        add("created_at > ?", Box::new(t));
    }
    if let Some(t) = f.created_before {
        add("created_at < ?", Box::new(t));
    }
    if let Some(t) = f.idle_since {
        add(
            "updated_at < ? AND status IN ('running', 'compensating', 'paused', 'failed')",
            Box::new(t),
        );
        // A saga idle since `t` was created before `t` (both times are the database's
        // `now()`, the creation's first); an hour's slack covers a clock stepped back. The
        // walk of the unfinished sagas' `(created_at, id)` index then starts at `t` instead
        // of at the newest one: with nobody idle that long it reads nothing.
        add("created_at < ?", Box::new(t + chrono::Duration::hours(1)));
    }
    if let Some(c) = f.after {
        if let Some(ts) = DateTime::<Utc>::from_timestamp_micros(c.created_at_us) {
            add("(created_at, id) < (?, ", Box::new(ts));
            let last = clauses.len() - 1;
            params.push(Box::new(c.id));
            clauses[last].push_str(&format!("${})", params.len()));
        }
    }
    params.push(Box::new(f.limit));
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM sagas {where_sql} ORDER BY created_at DESC, id DESC LIMIT ${}",
        params.len()
    );
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &refs).await?;
    let rows: Vec<SagaRow> = rows.iter().map(saga_row).collect();
    let next = if rows.len() as i64 == f.limit {
        rows.last().map(|r| Cursor {
            created_at_us: r.created_at.timestamp_micros(),
            id: r.saga_id,
        })
    } else {
        None
    };
    Ok((rows, next))
}

/// How many sagas are in each status (an index-only scan of the status index).
pub async fn count_by_status(pool: &Pool) -> Result<Vec<(String, i64)>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query("SELECT status, count(*) FROM sagas GROUP BY status", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The committed version and snapshot of a saga, if it exists (to settle an ambiguous commit).
pub async fn load_version(pool: &Pool, id: Uuid) -> Result<Option<(i64, Value)>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT version, state FROM sagas WHERE id = $1", &[&id])
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The event of a saga's history row at `version`, if it is written.
pub async fn event_at(pool: &Pool, id: Uuid, version: i64) -> Result<Option<String>, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached("SELECT event FROM saga_events WHERE saga_id = $1 AND version = $2")
        .await?;
    let row = client.query_opt(&stmt, &[&id, &version]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether the saga has a history row after `version` with one of `events`.
pub async fn event_after(
    pool: &Pool,
    id: Uuid,
    version: i64,
    events: &[&str],
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM saga_events
                             WHERE saga_id = $1 AND version > $2 AND event = ANY($3))",
        )
        .await?;
    let row = client.query_one(&stmt, &[&id, &version, &events]).await?;
    Ok(row.get(0))
}
