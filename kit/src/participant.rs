//! The participant: consumes the command queue, processes each command (through the inbox,
//! or a [`Processor`] of its own), replies with confirms, then acks; reconnects with back-off.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::Channel;
use serde_json::Value;

use crate::acks::Acks;
use crate::command::{Command, Outcome};
use crate::error::{KitError, StepError};
use crate::{amqp, inbox};

/// First back-off after a lost connection; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest back-off between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a command whose outcome could not be committed or answered waits before it is
/// handed back to the broker (so a database or reply queue that is down is not spun on).
const REQUEUE_AFTER: Duration = Duration::from_secs(1);

/// A participant's local work for one step: the kit calls it inside the transaction in
/// which it also records the command's outcome, and commits them together.
///
/// `tx` is the only database access the handler gets: write the step's effects through
/// it (it is a savepoint of the kit's transaction, so a [`StepError::Failed`] undoes them
/// while the error is still recorded). Do not commit it; the kit does. Work outside the
/// database (an HTTP call) is not covered by the transaction: make it idempotent.
pub trait Handler: Send + Sync + 'static {
    /// Runs `cmd` (an execute, or the compensate of an execute that succeeded here) and
    /// returns the step's output (sent in the reply and recorded).
    fn handle(
        &self,
        tx: &Transaction<'_>,
        cmd: &Command,
    ) -> impl Future<Output = Result<Value, StepError>> + Send;
}

/// How a command becomes its [`Outcome`]: the layer under [`Handler`].
///
/// [`Participant::new`] uses [`Inbox`], which gives the exactly-once guarantee: use that.
/// Implement this only for a participant that keeps no effects in a database (a test
/// double, like saga-service's own stub); the kit still does the transport: consuming,
/// replying with confirms, acking after the confirm, handing back what failed, reconnecting.
/// An `Err` hands the command back to the broker (after a second) to be processed again.
pub trait Processor: Send + Sync + 'static {
    /// Decides `cmd`'s outcome (a repeat of a `command_id` must get the first outcome again).
    fn process(&self, cmd: &Command) -> impl Future<Output = Result<Outcome, KitError>> + Send;
}

/// The [`Processor`] of [`Participant::new`]: each command in one transaction of `pool`'s
/// database, with its outcome recorded in `saga_inbox` (see the crate's documentation).
pub struct Inbox<H> {
    pool: Pool,
    handler: H,
}

impl<H: Handler> Inbox<H> {
    /// `handler`'s work through the inbox of `pool`'s database (which must hold
    /// `saga_inbox`: see [`crate::migrate`]).
    pub fn new(pool: Pool, handler: H) -> Self {
        Inbox { pool, handler }
    }
}

impl<H: Handler> Processor for Inbox<H> {
    async fn process(&self, cmd: &Command) -> Result<Outcome, KitError> {
        inbox::process(&self.pool, &self.handler, cmd).await
    }
}

/// Where a participant listens and who it says it is.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ, `amqp://user:pass@host:5672/%2f`.
    pub amqp_url: String,
    /// The command queue (the step's `queue` in the saga definition); declared durable.
    pub queue: String,
    /// The `service` field of replies (default: the queue's name).
    pub service: String,
    /// Commands in flight at once (AMQP prefetch; default 16).
    pub prefetch: u16,
    /// PEM certificates trusted for an `amqps://` URL besides the system's (default none).
    pub ca_pem: Option<String>,
}

impl Config {
    /// A configuration with the defaults: `service` = `queue`, prefetch 16.
    pub fn new(amqp_url: impl Into<String>, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        Config {
            amqp_url: amqp_url.into(),
            service: queue.clone(),
            queue,
            prefetch: 16,
            ca_pem: None,
        }
    }
}

struct Shared<P> {
    config: Config,
    processor: P,
}

/// A participant of saga-service: see the crate's documentation.
pub struct Participant<P> {
    shared: Arc<Shared<P>>,
}

impl<H: Handler> Participant<Inbox<H>> {
    /// A participant answering `config.queue` with `handler`, on the database of `pool`
    /// (which must hold `saga_inbox`: see [`crate::migrate`]).
    pub fn new(config: Config, pool: Pool, handler: H) -> Self {
        Participant::with_processor(config, Inbox::new(pool, handler))
    }
}

impl<P: Processor> Participant<P> {
    /// A participant answering `config.queue` through `processor` instead of the inbox
    /// (see [`Processor`]: not for effects that must happen once).
    pub fn with_processor(config: Config, processor: P) -> Self {
        Participant {
            shared: Arc::new(Shared { config, processor }),
        }
    }

    /// Consumes the command queue until the future is dropped; reconnects (with back-off
    /// from 200 ms to 5 s) whenever the broker connection is lost or cannot be opened.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await
    }

    /// Like [`Participant::run`], until `stop` resolves (e.g. on SIGTERM); then closes the
    /// broker connection. Commands not answered yet are redelivered (and, when their
    /// outcome was committed, answered from the inbox).
    pub async fn run_until(self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut delay = MIN_BACKOFF;
        loop {
            match self.serve(&mut delay, stop.as_mut()).await {
                Ok(Served::Stopped) => return,
                Ok(Served::Ended) => log::warn!("command stream ended; reconnecting in {delay:?}"),
                Err(e) => log::warn!("participant connection failed: {e}; retrying in {delay:?}"),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.as_mut() => return,
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    async fn serve(
        &self,
        delay: &mut Duration,
        mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Served, KitError> {
        let c = &self.shared.config;
        let mut link = tokio::select! {
            link = amqp::open(c) => link?,
            () = stop.as_mut() => return Ok(Served::Stopped),
        };
        *delay = MIN_BACKOFF;
        log::info!("participant {} consuming {}", c.service, c.queue);
        let served = loop {
            tokio::select! {
                next = link.consumer.next() => match next {
                    Some(delivery) => {
                        let delivery = delivery?;
                        let (shared, publish, acks) =
                            (self.shared.clone(), link.publish.clone(), link.acks.clone());
                        tokio::spawn(answer(shared, publish, acks, delivery));
                    }
                    None => break Served::Ended,
                },
                () = stop.as_mut() => break Served::Stopped,
            }
        };
        let _ = link
            .connection
            .close(200, "participant stopped".into())
            .await;
        Ok(served)
    }
}

/// How one connection's service ended.
enum Served {
    /// The broker ended the consumer (the queue was deleted, the channel closed).
    Ended,
    /// Asked to stop.
    Stopped,
}

/// Processes one delivery: outcome committed, reply confirmed, then ack; otherwise it is
/// handed back (after [`REQUEUE_AFTER`]) and its next delivery answers from the inbox.
async fn answer<P: Processor>(
    shared: Arc<Shared<P>>,
    publish: Channel,
    acks: Arc<Acks>,
    delivery: Delivery,
) {
    let cmd: Command = match serde_json::from_slice(&delivery.data) {
        Ok(cmd) => cmd,
        Err(e) => {
            log::warn!("unreadable command discarded: {e}");
            if let Err(e) = amqp::discard(&acks, &delivery).await {
                log::warn!("cannot discard an unreadable command: {e}");
            }
            return;
        }
    };
    let (saga, step) = (cmd.saga_id.clone(), cmd.step.clone());
    // Its own task, so that a handler that panics is a (retryable) answer, not a command
    // left unacked on a live channel.
    let job = {
        let (shared, cmd) = (shared.clone(), cmd.clone());
        tokio::spawn(async move { shared.processor.process(&cmd).await })
    };
    let outcome = match job.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            log::warn!(
                "saga={saga} step={step} command {} not processed: {e}; requeued",
                cmd.command_id
            );
            return hand_back(&acks, &delivery).await;
        }
        Err(e) => {
            log::error!("saga={saga} step={step} handler panicked: {e}");
            Outcome::Retryable(format!("{} handler panicked", shared.config.service))
        }
    };
    match &outcome {
        Outcome::Done(_) => {}
        // A step's failure is a business outcome (a card declined), not the participant's
        // trouble: info. A retryable error is a transient fault worth a look: warn.
        Outcome::Error(e) => log::info!(
            "saga={saga} step={step} {} answered error: {e}",
            cmd.action.as_str()
        ),
        Outcome::Retryable(e) => log::warn!(
            "saga={saga} step={step} {} answered retryable error: {e}",
            cmd.action.as_str()
        ),
    }
    let body = outcome.reply(&cmd, &shared.config.service).to_string();
    let to = amqp::reply_to(&delivery);
    match amqp::publish_reply(&publish, &to, &cmd.command_id, body.as_bytes()).await {
        Ok(()) => {
            if let Err(e) = amqp::ack(&acks, &delivery).await {
                // Redelivered when the channel closes; answered again from the inbox.
                log::warn!("saga={saga} step={step} cannot ack: {e}");
            }
        }
        Err(e) => {
            log::warn!("saga={saga} step={step} reply to {to} not confirmed: {e}; requeued");
            hand_back(&acks, &delivery).await;
        }
    }
}

async fn hand_back(acks: &Acks, delivery: &Delivery) {
    tokio::time::sleep(REQUEUE_AFTER).await;
    if let Err(e) = amqp::requeue(acks, delivery).await {
        // The channel is gone: the broker redelivers the command anyway.
        log::warn!("cannot requeue a command: {e}");
    }
}
