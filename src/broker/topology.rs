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
    /// This instance's own reply queue (see [`Topology::instance_queue_for`]), which its
    /// commands name as `reply_to` while other instances share the partitions; None when
    /// the name would be too long for AMQP (the saga's partition queue is named instead).
    pub instance_queue: Option<String>,
    /// How long a reply may wait unread in an instance queue before the broker moves it to
    /// the shared reply queue (the lease: by then a dead instance's partitions are taken).
    pub instance_queue_ttl_ms: u32,
}

/// Longest queue name AMQP allows, in bytes.
const MAX_QUEUE_NAME: usize = 255;

/// How long an instance queue nobody consumes is kept before the broker deletes it: an
/// instance gone for good (a pod renamed by a deploy) leaves nothing behind. It is empty
/// by then: a reply waits there at most the queue's message TTL.
pub const INSTANCE_QUEUE_EXPIRES_MS: i32 = 24 * 3600 * 1000;

impl Topology {
    /// The dead-letter queue of the reply queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.reply_queue)
    }

    /// The queue of one partition: replies and hand-overs for its sagas reach its owner there.
    pub fn partition_queue(&self, partition: u32) -> String {
        format!("{}.p{partition}", self.reply_queue)
    }

    /// The reply queue of instance `instance`: `<reply queue>.i.<instance>`, if that fits in
    /// an AMQP queue name. One queue per instance batches as well as the shared one, where
    /// replies spread over its share of 64 partition queues cost the broker more per message.
    pub fn instance_queue_for(reply_queue: &str, instance: &str) -> Option<String> {
        let name = format!("{reply_queue}.i.{instance}");
        (name.len() <= MAX_QUEUE_NAME).then_some(name)
    }
}

/// The arguments of an instance queue: the configured type; a reply left unread for the
/// TTL (its instance died, froze or shut down, or a deploy renamed it) is dead-lettered by
/// the broker to the shared reply queue, which every live instance consumes and passes on
/// to the owner: no reply stays in a queue nobody reads. The queue itself is deleted once
/// unused for [`INSTANCE_QUEUE_EXPIRES_MS`].
pub(super) fn instance_queue_args(t: &Topology) -> FieldTable {
    let mut args = queue_args(t.queue_type);
    let text = |v: &str| AMQPValue::LongString(LongString::from(v));
    let ttl = i32::try_from(t.instance_queue_ttl_ms).unwrap_or(i32::MAX);
    args.insert(
        ShortString::from("x-expires"),
        AMQPValue::LongInt(INSTANCE_QUEUE_EXPIRES_MS),
    );
    args.insert(ShortString::from("x-message-ttl"), AMQPValue::LongInt(ttl));
    args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        text(&t.reply_queue),
    );
    args
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
        self.queue_with(queue, queue_args(self.queue_type)).await
    }

    /// Declares a durable queue with `args`; one that exists with other arguments is used
    /// as it is.
    pub async fn queue_with(&mut self, queue: &str, args: FieldTable) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = self
            .channel
            .queue_declare(ShortString::from(queue), options, args)
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

/// Declares everything but this instance's queue: the events exchange, the reply queue
/// and its DLQ, the partition queues and every command queue.
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
