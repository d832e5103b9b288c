//! The only module that speaks SQL: pool, migrations, definitions, snapshots, history, queries.

mod definitions;
mod definitions_listener;
pub mod leases;
mod migrations;
pub mod outbox;
pub mod queries;
mod raw_json;
pub mod retention;
mod saga_view;
pub mod secret;
mod snapshots;
pub mod tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

pub use definitions::{
    latest_all, load as load_definition, put_definition, register_definitions, DefinitionCatalog,
};
pub use definitions_listener::listen as listen_for_definitions;
pub use migrations::{migrate, MIGRATIONS};
pub use queries::{Cursor, HistoryRow, ListFilter, QuarantineRow, SagaRow, SagaView, ViewPage};
pub use raw_json::RawJson;
pub use snapshots::{InsertOutcome, SnapshotWrite, SnapshotWriter, StartConflict};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL answered with an error, or the connection broke.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The saga's row is not at the version the write expected: someone else moved it.
    #[error("saga {0} is not at the expected version")]
    Conflict(uuid::Uuid),
    /// A stored snapshot or definition does not decode.
    #[error("stored data does not decode: {0}")]
    Corrupt(String),
    /// The snapshot writer is gone (the service is shutting down).
    #[error("snapshot writer stopped")]
    WriterGone,
    /// A batch this write was part of failed on a transient error (database unreachable).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A batch this write was part of failed for good.
    #[error("snapshot batch failed: {0}")]
    Batch(String),
    /// This instance does not hold the lease of the saga's partition (any more).
    #[error("saga {0} belongs to a partition this instance does not hold")]
    NotOwner(uuid::Uuid),
    /// An operator's transition was not committed before its deadline; the database
    /// refuses it from then on, so it never takes effect.
    #[error("database did not commit the action in time; nothing was done")]
    DeadlinePassed,
}

impl StoreError {
    /// Worth retrying after a back-off: the database is unreachable or restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_)
            | StoreError::WriterGone
            | StoreError::Unavailable(_)
            | StoreError::DeadlinePassed => true,
            StoreError::Postgres(e) => {
                if e.is_closed() {
                    return true;
                }
                match e.code() {
                    Some(code) => {
                        let c = code.code();
                        // connection (08), resources (53: disk full, too many connections),
                        // operator intervention (57: shutdown, statement time-out),
                        // read-only transaction (25006: a demoted primary), and
                        // serialization or deadlock (40001, 40P01).
                        c.starts_with("08")
                            || c.starts_with("53")
                            || c.starts_with("57")
                            || c == "25006"
                            || c == "40001"
                            || c == "40P01"
                    }
                    // No SQLSTATE: an I/O or protocol error on the way.
                    None => true,
                }
            }
            StoreError::Conflict(_)
            | StoreError::Corrupt(_)
            | StoreError::Batch(_)
            | StoreError::NotOwner(_) => false,
        }
    }
}

/// The lease loop's own small pool: its statements time out well within the lease, so a
/// database that hangs cannot hold a renewal past the lease's local expiry unnoticed.
pub fn build_lease_pool(database: &crate::config::DatabaseSettings, lease: Duration) -> Pool {
    let mut database = database.clone();
    let limit = (lease / 4).as_millis().max(100);
    let options = format!(
        "{} -c statement_timeout={limit} -c lock_timeout={limit}",
        database.config.get_options().unwrap_or("")
    );
    database.config.options(options.trim());
    database.config.connect_timeout(lease / 4);
    build_pool(&database, 2)
}

/// Builds the connection pool, every connection with the settings' TLS; connects lazily.
pub fn build_pool(database: &crate::config::DatabaseSettings, size: usize) -> Pool {
    let manager = Manager::from_config(
        database.config.clone(),
        database.connector.make_tls_connect(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeouts = Timeouts {
        wait: Some(Duration::from_secs(5)),
        create: Some(Duration::from_secs(3)),
        recycle: Some(Duration::from_secs(3)),
    };
    // Building only fails without a runtime for the time-outs, and Tokio is given.
    match Pool::builder(manager)
        .max_size(size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
    {
        Ok(pool) => pool,
        Err(e) => unreachable_pool(e),
    }
}

#[cold]
fn unreachable_pool(e: deadpool_postgres::BuildError) -> Pool {
    // BuildError only arises from time-outs without a runtime; we always set one.
    panic!("pool configuration is inconsistent: {e}")
}

/// `SELECT 1`: whether PostgreSQL answers.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
