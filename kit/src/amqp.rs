//! The only module that imports lapin: the connection, the command queue's consumer, and
//! replies published with confirms.

use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    DefaultConnectionBuilder,
};

use crate::acks::Acks;
use crate::error::KitError;
use crate::participant::Config;

/// The queue a command without `reply_to` is answered on (the orchestrator's default).
const DEFAULT_REPLY_QUEUE: &str = "responses";

/// One connection: a consumer of the command queue and a publish channel with confirms.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) consumer: Consumer,
    /// The acks of the consumer's channel.
    pub(crate) acks: std::sync::Arc<Acks>,
    pub(crate) publish: Channel,
}

/// Connects (`amqps://` with TLS, trusting `config.ca_pem` besides the system's roots),
/// declares the command queue (durable) and starts consuming it.
pub(crate) async fn open(config: &Config) -> Result<Link, KitError> {
    let (queue, prefetch) = (config.queue.as_str(), config.prefetch);
    let connection = DefaultConnectionBuilder::new()?
        .with_uri_str(config.amqp_url.clone())
        .with_properties(ConnectionProperties::default())
        .with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain: config.ca_pem.clone(),
        })
        .connect()
        .await?;
    let mut consume = connection.create_channel().await?;
    let declared = consume
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    if declared.is_err() {
        // Declared by the orchestrator with other arguments (a quorum queue): the broker
        // closed the channel; consume the queue as it is on a new one.
        consume = connection.create_channel().await?;
    }
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = consume
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Link {
        connection,
        consumer,
        acks: std::sync::Arc::new(Acks::new(consume)),
        publish,
    })
}

/// Where a command's reply goes: its `reply_to`.
pub(crate) fn reply_to(delivery: &Delivery) -> String {
    delivery.properties.reply_to().as_ref().map_or_else(
        || DEFAULT_REPLY_QUEUE.to_string(),
        |q| q.as_str().to_string(),
    )
}

/// Publishes a reply (persistent, mandatory, `correlation_id` = the command id) and waits
/// for the broker's confirm; a reply no queue took is an error, not a success.
pub(crate) async fn publish_reply(
    channel: &Channel,
    queue: &str,
    command_id: &str,
    body: &[u8],
) -> Result<(), KitError> {
    let props = BasicProperties::default()
        .with_correlation_id(ShortString::from(command_id))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2);
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            options,
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Nack(_) => Err(KitError::Nacked(queue.to_string())),
        Confirmation::Ack(Some(_)) => Err(KitError::Unroutable(queue.to_string())),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
    }
}

/// Acks a command (its reply was confirmed), in one frame with others where it can.
pub(crate) async fn ack(acks: &Acks, delivery: &Delivery) -> Result<(), KitError> {
    acks.ack(delivery.delivery_tag).await?;
    Ok(())
}

/// Hands a command back for redelivery (its outcome could not be made durable or answered).
pub(crate) async fn requeue(acks: &Acks, delivery: &Delivery) -> Result<(), KitError> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await?;
    acks.settled_without_ack(delivery.delivery_tag);
    Ok(())
}

/// Drops an unreadable command (dead-lettered if the queue has a dead-letter exchange).
pub(crate) async fn discard(acks: &Acks, delivery: &Delivery) -> Result<(), KitError> {
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await?;
    acks.settled_without_ack(delivery.delivery_tag);
    Ok(())
}
