//! Definitions over HTTP: `PUT /definitions/{name}` stores a version when the content
//! changed, `GET` reads them back, and a start after the `PUT` answered runs the new
//! version on any instance, while sagas already running finish on theirs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

impl TestApp {
    /// `PUT /definitions/{name}` with a JSON body (and a bearer token, if given).
    async fn put_definition(&self, name: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .put(self.url(&format!("/definitions/{name}")))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("PUT definition")).await
    }

    /// `GET <path>`: status and JSON body.
    async fn get_json(&self, path: &str) -> (u16, Value) {
        answer(self.http.get(self.url(path)).send().await.expect("GET")).await
    }

    /// The definition version a saga runs on, from the `sagas` table.
    async fn definition_version(&self, id: Uuid) -> i32 {
        db(&self.names)
            .await
            .query_one("SELECT definition_version FROM sagas WHERE id = $1", &[&id])
            .await
            .expect("saga row")
            .get(0)
    }

    /// The version of `name` this instance starts new sagas on, as it knows it now.
    fn current_version(&self, name: &str) -> Option<i32> {
        let core = self.state.core.get()?;
        core.env.catalog.current(name).map(|d| d.version)
    }
}

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One step per `(name, queue)`, every optional key at its default.
fn definition(steps: &[(&str, &str)]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(name, queue)| json!({"name": name, "queue": queue}))
        .collect();
    json!({ "steps": steps })
}

#[actix_web::test]
async fn versions_count_up_with_the_content_and_the_same_content_keeps_its_version() {
    let app = spawn_app(None).await;
    let saga = app.saga().to_string();
    let (q1, q2, q3) = (app.names.queue(1), app.names.queue(2), app.names.queue(3));
    let file_content = definition(&[("s1", &q1), ("s2", &q2), ("s3", &q3)]);
    // The file's definition is version 1; the same content put again keeps it, also with
    // default keys spelled out and the name given in the body.
    let (status, body) = app.put_definition(&saga, &file_content, None).await;
    assert_eq!((status, &body), (200, &json!({"name": saga, "version": 1})));
    let mut explicit = file_content.clone();
    explicit["name"] = json!(saga);
    explicit["steps"][0]["compensate"] = json!(true);
    explicit["steps"][0]["timeout_ms"] = json!(30_000);
    assert_eq!(
        app.put_definition(&saga, &explicit, None).await.1["version"],
        1
    );
    let shorter = definition(&[("s1", &q1)]);
    assert_eq!(
        app.put_definition(&saga, &shorter, None).await.1["version"],
        2
    );
    assert_eq!(
        app.put_definition(&saga, &shorter, None).await.1["version"],
        2
    );
    // Back to the first content: a new version, since it differs from the latest.
    assert_eq!(
        app.put_definition(&saga, &file_content, None).await.1["version"],
        3
    );
    let fresh = format!("{}_fresh", app.names.prefix);
    assert_eq!(
        app.put_definition(&fresh, &shorter, None).await.1["version"],
        1
    );

    let (status, latest) = app.get_json(&format!("/definitions/{saga}")).await;
    assert_eq!(status, 200);
    assert_eq!(latest["version"], 3);
    assert_eq!(latest["name"], saga.as_str());
    assert_eq!(latest["steps"].as_array().map(Vec::len), Some(3));
    let (status, older) = app
        .get_json(&format!("/definitions/{saga}?version=2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(older["version"], 2);
    assert_eq!(
        older["steps"],
        json!([{"name": "s1", "queue": q1, "compensate": true,
        "timeout_ms": 30000, "max_attempts": 3}])
    );
    // What GET answers can be put back as it is: same content, same version.
    assert_eq!(
        app.put_definition(&saga, &older, None).await.1["version"],
        4
    );
    assert_eq!(
        app.put_definition(&saga, &older, None).await.1["version"],
        4
    );

    let (status, list) = app.get_json("/definitions").await;
    assert_eq!(status, 200);
    let versions: Vec<(String, i64)> = list["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or("").to_string(),
                d["version"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![("default".to_string(), 1), (fresh, 1), (saga.clone(), 4)],
        "the latest of each, by name"
    );

    for (path, status) in [
        (format!("/definitions/{saga}?version=9"), 404),
        (format!("/definitions/{saga}?version=0"), 404),
        ("/definitions/no-such-saga".to_string(), 404),
        (format!("/definitions/{saga}?version=two"), 400),
        (format!("/definitions/{saga}?version=1.5"), 400),
    ] {
        let (got, body) = app.get_json(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[actix_web::test]
async fn an_invalid_definition_is_refused_with_its_reason_and_nothing_is_stored() {
    let app = spawn_app(None).await;
    let name = format!("{}_new", app.names.prefix);
    let step = |name: &str| json!({"name": name, "queue": "q"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"steps": []}), "has no steps"),
        (json!({}), "missing field `steps`"),
        (
            json!({"steps": [step("a"), step("a")]}),
            "two steps named `a`",
        ),
        (
            json!({"steps": [{"name": "a", "queue": ""}]}),
            "step `a` of saga",
        ),
        (json!({"steps": [{"name": "a"}]}), "missing field `queue`"),
        (
            json!({"steps": [{"name": "a", "queue": "q", "timeout": 5}]}),
            "unknown field `timeout`",
        ),
        (
            json!({"steps": [step("a")], "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            json!({"name": "other", "steps": [step("a")]}),
            "but the path",
        ),
        (
            json!({"name": 7, "steps": [step("a")]}),
            "`name` must be a string",
        ),
        (
            json!({"steps": [{"name": "a", "queue": "q", "max_attempts": 0}]}),
            "max_attempts must be at least 1",
        ),
        (
            json!({"steps": [{"name": "a", "queue": "q", "on_error": "ignore"}]}),
            "unknown variant `ignore`",
        ),
        (
            json!({"steps": [step("a"), {"name": "b", "queue": "q", "group": "g", "pivot": true}]}),
            "a pivot step may not be in a group",
        ),
        (
            json!({"steps": [
                {"name": "a", "queue": "q", "group": "g"},
                step("b"),
                {"name": "c", "queue": "q", "group": "g"},
            ]}),
            "group `g` are not consecutive",
        ),
        (json!([step("a")]), "must be a JSON object"),
    ];
    for (body, reason) in cases {
        let (status, answer) = app.put_definition(&name, &body, None).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{body}: `{error}` does not say `{reason}`"
        );
    }
    let put = |body: String| {
        app.http
            .put(app.url(&format!("/definitions/{name}")))
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, bad) = answer(put("{\"steps\": [".into()).send().await.expect("PUT")).await;
    assert_eq!(status, 400);
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("bad JSON"),
        "{bad}"
    );
    let (status, _) = answer(
        put(format!("{{\"x\": \"{}\"}}", "y".repeat(70 * 1024)))
            .send()
            .await
            .expect("PUT"),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = app
        .put_definition("not a name", &json!({"steps": [step("a")]}), None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(app.get_json(&format!("/definitions/{name}")).await.0, 404);
}

#[actix_web::test]
async fn put_needs_the_admin_token_when_one_is_set_and_reading_does_not() {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 1)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.admin_token = Some("s3cret".into())).await;
    let saga = app.saga().to_string();
    let body = definition(&[("only", &app.names.queue(2))]);
    for token in [None, Some("wrong")] {
        let (status, answer) = app.put_definition(&saga, &body, token).await;
        assert_eq!(status, 401, "{answer}");
    }
    assert_eq!(
        app.get_json(&format!("/definitions/{saga}")).await.1["version"],
        1
    );
    let (status, answer) = app.put_definition(&saga, &body, Some("s3cret")).await;
    assert_eq!((status, &answer["version"]), (200, &json!(2)));
    assert_eq!(app.get_json("/definitions").await.0, 200);
}

/// Two instances on one database, the second one's participants not yet running.
async fn two_instances() -> (TestApp, TestApp) {
    let first = spawn_app(Some(vec![])).await;
    let second = start_app_with(first.names.clone(), false, |s| {
        s.cluster.instance_id = "second".into()
    })
    .await;
    // Partitions settled (32 each): none changes hands, re-sending its pending commands,
    // while the test counts the commands in a queue.
    let names = first.names.clone();
    let split = wait_until(Duration::from_secs(20), || async {
        let h = lease_holders(&names).await;
        h.len() == 2 && h.values().all(|&n| n == 32)
    })
    .await;
    assert!(split, "{:?}", lease_holders(&names).await);
    (first, second)
}

#[actix_web::test]
async fn a_start_on_another_instance_right_after_a_put_runs_the_new_version_end_to_end() {
    let (first, second) = two_instances().await;
    let names = first.names.clone();
    // A brand-new saga type, on a queue nobody declared yet.
    let saga = names.saga.clone();
    let queue = names.queue(4);
    let mut started = Vec::new();
    for round in 1..=5 {
        let body = definition(&[(&format!("v{round}"), &queue)]);
        let (status, stored) = first.put_definition(&saga, &body, None).await;
        assert_eq!((status, &stored["version"]), (200, &json!(round)));
        // At once, on the other instance: the version just stored, never an older one.
        let id = second.start_saga(json!({})).await;
        assert_eq!(second.definition_version(id).await, round, "round {round}");
        started.push((id, format!("v{round}")));
    }
    // The other instance also hears of the new version by notification.
    let heard = wait_until(Duration::from_secs(5), || async {
        second.current_version(&saga) == Some(5)
    })
    .await;
    assert!(
        heard,
        "the second instance's catalog: {:?}",
        second.current_version(&saga)
    );
    // The orchestrator declared the new queue when it first sent there.
    let declared = wait_until(Duration::from_secs(10), || async {
        queue_stats(&queue)
            .await
            .is_some_and(|(messages, _)| messages == 5)
    })
    .await;
    assert!(
        declared,
        "commands waiting in {queue}: {:?}",
        queue_stats(&queue).await
    );
    let participants = Participants::start(&names, 4, always_done()).await;
    for (id, step) in &started {
        assert!(
            first
                .wait_status(*id, "completed", Duration::from_secs(15))
                .await,
            "{id}: {}",
            first.status(*id).await
        );
        // The saga ran its version's one step. A partition moving between the instances while
        // they split them re-sends a pending command (same command_id): the step may arrive
        // twice, never under two ids.
        let steps: std::collections::BTreeSet<String> = participants
            .for_saga(*id)
            .iter()
            .map(|c| c.step().to_string())
            .collect();
        assert_eq!(steps, [step.clone()].into());
        assert_eq!(participants.distinct_ids(*id, step, "execute").len(), 1);
    }
    second.stop().await;
    participants.close().await;
}

#[actix_web::test]
async fn a_version_stored_without_a_notification_is_still_the_one_a_start_runs() {
    let app = spawn_app(None).await;
    let saga = app.saga().to_string();
    // Stored behind the service's back: no pg_notify, so only the start's insert can tell.
    let body = json!({"name": saga, "steps": [{"name": "late", "queue": app.names.queue(3)}]});
    db(&app.names)
        .await
        .execute(
            "INSERT INTO saga_definitions (name, version, body) VALUES ($1, 2, $2)",
            &[&saga, &body],
        )
        .await
        .expect("store version 2");
    assert_eq!(app.current_version(&saga), Some(1));
    let id = app.start_saga(json!({})).await;
    assert_eq!(app.definition_version(id).await, 2);
    assert_eq!(
        app.current_version(&saga),
        Some(2),
        "learnt from the refused insert"
    );

    // A version stored while the listener is disconnected is read when it reconnects.
    let body = json!({"name": saga, "steps": [{"name": "later", "queue": app.names.queue(3)}]});
    let db = db(&app.names).await;
    db.execute(
        "INSERT INTO saga_definitions (name, version, body) VALUES ($1, 3, $2)",
        &[&saga, &body],
    )
    .await
    .expect("store version 3");
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'saga-definitions-listener' AND datname = current_database()",
            &[],
        )
        .await
        .expect("terminate the listener's connection");
    assert_eq!(killed.len(), 1, "one listener connection");
    let reread = wait_until(Duration::from_secs(10), || async {
        app.current_version(&saga) == Some(3)
    })
    .await;
    assert!(reread, "catalog at {:?}", app.current_version(&saga));
}

#[actix_web::test]
async fn a_saga_started_on_version_1_finishes_on_version_1_after_a_put_of_version_2() {
    let app = spawn_app(None).await;
    let saga = app.saga().to_string();
    // s1 of a held saga stays unanswered until the test answers it.
    let script: Script =
        Arc::new(
            |c: &Received| match (c.body["payload"]["hold"].as_bool(), c.step()) {
                (Some(true), "s1") => Answer::Silent,
                (_, step) => Answer::Done(json!({ "step": step })),
            },
        );
    let participants = Participants::start(&app.names, 3, script).await;
    let old = app.start_saga(json!({"hold": true})).await;
    let sent = wait_until(Duration::from_secs(10), || async {
        !participants.for_saga(old).is_empty()
    })
    .await;
    assert!(sent, "s1 sent");
    let v2 = definition(&[("t1", &app.names.queue(3))]);
    let (status, stored) = app.put_definition(&saga, &v2, None).await;
    assert_eq!((status, &stored["version"]), (200, &json!(2)));
    let new = app.start_saga(json!({})).await;
    // Now the held saga's s1 answers: it goes on with s2 and s3 of version 1.
    let command = participants.for_saga(old)[0].clone();
    let reply = json!({"command_id": command.command_id(), "saga_id": old, "status": "done"});
    assert!(
        publish_raw(
            &participants.channel,
            &app.names.reply_queue,
            reply.to_string().as_bytes(),
            None
        )
        .await
    );
    for id in [old, new] {
        assert!(
            app.wait_status(id, "completed", Duration::from_secs(15))
                .await,
            "{id}"
        );
    }
    let steps = |id: Uuid| -> Vec<String> {
        participants
            .for_saga(id)
            .iter()
            .map(|c| c.step().to_string())
            .collect()
    };
    assert_eq!(steps(old), vec!["s1", "s2", "s3"]);
    assert_eq!(steps(new), vec!["t1"]);
    assert_eq!(app.definition_version(old).await, 1);
    assert_eq!(app.definition_version(new).await, 2);
    participants.close().await;
}
