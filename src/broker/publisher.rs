//! Publishing with confirms: commands, lifecycle events, dead letters.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};

use super::{Broker, BrokerError, EVENTS_EXCHANGE};

const PERSISTENT: u8 = 2;

impl Broker {
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let links = self.current().ok_or(BrokerError::NotConnected)?;
        let confirm = links
            .publish
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                properties.with_delivery_mode(PERSISTENT),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => Err(BrokerError::Nacked(routing_key.to_string())),
            _ => Ok(()),
        }
    }

    /// Sends a command to a participant's queue, with the saga's `traceparent` header if it
    /// has one; resolves once the broker confirmed it.
    pub async fn send_command(
        &self,
        queue: &str,
        command_id: &str,
        action: &str,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), BrokerError> {
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(command_id))
            .with_correlation_id(ShortString::from(command_id))
            .with_reply_to(ShortString::from(self.topology.reply_queue.as_str()))
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
        self.publish("", queue, body, props).await
    }

    /// Announces a lifecycle event on `saga.events` with routing key `<saga>.<status>`.
    pub async fn announce(&self, routing_key: &str, body: &[u8]) -> Result<(), BrokerError> {
        let props =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        self.publish(EVENTS_EXCHANGE, routing_key, body, props)
            .await
    }

    /// Passes a reply that reached this instance but belongs to a partition held by
    /// another on to that partition's queue, unchanged.
    pub async fn forward(
        &self,
        partition: u32,
        body: &[u8],
        original: &BasicProperties,
    ) -> Result<(), BrokerError> {
        let queue = self.topology.partition_queue(partition);
        self.publish("", &queue, body, original.clone()).await
    }

    /// Hands a saga over to the owner of its partition (see `wire::Control`).
    pub async fn send_control(&self, partition: u32, body: &[u8]) -> Result<(), BrokerError> {
        let queue = self.topology.partition_queue(partition);
        let props = BasicProperties::default()
            .with_type(ShortString::from(super::CONTROL_TYPE))
            .with_content_type(ShortString::from("application/json"));
        self.publish("", &queue, body, props).await
    }

    /// Copies a poison reply to `<reply queue>.dlq` with the reason in header `x-saga-error`.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from("x-saga-error"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            ShortString::from("x-saga-queue"),
            AMQPValue::LongString(LongString::from(self.topology.reply_queue.as_str())),
        );
        let props = original.clone().with_headers(headers);
        let dlq = self.topology.dead_letter_queue();
        self.publish("", &dlq, body, props).await
    }
}
