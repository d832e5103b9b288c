//! Snapshots: the start insert and the group-committing writer of transitions.
//!
//! Every transition rewrites the saga's row with `version + 1`, guarded by the
//! expected version, and appends one `saga_events` row, in one transaction.
//! The writer gathers the transitions of many saga actors into one statement
//! (group commit); each actor is answered only once its own row is committed.

use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::{RawJson, StoreError};
use crate::cluster::Fence;
use crate::saga::{Record, SagaState};

/// One transition to persist.
#[derive(Debug)]
pub struct SnapshotWrite {
    /// The saga.
    pub id: Uuid,
    /// Its new version (the row must be at `version - 1`).
    pub version: i64,
    /// Its new status.
    pub status: &'static str,
    /// Its current step's name.
    pub step: Option<String>,
    /// The full state as JSON.
    pub state: RawJson,
    /// The history row.
    pub record: Record,
    /// The lease it is written under: refused once that lease has changed hands.
    pub fence: Fence,
    /// The `traceparent` of the message that caused it, for the history row.
    pub traceparent: Option<String>,
    /// An operator's write must commit before this instant or never (the statement checks
    /// the database's clock).
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// A lifecycle event to announce: (routing key, body), written to `saga_outbox` in the
    /// same transaction and published by the relay (at least once).
    pub announce: Option<(String, Value)>,
}

impl SnapshotWrite {
    /// Builds the write for a state and the record of the transition that led to it.
    pub fn new(
        state: &SagaState,
        step: Option<String>,
        record: Record,
        fence: Fence,
    ) -> Result<Self, StoreError> {
        let json = RawJson::of(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(SnapshotWrite {
            id: state.saga_id,
            version: state.version,
            status: state.status.as_str(),
            step,
            state: json,
            record,
            fence,
            traceparent: None,
            deadline: None,
            announce: None,
        })
    }
}

struct Job {
    write: Arc<SnapshotWrite>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle to the snapshot writer tasks; cheap to clone.
#[derive(Clone)]
pub struct SnapshotWriter {
    pool: Pool,
    jobs: mpsc::UnboundedSender<Job>,
    starts: mpsc::UnboundedSender<StartJob>,
}

/// Whose leases the writes are fenced by.
type Instance = Arc<str>;

/// What `POST /start` found when it tried to insert the saga.
#[derive(Debug)]
pub enum InsertOutcome {
    /// A new saga was stored.
    Inserted,
    /// The id was taken already.
    Exists(StartConflict),
    /// Nothing was stored: a newer version of the saga's definition exists (stored by a
    /// `PUT` this instance has not heard of yet); start it again on the latest version.
    Outdated,
}

/// The stored saga that holds an id.
#[derive(Debug)]
pub struct StartConflict {
    /// Its type.
    pub saga: String,
    /// Its payload.
    pub payload: Value,
    /// Its status.
    pub status: String,
}

// The fence locks the lease row (FOR KEY SHARE): a take-over (`leases::acquire` locks the
// row FOR UPDATE) waits for a batch in flight, or the batch waits for the take-over and then
// finds the epoch changed. Renewals (non-key updates) do not conflict with it. Each
// partition of the batch is locked once (`fence`, a locking CTE, evaluated once), not once
// per transition; a row whose partition's epoch or owner changed joins no fence row and is
// not written.
const UPDATE_BATCH: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[],
                         $6::text[], $7::text[], $8::text[], $9::int[], $10::bigint[],
                         $12::text[], $13::timestamptz[], $14::text[], $15::jsonb[])
        AS t(id, version, status, step, state, event, event_step, detail, part, epoch, trace,
             deadline, okey, obody)
), fence AS (
    SELECT p.partition, p.epoch FROM saga_partitions p
     WHERE p.owner = $11
       AND (p.partition, p.epoch) IN (SELECT DISTINCT part, epoch FROM input)
       FOR KEY SHARE
), upd AS (
    UPDATE sagas s
       SET version = i.version, status = i.status, step = i.step, state = i.state, updated_at = now()
      FROM input i JOIN fence f ON f.partition = i.part AND f.epoch = i.epoch
     WHERE s.id = i.id AND s.version = i.version - 1
       AND (i.deadline IS NULL OR clock_timestamp() < i.deadline)
    RETURNING s.id
), ev AS (
    INSERT INTO saga_events (saga_id, version, event, step, status, detail, traceparent)
    SELECT i.id, i.version, i.event, i.event_step, i.status, i.detail, i.trace
      FROM input i JOIN upd u ON u.id = i.id
), ob AS (
    INSERT INTO saga_outbox (saga_id, routing_key, body)
    SELECT i.id, i.okey, i.obody
      FROM input i JOIN upd u ON u.id = i.id
     WHERE i.okey IS NOT NULL
)
SELECT id FROM upd";

// A saga is stored only while its definition version is the latest of its type: a version
// stored (committed) before this statement began makes it insert nothing and answer
// `outdated`, so a start that follows a `PUT /definitions/{name}` always runs the new version,
// however late this instance's notification of it is. The check is one probe of the
// primary key of `saga_definitions` per start. Starts are inserted in batches (one statement,
// one commit for every start waiting), no two with the same id in one batch.
const INSERT_STARTS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[],
                         $6::jsonb[], $7::jsonb[], $8::text[], $9::text[])
        AS t(id, saga, dv, status, step, payload, state, event, trace)
), newer AS (
    SELECT i.id, EXISTS (SELECT 1 FROM saga_definitions d
                          WHERE d.name = i.saga AND d.version > i.dv) AS outdated
      FROM input i
), ins AS (
    INSERT INTO sagas (id, saga, definition_version, status, version, step, payload, state)
    SELECT i.id, i.saga, i.dv, i.status, 1, i.step, i.payload, i.state
      FROM input i JOIN newer n ON n.id = i.id
     WHERE NOT n.outdated
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), ev AS (
    INSERT INTO saga_events (saga_id, version, event, step, status, traceparent)
    SELECT i.id, 1, i.event, i.step, i.status, i.trace FROM input i JOIN ins ON ins.id = i.id
)
SELECT n.id, EXISTS (SELECT 1 FROM ins WHERE ins.id = n.id), n.outdated FROM newer n";

/// What one start's insert found, before a taken id is looked up.
#[derive(Debug, Clone, Copy)]
enum StartFound {
    Stored,
    Taken,
    Outdated,
}

/// One start to insert.
struct StartRow {
    id: Uuid,
    saga: String,
    definition_version: i32,
    status: &'static str,
    step: Option<String>,
    payload: Value,
    state: RawJson,
    event: String,
    trace: Option<String>,
}

struct StartJob {
    row: StartRow,
    done: oneshot::Sender<Result<StartFound, StoreError>>,
}

impl SnapshotWriter {
    /// Starts `writers` tasks that each commit up to `batch` transitions per transaction,
    /// each guarded by the version and by `instance`'s lease on the saga's partition.
    pub fn spawn(pool: Pool, writers: usize, batch: usize, instance: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let instance: Instance = Arc::from(instance);
        for _ in 0..writers {
            let pool = pool.clone();
            let rx = rx.clone();
            let instance = instance.clone();
            // Supervised: a writer that panics is started again (the transitions of its batch
            // see their answer dropped, which their actors retry as a transient failure).
            tokio::spawn(supervise("snapshot writer", move || {
                write_loop(pool.clone(), rx.clone(), batch, instance.clone())
            }));
        }
        let (starts, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise("start writer", {
            let pool = pool.clone();
            let rx = Arc::new(Mutex::new(rx));
            move || start_loop(pool.clone(), rx.clone(), batch)
        }));
        SnapshotWriter {
            pool,
            jobs: tx,
            starts,
        }
    }

    /// The pool it writes with.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Commits one transition; resolves once it is durable.
    pub async fn save(&self, write: Arc<SnapshotWrite>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { write, done })
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Stores a new saga at version 1 with its `started` history row, unless its id is taken
    /// or its definition version is no longer the latest of its type.
    pub async fn insert_started(
        &self,
        state: &SagaState,
        record: &Record,
    ) -> Result<InsertOutcome, StoreError> {
        let json = RawJson::of(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let row = StartRow {
            id: state.saga_id,
            saga: state.saga.clone(),
            definition_version: state.definition_version,
            status: state.status.as_str(),
            step: record.step.clone(),
            payload: state.payload.clone(),
            state: json,
            event: record.event.clone(),
            trace: state.traceparent.clone(),
        };
        let (done, wait) = oneshot::channel();
        self.starts
            .send(StartJob { row, done })
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await.map_err(|_| StoreError::WriterGone)?? {
            StartFound::Stored => Ok(InsertOutcome::Inserted),
            StartFound::Outdated => Ok(InsertOutcome::Outdated),
            StartFound::Taken => {
                let client = self.pool.get().await?;
                let existing = client
                    .query_opt(
                        "SELECT saga, payload, status FROM sagas WHERE id = $1",
                        &[&state.saga_id],
                    )
                    .await?;
                match existing {
                    Some(row) => Ok(InsertOutcome::Exists(StartConflict {
                        saga: row.get(0),
                        payload: row.get(1),
                        status: row.get(2),
                    })),
                    // Inserted by someone else and gone again: only a manual delete does that.
                    None => Err(StoreError::Conflict(state.saga_id)),
                }
            }
        }
    }
}

/// What each job of a failed batch is answered: worth retrying (the database is away) or
/// not, with the batch's error text.
fn batch_error(e: &StoreError) -> impl Fn() -> StoreError {
    let transient = e.is_transient();
    let text = e.to_string();
    move || {
        if transient {
            StoreError::Unavailable(text.clone())
        } else {
            StoreError::Batch(text.clone())
        }
    }
}

/// Runs the task `make` builds until it returns, starting it again whenever it panics.
async fn supervise<F, Fut>(what: &'static str, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(e) => log::error!("{what} stopped ({e}); starting it again"),
        }
    }
}

/// Inserts the starts waiting, up to `batch` at a time, in one statement each.
async fn start_loop(pool: Pool, rx: Arc<Mutex<mpsc::UnboundedReceiver<StartJob>>>, batch: usize) {
    let mut rx = rx.lock().await;
    // A start whose id is in the batch being gathered waits for the next one.
    let mut carried: Option<StartJob> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut ids = std::collections::HashSet::from([first.row.id]);
        let mut jobs = vec![first];
        while jobs.len() < batch {
            match rx.try_recv() {
                Ok(job) if ids.insert(job.row.id) => jobs.push(job),
                Ok(job) => {
                    carried = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        let rows: Vec<&StartRow> = jobs.iter().map(|j| &j.row).collect();
        match insert_starts(&pool, &rows).await {
            Err(e) if !e.is_transient() && jobs.len() > 1 => {
                // One bad row fails the statement: insert each alone, so only it fails.
                log::warn!(
                    "start batch of {} failed ({e}); inserting one by one",
                    jobs.len()
                );
                for job in jobs {
                    let result = insert_starts(&pool, &[&job.row]).await.and_then(|found| {
                        found
                            .first()
                            .map(|(_, inserted)| *inserted)
                            .ok_or(StoreError::Conflict(job.row.id))
                    });
                    let _ = job.done.send(result);
                }
            }
            Ok(found) => {
                let found: std::collections::HashMap<Uuid, StartFound> =
                    found.into_iter().collect();
                for job in jobs {
                    let result = found
                        .get(&job.row.id)
                        .copied()
                        .ok_or(StoreError::Conflict(job.row.id));
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                log::warn!("start batch of {} failed: {e}", jobs.len());
                let err = batch_error(&e);
                for job in jobs {
                    let _ = job.done.send(Err(err()));
                }
            }
        }
    }
}

/// Inserts `rows` in one statement; returns what became of each, in no particular order.
async fn insert_starts(
    pool: &Pool,
    rows: &[&StartRow],
) -> Result<Vec<(Uuid, StartFound)>, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let sagas: Vec<&str> = rows.iter().map(|r| r.saga.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.definition_version).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let steps: Vec<Option<&str>> = rows.iter().map(|r| r.step.as_deref()).collect();
    let payloads: Vec<&Value> = rows.iter().map(|r| &r.payload).collect();
    let states: Vec<&RawJson> = rows.iter().map(|r| &r.state).collect();
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.trace.as_deref()).collect();
    let client = pool.get().await?;
    let stmt = client.prepare_cached(INSERT_STARTS).await?;
    let found = client
        .query(
            &stmt,
            &[
                &ids, &sagas, &versions, &statuses, &steps, &payloads, &states, &events, &traces,
            ],
        )
        .await?;
    Ok(found
        .iter()
        .map(|r| {
            let inserted = if r.get::<_, bool>(1) {
                StartFound::Stored
            } else if r.get::<_, bool>(2) {
                StartFound::Outdated
            } else {
                StartFound::Taken
            };
            (r.get::<_, Uuid>(0), inserted)
        })
        .collect())
}

async fn write_loop(
    pool: Pool,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    batch: usize,
    instance: Instance,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        match commit_batch(&pool, &jobs, &instance).await {
            Err(e) if !e.is_transient() && jobs.len() > 1 => {
                // One bad row fails the whole statement: commit each on its own so that
                // only the culprit gets the error.
                log::warn!(
                    "snapshot batch of {} failed ({e}); committing one by one",
                    jobs.len()
                );
                for job in jobs {
                    let result = commit_batch(&pool, std::slice::from_ref(&job), &instance).await;
                    settle(vec![job], result);
                }
            }
            result => settle(jobs, result),
        }
    }
}

/// Answers each job of a committed (or failed) batch.
fn settle(jobs: Vec<Job>, result: Result<Vec<Uuid>, StoreError>) {
    match result {
        Ok(committed) => {
            let committed: std::collections::HashSet<Uuid> = committed.into_iter().collect();
            for job in jobs {
                let result = if committed.contains(&job.write.id) {
                    Ok(())
                } else if job.write.deadline.is_some_and(|d| chrono::Utc::now() >= d) {
                    Err(StoreError::DeadlinePassed)
                } else {
                    Err(StoreError::Conflict(job.write.id))
                };
                let _ = job.done.send(result);
            }
        }
        Err(e) => {
            log::warn!("snapshot batch of {} failed: {e}", jobs.len());
            let err = batch_error(&e);
            for job in jobs {
                let _ = job.done.send(Err(err()));
            }
        }
    }
}

async fn commit_batch(pool: &Pool, jobs: &[Job], instance: &str) -> Result<Vec<Uuid>, StoreError> {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut steps = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut event_steps = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut deadlines = Vec::with_capacity(n);
    let mut okeys = Vec::with_capacity(n);
    let mut obodies = Vec::with_capacity(n);
    for job in jobs {
        let w = &job.write;
        ids.push(w.id);
        versions.push(w.version);
        statuses.push(w.status);
        steps.push(w.step.as_deref());
        states.push(&w.state);
        events.push(w.record.event.as_str());
        event_steps.push(w.record.step.as_deref());
        details.push(w.record.detail.as_deref());
        partitions.push(w.fence.partition);
        epochs.push(w.fence.epoch);
        traces.push(w.traceparent.as_deref());
        deadlines.push(w.deadline);
        okeys.push(w.announce.as_ref().map(|(k, _)| k.as_str()));
        obodies.push(w.announce.as_ref().map(|(_, b)| b));
    }
    let client = pool.get().await?;
    let stmt = client.prepare_cached(UPDATE_BATCH).await?;
    // One statement is one implicit transaction: all rows of the batch commit together.
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &versions,
                &statuses,
                &steps,
                &states,
                &events,
                &event_steps,
                &details,
                &partitions,
                &epochs,
                &instance,
                &traces,
                &deadlines,
                &okeys,
                &obodies,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, Uuid>(0)).collect())
}
