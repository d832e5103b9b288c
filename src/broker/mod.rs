//! The only module that imports lapin: connection and recovery, topology, publisher, consumer.

mod connection;
mod consumer;
mod properties;
mod publisher;
pub mod signing;
mod tls;
mod topology;
pub mod wire;

pub use connection::{Broker, InboxStreams, PartitionConsumer, PartitionStart};
pub use consumer::{ReplyDelivery, ReplyStream};
pub use signing::{ControlKey, ControlRefusal};
pub use tls::{connect as connect_amqp, AmqpTls};
pub use topology::Topology;

/// AMQP `type` of the hand-overs one instance sends another on a partition queue.
pub const CONTROL_TYPE: &str = "saga.control";

/// AMQP header carrying the W3C trace context on commands and replies.
pub const TRACEPARENT: &str = "traceparent";

/// Name of the topic exchange lifecycle events go to.
pub const EVENTS_EXCHANGE: &str = "saga.events";

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to RabbitMQ right now.
    #[error("broker not connected")]
    NotConnected,
    /// The AMQP client reported an error.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused (nacked) a publish.
    #[error("broker nacked the publish to {0}")]
    Nacked(String),
    /// A mandatory publish reached no queue (the queue does not exist): it was returned.
    #[error("no queue {0}: the broker returned the message")]
    Unroutable(String),
}

impl BrokerError {
    /// Worth retrying once the connection is back.
    pub fn is_transient(&self) -> bool {
        true
    }
}
