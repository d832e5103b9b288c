//! What the HTTP layer shares with the rest of the service.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::Addr;
use deadpool_postgres::Pool;

use crate::actors::{Env, Registry};
use crate::metrics::Metrics;

/// The parts that exist once PostgreSQL answered and definitions are registered.
pub struct Core {
    /// The saga supervisor.
    pub registry: Addr<Registry>,
    /// Writer, broker, catalog, metrics.
    pub env: Arc<Env>,
}

/// Shared by every HTTP worker.
pub struct AppState {
    /// PostgreSQL pool (exists before PostgreSQL answers).
    pub pool: Pool,
    /// Metrics (exist from the start).
    pub metrics: Metrics,
    /// Set once start-up got that far.
    pub core: OnceLock<Core>,
    /// Unfinished sagas are rehydrated and replies are consumed.
    pub rehydrated: AtomicBool,
    /// Shutdown state, shared with the reply consumer.
    pub drain: Arc<Drain>,
    /// When set, operator actions require `Authorization: Bearer <token>`.
    pub admin_token: Option<String>,
}

/// Graceful shutdown: stop taking new work, let work in progress finish.
#[derive(Default)]
pub struct Drain {
    /// Refuse new work: the service is shutting down.
    pub draining: AtomicBool,
    /// Replies taken from the broker and not yet settled.
    pub in_flight: AtomicUsize,
}

impl Drain {
    /// Whether the service is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl AppState {
    /// State before anything is connected.
    pub fn new(pool: Pool, metrics: Metrics) -> Self {
        AppState {
            pool,
            metrics,
            core: OnceLock::new(),
            rehydrated: AtomicBool::new(false),
            drain: Arc::new(Drain::default()),
            admin_token: None,
        }
    }

    /// Whether start-up completed.
    pub fn is_rehydrated(&self) -> bool {
        self.rehydrated.load(Ordering::Acquire)
    }
}
