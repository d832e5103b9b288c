//! The reply queue's deliveries, as the consumer actor sees them.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use saga_participant::acks::Acks;

use super::BrokerError;

/// One reply delivery; ack or reject it exactly once.
pub struct ReplyDelivery {
    inner: Delivery,
    /// The acks of its channel (batched with `multiple` where the order allows).
    acks: Arc<Acks>,
}

impl ReplyDelivery {
    /// The body.
    pub fn data(&self) -> &[u8] {
        &self.inner.data
    }

    /// The AMQP `correlation_id`, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// A hand-over between instances (`type` = `saga.control`), not a participant's reply.
    pub fn is_control(&self) -> bool {
        self.inner
            .properties
            .kind()
            .as_ref()
            .is_some_and(|k| k.as_str() == super::CONTROL_TYPE)
    }

    /// A valid W3C `traceparent` header, if the participant sent one.
    pub fn traceparent(&self) -> Option<String> {
        crate::domain::trace::parse_traceparent(&self.header_text(super::TRACEPARENT)?)
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.inner.properties.headers().as_ref()?.inner().get(name)
    }

    /// A header holding a string, as text.
    pub fn header_text(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    /// A header holding an integer.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        match *self.header(name)? {
            AMQPValue::LongLongInt(n) => Some(n),
            AMQPValue::LongInt(n) => Some(i64::from(n)),
            AMQPValue::LongUInt(n) => Some(i64::from(n)),
            _ => None,
        }
    }

    /// Its properties (those a reader needs are kept when it is passed on or dead-lettered).
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }

    /// Acks it: the work it caused is durable, or it is safely ignored.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.acks.ack(self.inner.delivery_tag).await?;
        Ok(())
    }

    /// Hands it back to the broker for redelivery (the work it caused could not be made durable).
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        self.inner
            .reject(BasicRejectOptions { requeue: true })
            .await?;
        self.acks.settled_without_ack(self.inner.delivery_tag);
        Ok(())
    }
}

/// The stream of reply deliveries of one consume channel.
pub type ReplyStream = std::pin::Pin<Box<dyn Stream<Item = ReplyDelivery> + Send>>;

pub(super) async fn start(
    channel: &Channel,
    acks: Arc<Acks>,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<ReplyStream, BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // A consumer error means the channel is gone: the stream ends and the connection loop reconnects.
    let stream = consumer
        .take_while(|d| std::future::ready(d.is_ok()))
        .filter_map(move |d| {
            let delivery = d.ok().map(|inner| ReplyDelivery {
                inner,
                acks: acks.clone(),
            });
            std::future::ready(delivery)
        });
    Ok(Box::pin(stream))
}
