//! The classic fencing test: an instance frozen (SIGSTOP) past its lease while it holds
//! partitions, the other takes them over and drives their sagas, then the frozen one is
//! resumed (SIGCONT) and must not act on what it held: no effect under a second
//! `command_id`, no completed step compensated, no saga moved backwards; it must say that it
//! dropped its partitions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::audit::audit;
use crate::cluster::*;
use crate::helpers::*;
use crate::run::{seed, Run};
use crate::SERIAL;

/// `(status, version)` of every saga.
async fn snapshot_versions(names: &Names) -> BTreeMap<Uuid, (String, i64)> {
    db(names)
        .await
        .query("SELECT id, status, version FROM sagas", &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect()
        })
        .unwrap_or_default()
}

/// `budget`: each step's `(timeout_ms, max_attempts)`.
async fn frozen_past_the_lease(sagas: usize, frozen_for: Duration, budget: (u64, u32)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = Run::with_steps(50, budget.0, budget.1).await;
    let seed = seed();
    println!("frozen instance ({frozen_for:?}) seed {seed}");
    let a = instance(&run, "a", None).await;
    let b = instance(&run, "b", None).await;
    assert!(
        wait_spread(&run.names, &["a", "b"], Duration::from_secs(30)).await,
        "64 partitions spread over a and b: {:?}",
        lease_holders(&run.names).await
    );
    let both = [a.address.clone(), b.address.clone()];
    let mut plan = Plan::new(seed);
    plan.start(&run, &both, sagas / 3).await;
    let held_by_a = lease_holders(&run.names)
        .await
        .get("a")
        .copied()
        .unwrap_or(0);
    let dropped_before = partitions_dropped(&run.http, &a.address).await;

    signal(&a, libc::SIGSTOP);
    let stopped = Instant::now();
    let mut taken_over = None;
    let rounds = (frozen_for.as_millis() / 500).max(1) as usize;
    let per_round = (sagas / 3 / rounds).max(1);
    while stopped.elapsed() < frozen_for {
        plan.start(&run, std::slice::from_ref(&b.address), per_round)
            .await;
        if taken_over.is_none() && lease_holders(&run.names).await.get("b") == Some(&64) {
            taken_over = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the load's pace
    }
    let before_resume = snapshot_versions(&run.names).await;
    signal(&a, libc::SIGCONT);
    let resumed = Instant::now();
    let noticed = poll_until(2 * lease(), Duration::from_millis(50), || async {
        partitions_dropped(&run.http, &a.address).await - dropped_before >= held_by_a as f64
    })
    .await
    .then(|| resumed.elapsed());
    let rest = sagas.saturating_sub(plan.ids.len());
    plan.start(&run, &both, rest).await;
    let finished = wait_all_finished(&run.names, Duration::from_secs(60)).await;

    let mut audit = audit(&run.names, &run.effects, &plan.fails, 3).await;
    let after = snapshot_versions(&run.names).await;
    for (id, (status, version)) in &before_resume {
        let now = after.get(id);
        let moved_back = now.is_none_or(|(s, v)| {
            v < version
                || (matches!(status.as_str(), "completed" | "compensated")
                    && (s != status || v != version))
        });
        if moved_back {
            audit.fail(format!(
                "saga {id} was {status} v{version} when a resumed, is {now:?} at the end"
            ));
        }
    }
    if taken_over.is_none() {
        audit.fail(format!(
            "b never held all 64 partitions while a was frozen {frozen_for:?}"
        ));
    }
    if noticed.is_none() {
        audit.fail(format!(
            "a, resumed, did not report dropping its {held_by_a} partitions within 2 leases: {:?}",
            samples(&run.http, &a.address, "saga_partition_changes_total").await
        ));
    }
    if finished.is_none() {
        audit.fail("sagas still unfinished 60 s after the resume".into());
    }
    if plan.refused > 0 {
        audit.fail(format!("{} starts refused by every instance", plan.refused));
    }
    let log_lines = a
        .log()
        .lines()
        .filter(|l| l.contains("taken over") || l.contains("dropping") || l.contains("expired"))
        .count();
    println!(
        "frozen instance: {} sagas; a held {held_by_a} partitions, frozen {frozen_for:?}; b held \
         all 64 after {taken_over:?}; a reported dropping them {noticed:?} after SIGCONT ({log_lines} \
         log lines about it); all finished {:?} after the resume\n{}",
        plan.ids.len(),
        finished.map(|_| resumed.elapsed()),
        audit.report()
    );
    drop(a);
    drop(b);
    audit.assert_clean("instance frozen past its lease");
}

#[actix_web::test]
async fn an_instance_frozen_past_its_lease_acts_on_nothing_it_held_once_resumed() {
    // A step's sends (5, 3 s apart) outlast the freeze: replies the frozen instance took
    // from the shared reply queue before or during the freeze are late, not lost, if it
    // hands them on when it resumes.
    frozen_past_the_lease(300, 3 * lease(), (3_000, 5)).await;
}

/// A step's sends (4, 2 s apart) end before the freeze does. The frozen instance's consumer
/// of the shared reply queue still holds its prefetch of replies (of every partition, not
/// only its own) and the broker keeps giving it a share of new ones until its connection is
/// declared dead: unless they come back to a live consumer in time (AMQP heartbeat, consumer
/// time-out, per-instance reply queues...), sagas time out and compensate completed steps.
#[actix_web::test]
#[ignore = "full set-up: make chaos"]
async fn replies_taken_by_a_frozen_instance_reach_a_live_one_before_a_step_times_out() {
    frozen_past_the_lease(300, 3 * lease(), (2_000, 4)).await;
}

#[actix_web::test]
#[ignore = "full size: make chaos"]
async fn an_instance_frozen_past_its_lease_full_1000_sagas() {
    frozen_past_the_lease(1000, 4 * lease(), (3_000, 6)).await;
}
