//! `Acks` against the real broker: a multiple ack never covers a delivery whose work is not
//! done, whatever order they settle in; a stalled one lets the later ones through alone.
//! What the broker still holds is counted after the channel closes (unacked deliveries go
//! back to the queue then).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use saga_participant::acks::Acks;

use crate::helpers::{amqp_url, declare};

struct Rig {
    conn: Connection,
    queue: String,
}

impl Rig {
    /// A fresh queue holding `n` messages.
    async fn start(n: usize) -> Rig {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ: is it running? (make services)");
        let queue = format!("kit-acks-{}", uuid::Uuid::new_v4().simple());
        let ch = conn.create_channel().await.expect("channel");
        declare(&ch, &queue).await;
        for i in 0..n {
            ch.basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        }
        let _ = ch.close(200, "published".into()).await;
        Rig { conn, queue }
    }

    /// A channel consuming the queue, its `Acks`, and its first `n` deliveries.
    async fn consume(&self, n: usize) -> (Channel, Acks, Vec<Delivery>) {
        let ch = self.conn.create_channel().await.expect("channel");
        let acks = Acks::new(ch.clone());
        ch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                ShortString::from(self.queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut deliveries = Vec::new();
        while deliveries.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
            match next {
                Ok(Some(Ok(d))) => deliveries.push(d),
                other => panic!("delivery {} not received: {other:?}", deliveries.len()),
            }
        }
        (ch, acks, deliveries)
    }

    /// Messages in the queue once every channel that held some is closed.
    async fn ready_after_close(&self, ch: Channel, expected: u32) -> u32 {
        let _ = ch.close(200, "done".into()).await;
        let probe = self.conn.create_channel().await.expect("channel");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let q = probe
                .queue_declare(
                    ShortString::from(self.queue.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("passive declare");
            let count = q.message_count();
            if count == expected || std::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) {
        if let Ok(ch) = self.conn.create_channel().await {
            let _ = ch
                .queue_delete(
                    ShortString::from(self.queue.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = self.conn.close(200, "test done".into()).await;
    }
}

#[tokio::test]
async fn later_deliveries_settled_first_are_not_acked_past_an_unsettled_one() {
    let rig = Rig::start(4).await;
    let (ch, acks, d) = rig.consume(4).await;
    // 2, 3 and 4 are done; 1 is still being worked on when the process dies.
    for delivery in &d[1..] {
        acks.ack(delivery.delivery_tag).await.expect("ack");
    }
    let left = rig.ready_after_close(ch, 4).await;
    assert_eq!(
        left, 4,
        "an ack covered the unsettled first delivery (or was sent early)"
    );
    rig.finish().await;
}

#[tokio::test]
async fn once_the_first_settles_one_multiple_ack_covers_the_run() {
    let rig = Rig::start(4).await;
    let (ch, acks, d) = rig.consume(4).await;
    for i in [2, 1] {
        acks.ack(d[i].delivery_tag).await.expect("ack");
    }
    acks.ack(d[0].delivery_tag).await.expect("ack");
    // The fourth was never settled: it alone goes back.
    let left = rig.ready_after_close(ch, 1).await;
    assert_eq!(left, 1, "deliveries 1-3 acked, 4 held");
    rig.finish().await;
}

#[tokio::test]
async fn a_rejected_delivery_is_not_acked_by_the_run_passing_it() {
    let rig = Rig::start(3).await;
    let (ch, acks, d) = rig.consume(3).await;
    d[1].reject(lapin::options::BasicRejectOptions { requeue: true })
        .await
        .expect("reject");
    acks.settled_without_ack(d[1].delivery_tag);
    acks.ack(d[0].delivery_tag).await.expect("ack");
    acks.ack(d[2].delivery_tag).await.expect("ack");
    // The rejected one went back (redelivered to this consumer or ready); the run of
    // 1..3 was acked with a frame naming 3, which the broker accepted (the channel lives).
    assert!(ch.status().connected(), "the broker refused an ack");
    let left = rig.ready_after_close(ch, 1).await;
    assert_eq!(
        left, 1,
        "the rejected delivery is back in the queue, the others acked"
    );
    rig.finish().await;
}

#[tokio::test]
async fn a_stalled_delivery_lets_the_later_ones_be_acked_alone() {
    let rig = Rig::start(4).await;
    let (ch, acks, d) = rig.consume(4).await;
    acks.ack(d[1].delivery_tag).await.expect("ack");
    acks.ack(d[2].delivery_tag).await.expect("ack");
    tokio::time::sleep(Acks::STALL + Duration::from_millis(100)).await;
    // The next ack finds the run stuck at 1 past the stall: 2, 3 and 4 go alone.
    acks.ack(d[3].delivery_tag).await.expect("ack");
    assert!(ch.status().connected(), "the broker refused an ack");
    let left = rig.ready_after_close(ch, 1).await;
    assert_eq!(left, 1, "only the stalled first delivery is back");
    rig.finish().await;
}
