//! The saga language under faults: a kill -9 loop on sagas with a parallel group whose
//! participants answer retryable errors, audited for the same invariants as the classic
//! loop (one effect per step, nothing lost, nothing compensated that should not be).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::audit::audit_grouped;
use crate::helpers::*;
use crate::run::*;
use crate::{ServicesGuard, SERIAL};

/// Four steps, `s2` and `s3` a group; every participant answers 10% of executes with a
/// retryable error (re-sent after 50 ms, doubling, up to 8 sends: running out is a
/// one-in-a-hundred-million event per step); 10% of sagas fail at a random step.
async fn grouped_crash_loop(sagas: usize, kills: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _guard = ServicesGuard;
    let run = Run::shaped(4, 10, &["--retryable-error-rate", "0.1"], |names| {
        let mut def = steps(names, 4, 3_000, 8);
        for step in &mut def.steps {
            step.retry_backoff_ms = 50;
        }
        def.steps[1].group = Some("pair".into());
        def.steps[2].group = Some("pair".into());
        def
    })
    .await;
    let seed = seed();
    println!("grouped crash loop seed {seed}");
    let mut rng = Rng(seed);
    let ids: Vec<Uuid> = (0..sagas).map(|_| Uuid::new_v4()).collect();
    let mut fails = BTreeMap::new();
    for id in &ids {
        if rng.below(10) == 0 {
            fails.insert(*id, 1 + rng.below(4) as usize);
        }
    }
    let kill_at: Vec<usize> = (0..kills)
        .map(|_| rng.below(sagas as u64) as usize)
        .collect();
    let mut child = ChildApp::start(&run.names, &run.http).await;
    let began = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let fail = fails.get(id).map(|k| format!("s{k}"));
        assert!(
            run.start(&child.address, *id, fail.as_deref()).await,
            "start {id}"
        );
        if kill_at.contains(&i) {
            child.kill();
            child = ChildApp::start(&run.names, &run.http).await;
        }
    }
    let finished = run.wait_finished(sagas, Duration::from_secs(180)).await;
    println!(
        "grouped crash loop: {sagas} sagas, {kills} kills, finished {finished} after {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let audit = audit_grouped(&run.names, &run.effects, &fails, 4, Some(2..=3)).await;
    println!("{}", audit.report());
    let retried = db(&run.names)
        .await
        .query_one(
            "SELECT count(*) FROM saga_events WHERE event = 'step_retry'",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    assert!(
        retried > 0,
        "the participants' retryable errors were retried"
    );
    assert!(finished, "every saga finished");
    audit.assert_clean("grouped crash loop");
    drop(child);
}

#[actix_web::test]
async fn a_grouped_saga_with_retryable_errors_survives_kill_9_small() {
    grouped_crash_loop(200, 2).await;
}

#[actix_web::test]
#[ignore = "full size: make chaos"]
async fn a_grouped_saga_with_retryable_errors_survives_kill_9_full() {
    grouped_crash_loop(2_000, 5).await;
}
