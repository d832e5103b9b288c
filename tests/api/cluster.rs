//! Several instances on one database: partitions, fencing, hand-over between instances.

use std::sync::Arc;
use std::time::Duration;

use saga_service::cluster::partition_of;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[actix_web::test]
async fn the_partition_of_an_id_is_the_same_in_rust_and_in_postgres() {
    let app = spawn_app(None).await;
    let mut ids: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
    ids.extend((0..200u128).map(Uuid::from_u128));
    ids.push(Uuid::max());
    let db = db(&app.names).await;
    for n in [1u32, 7, 64, 1024] {
        let rows = db
            .query(
                "SELECT id, saga_partition(id, $2) FROM unnest($1::uuid[]) AS t(id)",
                &[&ids, &(n as i32)],
            )
            .await
            .expect("saga_partition");
        for row in rows {
            let id: Uuid = row.get(0);
            let sql = row.get::<_, i32>(1) as u32;
            assert_eq!(sql, partition_of(&id, n), "id {id}, {n} partitions");
        }
    }
}

#[actix_web::test]
async fn an_instance_whose_partition_changed_hands_cannot_advance_its_sagas() {
    let _ = env_logger::builder().is_test(true).try_init();
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    // Renewals far apart: the instance can only learn of the loss from its fenced writes
    // (which then make it check its leases at once).
    let app = start_app_with(names, true, |s| {
        s.cluster.lease = Duration::from_secs(120);
        s.cluster.renew_every = Duration::from_secs(60);
    })
    .await;
    let participants = Participants::start(&app.names, 3, Arc::new(|_| Answer::Silent)).await;
    let id = app.start_saga(json!({})).await;
    let got = wait_until(Duration::from_secs(10), || async {
        !participants.for_saga(id).is_empty()
    })
    .await;
    assert!(got, "step 1 sent");
    let command = participants.for_saga(id)[0].clone();
    // Another instance takes the saga's partition over behind this one's back (as after
    // this one stalled longer than its lease).
    let partition = partition_of(&id, 64) as i32;
    let db = db(&app.names).await;
    db.execute(
        "UPDATE saga_partitions SET owner = 'intruder', epoch = epoch + 1,
                expires_at = now() + interval '1 hour' WHERE partition = $1",
        &[&partition],
    )
    .await
    .expect("steal the partition");
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    // The reply ends up on the partition's queue, for its owner: this instance let it go.
    let partition_queue = format!("{}.p{partition}", app.names.reply_queue);
    let handed_on = wait_until(Duration::from_secs(15), || async {
        queue_depth(&partition_queue).await == 1
    })
    .await;
    assert!(
        handed_on,
        "the reply was passed on to the partition's queue"
    );
    let version: i64 = db
        .query_one("SELECT version FROM sagas WHERE id = $1", &[&id])
        .await
        .expect("saga row")
        .get(0);
    assert_eq!(version, 1, "the ex-owner did not advance the saga");
    let step2 = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.step() != command.step())
        .count();
    assert_eq!(
        step2, 0,
        "no command for a transition the ex-owner did not commit"
    );
    let history = db
        .query("SELECT version FROM saga_events WHERE saga_id = $1", &[&id])
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "no history row beyond the start");
    let lost = app
        .metric("saga_partition_changes_total{change=\"lost\"}")
        .await;
    assert_eq!(
        lost,
        Some(1.0),
        "the loss of the partition is noticed and counted"
    );
    participants.close().await;
}

#[actix_web::test]
async fn any_instance_starts_shows_and_aborts_any_saga_and_the_owner_drives_it() {
    let first = spawn_app(None).await;
    let names = first.names.clone();
    // Step 1 answers, step 2 stays silent (so a saga waits there), compensations answer.
    let script: Script = Arc::new(|c: &Received| match (c.step(), c.action()) {
        (step, "execute") if step.ends_with('2') => Answer::Silent,
        (step, _) => Answer::Done(json!({ "step": step })),
    });
    let participants = Participants::start(&names, 3, script).await;
    let second = start_app_with(names.clone(), false, |s| {
        s.cluster.instance_id = "second".into()
    })
    .await;
    let split = wait_until(Duration::from_secs(20), || async {
        let h = lease_holders(&names).await;
        h.len() == 2 && h.values().all(|&n| n == 32)
    })
    .await;
    assert!(
        split,
        "two instances hold 32 partitions each: {:?}",
        lease_holders(&names).await
    );
    // A saga of the second instance's partitions, started on the first.
    let id = id_held_by(&names, "second").await;
    let r = first
        .start(json!({"saga_id": id, "saga": first.saga(), "payload": {}}))
        .await;
    assert_eq!(r.status(), 200);
    let waiting = wait_until(Duration::from_secs(15), || async {
        participants
            .for_saga(id)
            .iter()
            .any(|c| c.step().ends_with('2'))
    })
    .await;
    assert!(waiting, "the owner drove the saga to step 2");
    assert_eq!(second.saga_view(&id.to_string()).await["status"], "running");
    // Aborted on the instance that does not drive it: checked there, applied by the owner.
    let r = first
        .http
        .post(first.url(&format!("/sagas/{id}/abort")))
        .json(&json!({"by": "ops", "reason": "test"}))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["handed_to_partition"], partition_of(&id, 64));
    assert!(
        first
            .wait_status(id, "compensated", Duration::from_secs(15))
            .await
    );
    let view = first.saga_view(&id.to_string()).await;
    let history = view["history"].to_string();
    assert!(history.contains("by ops: test"), "{history}");
    // A second abort makes no sense any more: refused on either instance.
    for app in [&first, &second] {
        let r = app
            .http
            .post(app.url(&format!("/sagas/{id}/abort")))
            .send()
            .await
            .expect("abort");
        assert_eq!(r.status(), 409);
    }
    // Each step ran under one command_id.
    for step in ["1", "2"] {
        let ids: std::collections::BTreeSet<String> = participants
            .for_saga(id)
            .iter()
            .filter(|c| c.step().ends_with(step) && c.action() == "execute")
            .map(|c| c.command_id().to_string())
            .collect();
        assert_eq!(ids.len(), 1, "step {step}: {ids:?}");
    }
    second.stop().await;
    participants.close().await;
}

#[actix_web::test]
async fn a_write_racing_a_take_over_waits_for_it_and_is_refused() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| {
        s.cluster.lease = Duration::from_secs(120);
        s.cluster.renew_every = Duration::from_secs(60);
    })
    .await;
    let participants = Participants::start(&app.names, 3, Arc::new(|_| Answer::Silent)).await;
    let id = app.start_saga(json!({})).await;
    let got = wait_until(Duration::from_secs(10), || async {
        !participants.for_saga(id).is_empty()
    })
    .await;
    assert!(got, "step 1 sent");
    let command = participants.for_saga(id)[0].clone();
    let partition = partition_of(&id, 64) as i32;
    // A take-over in flight: another instance has locked the lease row to take it.
    let mut thief = db(&app.names).await;
    let tx = thief.transaction().await.expect("begin");
    tx.query(
        "SELECT 1 FROM saga_partitions WHERE partition = $1 FOR UPDATE",
        &[&partition],
    )
    .await
    .expect("lock the lease row");
    let reply = json!({"command_id": command.command_id(), "saga_id": id, "status": "done"});
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    // The instance's snapshot write waits on the lease row instead of reading past it.
    let observer = db(&app.names).await;
    let waiting = wait_until(Duration::from_secs(10), || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE '%UPDATE sagas%'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(
        waiting,
        "the fenced write waits for the take-over in flight"
    );
    tx.execute(
        "UPDATE saga_partitions SET owner = 'thief', epoch = epoch + 1,
                expires_at = now() + interval '1 hour' WHERE partition = $1",
        &[&partition],
    )
    .await
    .expect("take it");
    tx.commit().await.expect("commit the take-over");
    let advanced = wait_until(Duration::from_secs(3), || async {
        observer
            .query_one("SELECT version FROM sagas WHERE id = $1", &[&id])
            .await
            .map(|r| r.get::<_, i64>(0) != 1)
            .unwrap_or(false)
    })
    .await;
    assert!(!advanced, "the write made under the old epoch was refused");
    participants.close().await;
}

#[actix_web::test]
async fn with_two_instances_each_reply_goes_straight_to_its_owners_own_queue_without_a_forwarding_hop(
) {
    let first = spawn_app(None).await;
    let names = first.names.clone();
    let participants = Participants::start(&names, 3, always_done()).await;
    let second = start_app_with(names.clone(), false, |s| {
        s.cluster.instance_id = "second".into()
    })
    .await;
    let split = wait_until(Duration::from_secs(20), || async {
        let h = lease_holders(&names).await;
        h.len() == 2 && h.values().all(|&n| n == 32)
    })
    .await;
    assert!(split, "{:?}", lease_holders(&names).await);
    // Half the sagas belong to the instance they were not started on.
    let ids = start_on_both_and_complete(&first, &second, 40).await;
    let holders = partition_owners(&names).await;
    for id in &ids {
        let owner = &holders[&(partition_of(id, 64) as i32)];
        let own = format!("{}.i.{owner}", names.reply_queue);
        for c in participants.for_saga(*id) {
            assert_eq!(c.reply_to.as_deref(), Some(own.as_str()), "saga {id}");
        }
    }
    for app in [&first, &second] {
        assert_eq!(
            crate::amqp::replies_counted(app, "forwarded").await,
            0,
            "no reply passed through the shared queue and on to its owner"
        );
    }
    let accepted = crate::amqp::replies_counted(&first, "accepted").await
        + crate::amqp::replies_counted(&second, "accepted").await;
    assert_eq!(accepted, 120, "3 replies per saga, each taken by its owner");
    second.stop().await;
    participants.close().await;
}

#[actix_web::test]
async fn with_quorum_queues_two_instances_each_declare_and_consume_their_own_queue() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    // The participants' classic command queues first: the apps use them as they are.
    let participants = Participants::start(&names, 3, always_done()).await;
    let quorum = saga_service::config::QueueType::Quorum;
    let first = start_app_with(names.clone(), true, |s| s.queue_type = quorum).await;
    let second = start_app_with(names.clone(), false, |s| {
        s.queue_type = quorum;
        s.cluster.instance_id = "second".into();
    })
    .await;
    let split = wait_until(Duration::from_secs(20), || async {
        lease_holders(&names).await.len() == 2
    })
    .await;
    assert!(split, "{:?}", lease_holders(&names).await);
    // An expiring quorum queue each: declared, and consumed by its instance alone.
    let own = [
        names.default_instance_queue(),
        format!("{}.i.second", names.reply_queue),
    ];
    assert!(
        crate::amqp::all_consumed(&own, Duration::from_secs(5)).await,
        "each instance consumes its own queue"
    );
    start_on_both_and_complete(&first, &second, 20).await;
    second.stop().await;
    participants.close().await;
}

/// Starts `n` sagas, alternating between two instances, and waits until each completed.
async fn start_on_both_and_complete(first: &TestApp, second: &TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let app = if i % 2 == 0 { first } else { second };
        ids.push(app.start_saga(json!({})).await);
    }
    for id in &ids {
        assert!(
            first
                .wait_status(*id, "completed", Duration::from_secs(20))
                .await,
            "saga {id}"
        );
    }
    ids
}

#[actix_web::test]
async fn an_instance_whose_own_queue_the_broker_refuses_names_its_partition_queues_instead() {
    let first = spawn_app(None).await;
    let names = first.names.clone();
    let participants = Participants::start(&names, 3, always_done()).await;
    // Another connection holds the second instance's queue name exclusively: the broker
    // refuses it to that instance, as a queue limit or missing permissions would.
    let squatter = crate::amqp::connect().await;
    let channel = squatter.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            format!("{}.i.second", names.reply_queue).as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the exclusive queue");
    let second = start_app_with(names.clone(), false, |s| {
        s.cluster.instance_id = "second".into()
    })
    .await;
    let split = wait_until(Duration::from_secs(20), || async {
        lease_holders(&names).await.len() == 2
    })
    .await;
    assert!(split, "{:?}", lease_holders(&names).await);
    let ids = start_on_both_and_complete(&first, &second, 20).await;
    let holders = partition_owners(&names).await;
    let mut fell_back = 0;
    for id in &ids {
        let partition = partition_of(id, 64);
        let expected = match holders[&(partition as i32)].as_str() {
            "second" => {
                fell_back += 1;
                format!("{}.p{partition}", names.reply_queue)
            }
            owner => format!("{}.i.{owner}", names.reply_queue),
        };
        for c in participants.for_saga(*id) {
            assert_eq!(c.reply_to.as_deref(), Some(expected.as_str()), "saga {id}");
        }
    }
    assert!(fell_back > 0, "some sagas belong to the second instance");
    second.stop().await;
    let _ = squatter.close(200, "bye".into()).await;
    participants.close().await;
}
