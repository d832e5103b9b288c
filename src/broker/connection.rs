//! One connection to RabbitMQ, re-established with back-off whenever it drops; its
//! consume channels are reopened, and their queues declared again, whenever the broker
//! closes one or cancels a consumer (a queue deleted, a channel error).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lapin::types::{LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use saga_participant::acks::Acks;

use super::signing::ControlKey;
use super::topology::{declare_topology, Declarer, Topology};
use super::BrokerError;

/// How long closing a channel or the connection may take before it is given up.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

pub(super) struct Links {
    pub connection: Connection,
    pub publish: Channel,
    /// The channel of the shared reply queue's consumer; replaced once the broker closed it.
    pub consume: Mutex<Consuming>,
    /// The channel of the partition queues' consumers: apart from the busy shared one,
    /// because RabbitMQ's per-channel prefetch bookkeeping touches every queue consumed
    /// on a channel at each ack (64 idle queues beside the shared one halved throughput).
    /// Replaced once the broker closed it.
    pub partitions: Mutex<Consuming>,
    /// Counts connections, so that a consumer of an old one is not cancelled on a new one.
    pub generation: u64,
}

/// A consume channel and the acks of its deliveries (one tracker per channel: a multiple
/// ack covers the deliveries of every consumer on it).
#[derive(Clone)]
pub struct Consuming {
    pub channel: Channel,
    pub acks: Arc<Acks>,
}

impl Consuming {
    fn new(channel: Channel) -> Self {
        let acks = Arc::new(Acks::new(channel.clone()));
        Consuming { channel, acks }
    }
}

impl Links {
    /// The channel in `slot`, first reopened if the broker closed it.
    async fn open_channel(&self, slot: &Mutex<Consuming>) -> Result<Consuming, BrokerError> {
        let current = slot.lock().ok().map(|c| c.clone());
        if let Some(consuming) = current.filter(|c| c.channel.status().connected()) {
            return Ok(consuming);
        }
        let fresh = Consuming::new(self.connection.create_channel().await?);
        if let Ok(mut slot) = slot.lock() {
            *slot = fresh.clone();
        }
        Ok(fresh)
    }
}

/// Handle to the broker connection; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(super) links: Arc<RwLock<Option<Arc<Links>>>>,
    url: String,
    tls: super::AmqpTls,
    pub(super) topology: Arc<Topology>,
    /// Signs the hand-overs this instance sends and checks the ones it receives.
    pub(super) key: Arc<ControlKey>,
    generation: Arc<AtomicU64>,
    /// Makes consumer tags unique on a channel, so a consumer started again never reuses one.
    tags: Arc<AtomicU64>,
    /// Whether this instance's own queue is being consumed: only then do commands name it.
    pub(super) own_live: Arc<AtomicBool>,
}

/// A started partition consumer: its partition, its deliveries, its handle.
pub type PartitionStart = (u32, super::ReplyStream, PartitionConsumer);

/// The deliveries of the queues an instance consumes whatever partitions it holds: the
/// shared reply queue's, and its own queue's unless it has none (see
/// [`Broker::consume_own`]).
pub struct InboxStreams {
    pub shared: super::ReplyStream,
    pub own: Option<super::ReplyStream>,
}

impl Broker {
    /// A handle that is not connected yet; see [`Broker::connect`]. `key` signs hand-overs.
    pub fn new(url: String, tls: super::AmqpTls, topology: Topology, key: ControlKey) -> Self {
        Broker {
            links: Arc::new(RwLock::new(None)),
            url,
            tls,
            topology: Arc::new(topology),
            key: Arc::new(key),
            generation: Arc::new(AtomicU64::new(0)),
            tags: Arc::new(AtomicU64::new(0)),
            own_live: Arc::new(AtomicBool::new(false)),
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

    fn tag(&self, prefix: &str) -> String {
        let n = self.tags.fetch_add(1, Ordering::AcqRel);
        format!("{prefix}-{n}")
    }

    /// Connects, declares the topology, opens the publish channel with confirms and the
    /// consume channels; returns the streams of the shared reply queue and of this
    /// instance's queue.
    pub async fn connect(&self, prefetch: u16) -> Result<InboxStreams, BrokerError> {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from("saga-service"));
        let connection = super::tls::connect(&self.url, props, &self.tls).await?;
        declare_topology(&connection, &self.topology).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let consume = Mutex::new(Consuming::new(connection.create_channel().await?));
        let partitions = Mutex::new(Consuming::new(connection.create_channel().await?));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let links = Arc::new(Links {
            connection,
            publish,
            consume,
            partitions,
            generation,
        });
        let shared = self.start_replies(&links, prefetch).await?;
        self.set(Some(links));
        let own = self.consume_own(prefetch).await;
        Ok(InboxStreams { shared, own })
    }

    /// Consumes the shared reply queue again on the current connection, after its consumer
    /// stopped (the queue deleted, its channel closed): declares the queue and its DLQ,
    /// reopens the channel if the broker closed it.
    pub async fn consume_replies(&self, prefetch: u16) -> Result<super::ReplyStream, BrokerError> {
        let links = self.current().ok_or(BrokerError::NotConnected)?;
        let mut declarer = Declarer::open(&links.connection, self.topology.queue_type).await?;
        declarer.queue(&self.topology.reply_queue).await?;
        declarer.queue(&self.topology.dead_letter_queue()).await?;
        declarer.close().await;
        self.start_replies(&links, prefetch).await
    }

    async fn start_replies(
        &self,
        links: &Links,
        prefetch: u16,
    ) -> Result<super::ReplyStream, BrokerError> {
        let Consuming { channel, acks } = links.open_channel(&links.consume).await?;
        let tag = self.tag("saga-service");
        super::consumer::start(&channel, acks, &self.topology.reply_queue, &tag, prefetch).await
    }

    /// Declares and consumes this instance's own queue on the current connection, beside the
    /// shared one; commands name it only while this succeeded. None when there is none (its
    /// name too long) or the broker refuses it (a queue limit, permissions, a quorum without
    /// a majority): commands then name their partition's queue, as without one, until the
    /// next reconnection.
    pub async fn consume_own(&self, prefetch: u16) -> Option<super::ReplyStream> {
        let own = self.topology.instance_queue.as_ref()?;
        let started = async {
            let links = self.current().ok_or(BrokerError::NotConnected)?;
            let mut declarer = Declarer::open(&links.connection, self.topology.queue_type).await?;
            let declared = declarer
                .queue_with(own, super::topology::instance_queue_args(&self.topology))
                .await;
            declarer.close().await;
            declared?;
            let Consuming { channel, acks } = links.open_channel(&links.consume).await?;
            let tag = self.tag("saga-service-own");
            super::consumer::start(&channel, acks, own, &tag, prefetch).await
        }
        .await;
        self.own_live.store(started.is_ok(), Ordering::Release);
        started
            .map_err(|e| {
                log::warn!(
                    "cannot consume this instance's own reply queue {own} ({e}); replies reach \
                     it through its partitions' queues until the next reconnection"
                )
            })
            .ok()
    }

    /// Declares the queues of `partitions` and consumes them on the current connection (the
    /// partitions channel reopened first if the broker closed it). Returns the consumers
    /// started, in order, and the error that stopped it early, if any, with its partition.
    pub async fn consume_partitions(
        &self,
        partitions: &[u32],
        prefetch: u16,
    ) -> (Vec<PartitionStart>, Option<(u32, BrokerError)>) {
        let mut started = Vec::new();
        let Some(&first) = partitions.first() else {
            return (started, None);
        };
        let Some(links) = self.current() else {
            return (started, Some((first, BrokerError::NotConnected)));
        };
        let mut declarer = match Declarer::open(&links.connection, self.topology.queue_type).await {
            Ok(d) => d,
            Err(e) => return (started, Some((first, e))),
        };
        let mut failed = None;
        for &p in partitions {
            match self
                .start_partition(&links, &mut declarer, p, prefetch)
                .await
            {
                Ok((stream, consumer)) => started.push((p, stream, consumer)),
                Err(e) => {
                    failed = Some((p, e));
                    break;
                }
            }
        }
        declarer.close().await;
        (started, failed)
    }

    async fn start_partition(
        &self,
        links: &Links,
        declarer: &mut Declarer<'_>,
        partition: u32,
        prefetch: u16,
    ) -> Result<(super::ReplyStream, PartitionConsumer), BrokerError> {
        let queue = self.topology.partition_queue(partition);
        declarer.queue(&queue).await?;
        let Consuming { channel, acks } = links.open_channel(&links.partitions).await?;
        let tag = self.tag(&format!("saga-service-p{partition}"));
        let stream = super::consumer::start(&channel, acks, &queue, &tag, prefetch).await?;
        let consumer = PartitionConsumer {
            tag,
            channel,
            generation: links.generation,
        };
        Ok((stream, consumer))
    }

    /// Stops a partition consumer (its unacked deliveries return to the queue once settled).
    pub async fn cancel_partition(&self, consumer: &PartitionConsumer) {
        // On a channel the broker closed there is nothing left to cancel.
        if consumer.channel.status().connected() {
            let _ = consumer
                .channel
                .basic_cancel(
                    ShortString::from(consumer.tag.as_str()),
                    lapin::options::BasicCancelOptions::default(),
                )
                .await;
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

    /// Closes the connection (on shutdown, or before connecting again); gives up waiting
    /// for the broker after a while, so a reconnection is never held up by the old one.
    pub async fn close(&self) {
        if let Some(l) = self.current() {
            let reason = || ShortString::from("shutdown");
            let _ = tokio::time::timeout(CLOSE_WITHIN, l.publish.close(200, reason())).await;
            let _ = tokio::time::timeout(CLOSE_WITHIN, l.connection.close(200, reason())).await;
        }
        self.set(None);
    }
}

/// A consumer of one partition's queue.
#[derive(Debug, Clone)]
pub struct PartitionConsumer {
    tag: String,
    channel: Channel,
    generation: u64,
}

impl PartitionConsumer {
    /// The connection it was started on.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
