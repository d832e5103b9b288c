//! The broker closing a partition's consumer mid-run: the partition's queue is deleted
//! while sagas run on two instances. CONTRACT.md section 7: the consumer is declared and
//! consumed again within 5 s, no reply is left waiting in a queue nobody reads, and every
//! saga finishes.

use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};

use crate::audit::audit;
use crate::cluster::*;
use crate::helpers::*;
use crate::run::{seed, Run};
use crate::SERIAL;

/// Deletes a queue (messages and all); true when the broker did.
pub async fn delete_queue(queue: &str) -> bool {
    let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
        return false;
    };
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    let deleted = ch
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await
        .is_ok();
    let _ = conn.close(200, ShortString::from("bye")).await;
    deleted
}

/// Consumers of a queue, or None when it does not exist.
pub async fn consumers(queue: &str) -> Option<u32> {
    queue_stats(queue).await.map(|(_, consumers)| consumers)
}

/// A partition `owner` holds now.
pub async fn partition_of_owner(names: &Names, owner: &str) -> Option<i32> {
    db(names)
        .await
        .query_opt(
            "SELECT partition FROM saga_partitions WHERE owner = $1 AND expires_at > now()
              ORDER BY random() LIMIT 1",
            &[&owner],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

async fn partition_queues_deleted(sagas: usize, deletions: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = Run::with_steps(50, 2_000, 4).await;
    let seed = seed();
    println!("partition queues deleted seed {seed}");
    let a = instance(&run, "a", None).await;
    let b = instance(&run, "b", None).await;
    assert!(
        wait_spread(&run.names, &["a", "b"], Duration::from_secs(30)).await,
        "64 partitions spread over a and b: {:?}",
        lease_holders(&run.names).await
    );
    let both = [a.address.clone(), b.address.clone()];
    let mut plan = Plan::new(seed);
    let per_round = (sagas / (deletions + 1)).max(1);
    let mut recovered: Vec<(String, Option<Duration>)> = Vec::new();
    for i in 0..deletions {
        plan.start(&run, &both, per_round).await;
        let owner = if i % 2 == 0 { "a" } else { "b" };
        let Some(p) = partition_of_owner(&run.names, owner).await else {
            recovered.push((format!("{owner} held no partition"), None));
            continue;
        };
        let queue = format!("{}.p{p}", run.names.reply_queue);
        assert!(delete_queue(&queue).await, "deleted {queue}");
        let deleted = Instant::now();
        // Sagas keep starting meanwhile, 20 of them on the lost partition: half their
        // replies land on the instance that does not own them, which forwards them to the
        // partition's queue.
        plan.start_in_partition(&run, &both, 20, p as u32).await;
        plan.start(&run, &both, per_round / 2).await;
        let back = poll_until(
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async { consumers(&queue).await.is_some_and(|n| n >= 1) },
        )
        .await
        .then(|| deleted.elapsed());
        recovered.push((format!("{queue} (held by {owner})"), back));
    }
    let rest = sagas.saturating_sub(plan.ids.len());
    plan.start(&run, &both, rest).await;
    let finished = wait_all_finished(&run.names, Duration::from_secs(60)).await;

    let mut audit = audit(&run.names, &run.effects, &plan.fails, 3).await;
    for (queue, back) in &recovered {
        match back {
            Some(t) if *t <= Duration::from_secs(5) => {}
            Some(t) => audit.fail(format!("{queue} consumed again only after {t:?} (> 5 s)")),
            None => audit.fail(format!("{queue} not consumed again within 15 s")),
        }
    }
    if finished.is_none() {
        audit.fail("sagas still unfinished 60 s after the last start".into());
    }
    if plan.refused > 0 {
        audit.fail(format!("{} starts refused by every instance", plan.refused));
    }
    println!(
        "partition queues deleted: {} sagas; consumed again after {recovered:?}; all finished \
         {finished:?} after the last start\n{}",
        plan.ids.len(),
        audit.report()
    );
    drop(a);
    drop(b);
    audit.assert_clean("partition queues deleted");
}

#[actix_web::test]
async fn a_deleted_partition_queue_is_consumed_again_within_5_s_and_loses_nothing() {
    partition_queues_deleted(300, 2).await;
}

#[actix_web::test]
#[ignore = "full size: make chaos"]
async fn deleted_partition_queues_full_1000_sagas_6_deletions() {
    partition_queues_deleted(1000, 6).await;
}
