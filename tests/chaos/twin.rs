//! A second process started with the `SAGA_INSTANCE_ID` of a live one. CONTRACT.md
//! section 7: it takes no partitions and answers `/readiness` 500 `instance id in use`
//! until the other has been silent for `SAGA_LEASE_MS`; the live one is not disturbed.
//! Then the live one is killed with -9: the twin becomes ready within the lease and a few
//! seconds, and finishes the sagas.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::audit::audit;
use crate::cluster::*;
use crate::helpers::*;
use crate::run::{seed, Run};
use crate::SERIAL;

/// `partition -> (owner, epoch)` of every lease.
async fn leases(names: &Names) -> BTreeMap<i32, (Option<String>, i64)> {
    db(names)
        .await
        .query("SELECT partition, owner, epoch FROM saga_partitions", &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect()
        })
        .unwrap_or_default()
}

async fn twin_instance_id(sagas: usize, watch: Duration) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = Run::with_steps(50, 2_000, 4).await;
    let seed = seed();
    println!("twin instance id seed {seed}");
    let mut first = instance(&run, "solo", None).await;
    assert!(
        wait_spread(&run.names, &["solo"], Duration::from_secs(30)).await,
        "the first instance holds all 64 partitions"
    );
    let mut plan = Plan::new(seed);
    let one = [first.address.clone()];
    plan.start(&run, &one, sagas / 3).await;
    let held = leases(&run.names).await;
    let dropped_before = partitions_dropped(&run.http, &first.address).await;
    let mut problems = Vec::new();

    let twin = spawn_instance(&run, "solo", None, &[]);
    // Until it says `instance id in use` (as it should) or `ok` (as it must not).
    let answered = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            readiness_is(&run.http, &twin.address, 500, "instance id in use").await
                || readiness_is(&run.http, &twin.address, 200, "ok").await
        },
    )
    .await;
    let refused =
        answered && readiness_is(&run.http, &twin.address, 500, "instance id in use").await;
    if !refused {
        problems.push(format!(
            "the twin's /readiness is not 500 `instance id in use` but {}",
            readiness(&run.http, &twin.address).await
        ));
    }
    let watch_from = Instant::now();
    let mut moved: BTreeMap<i32, String> = BTreeMap::new();
    let mut twin_held = 0.0f64;
    let mut first_unready = Vec::new();
    while watch_from.elapsed() < watch {
        plan.start(&run, &one, 5).await;
        for (p, now) in leases(&run.names).await {
            if held.get(&p) != Some(&now) && !moved.contains_key(&p) {
                moved.insert(p, format!("{:?} -> {now:?}", held.get(&p)));
            }
        }
        for (_, v) in samples(&run.http, &twin.address, "saga_partitions_held").await {
            twin_held = twin_held.max(v);
        }
        if !readiness_is(&run.http, &first.address, 200, "ok").await {
            first_unready.push(readiness(&run.http, &first.address).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // the watch's pace
    }
    if !moved.is_empty() {
        problems.push(format!(
            "{} of the first instance's leases changed while the twin ran, e.g. {:?}",
            moved.len(),
            moved.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if twin_held > 0.0 {
        problems.push(format!("the twin reported holding {twin_held} partitions"));
    }
    let dropped = partitions_dropped(&run.http, &first.address).await - dropped_before;
    if dropped > 0.0 {
        problems.push(format!("the first instance dropped {dropped} partitions"));
    }
    if !first_unready.is_empty() {
        problems.push(format!(
            "the first instance was not ready {} times: {:?}",
            first_unready.len(),
            first_unready.first()
        ));
    }
    let first_done = wait_all_finished(&run.names, Duration::from_secs(30)).await;
    if first_done.is_none() {
        problems.push(
            "the sagas started on the first instance did not all finish while the twin ran".into(),
        );
    }

    first.kill();
    let killed = Instant::now();
    let ready = poll_until(
        lease() + Duration::from_secs(15),
        Duration::from_millis(100),
        || readiness_is(&run.http, &twin.address, 200, "ok"),
    )
    .await
    .then(|| killed.elapsed());
    match ready {
        Some(t) if t <= lease() + Duration::from_secs(5) => {}
        other => problems.push(format!(
            "the twin ready {other:?} after kill -9 of the first (want within SAGA_LEASE_MS + 5 s)"
        )),
    }
    let rest = sagas.saturating_sub(plan.ids.len());
    plan.start(&run, std::slice::from_ref(&twin.address), rest)
        .await;
    let finished = wait_all_finished(&run.names, Duration::from_secs(60)).await;

    let mut audit = audit(&run.names, &run.effects, &plan.fails, 3).await;
    for p in problems {
        audit.fail(p);
    }
    if finished.is_none() {
        audit.fail("sagas still unfinished 60 s after the twin took over".into());
    }
    if plan.refused > 0 {
        audit.fail(format!("{} starts refused by every instance", plan.refused));
    }
    println!(
        "twin instance id: {} sagas; twin refused: {refused}; leases moved: {}; twin ready \
         {ready:?} after kill -9 of the first\n{}",
        plan.ids.len(),
        moved.len(),
        audit.report()
    );
    drop(twin);
    audit.assert_clean("twin instance id");
}

#[actix_web::test]
async fn a_twin_instance_id_takes_nothing_until_the_first_is_gone() {
    twin_instance_id(150, 3 * lease()).await;
}

#[actix_web::test]
#[ignore = "full size: make chaos"]
async fn a_twin_instance_id_full_600_sagas_5_leases() {
    twin_instance_id(600, 5 * lease()).await;
}
