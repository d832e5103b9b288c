//! One connection to RabbitMQ, re-established with back-off whenever it drops.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

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

pub(super) struct Links {
    pub connection: Connection,
    pub publish: Channel,
    /// The channel of the shared reply queue's consumer (held so it stays open).
    pub _consume: Channel,
    /// The channel of the partition queues' consumers: apart from the busy shared one,
    /// because RabbitMQ's per-channel prefetch bookkeeping touches every queue consumed
    /// on a channel at each ack (64 idle queues beside the shared one halved throughput).
    pub partitions: Channel,
    /// Counts connections, so that a consumer of an old one is not cancelled on a new one.
    pub generation: u64,
}

/// Handle to the broker connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(super) links: Arc<RwLock<Option<Arc<Links>>>>,
    url: String,
    tls: super::AmqpTls,
    pub(super) topology: Arc<Topology>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Broker {
    /// A handle that is not connected yet; see [`Broker::connect`].
    pub fn new(url: String, tls: super::AmqpTls, topology: Topology) -> Self {
        Broker {
            links: Arc::new(RwLock::new(None)),
            url,
            tls,
            topology: Arc::new(topology),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The topology it declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the connection and the publish channel are open.
    pub fn is_ready(&self) -> bool {
        match self.current() {
            Some(l) => l.connection.status().connected() && l.publish.status().connected(),
            None => false,
        }
    }

    pub(super) fn current(&self) -> Option<Arc<Links>> {
        self.links.read().ok().and_then(|g| g.clone())
    }

    fn set(&self, links: Option<Arc<Links>>) {
        if let Ok(mut g) = self.links.write() {
            *g = links;
        }
    }

    /// Connects, declares the topology, opens the publish channel with confirms and a
    /// consume channel; returns the consume channel's reply stream.
    pub async fn connect(&self, prefetch: u16) -> Result<super::ReplyStream, BrokerError> {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from("saga-service"));
        let connection = super::tls::connect(&self.url, props, &self.tls).await?;
        declare_topology(&connection, &self.topology).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let consume = connection.create_channel().await?;
        let stream = super::consumer::start(
            &consume,
            &self.topology.reply_queue,
            "saga-service",
            prefetch,
        )
        .await?;
        let partitions = connection.create_channel().await?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        self.set(Some(Arc::new(Links {
            connection,
            publish,
            _consume: consume,
            partitions,
            generation,
        })));
        Ok(stream)
    }

    /// Starts consuming a partition's queue on the current connection; returns its stream
    /// and a handle to cancel it.
    pub async fn consume_partition(
        &self,
        partition: u32,
        prefetch: u16,
    ) -> Result<(super::ReplyStream, PartitionConsumer), BrokerError> {
        let links = self.current().ok_or(BrokerError::NotConnected)?;
        let tag = format!("saga-service-p{partition}");
        let queue = self.topology.partition_queue(partition);
        let stream = super::consumer::start(&links.partitions, &queue, &tag, prefetch).await?;
        Ok((
            stream,
            PartitionConsumer {
                tag,
                generation: links.generation,
            },
        ))
    }

    /// Stops a partition consumer (its unacked deliveries return to the queue once settled).
    pub async fn cancel_partition(&self, consumer: &PartitionConsumer) {
        if let Some(links) = self.current() {
            if links.generation == consumer.generation {
                let _ = links
                    .partitions
                    .basic_cancel(
                        ShortString::from(consumer.tag.as_str()),
                        lapin::options::BasicCancelOptions::default(),
                    )
                    .await;
            }
        }
    }

    /// Which connection is current (grows at each reconnection).
    pub fn generation(&self) -> u64 {
        self.current().map_or(0, |l| l.generation)
    }

    /// Resolves when the current connection is lost (polled; lapin reports it as a status).
    pub async fn closed(&self) {
        loop {
            if !self.is_ready() {
                self.set(None);
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes the connection (on shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.current() {
            let _ = l.publish.close(200, ShortString::from("shutdown")).await;
            let _ = l.connection.close(200, ShortString::from("shutdown")).await;
        }
        self.set(None);
    }
}

/// A consumer of one partition's queue.
#[derive(Debug, Clone)]
pub struct PartitionConsumer {
    tag: String,
    generation: u64,
}

impl PartitionConsumer {
    /// The connection it was started on.
    pub fn generation(&self) -> u64 {
        self.generation
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

async fn declare_topology(connection: &Connection, t: &Topology) -> Result<(), BrokerError> {
    let mut channel = connection.create_channel().await?;
    channel
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
    let mut queues = vec![t.reply_queue.clone(), t.dead_letter_queue()];
    queues.extend((0..t.partitions).map(|p| t.partition_queue(p)));
    queues.extend(t.command_queues.iter().cloned());
    for queue in queues {
        let declared = channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                queue_args(t.queue_type),
            )
            .await;
        if let Err(e) = declared {
            // A queue that exists with other arguments (declared by a participant) closes the
            // channel; use it as it is if it exists at all.
            channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    ShortString::from(queue.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            log::warn!("queue {queue} exists with other arguments ({e}); using it as it is");
        }
    }
    let _ = channel.close(200, ShortString::from("declared")).await;
    Ok(())
}
