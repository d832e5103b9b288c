//! The reply consumer: takes deliveries from the reply queue, hands each to the registry,
//! and acks only once the transition it caused is committed (or it is safely ignored).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::messages::{Applied, DeliverError, DeliverEvent};
use super::{Env, Registry};
use crate::broker::wire::{decode_reply, salvage_saga_id, PoisonReason};
use crate::broker::{ControlRefusal, ReplyDelivery, ReplyStream};
use crate::saga::{Event, TransitionError};

mod handover;

/// Consumes one queue's deliveries: the shared reply queue, or one partition's queue.
/// Stops when the stream ends (the channel closed, or the partition consumer was cancelled).
pub struct ReplyConsumer {
    env: Arc<Env>,
    registry: Addr<Registry>,
    stream: Option<ReplyStream>,
    stopped: Option<oneshot::Sender<()>>,
    /// The partition whose queue this is; None for the shared reply queue.
    source: Option<u32>,
}

impl ReplyConsumer {
    /// A consumer of `stream` from queue `source` (a partition, or None for the shared
    /// reply queue); `stopped` fires when it stops.
    pub fn new(
        env: Arc<Env>,
        registry: Addr<Registry>,
        stream: ReplyStream,
        stopped: oneshot::Sender<()>,
        source: Option<u32>,
    ) -> Self {
        ReplyConsumer {
            env,
            registry,
            stream: Some(stream),
            stopped: Some(stopped),
            source,
        }
    }
}

impl Actor for ReplyConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(tx) = self.stopped.take() {
            let _ = tx.send(());
        }
    }
}

/// What to do with a delivery once its fate is known.
enum Settle {
    Ack(&'static str),
    /// Copy to the DLQ with this reason; also record it against the saga, if one is named.
    DeadLetter(String, Option<uuid::Uuid>),
    Requeue,
    /// Pass it on to the queue of its partition, held by another instance.
    Forward(u32),
}

/// Where a delivery for a partition this instance does not hold goes: on to that
/// partition's queue, or, if it came from there, back to it for the owner to take.
fn elsewhere(partition: u32, source: Option<u32>) -> Settle {
    if source == Some(partition) {
        Settle::Requeue
    } else {
        Settle::Forward(partition)
    }
}

impl StreamHandler<ReplyDelivery> for ReplyConsumer {
    fn handle(&mut self, delivery: ReplyDelivery, _ctx: &mut Self::Context) {
        let env = self.env.clone();
        let registry = self.registry.clone();
        let source = self.source;
        if env.drain.is_draining() {
            // Shutting down: leave it unacked. Requeueing it now would have the broker hand
            // it straight back; closing the channel returns it to the queue for the next start.
            drop(delivery);
            return;
        }
        env.drain
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Each delivery is settled on its own task: many sagas advance at once, bounded by prefetch.
        actix::spawn(async move {
            // A hand-over is taken only from a partition queue, and only signed; on the
            // shared reply queue every message is a reply, whatever its AMQP type.
            let settle = match source {
                Some(_) if delivery.is_control() => {
                    match env.broker.authenticate_control(&delivery, source) {
                        Ok(()) => handover::control(&env, &registry, &delivery, source).await,
                        Err(why) => {
                            env.metrics
                                .replies
                                .with_label_values(&["forged_hand_over"])
                                .inc();
                            Settle::DeadLetter(why.to_string(), None)
                        }
                    }
                }
                _ => reply(&env, &registry, &delivery, source).await,
            };
            settle_delivery(&env, delivery, settle).await;
            env.drain
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        match self.source {
            // Cancelled by the broker (its queue deleted) or its channel closed while the
            // partition is held: the lease loop, woken now, declares and consumes it again.
            Some(p) if self.env.ownership.epoch(p).is_some() && !self.env.drain.is_draining() => {
                log::debug!("consumer of partition {p} stopped; consuming its queue again");
                self.env.ownership.recheck();
            }
            // Cancelled because the partition changed hands.
            Some(p) => log::debug!("consumer of partition {p} stopped"),
            // Start-up's supervisor consumes it again (or reconnects).
            None => log::warn!("reply stream ended; consuming the reply queue again"),
        }
        ctx.stop();
    }
}

/// What becomes of a delivery taken as a participant's reply.
async fn reply(
    env: &Env,
    registry: &Addr<Registry>,
    delivery: &ReplyDelivery,
    source: Option<u32>,
) -> Settle {
    let reply = match decode_reply(delivery.data(), delivery.correlation_id()) {
        Ok(reply) => reply,
        Err(reason) if delivery.is_control() => {
            let why = format!("{}; as a reply: {reason}", ControlRefusal::SharedQueue);
            return Settle::DeadLetter(why, salvage_saga_id(delivery.data()));
        }
        Err(reason) => {
            return Settle::DeadLetter(reason.to_string(), salvage_saga_id(delivery.data()))
        }
    };
    if !env.ownership.owns(&reply.saga_id) {
        return elsewhere(env.ownership.partition(&reply.saga_id), source);
    }
    let saga_id = reply.saga_id;
    let event = Event::Reply {
        command_id: reply.command_id,
        outcome: reply.outcome,
    };
    let answer = registry
        .send(DeliverEvent {
            saga_id,
            event,
            note: None,
            trace: delivery.traceparent(),
            guard: None,
        })
        .await;
    match answer {
        Ok(Ok(Applied::Transitioned)) => Settle::Ack("accepted"),
        // Judged stale on state this instance may no longer own (its lease ran out
        // meanwhile): not ours to drop; its owner judges it again.
        Ok(Ok(Applied::Ignored(_))) if !env.ownership.owns(&saga_id) => {
            elsewhere(env.ownership.partition(&saga_id), source)
        }
        Ok(Ok(Applied::Ignored(TransitionError::Stale(_))))
        | Ok(Ok(Applied::Ignored(TransitionError::Finished(_)))) => Settle::Ack("ignored"),
        Ok(Ok(Applied::Ignored(e))) => Settle::DeadLetter(e.to_string(), Some(saga_id)),
        Ok(Err(DeliverError::UnknownSaga(id))) => {
            Settle::DeadLetter(PoisonReason::UnknownSaga(id).to_string(), None)
        }
        Ok(Err(DeliverError::NotOwner(p))) => elsewhere(p, source),
        Ok(Err(DeliverError::Store(e))) if !e.is_transient() => match e {
            crate::store::StoreError::Corrupt(_) | crate::store::StoreError::Batch(_) => {
                Settle::DeadLetter(e.to_string(), Some(saga_id))
            }
            _ => Settle::Requeue,
        },
        Ok(Err(_)) | Err(_) => Settle::Requeue,
    }
}

async fn settle_delivery(env: &Env, delivery: ReplyDelivery, settle: Settle) {
    let replies = &env.metrics.replies;
    let result = match settle {
        Settle::Ack(outcome) => {
            replies.with_label_values(&[outcome]).inc();
            delivery.ack().await
        }
        Settle::DeadLetter(reason, saga_id) => {
            let shown = saga_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into());
            log::warn!("saga={shown} step=- reply dead-lettered: {reason}");
            if let Some(id) = saga_id {
                let pool = env.writer.pool();
                if let Err(e) =
                    crate::store::queries::quarantine(pool, id, &reason, delivery.data()).await
                {
                    log::warn!("saga={id} step=- quarantine not recorded ({e}); reply handed back");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = delivery.requeue().await;
                    return;
                }
            }
            match env
                .broker
                .dead_letter(delivery.data(), delivery.properties(), &reason)
                .await
            {
                Ok(()) => {
                    replies.with_label_values(&["dead_lettered"]).inc();
                    delivery.ack().await
                }
                // Not copied to the DLQ: hand it back rather than lose it (after a pause,
                // so that it does not spin).
                Err(e) => {
                    log::warn!(
                        "saga={shown} step=- dead-lettering failed ({e}); reply handed back"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    delivery.requeue().await
                }
            }
        }
        Settle::Forward(partition) => {
            match env
                .broker
                .forward(partition, delivery.data(), delivery.properties())
                .await
            {
                Ok(()) => {
                    replies.with_label_values(&["forwarded"]).inc();
                    delivery.ack().await
                }
                // Not confirmed into the partition's queue (gone, or the broker is away):
                // handed back, to be passed on again once its owner declared it again.
                Err(e) => {
                    log::debug!("passing a delivery on to partition {partition} failed: {e}");
                    replies.with_label_values(&["forward_failed"]).inc();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    delivery.requeue().await
                }
            }
        }
        Settle::Requeue => {
            replies.with_label_values(&["requeued"]).inc();
            // A short pause so a reply that cannot be applied yet does not spin.
            tokio::time::sleep(Duration::from_millis(200)).await;
            delivery.requeue().await
        }
    };
    if let Err(e) = result {
        // The channel is gone: the broker redelivers the reply on the next connection.
        log::debug!("settling a reply failed: {e}");
    }
}
