//! One saga as `GET /sagas/{id}` shows it: its row, one page of its history and one page
//! of its quarantined replies (latest first by default, older ones on request), so a saga
//! with a million transitions answers as fast as one with four.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::queries::{saga_row, SagaRow, ROW_COLUMNS};
use super::StoreError;

/// One history row as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryRow {
    /// Saga version after this transition.
    pub version: i64,
    /// What happened.
    pub event: String,
    /// Which step it concerned.
    pub step: Option<String>,
    /// Status after it.
    #[schema(value_type = crate::saga::Status)]
    pub status: String,
    /// Error text or reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// W3C `traceparent` of the message that caused it (the start request, a reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// When it was committed.
    pub at: DateTime<Utc>,
}

/// A reply kept against its saga because it could not be applied.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuarantineRow {
    /// Its position among the saga's quarantined replies (pass it as `quarantined_before`
    /// to see the ones before it).
    pub id: i64,
    /// Why it could not be applied.
    pub reason: String,
    /// The raw body (lossily decoded, at most 64 KiB).
    pub body: String,
    /// When it arrived.
    pub at: DateTime<Utc>,
}

/// One saga with its state and one page of its history (`GET /sagas/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaView {
    /// The row's columns.
    #[serde(flatten)]
    pub row: SagaRow,
    /// The start payload.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The full snapshot (steps, results, pending command).
    #[schema(value_type = Object)]
    pub state: Value,
    /// Transitions, oldest first: the latest `history_limit` (default 100), or those before
    /// `history_before`.
    pub history: Vec<HistoryRow>,
    /// Whether older transitions than the first of `history` exist (page back with
    /// `history_before` = its `version`).
    pub history_more: bool,
    /// How many transitions the saga has in all.
    pub history_total: i64,
    /// Replies for this saga that could not be applied (also dead-lettered), oldest first:
    /// the latest `quarantined_limit` (default 100), or those before `quarantined_before`.
    pub quarantined: Vec<QuarantineRow>,
    /// Whether older quarantined replies than the first of `quarantined` exist (page back
    /// with `quarantined_before` = its `id`).
    pub quarantined_more: bool,
    /// How many replies are quarantined for the saga in all.
    pub quarantined_total: i64,
    /// The history rows that date its steps (the start, each step's first `step_done`,
    /// each step's latest event), whatever page was asked for; not shown as such.
    #[serde(skip)]
    pub landmarks: Vec<HistoryRow>,
}

/// Which page of a saga's history and quarantined replies to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewPage {
    /// History rows at most.
    pub history_limit: i64,
    /// Only history rows with a version below this.
    pub history_before: Option<i64>,
    /// Quarantined replies at most.
    pub quarantined_limit: i64,
    /// Only quarantined replies with an id below this.
    pub quarantined_before: Option<i64>,
}

impl Default for ViewPage {
    /// The latest 100 of each.
    fn default() -> Self {
        ViewPage {
            history_limit: 100,
            history_before: None,
            quarantined_limit: 100,
            quarantined_before: None,
        }
    }
}

const HISTORY_COLUMNS: &str = "version, event, step, status, detail, at, traceparent";

fn history_row(r: &tokio_postgres::Row) -> HistoryRow {
    HistoryRow {
        version: r.get(0),
        event: r.get(1),
        step: r.get(2),
        status: r.get(3),
        detail: r.get(4),
        at: r.get(5),
        traceparent: r.get(6),
    }
}

/// Keeps the first `limit` of rows fetched newest first (one more than `limit` was asked
/// for), oldest first; says whether there were more.
fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    rows.reverse();
    (rows, more)
}

/// One saga with one page of its history and quarantined replies, if it exists.
pub async fn view(pool: &Pool, id: Uuid, p: ViewPage) -> Result<Option<SagaView>, StoreError> {
    let client = pool.get().await?;
    let row_sql = format!("SELECT {ROW_COLUMNS}, payload, state FROM sagas WHERE id = $1");
    let stmt = client.prepare_cached(&row_sql).await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    // Pages are read newest first from the (saga_id, version) and (saga_id, id) indexes,
    // one row more than asked, and turned oldest first.
    let history_sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM saga_events
          WHERE saga_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
    );
    let stmt = client.prepare_cached(&history_sql).await?;
    let before = p.history_before.unwrap_or(i64::MAX);
    let rows = client
        .query(&stmt, &[&id, &before, &(p.history_limit + 1)])
        .await?;
    let (history, history_more) = page(rows.iter().map(history_row).collect(), p.history_limit);
    let stmt = client
        .prepare_cached(
            "SELECT id, reason, body, at FROM saga_quarantine
              WHERE saga_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .await?;
    let before = p.quarantined_before.unwrap_or(i64::MAX);
    let rows = client
        .query(&stmt, &[&id, &before, &(p.quarantined_limit + 1)])
        .await?;
    let quarantined = rows
        .iter()
        .map(|r| QuarantineRow {
            id: r.get(0),
            reason: r.get(1),
            body: r.get(2),
            at: r.get(3),
        })
        .collect();
    let (quarantined, quarantined_more) = page(quarantined, p.quarantined_limit);
    let stmt = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM saga_events WHERE saga_id = $1),
                    (SELECT count(*) FROM saga_quarantine WHERE saga_id = $1)",
        )
        .await?;
    let totals = client.query_one(&stmt, &[&id]).await?;
    Ok(Some(SagaView {
        row: saga_row(&row),
        payload: row.get(8),
        state: row.get(9),
        history,
        history_more,
        history_total: totals.get(0),
        quarantined,
        quarantined_more,
        quarantined_total: totals.get(1),
        landmarks: landmarks(&client, id).await?,
    }))
}

/// The history rows that date a saga's steps (see `http::timeline::steps`): its `started`
/// row, the first `step_done` and the latest row of each step, oldest first. A few rows
/// whatever the length of the history, read with the history's primary key.
async fn landmarks(
    client: &deadpool_postgres::Client,
    id: Uuid,
) -> Result<Vec<HistoryRow>, StoreError> {
    let sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM (
             (SELECT {HISTORY_COLUMNS} FROM saga_events
               WHERE saga_id = $1 AND event = 'started' ORDER BY version LIMIT 1)
             UNION
             (SELECT DISTINCT ON (step) {HISTORY_COLUMNS} FROM saga_events
               WHERE saga_id = $1 AND event = 'step_done' ORDER BY step, version)
             UNION
             (SELECT DISTINCT ON (step) {HISTORY_COLUMNS} FROM saga_events
               WHERE saga_id = $1 AND step IS NOT NULL ORDER BY step, version DESC)
         ) marks ORDER BY version"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&id]).await?;
    Ok(rows.iter().map(history_row).collect())
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn a_page_read_newest_first_is_turned_oldest_first_and_says_whether_more_exist() {
        assert_eq!(page(vec![5, 4, 3], 2), (vec![4, 5], true));
        assert_eq!(page(vec![5, 4], 2), (vec![4, 5], false));
        assert_eq!(page(Vec::<i32>::new(), 2), (vec![], false));
    }
}
