//! # saga-participant: participants of saga-service with exactly-once effects
//!
//! A participant consumes its command queue (CONTRACT.md section 3) and, for each
//! command, in **one transaction of its own PostgreSQL database**:
//!
//! 1. claims the `command_id` in the table `saga_inbox` (`INSERT .. ON CONFLICT DO
//!    NOTHING`: a second, concurrent delivery of the same command waits for the first and
//!    then reads its outcome; a repeat gets the recorded outcome and never runs again);
//! 2. takes a lock on `(saga_id, step)`, so the execute and the compensate of one step
//!    never interleave, and checks the step's other half: an execute after a recorded
//!    compensate is answered `error` without running (the fence), a compensate of a step
//!    never executed here is recorded and answered `done` without running;
//! 3. runs your [`Handler`] with that transaction, records its outcome next to its writes,
//!    and commits. A [`StepError::Failed`] undoes the handler's writes and records the
//!    error; a [`StepError::Retryable`] rolls everything back, records nothing, and asks
//!    the orchestrator to send the command again (`"retryable": true`).
//!
//! Then it publishes the reply to `reply_to` (`correlation_id` = `command_id`,
//! persistent, mandatory, publisher confirms) and acks the command only once the broker
//! confirmed the reply. A command whose transaction or reply fails is handed back to the
//! broker and answered from the inbox when it comes again. Lost connections to RabbitMQ
//! are reopened with back-off; the database pool reconnects by itself.
//!
//! ```no_run
//! use saga_participant::{migrate, pool, Command, Config, Handler, Participant, StepError, Transaction};
//! use serde_json::{json, Value};
//!
//! struct Payments;
//!
//! impl Handler for Payments {
//!     async fn handle(&self, tx: &Transaction<'_>, cmd: &Command) -> Result<Value, StepError> {
//!         let amount = cmd.payload["amount"].as_i64().unwrap_or(0);
//!         match cmd.action {
//!             saga_participant::Action::Execute => {
//!                 if amount <= 0 {
//!                     return Err(StepError::Failed("nothing to charge".into()));
//!                 }
//!                 tx.execute(
//!                     "INSERT INTO payments (saga_id, amount, status) VALUES ($1, $2, 'charged')",
//!                     &[&cmd.saga_id, &amount],
//!                 )
//!                 .await?;
//!                 Ok(json!({"charged": amount}))
//!             }
//!             saga_participant::Action::Compensate => {
//!                 tx.execute("UPDATE payments SET status = 'refunded' WHERE saga_id = $1", &[&cmd.saga_id])
//!                     .await?;
//!                 Ok(json!({"refunded": true}))
//!             }
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), saga_participant::KitError> {
//! let pool = pool("postgres://postgres@127.0.0.1/payments", 8)?;
//! migrate(&pool).await?;
//! let config = Config::new("amqp://guest:guest@127.0.0.1:5672/%2f", "payments");
//! Participant::new(config, pool, Payments).run().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod acks;
mod amqp;
mod command;
mod error;
mod inbox;
mod participant;

pub use command::{Action, Command, Outcome};
pub use deadpool_postgres::{Pool, Transaction};
pub use error::{KitError, StepError};
pub use inbox::{migrate, SCHEMA};
pub use participant::{Config, Handler, Inbox, Participant, Processor};

/// A pool of connections to `database_url` (`postgres://user@host:port/db`, no TLS) of
/// at most `size` connections; connections are opened on demand and replaced when lost.
pub fn pool(database_url: &str, size: usize) -> Result<Pool, KitError> {
    let config: tokio_postgres::Config = database_url.parse()?;
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}
