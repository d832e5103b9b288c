//! The actors: a registry that supervises one actor per saga, and the reply consumer.

pub mod messages;
pub mod registry;
pub mod reply_consumer;
pub mod saga_actor;

use std::sync::Arc;

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::store::{DefinitionCatalog, SnapshotWriter};

pub use registry::Registry;
pub use reply_consumer::ReplyConsumer;
pub use saga_actor::SagaActor;

/// What every actor needs to do its I/O; shared read-only.
pub struct Env {
    /// Commits transitions.
    pub writer: SnapshotWriter,
    /// Publishes commands and events.
    pub broker: Broker,
    /// Every stored definition version.
    pub catalog: Arc<DefinitionCatalog>,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// Idle time after which a saga actor is passivated (None: never).
    pub passivate_after: Option<std::time::Duration>,
    /// Shutdown state: the consumer stops taking replies and counts those in progress.
    pub drain: Arc<crate::app_state::Drain>,
    /// The partitions this instance holds.
    pub ownership: Arc<crate::cluster::Ownership>,
    /// Wakes the outbox relay after a commit that wrote a lifecycle event.
    pub outbox: Arc<tokio::sync::Notify>,
}
