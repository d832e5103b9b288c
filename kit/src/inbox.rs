//! The inbox: the only module that speaks SQL. One command is one transaction of the
//! participant's database, holding the handler's writes and the command's outcome together.

use deadpool_postgres::{Pool, Transaction};
use serde_json::{json, Value};

use crate::command::{Action, Command, Outcome};
use crate::error::{KitError, StepError};
use crate::Handler;

/// The inbox table, created by [`migrate`] (idempotent).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS saga_inbox (
    command_id text PRIMARY KEY,
    saga_id    text NOT NULL,
    step       text NOT NULL,
    action     text NOT NULL,
    status     text NOT NULL,
    output     jsonb,
    error      text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS saga_inbox_step ON saga_inbox (saga_id, step, action);
";

/// Creates the `saga_inbox` table and its index in the pool's database if they do not
/// exist ([`SCHEMA`]; run it with your own migrations instead if you prefer).
pub async fn migrate(pool: &Pool) -> Result<(), KitError> {
    pool.get().await?.batch_execute(SCHEMA).await?;
    Ok(())
}

/// Claims `cmd` in the inbox; returns the recorded outcome of an earlier delivery, if any.
/// Blocks while another transaction holds the same `command_id` (a concurrent delivery)
/// and then reads what it recorded.
async fn claim(tx: &Transaction<'_>, cmd: &Command) -> Result<Option<Outcome>, KitError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO saga_inbox (command_id, saga_id, step, action, status)
             VALUES ($1, $2, $3, $4, 'running') ON CONFLICT (command_id) DO NOTHING",
        )
        .await?;
    let action = cmd.action.as_str();
    let claimed = tx
        .execute(
            &insert,
            &[&cmd.command_id, &cmd.saga_id, &cmd.step, &action],
        )
        .await?;
    if claimed == 1 {
        return Ok(None);
    }
    let select = tx
        .prepare_cached("SELECT status, output, error FROM saga_inbox WHERE command_id = $1")
        .await?;
    let row = tx.query_one(&select, &[&cmd.command_id]).await?;
    let status: String = row.try_get(0)?;
    let output: Option<Value> = row.try_get(1)?;
    let error: Option<String> = row.try_get(2)?;
    Ok(Some(match status.as_str() {
        "done" => Outcome::Done(output.unwrap_or_else(|| json!({}))),
        _ => Outcome::Error(error.unwrap_or_default()),
    }))
}

/// Serialises the execute and compensate of one step (a transaction-scoped advisory lock on
/// `(saga_id, step)`), then tells whether the other action of the step is recorded: for an
/// execute, a compensate (the fence); for a compensate, a successful execute.
async fn other_half_recorded(tx: &Transaction<'_>, cmd: &Command) -> Result<bool, KitError> {
    let lock = tx
        .prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0))",
        )
        .await?;
    tx.execute(&lock, &[&cmd.saga_id, &cmd.step]).await?;
    let (action, status) = match cmd.action {
        Action::Execute => ("compensate", "done"),
        Action::Compensate => ("execute", "done"),
    };
    let exists = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM saga_inbox
              WHERE saga_id = $1 AND step = $2 AND action = $3 AND status = $4)",
        )
        .await?;
    let row = tx
        .query_one(&exists, &[&cmd.saga_id, &cmd.step, &action, &status])
        .await?;
    Ok(row.try_get(0)?)
}

async fn record(tx: &Transaction<'_>, cmd: &Command, outcome: &Outcome) -> Result<(), KitError> {
    let (status, output, error) = match outcome {
        Outcome::Done(v) => ("done", Some(v), None),
        Outcome::Error(e) | Outcome::Retryable(e) => ("error", None, Some(e.as_str())),
    };
    let update = tx
        .prepare_cached(
            "UPDATE saga_inbox SET status = $2, output = $3, error = $4, at = now()
              WHERE command_id = $1",
        )
        .await?;
    tx.execute(&update, &[&cmd.command_id, &status, &output, &error])
        .await?;
    Ok(())
}

/// Processes one command in one transaction: the recorded outcome of a repeat, a fenced
/// execute's error, a compensate-before-execute's fence, or the handler's work and its
/// outcome committed together. A retryable error rolls everything back.
pub(crate) async fn process<H: Handler>(
    pool: &Pool,
    handler: &H,
    cmd: &Command,
) -> Result<Outcome, KitError> {
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    if let Some(recorded) = claim(&tx, cmd).await? {
        tx.commit().await?;
        return Ok(recorded);
    }
    let other = other_half_recorded(&tx, cmd).await?;
    let outcome = match (cmd.action, other) {
        (Action::Execute, true) => Outcome::Error(format!(
            "step {} was compensated before it ran: not run",
            cmd.step
        )),
        // Never executed here (or its execute failed): nothing to undo. The recorded
        // compensate fences a later execute of the step.
        (Action::Compensate, false) => Outcome::Done(json!({"fenced": true})),
        (Action::Execute, false) | (Action::Compensate, true) => {
            // A savepoint: a failed step's writes are undone, its outcome still recorded.
            let step = tx.savepoint("saga_step").await?;
            match handler.handle(&step, cmd).await {
                Ok(output) => {
                    step.commit().await?;
                    Outcome::Done(output)
                }
                Err(StepError::Failed(e)) => {
                    step.rollback().await?;
                    Outcome::Error(e)
                }
                Err(StepError::Retryable(e)) => {
                    drop(step);
                    tx.rollback().await?;
                    return Ok(Outcome::Retryable(e));
                }
            }
        }
    };
    record(&tx, cmd, &outcome).await?;
    tx.commit().await?;
    Ok(outcome)
}
