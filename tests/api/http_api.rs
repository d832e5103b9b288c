//! The HTTP API of CONTRACT.md section 5: start (idempotency, forms, errors), lookup by id or
//! code, the paginated list, versions against the history table, health and metrics.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// An app whose catalog holds this test's saga type and a second one with the same steps.
async fn spawn_app_with_two_types() -> (TestApp, String) {
    let names = Names::new();
    let first = steps(&names, 3, 30_000, 3);
    let mut second = first.clone();
    second.name = format!("{}_other", names.saga);
    let other = second.name.clone();
    write_definitions(&names, &[first, second]);
    create_database(&names).await;
    (start_app(names, true).await, other)
}

/// Sends a raw `POST /start` body with a content type; returns status and JSON body.
async fn post_start(app: &TestApp, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = app
        .http
        .post(app.url("/start"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /start");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// GET a path; returns status and JSON body (or the text as a JSON string).
async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.http.get(app.url(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn assert_error_body(body: &Value, what: &str) {
    assert!(
        body.as_object().is_some_and(|o| o.len() == 1)
            && body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: error body must be {{\"error\": \"...\"}}, got {body}"
    );
}

#[actix_web::test]
async fn a_repeated_start_with_the_same_type_and_payload_answers_the_same_code_and_runs_one_saga() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = Uuid::new_v4();
    let request = json!({"saga_id": id, "saga": app.saga(), "payload": {"order": 7}});
    // Two at once, then one more: every answer is 200 with the same code.
    let (a, b) = futures_util::join!(app.start(request.clone()), app.start(request.clone()));
    let mut codes = Vec::new();
    for r in [a, b, app.start(request.clone()).await] {
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["saga_id"], json!(id.to_string()));
        codes.push(body["code"].as_str().unwrap_or_default().to_string());
    }
    let expected = base62::encode(id.as_u128());
    assert!(codes.iter().all(|c| *c == expected), "{codes:?}");
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let again = app.start(request).await;
    assert_eq!(
        again.status(),
        200,
        "a repeat after completion is still 200"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["code"], json!(expected));
    assert_eq!(again["status"], json!("completed"));

    let executes = participants
        .for_saga(id)
        .iter()
        .filter(|c| c.step() == "s1" && c.action() == "execute")
        .count();
    assert_eq!(executes, 1, "one saga ran, so s1 executed once");
    assert_eq!(app.saga_view(&id.to_string()).await["version"], json!(4));
    participants.close().await;
}

#[actix_web::test]
async fn a_repeated_start_with_another_payload_or_saga_type_is_a_conflict() {
    let (app, other) = spawn_app_with_two_types().await;
    let id = app.start_saga(json!({"n": 1})).await;
    let r = app
        .start(json!({"saga_id": id, "saga": app.saga(), "payload": {"n": 2}}))
        .await;
    assert_eq!(r.status(), 409, "same id, another payload");
    assert_error_body(&r.json().await.unwrap(), "another payload");
    let r = app
        .start(json!({"saga_id": id, "saga": other, "payload": {"n": 1}}))
        .await;
    assert_eq!(r.status(), 409, "same id, another saga type");
    assert_error_body(&r.json().await.unwrap(), "another type");
    let r = app
        .start(json!({"saga_id": id, "saga": app.saga(), "payload": {"n": 1}}))
        .await;
    assert_eq!(r.status(), 200, "the original request is still idempotent");
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["saga"], json!(app.saga()));
    assert_eq!(view["payload"], json!({"n": 1}));
    // The second type itself works for a new id.
    let r = app
        .start(json!({"saga_id": Uuid::new_v4(), "saga": other}))
        .await;
    assert_eq!(r.status(), 200);
}

#[actix_web::test]
async fn a_form_encoded_start_runs_the_saga_to_completion() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = Uuid::new_v4();
    let r = app
        .http
        .post(app.url("/start"))
        .form(&[
            ("saga_id", id.to_string()),
            ("saga", app.saga().to_string()),
            ("payload", r#"{"order": "a&b=c", "n": 3}"#.to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], json!(base62::encode(id.as_u128())));
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["payload"], json!({"order": "a&b=c", "n": 3}));
    let first = &participants.for_saga(id)[0];
    assert_eq!(first.body["payload"], json!({"order": "a&b=c", "n": 3}));
    participants.close().await;
}

#[actix_web::test]
async fn bad_start_requests_are_answered_400_413_or_415_with_a_json_error() {
    let app = spawn_app(None).await;
    let saga = app.saga().to_string();
    let id = Uuid::new_v4().to_string();
    let json_ct = "application/json";
    let form_ct = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "malformed UUID",
            json_ct,
            json!({"saga_id": "not-a-uuid", "saga": saga})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "missing saga_id",
            json_ct,
            json!({"saga": saga}).to_string().into_bytes(),
            400,
        ),
        ("bad JSON", json_ct, b"{\"saga_id\": ".to_vec(), 400),
        (
            "unknown saga type",
            json_ct,
            json!({"saga_id": id, "saga": "no-such-saga"})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "payload an array",
            json_ct,
            json!({"saga_id": id, "saga": saga, "payload": [1, 2]})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "payload a string",
            json_ct,
            json!({"saga_id": id, "saga": saga, "payload": "{}"})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "form payload not an object",
            form_ct,
            format!("saga_id={id}&saga={saga}&payload=%5B1%5D").into_bytes(),
            400,
        ),
        (
            "form field not UTF-8",
            form_ct,
            format!("saga_id={id}&saga=%FF").into_bytes(),
            400,
        ),
        (
            "form without saga_id",
            form_ct,
            format!("saga={saga}").into_bytes(),
            400,
        ),
        (
            "body over 64 KiB",
            json_ct,
            json!({"saga_id": id, "saga": saga, "payload": {"big": "x".repeat(64 * 1024)}})
                .to_string()
                .into_bytes(),
            413,
        ),
        (
            "XML",
            "text/xml",
            format!("<start><saga_id>{id}</saga_id></start>").into_bytes(),
            415,
        ),
    ];
    for (what, content_type, body, expected) in cases {
        let (status, answer) = post_start(&app, content_type, body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert_error_body(&answer, what);
    }
    let (_, list) = get(&app, "/sagas").await;
    assert_eq!(list["sagas"], json!([]), "no bad request started a saga");
}

#[actix_web::test]
async fn a_saga_is_found_by_uuid_and_by_base62_code_and_unknown_or_garbage_ids_are_404_or_400() {
    let app = spawn_app(None).await;
    let id = Uuid::new_v4();
    let r = app
        .start(json!({"saga_id": id, "saga": app.saga(), "payload": {"k": "v"}}))
        .await;
    assert_eq!(r.status(), 200);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["status"], json!("running"));
    let code = started["code"].as_str().unwrap().to_string();
    assert_eq!(code, base62::encode(id.as_u128()));
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));

    let by_uuid = app.saga_view(&id.to_string()).await;
    let by_code = app.saga_view(&code).await;
    for view in [&by_uuid, &by_code] {
        assert_eq!(view["saga_id"], json!(id.to_string()));
        assert_eq!(view["code"], json!(code));
        assert_eq!(view["saga"], json!(app.saga()));
        assert_eq!(view["status"], json!("running"));
        assert_eq!(view["step"], json!("s1"));
        assert_eq!(view["version"], json!(1));
        assert!(view["created_at"].is_string() && view["updated_at"].is_string());
        let history = view["history"].as_array().unwrap();
        assert_eq!(history.len(), 1);
        for key in ["version", "event", "step", "at"] {
            assert!(history[0].get(key).is_some(), "history lacks {key}");
        }
    }
    let upper = id.to_string().to_uppercase();
    assert_eq!(
        app.saga_view(&upper).await["saga_id"],
        json!(id.to_string())
    );

    let unknown = Uuid::new_v4();
    for path in [
        format!("/sagas/{unknown}"),
        format!("/sagas/{}", base62::encode(unknown.as_u128())),
    ] {
        let (status, body) = get(&app, &path).await;
        assert_eq!(status, 404, "{path}");
        assert_error_body(&body, &path);
    }
    // The last: 22 base62 digits whose value overflows 128 bits.
    for garbage in [
        "not-an-id!",
        "a_b",
        "%FF",
        "z".repeat(30).as_str(),
        "z".repeat(22).as_str(),
    ] {
        let (status, body) = get(&app, &format!("/sagas/{garbage}")).await;
        assert_eq!(status, 400, "{garbage}");
        assert_error_body(&body, garbage);
    }
}

/// Ids of one page of `GET /sagas` and its `next` cursor.
async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let (status, body) = get(app, &format!("/sagas?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    let ids = body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect();
    (ids, body["next"].as_str().map(str::to_string))
}

#[actix_web::test]
async fn the_list_is_newest_first_filters_by_status_and_pages_through_every_row_once() {
    let app = spawn_app(None).await;
    // Sagas whose payload says `hold` wait at s1; the others complete.
    let script: Script = Arc::new(|c: &Received| {
        if c.body["payload"]["hold"] == json!(true) {
            Answer::Silent
        } else {
            Answer::Done(json!({}))
        }
    });
    let participants = Participants::start(&app.names, 3, script).await;
    let mut started = Vec::new();
    for i in 0..7 {
        let id = app.start_saga(json!({"hold": i % 3 != 0})).await;
        started.push(id);
    }
    let done: Vec<Uuid> = started.iter().step_by(3).copied().collect();
    for id in &done {
        assert!(
            app.wait_status(*id, "completed", Duration::from_secs(20))
                .await
        );
    }
    let newest_first: Vec<String> = started.iter().rev().map(Uuid::to_string).collect();

    let (all, next) = page(&app, "").await;
    assert_eq!(all, newest_first);
    assert_eq!(next, None, "one page holds everything");
    let (of_type, _) = page(&app, &format!("saga={}", app.saga())).await;
    assert_eq!(of_type, newest_first);
    let (none, _) = page(&app, "saga=another-type").await;
    assert!(none.is_empty());

    let (completed, _) = page(&app, "status=completed").await;
    let want: Vec<String> = done.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(completed, want);
    let (running, _) = page(&app, "status=running&limit=500").await;
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| !completed.contains(id))
        .cloned()
        .collect();
    assert_eq!(running, want);

    for limit in [1, 2, 3, 7] {
        let mut walked = Vec::new();
        let mut query = format!("limit={limit}");
        let mut pages = 0;
        loop {
            let (ids, next) = page(&app, &query).await;
            assert!(ids.len() <= limit, "a page holds at most `limit` rows");
            walked.extend(ids);
            pages += 1;
            assert!(pages <= 10, "pagination does not end");
            match next {
                Some(cursor) => query = format!("limit={limit}&after={cursor}"),
                None => break,
            }
        }
        let distinct: HashSet<&String> = walked.iter().collect();
        assert_eq!(distinct.len(), walked.len(), "limit={limit}: a duplicate");
        assert_eq!(walked, newest_first, "limit={limit}");
    }
    let mut walked = Vec::new();
    let mut query = "status=running&limit=2".to_string();
    loop {
        let (ids, next) = page(&app, &query).await;
        walked.extend(ids);
        match next {
            Some(cursor) => query = format!("status=running&limit=2&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(walked, running, "filtered pagination");

    for bad in [
        "status=bogus",
        "status=RUNNING'--",
        "limit=0",
        "limit=-1",
        "limit=501",
        "limit=abc",
        "after=garbage",
        "after=123_",
        "after=_abc",
        "after=x_1",
    ] {
        let (status, body) = get(&app, &format!("/sagas?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_error_body(&body, bad);
    }
    participants.close().await;
}

#[actix_web::test]
async fn the_version_of_a_completed_saga_counts_its_history_rows_numbered_one_to_n() {
    let app = spawn_app(None).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = app.start_saga(json!({})).await;
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let view = app.saga_view(&id.to_string()).await;
    let client = db(&app.names).await;
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM saga_events WHERE saga_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let stored: i64 = client
        .query_one("SELECT version FROM sagas WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view["version"], json!(rows));
    assert_eq!(stored, rows);
    assert_eq!(rows, 4, "start and three accepted replies");
    let versions: Vec<i64> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=rows).collect::<Vec<_>>());
    assert_eq!(
        view["step"],
        Value::Null,
        "a completed saga has no current step"
    );
    participants.close().await;
}

#[actix_web::test]
async fn liveness_names_the_build_and_host_and_metrics_are_prometheus_text() {
    let app = spawn_app(None).await;
    let (status, body) = get(&app, "/liveness").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], json!("up"));
    assert!(body["build"].as_str().is_some_and(|b| !b.is_empty()));
    assert!(body["host"].is_string());

    app.start_saga(json!({})).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = r.text().await.unwrap();
    assert!(text.contains("saga_started_total"), "{text}");
    assert!(text.contains("# TYPE saga_started_total counter"), "{text}");
    let (status, body) = get(&app, "/no-such-route").await;
    assert_eq!(status, 404);
    assert_error_body(&body, "unknown route");
}

#[actix_web::test]
async fn sql_looking_input_is_refused_or_stored_verbatim_and_the_tables_survive() {
    let app = spawn_app(None).await;
    let nasty = [
        "'; DROP TABLE sagas; --",
        "\"; DROP TABLE saga_events; --",
        "' OR '1'='1",
        "1; DELETE FROM sagas WHERE true; --",
        "'); TRUNCATE sagas CASCADE; --",
        "default' UNION SELECT * FROM pg_user --",
        "$1; DROP TABLE saga_definitions",
        "\\'; DROP TABLE sagas; --",
        "%27%3B%20DROP%20TABLE%20sagas%3B%20--",
        "'||pg_sleep(5)||'",
    ];
    let mut stored = Vec::new();
    for s in nasty {
        let r = app
            .start(json!({"saga_id": Uuid::new_v4(), "saga": s}))
            .await;
        assert_eq!(r.status(), 400, "as a saga type: {s}");
        assert_error_body(&r.json().await.unwrap(), s);

        let payload = json!({ s: s, "nested": [s, {"k": s}] });
        let id = app.start_saga(payload.clone()).await;
        stored.push((id, payload));

        let (status, body) = get(&app, &format!("/sagas?status={}", urlencode(s))).await;
        assert_eq!(status, 400, "as a status filter: {s}");
        assert_error_body(&body, s);
        let (status, body) = get(&app, &format!("/sagas?saga={}", urlencode(s))).await;
        assert_eq!(status, 200, "as a type filter: {s}");
        assert_eq!(body["sagas"], json!([]));
    }
    for (id, payload) in &stored {
        let view = app.saga_view(&id.to_string()).await;
        assert_eq!(view["payload"], *payload, "stored verbatim");
    }
    let client = db(&app.names).await;
    for table in ["sagas", "saga_events", "saga_definitions"] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "table {table} is still there");
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM sagas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, nasty.len() as i64);
}

/// Percent-encodes every byte that is not unreserved.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[actix_web::test]
async fn a_chunked_body_over_64_kib_is_refused_with_413() {
    let app = spawn_app(None).await;
    let head = format!(
        r#"{{"saga_id":"{}","saga":"{}","payload":{{"big":""#,
        Uuid::new_v4(),
        app.saga()
    );
    // No Content-Length: the limit must hold while the body streams in.
    let mut request = b"POST /start HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    request.extend(format!("{:x}\r\n{head}\r\n", head.len()).as_bytes());
    for _ in 0..9 {
        request.extend(format!("2000\r\n{}\r\n", "x".repeat(0x2000)).as_bytes());
    }
    request.extend(b"4\r\n\"}}}\r\n0\r\n\r\n");
    let (status, text) = raw_http(&app, &request).await;
    assert_eq!(status, 413, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_error_body(
        &serde_json::from_str(body).unwrap_or(Value::Null),
        "chunked",
    );
    let (_, list) = get(&app, "/sagas").await;
    assert_eq!(list["sagas"], json!([]));
}

#[actix_web::test]
async fn a_nul_character_in_a_start_payload_is_refused_with_400_not_a_500() {
    let app = spawn_app(None).await;
    let id = Uuid::new_v4();
    // Valid JSON: the escape \u0000 is a string's NUL character.
    let body = format!(
        r#"{{"saga_id":"{id}","saga":"{}","payload":{{"a":"x\u0000y"}}}}"#,
        app.saga()
    );
    let (status, answer) = post_start(&app, "application/json", body.into_bytes()).await;
    if status == 200 {
        let view = app.saga_view(&id.to_string()).await;
        assert_eq!(view["payload"], json!({"a": "x\u{0}y"}), "stored verbatim");
    } else {
        assert_eq!(status, 400, "{answer}");
        assert_error_body(&answer, "NUL in payload");
    }
}

#[actix_web::test]
async fn a_nul_character_in_the_type_filter_of_the_list_is_not_a_500() {
    let app = spawn_app(None).await;
    app.start_saga(json!({})).await;
    let (status, body) = get(&app, "/sagas?saga=%00").await;
    assert!(
        status == 400 || (status == 200 && body["sagas"] == json!([])),
        "{status} {body}"
    );
}

#[actix_web::test]
async fn a_cursor_outside_the_timestamp_range_is_refused_with_400() {
    let app = spawn_app(None).await;
    app.start_saga(json!({})).await;
    for cursor in [
        "-8000000000000000000_0",
        "8000000000000000000_0",
        "9223372036854775807_0",
        "-9223372036854775808_0",
    ] {
        let (status, body) = get(&app, &format!("/sagas?after={cursor}")).await;
        assert_eq!(status, 400, "after={cursor}: {body}");
        assert_error_body(&body, cursor);
    }
}

/// Sends raw HTTP/1.1 bytes (with `Connection: close`); returns the status and the whole answer.
async fn raw_http(app: &TestApp, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer before it has read everything; a refused write is not the test.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
