//! The AMQP side of `check-participant`: an exclusive reply queue, commands published as
//! the orchestrator publishes them, and answers awaited by `command_id`.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use serde_json::{json, Map};
use uuid::Uuid;

use super::reply::{self, Answer, Arrived};
use crate::broker::wire::CommandBody;

/// One command to send.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its id (the same on every re-send).
    pub command_id: String,
    /// Its saga.
    pub saga_id: Uuid,
    /// `execute` or `compensate`.
    pub action: &'static str,
    /// Which send this is.
    pub attempt: u32,
}

impl Command {
    /// A new command id in the orchestrator's shape: `<saga>/<step>/<action>/<24 hex>`.
    pub fn new(saga_id: Uuid, step: &str, action: &'static str) -> Self {
        let tag = Uuid::new_v4().simple().to_string();
        Command {
            command_id: format!("{saga_id}/{step}/{action}/{}", &tag[..24]),
            saga_id,
            action,
            attempt: 1,
        }
    }
}

/// Why waiting for an answer ended without one.
#[derive(Debug)]
pub enum NoAnswer {
    /// Nothing within the time-out.
    Silent(Duration),
    /// An answer to this command that is not a valid reply.
    Invalid(String),
    /// The broker connection failed.
    Broker(String),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Silent(d) => write!(f, "no answer within {} ms", d.as_millis()),
            NoAnswer::Invalid(why) => write!(f, "{why}"),
            NoAnswer::Broker(why) => write!(f, "broker: {why}"),
        }
    }
}

/// The checker's end of the conversation with one participant.
pub struct Probe {
    publish: Channel,
    replies: Consumer,
    reply_to: String,
    target: String,
    saga: String,
    step: String,
    timeout: Duration,
    /// Every reply received, for the `replies` rule.
    pub received: Vec<Arrived>,
    /// Replies that named a command this probe never sent.
    pub strays: Vec<String>,
    sent: HashSet<String>,
}

impl Probe {
    /// Opens the channels and the exclusive, server-named reply queue.
    pub async fn open(
        conn: &Connection,
        target: &str,
        saga: &str,
        step: &str,
        timeout: Duration,
    ) -> Result<Self, lapin::Error> {
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = conn.create_channel().await?;
        let queue = consume
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let reply_to = queue.name().as_str().to_string();
        let replies = consume
            .basic_consume(
                queue.name().clone(),
                ShortString::from("check-participant"),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Probe {
            publish,
            replies,
            reply_to,
            target: target.to_string(),
            saga: saga.to_string(),
            step: step.to_string(),
            timeout,
            received: Vec::new(),
            strays: Vec::new(),
            sent: HashSet::new(),
        })
    }

    /// The reply queue's name (what `reply_to` says).
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Publishes a command exactly as the orchestrator does: default exchange, routing key
    /// the queue, `message_id` = `correlation_id` = `command_id`, `reply_to`, `type` = the
    /// action, JSON, persistent; confirmed by the broker.
    pub async fn send(&mut self, cmd: &Command) -> Result<(), String> {
        let payload = json!({});
        let results = Map::new();
        let body = CommandBody {
            command_id: &cmd.command_id,
            saga_id: cmd.saga_id,
            saga: &self.saga,
            step: &self.step,
            action: cmd.action,
            attempt: cmd.attempt,
            payload: &payload,
            results: &results,
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        self.sent.insert(cmd.command_id.clone());
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(cmd.command_id.as_str()))
            .with_correlation_id(ShortString::from(cmd.command_id.as_str()))
            .with_reply_to(ShortString::from(self.reply_to.as_str()))
            .with_type(ShortString::from(cmd.action))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.target.as_str()),
                BasicPublishOptions::default(),
                &bytes,
                props,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        match confirm {
            Confirmation::Nack(_) => {
                Err(format!("the broker refused the command to {}", self.target))
            }
            _ => Ok(()),
        }
    }

    /// Sends a command and waits for its answer.
    pub async fn ask(&mut self, cmd: &Command) -> Result<Answer, NoAnswer> {
        self.send(cmd).await.map_err(NoAnswer::Broker)?;
        self.answer_to(&cmd.command_id).await
    }

    /// The next reply naming `command_id`; replies to other commands are set aside.
    async fn answer_to(&mut self, command_id: &str) -> Result<Answer, NoAnswer> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.replies.next()).await;
            let delivery = match next {
                Err(_) => return Err(NoAnswer::Silent(self.timeout)),
                Ok(None) => return Err(NoAnswer::Broker("the reply consumer was closed".into())),
                Ok(Some(Err(e))) => return Err(NoAnswer::Broker(e.to_string())),
                Ok(Some(Ok(d))) => d,
            };
            let arrived = Arrived {
                body: delivery.data.clone(),
                correlation_id: delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_string()),
                routing_key: delivery.routing_key.as_str().to_string(),
                exchange: delivery.exchange.as_str().to_string(),
                delivery_mode: *delivery.properties.delivery_mode(),
            };
            self.received.push(arrived.clone());
            match reply::read(&arrived) {
                Ok(answer) if answer.command_id == command_id => return Ok(answer),
                Ok(answer) => {
                    // A late answer to an earlier command is no news; one to a command
                    // never sent is.
                    if !self.sent.contains(&answer.command_id) {
                        self.strays.push(answer.command_id);
                    }
                }
                // Unreadable: it answers this command if its correlation_id says so.
                Err(why) if arrived.correlation_id.as_deref() == Some(command_id) => {
                    return Err(NoAnswer::Invalid(why))
                }
                Err(_) => {}
            }
        }
    }
}
