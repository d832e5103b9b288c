//! What the orchestrator declares: the events exchange and its durable queues, at every
//! (re)connection and again before consuming a queue the broker may have deleted.

use std::collections::BTreeSet;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::{BrokerError, EVENTS_EXCHANGE};
use crate::config::QueueType;

/// What the orchestrator declares on every (re)connection.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The reply queue (its `.dlq` is declared too).
    pub reply_queue: String,
    /// Every command queue of every stored definition.
    pub command_queues: BTreeSet<String>,
    /// Classic or quorum.
    pub queue_type: QueueType,
    /// Partitions: each has a reply queue `<reply queue>.p<n>` its owner consumes.
    pub partitions: u32,
}

impl Topology {
    /// The dead-letter queue of the reply queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.reply_queue)
    }

    /// The queue of one partition: replies and hand-overs for its sagas reach its owner there.
    pub fn partition_queue(&self, partition: u32) -> String {
        format!("{}.p{partition}", self.reply_queue)
    }
}

fn queue_args(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// Declares queues on a channel of its own: a refused declaration closes that channel,
/// never one that publishes or consumes.
pub(super) struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
    queue_type: QueueType,
}

impl<'a> Declarer<'a> {
    /// Opens the declaring channel.
    pub async fn open(
        connection: &'a Connection,
        queue_type: QueueType,
    ) -> Result<Self, BrokerError> {
        Ok(Declarer {
            channel: connection.create_channel().await?,
            connection,
            queue_type,
        })
    }

    /// Declares a durable queue with the configured type; one that exists with other
    /// arguments (declared by a participant) is used as it is.
    pub async fn queue(&mut self, queue: &str) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = self
            .channel
            .queue_declare(
                ShortString::from(queue),
                options,
                queue_args(self.queue_type),
            )
            .await;
        if let Err(e) = declared {
            // The refusal closed the channel; use the queue as it is if it exists at all.
            self.channel = self.connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let checked = self
                .channel
                .queue_declare(ShortString::from(queue), passive, FieldTable::default())
                .await;
            if let Err(missing) = checked {
                self.channel = self.connection.create_channel().await?;
                return Err(missing.into());
            }
            log::warn!("queue {queue} exists with other arguments ({e}); using it as it is");
        }
        Ok(())
    }

    /// Declares the durable topic exchange of lifecycle events.
    pub async fn events_exchange(&mut self) -> Result<(), BrokerError> {
        self.channel
            .exchange_declare(
                ShortString::from(EVENTS_EXCHANGE),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Closes the declaring channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("declared")).await;
    }
}

/// Declares everything: the events exchange, the reply queue and its DLQ, the partition
/// queues and every command queue.
pub(super) async fn declare_topology(
    connection: &Connection,
    t: &Topology,
) -> Result<(), BrokerError> {
    let mut declarer = Declarer::open(connection, t.queue_type).await?;
    declarer.events_exchange().await?;
    let mut queues = vec![t.reply_queue.clone(), t.dead_letter_queue()];
    queues.extend((0..t.partitions).map(|p| t.partition_queue(p)));
    queues.extend(t.command_queues.iter().cloned());
    for queue in queues {
        declarer.queue(&queue).await?;
    }
    declarer.close().await;
    Ok(())
}
