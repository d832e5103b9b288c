//! The kit's two error types: a handler's [`StepError`] and the kit's own [`KitError`].

/// Why a handler's step did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The step failed for good: the handler's writes are rolled back, the error is
    /// recorded in the inbox and given to every re-send of the command.
    #[error("{0}")]
    Failed(String),
    /// A transient failure (a lock time-out, a gateway's 503): the whole transaction is
    /// rolled back, nothing is recorded, and the reply asks the orchestrator to send the
    /// command again (`"retryable": true`), which then runs again.
    #[error("{0}")]
    Retryable(String),
}

impl From<tokio_postgres::Error> for StepError {
    /// A database error inside the handler (`?` on a query), with PostgreSQL's own message
    /// and SQLSTATE. A data exception or an integrity constraint violation (SQLSTATE classes
    /// 22 and 23: a duplicate key, a check that fails, a value out of range) fails the step
    /// for good, as running it again would fail the same way; anything else (a lost
    /// connection, a deadlock, a serialization failure, a statement time-out) is transient.
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return StepError::Retryable(format!("database: {e}"));
        };
        let code = db.code().code();
        let text = format!("database: {} (SQLSTATE {code})", db.message());
        if code.starts_with("22") || code.starts_with("23") {
            StepError::Failed(text)
        } else {
            StepError::Retryable(text)
        }
    }
}

/// Why the kit could not process a command or talk to its servers.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// PostgreSQL reported an error (the transaction was not committed).
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built (a bad database URL).
    #[error("database pool: {0}")]
    BuildPool(#[from] deadpool_postgres::BuildError),
    /// The AMQP client reported an error.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused (nacked) the reply.
    #[error("the broker nacked the reply to {0}")]
    Nacked(String),
    /// The reply reached no queue (`reply_to` names no queue): it was returned.
    #[error("no queue {0}: the broker returned the reply")]
    Unroutable(String),
}

impl KitError {
    /// Worth retrying later (every variant but a bad configuration is).
    pub fn is_transient(&self) -> bool {
        !matches!(self, KitError::BuildPool(_))
    }
}
