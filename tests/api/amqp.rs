//! Broker-side tools of the consumer, forwarding and forgery tests: publishing with any
//! properties, looking at a queue's consumers, provoking a channel error, stealing a partition.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use saga_service::cluster::partition_of;
use uuid::Uuid;

use crate::helpers::*;

/// The queue of a saga's partition (of 64).
pub fn partition_queue(names: &Names, id: Uuid) -> String {
    format!("{}.p{}", names.reply_queue, partition_of(&id, 64))
}

/// A connection of the test's own.
pub async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

/// Properties of a forged hand-over: AMQP `type` = `saga.control`, and a signature header if given.
pub fn control_props(signature: Option<&str>) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_type(ShortString::from("saga.control"))
        .with_content_type(ShortString::from("application/json"));
    if let Some(sig) = signature {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-saga-signature"),
            AMQPValue::LongString(LongString::from(sig)),
        );
        headers.insert(
            ShortString::from("x-saga-sent-at"),
            AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
        );
        props = props.with_headers(headers);
    }
    props
}

/// Deletes a queue (its consumers get a basic.cancel from the broker).
pub async fn delete_queue(queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    let _ = conn.close(200, ShortString::from("bye")).await;
}

/// Declares a queue durable, as the orchestrator does.
pub async fn declare_queue(queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare queue");
    let _ = conn.close(200, ShortString::from("bye")).await;
}

/// Consumers of a queue, None when it does not exist.
pub async fn consumers_of(conn: &Connection, queue: &str) -> Option<u32> {
    // A passive declare of a missing queue closes its channel: one channel per look.
    let ch = conn.create_channel().await.ok()?;
    let q = ch
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, ShortString::from("looked")).await;
    Some(q.consumer_count())
}

/// Waits until every one of `queues` exists with exactly one consumer.
pub async fn all_consumed(queues: &[String], within: Duration) -> bool {
    let conn = connect().await;
    let done = wait_until(within, || async {
        for q in queues {
            if consumers_of(&conn, q).await != Some(1) {
                return false;
            }
        }
        true
    })
    .await;
    let _ = conn.close(200, ShortString::from("bye")).await;
    done
}

/// The broker's id (`<rabbit@host.x.y.z>`) of the channel consuming `queue`, if one does.
pub async fn consumer_channel(queue: &str) -> Option<String> {
    // Async: the app under test runs on this thread and must not be blocked meanwhile.
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "channel_pid",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut cols = l.split('\t');
        (cols.next()? == queue).then(|| cols.next().map(str::to_string))?
    })
}

/// Makes the broker close the channel consuming `queue` with 406 PRECONDITION_FAILED, as
/// when its client acks an unknown delivery tag (or a consumer times out). Returns the
/// channel's broker id.
pub async fn provoke_channel_error(queue: &str) -> String {
    // Polled: `rabbitmqctl` under a loaded machine sometimes answers late or with nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let pid = loop {
        if let Some(pid) = consumer_channel(queue).await {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queue} has no consumer (rabbitmqctl list_consumers)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // `rabbit_channel:do/2` runs a method on the channel as if its client had sent it.
    let code = format!(
        "rabbit_channel:do(rabbit_misc:string_to_pid(\"{pid}\"), {{'basic.ack', 987654321, false}})."
    );
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", &code])
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl eval {code}");
    pid
}

/// Hands a saga's partition to an instance that does not exist (as if another one took it
/// over while this one stalled) and waits until the app dropped it.
pub async fn steal_partition(app: &TestApp, id: Uuid) {
    let partition = partition_of(&id, 64) as i32;
    db(&app.names)
        .await
        .execute(
            "UPDATE saga_partitions SET owner = 'intruder', epoch = epoch + 1,
                    expires_at = now() + interval '1 hour' WHERE partition = $1",
            &[&partition],
        )
        .await
        .expect("steal the partition");
    let dropped = wait_until(Duration::from_secs(10), || async {
        app.metric("saga_partition_changes_total{change=\"lost\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(dropped, "the app noticed it lost the partition");
}

/// Lets the stolen partition's lease lapse: the app takes it back at its next round.
pub async fn give_back_partition(app: &TestApp, id: Uuid) {
    let partition = partition_of(&id, 64) as i32;
    db(&app.names)
        .await
        .execute(
            "UPDATE saga_partitions SET expires_at = now() - interval '1 second'
              WHERE partition = $1",
            &[&partition],
        )
        .await
        .expect("let the lease lapse");
}

/// `saga_replies_total{outcome="<outcome>"}` of an app.
pub async fn replies_counted(app: &TestApp, outcome: &str) -> u64 {
    let sample = format!("saga_replies_total{{outcome=\"{outcome}\"}}");
    app.metric(&sample).await.unwrap_or(0.0) as u64
}

/// The first command of a step of a saga, once it has arrived.
pub async fn first_command(participants: &Participants, id: Uuid, step: &str) -> Received {
    let arrived = wait_until(Duration::from_secs(10), || async {
        participants.for_saga(id).iter().any(|c| c.step() == step)
    })
    .await;
    assert!(arrived, "command of {step} sent");
    participants
        .for_saga(id)
        .into_iter()
        .find(|c| c.step() == step)
        .expect("arrived")
}
