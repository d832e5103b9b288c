//! Publishing with confirms: commands, lifecycle events, dead letters, and what is passed
//! on to a partition's queue.

use std::borrow::Cow;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};

use super::properties::{kept_headers, passed_on, PERSISTENT};
use super::topology::Declarer;
use super::{Broker, BrokerError, EVENTS_EXCHANGE};

/// Whether a publish must reach a queue: a message the broker cannot route anywhere is then
/// returned, and the publish fails, instead of being confirmed and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// Confirmed even when no queue takes it (lifecycle events nobody is bound to).
    Optional,
    /// Returned when no queue takes it (the queue was deleted).
    Mandatory,
}

impl Broker {
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        routing: Routing,
    ) -> Result<(), BrokerError> {
        let links = self.current().ok_or(BrokerError::NotConnected)?;
        let options = BasicPublishOptions {
            mandatory: routing == Routing::Mandatory,
            ..Default::default()
        };
        let confirm = links
            .publish
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                options,
                body,
                properties.with_delivery_mode(PERSISTENT),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => Err(BrokerError::Nacked(routing_key.to_string())),
            // Acked, but returned first: no queue took it.
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key.to_string())),
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        }
    }

    /// Sends a command to a participant's queue, with the saga's `traceparent` header if it
    /// has one; resolves once the broker confirmed it. Its `reply_to` is the shared reply
    /// queue when no `partition` is given (an instance that runs alone). Else the reply
    /// must reach the saga's owner, this instance, without a hop through the shared queue:
    /// `reply_to` is this instance's own queue while it is consumed, else the queue of the saga's
    /// `partition`, which whoever holds the partition consumes. A reply that reaches the
    /// own queue after the partition changed hands is passed on to the partition's queue.
    pub async fn send_command(
        &self,
        queue: &str,
        command_id: &str,
        action: &str,
        body: &[u8],
        traceparent: Option<&str>,
        partition: Option<u32>,
    ) -> Result<(), BrokerError> {
        let own = self
            .topology
            .instance_queue
            .as_deref()
            .filter(|_| self.own_live.load(std::sync::atomic::Ordering::Acquire));
        let reply_to = match (partition, own) {
            (None, _) => Cow::Borrowed(self.topology.reply_queue.as_str()),
            (Some(_), Some(own)) => Cow::Borrowed(own),
            (Some(p), None) => Cow::Owned(self.topology.partition_queue(p)),
        };
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(command_id))
            .with_correlation_id(ShortString::from(command_id))
            .with_reply_to(ShortString::from(&*reply_to))
            .with_type(ShortString::from(action))
            .with_content_type(ShortString::from("application/json"));
        if let Some(tp) = traceparent {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(
                ShortString::from(super::TRACEPARENT),
                AMQPValue::LongString(LongString::from(tp)),
            );
            props = props.with_headers(headers);
        }
        // Mandatory: a command queue deleted under a running saga is declared again and the
        // command published there, not confirmed and dropped (which would use up attempts).
        self.publish_declaring(queue, body, props).await
    }

    /// Publishes to a queue on the default exchange (mandatory); a queue that is gone is
    /// declared again (durable, the configured type) and the message published once more.
    async fn publish_declaring(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let sent = self
            .publish("", queue, body, props.clone(), Routing::Mandatory)
            .await;
        if !matches!(sent, Err(BrokerError::Unroutable(_))) {
            return sent;
        }
        log::warn!("queue {queue} is gone: declaring it again");
        let links = self.current().ok_or(BrokerError::NotConnected)?;
        let mut declarer = Declarer::open(&links.connection, self.topology.queue_type).await?;
        let declared = declarer.queue(queue).await;
        declarer.close().await;
        declared?;
        self.publish("", queue, body, props, Routing::Mandatory)
            .await
    }

    /// Announces a lifecycle event on `saga.events` with routing key `<saga>.<status>`.
    pub async fn announce(&self, routing_key: &str, body: &[u8]) -> Result<(), BrokerError> {
        let props =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        self.publish(EVENTS_EXCHANGE, routing_key, body, props, Routing::Optional)
            .await
    }

    /// Passes a reply (or hand-over) that reached this instance but belongs to a partition
    /// held by another on to that partition's queue: the body unchanged, the properties
    /// those a reader needs (see `properties::passed_on`). Fails, rather than being
    /// confirmed and lost, when that queue does not exist.
    pub async fn forward(
        &self,
        partition: u32,
        body: &[u8],
        original: &BasicProperties,
    ) -> Result<(), BrokerError> {
        let queue = self.topology.partition_queue(partition);
        self.publish("", &queue, body, passed_on(original), Routing::Mandatory)
            .await
    }

    /// Hands a saga over to the owner of its partition (see `wire::Control`), signed with
    /// the cluster's secret (see `signing`). Fails when the partition's queue does not exist.
    pub async fn send_control(&self, partition: u32, body: &[u8]) -> Result<(), BrokerError> {
        let queue = self.topology.partition_queue(partition);
        let props = BasicProperties::default()
            .with_type(ShortString::from(super::CONTROL_TYPE))
            .with_content_type(ShortString::from("application/json"))
            .with_headers(self.key.headers(body));
        self.publish("", &queue, body, props, Routing::Mandatory)
            .await
    }

    /// Copies a poison reply to `<reply queue>.dlq` with the reason in header `x-saga-error`
    /// (the properties those a reader needs, see `properties::passed_on`). A DLQ that was
    /// deleted is declared again.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = kept_headers(original);
        headers.insert(
            ShortString::from("x-saga-error"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            ShortString::from("x-saga-queue"),
            AMQPValue::LongString(LongString::from(self.topology.reply_queue.as_str())),
        );
        let props = passed_on(original).with_headers(headers);
        let dlq = self.topology.dead_letter_queue();
        self.publish_declaring(&dlq, body, props).await
    }
}
