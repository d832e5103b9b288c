//! `/openapi.json` is a valid OpenAPI 3.1 document, every path, method and status code in it
//! is served (each provoked here and its body checked against the documented schema), and
//! every route the app serves is in it.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::RequestBuilder;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const TOKEN: &str = "s3cret";

/// Every `(method, path, status)` the test provokes; it must be exactly the document's.
const PROBES: &[(&str, &str, u16)] = &[
    ("post", "/start", 200),
    ("post", "/start", 400),
    ("post", "/start", 409),
    ("post", "/start", 413),
    ("post", "/start", 415),
    ("post", "/start", 503),
    ("get", "/sagas", 200),
    ("get", "/sagas", 400),
    ("get", "/sagas", 503),
    ("get", "/sagas/counts", 200),
    ("get", "/sagas/counts", 503),
    ("get", "/sagas/{id}", 200),
    ("get", "/sagas/{id}", 400),
    ("get", "/sagas/{id}", 404),
    ("get", "/sagas/{id}", 503),
    ("post", "/sagas/{id}/{action}", 202),
    ("post", "/sagas/{id}/{action}", 400),
    ("post", "/sagas/{id}/{action}", 401),
    ("post", "/sagas/{id}/{action}", 404),
    ("post", "/sagas/{id}/{action}", 409),
    ("post", "/sagas/{id}/{action}", 412),
    ("post", "/sagas/{id}/{action}", 413),
    ("post", "/sagas/{id}/{action}", 503),
    ("get", "/definitions", 200),
    ("get", "/definitions", 503),
    ("get", "/definitions/{name}", 200),
    ("get", "/definitions/{name}", 400),
    ("get", "/definitions/{name}", 404),
    ("get", "/definitions/{name}", 503),
    ("put", "/definitions/{name}", 200),
    ("put", "/definitions/{name}", 400),
    ("put", "/definitions/{name}", 401),
    ("put", "/definitions/{name}", 413),
    ("put", "/definitions/{name}", 503),
    ("get", "/liveness", 200),
    ("get", "/readiness", 200),
    ("get", "/readiness", 500),
    ("get", "/metrics", 200),
    ("get", "/openapi.json", 200),
];

/// The two apps and the sagas the probes act on.
struct Ctx {
    /// Ready, with an admin token; its participants follow each saga's `payload.mode`.
    up: TestApp,
    /// Its database does not exist: PostgreSQL is unreachable for it.
    down: TestApp,
    /// Running, waiting at s1 (`hold`): one each for abort, resume, and the refusals.
    held: [Uuid; 3],
    /// Completed.
    done: Uuid,
    /// Failed (a compensation ran out of attempts): one for retry, one for skip.
    failed: [Uuid; 2],
    _participants: Participants,
}

/// The requests that must each answer `status` for this documented operation.
fn requests(c: &Ctx, method: &str, path: &str, status: u16) -> Vec<RequestBuilder> {
    let (up, down) = (&c.up, &c.down);
    let post = |app: &TestApp, p: &str| app.http.post(app.url(p));
    let get = |app: &TestApp, p: &str| app.http.get(app.url(p));
    let act = |id: &dyn std::fmt::Display, action: &str| {
        post(up, &format!("/sagas/{id}/{action}")).bearer_auth(TOKEN)
    };
    let start = |app: &TestApp, body: Value| post(app, "/start").json(&body);
    let put_def = |app: &TestApp, name: &str, body: Value| {
        app.http
            .put(app.url(&format!("/definitions/{name}")))
            .json(&body)
    };
    let saga = up.saga().to_string();
    let new = || json!({"saga_id": Uuid::new_v4(), "saga": saga, "payload": {"mode": "ok"}});
    let big = "x".repeat(70 * 1024);
    let (held, failed, done) = (c.held, c.failed, c.done);
    match (method, path, status) {
        ("post", "/start", 200) => {
            let repeat = new();
            vec![
                start(up, repeat.clone()),
                start(up, repeat),
                post(up, "/start")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "saga_id={}&saga={saga}&payload=%7B%7D",
                        Uuid::new_v4()
                    )),
            ]
        }
        ("post", "/start", 400) => vec![
            start(up, json!({"saga": saga})),
            start(up, json!({"saga_id": "not-a-uuid"})),
            start(
                up,
                json!({"saga_id": Uuid::new_v4(), "saga": "no-such-type"}),
            ),
        ],
        ("post", "/start", 409) => {
            vec![start(
                up,
                json!({"saga_id": done, "saga": saga, "payload": {"other": 1}}),
            )]
        }
        ("post", "/start", 413) => vec![start(up, json!({"saga_id": Uuid::new_v4(), "x": big}))],
        ("post", "/start", 415) => vec![post(up, "/start")
            .header("content-type", "text/plain")
            .body("saga_id=x")],
        ("post", "/start", 503) => vec![start(down, new())],
        ("get", "/sagas", 200) => vec![get(up, "/sagas"), get(up, "/sagas?status=running&limit=1")],
        ("get", "/sagas", 400) => vec![get(up, "/sagas?limit=0"), get(up, "/sagas?status=bogus")],
        ("get", "/sagas", 503) => vec![get(down, "/sagas")],
        ("get", "/sagas/counts", 200) => vec![get(up, "/sagas/counts")],
        ("get", "/sagas/counts", 503) => vec![get(down, "/sagas/counts")],
        ("get", "/sagas/{id}", 200) => {
            let code = saga_service::domain::SagaId(done).code();
            vec![
                get(up, &format!("/sagas/{done}")),
                get(up, &format!("/sagas/{code}")),
                get(
                    up,
                    &format!("/sagas/{done}?history_limit=1&history_before=3"),
                ),
            ]
        }
        ("get", "/sagas/{id}", 400) => vec![
            get(up, "/sagas/not-an-id"),
            get(up, &format!("/sagas/{done}?history_limit=0")),
        ],
        ("get", "/sagas/{id}", 404) => vec![get(up, &format!("/sagas/{}", Uuid::new_v4()))],
        ("get", "/sagas/{id}", 503) => vec![get(down, &format!("/sagas/{}", Uuid::new_v4()))],
        ("post", "/sagas/{id}/{action}", 202) => vec![
            act(&held[0], "abort").json(&json!({"by": "openapi test", "reason": "probe"})),
            act(&held[1], "resume"),
            act(&failed[0], "retry"),
            act(&failed[1], "skip").json(&json!({"step": "s1", "by": "openapi test"})),
        ],
        ("post", "/sagas/{id}/{action}", 400) => vec![
            act(&"not-an-id", "abort"),
            act(&held[2], "abort").body("{not json"),
            act(&held[2], "skip"),
            act(&held[2], "abort").header("if-match", "not-a-version"),
        ],
        ("post", "/sagas/{id}/{action}", 401) => vec![
            post(up, &format!("/sagas/{}/abort", held[2])),
            post(up, &format!("/sagas/{}/abort", held[2])).bearer_auth("wrong"),
        ],
        ("post", "/sagas/{id}/{action}", 404) => {
            vec![act(&Uuid::new_v4(), "abort"), act(&held[2], "frobnicate")]
        }
        ("post", "/sagas/{id}/{action}", 409) => vec![
            act(&done, "abort"),
            act(&done, "resume"),
            act(&held[2], "retry"),
            act(&held[2], "skip").json(&json!({"step": "s1"})),
        ],
        ("post", "/sagas/{id}/{action}", 412) => {
            vec![act(&held[2], "abort").header("if-match", "\"999\"")]
        }
        ("post", "/sagas/{id}/{action}", 413) => vec![act(&held[2], "abort").body(big)],
        ("post", "/sagas/{id}/{action}", 503) => {
            vec![post(down, &format!("/sagas/{}/abort", Uuid::new_v4()))]
        }
        ("get", "/definitions", 200) => vec![get(up, "/definitions")],
        ("get", "/definitions", 503) => vec![get(down, "/definitions")],
        ("get", "/definitions/{name}", 200) => vec![
            get(up, &format!("/definitions/{saga}")),
            get(up, &format!("/definitions/{saga}?version=1")),
        ],
        ("get", "/definitions/{name}", 400) => {
            vec![get(up, &format!("/definitions/{saga}?version=one"))]
        }
        ("get", "/definitions/{name}", 404) => vec![
            get(up, "/definitions/no-such-saga"),
            get(up, &format!("/definitions/{saga}?version=99")),
        ],
        ("get", "/definitions/{name}", 503) => vec![get(down, &format!("/definitions/{saga}"))],
        ("put", "/definitions/{name}", 200) => {
            let q = up.names.queue(1);
            let def = json!({"steps": [{"name": "only", "queue": q, "group": "g", "retry_backoff_ms": 5}]});
            let name = format!("{}_put", up.names.prefix);
            vec![
                put_def(up, &name, def.clone()).bearer_auth(TOKEN),
                put_def(up, &name, def).bearer_auth(TOKEN),
            ]
        }
        ("put", "/definitions/{name}", 400) => vec![
            put_def(up, "x", json!({"steps": []})).bearer_auth(TOKEN),
            put_def(
                up,
                "x",
                json!({"steps": [{"name": "a", "queue": "q", "timeout": 1}]}),
            )
            .bearer_auth(TOKEN),
            up.http
                .put(up.url("/definitions/x"))
                .bearer_auth(TOKEN)
                .body("{not json"),
        ],
        ("put", "/definitions/{name}", 401) => vec![
            put_def(up, "x", json!({"steps": [{"name": "a", "queue": "q"}]})),
            put_def(up, "x", json!({"steps": [{"name": "a", "queue": "q"}]})).bearer_auth("wrong"),
        ],
        ("put", "/definitions/{name}", 413) => {
            vec![put_def(up, "x", json!({"x": big})).bearer_auth(TOKEN)]
        }
        ("put", "/definitions/{name}", 503) => {
            vec![put_def(
                down,
                "x",
                json!({"steps": [{"name": "a", "queue": "q"}]}),
            )]
        }
        ("get", "/liveness", 200) => vec![get(up, "/liveness")],
        ("get", "/readiness", 200) => vec![get(up, "/readiness")],
        ("get", "/readiness", 500) => vec![get(down, "/readiness")],
        ("get", "/metrics", 200) => vec![get(up, "/metrics")],
        ("get", "/openapi.json", 200) => vec![get(up, "/openapi.json")],
        _ => panic!("no probe for {method} {path} {status}"),
    }
}

/// Validates the document against the OpenAPI Initiative's JSON Schema of OpenAPI 3.1
/// (`schema-base`, so that every Schema Object in it is checked as a JSON Schema too).
fn validate_document(doc: &Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openapi-3.1");
    let load = |file: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(file)).expect("vendored OpenAPI schema");
        serde_json::from_str(&text).expect("vendored schema is JSON")
    };
    let base = load("schema-base.json");
    let registry = jsonschema::Registry::new()
        .extend([
            (
                "https://spec.openapis.org/oas/3.1/schema/2022-10-07",
                load("schema.json"),
            ),
            (
                "https://spec.openapis.org/oas/3.1/dialect/base",
                load("dialect-base.json"),
            ),
            (
                "https://spec.openapis.org/oas/3.1/meta/base",
                load("meta-base.json"),
            ),
        ])
        .and_then(|r| r.prepare())
        .expect("registry of the OpenAPI schemas");
    let validator = jsonschema::options()
        .offline()
        .should_validate_formats(true)
        .with_registry(&registry)
        .build(&base)
        .expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "invalid OpenAPI document: {errors:#?}");
}

/// Checks an answer against the schema the document gives for its status and content type.
fn check_body(doc: &Value, what: &str, response: &Value, content_type: &str, body: &str) {
    let essence = |t: &str| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let content = response["content"].as_object().expect("documented content");
    let schema = content
        .iter()
        .find(|(t, _)| essence(t) == essence(content_type))
        .map(|(_, c)| c["schema"].clone())
        .unwrap_or_else(|| panic!("{what}: content type {content_type} is not documented"));
    let instance = if essence(content_type) == "application/json" {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
    } else {
        Value::String(body.to_string())
    };
    // The schema's `#/components/...` references resolve against this root.
    let mut root = schema;
    root["components"] = doc["components"].clone();
    let validator = jsonschema::options()
        .offline()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("{what}: documented schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: body {body} does not match the document: {errors:?}"
    );
}

/// Every `(method, path, status)` of the document.
fn documented(doc: &Value) -> BTreeSet<(String, String, u16)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for status in op["responses"].as_object().expect("responses").keys() {
                let status = status.parse().expect("numeric status");
                out.insert((method.clone(), path.clone(), status));
            }
        }
    }
    out
}

async fn setup() -> Ctx {
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 2, 30_000, 1)]);
    create_database(&names).await;
    let (up, down) = tokio::join!(
        start_app_with(names, true, |s| s.admin_token = Some(TOKEN.into())),
        spawn_unreachable_app()
    );
    let script: Script = std::sync::Arc::new(|c: &Received| {
        match (c.body["payload"]["mode"].as_str(), c.step(), c.action()) {
            (Some("hold"), "s1", "execute") => Answer::Silent,
            (Some("fail"), "s2", "execute") => Answer::Error("refused".into()),
            (Some("fail"), "s1", "compensate") => Answer::Error("locked".into()),
            _ => Answer::Done(json!({})),
        }
    });
    let participants = Participants::start(&up.names, 2, script).await;
    let held = [0; 3].map(|_| Uuid::new_v4());
    let failed = [0; 2].map(|_| Uuid::new_v4());
    let done = Uuid::new_v4();
    let mut waits = vec![(done, "ok", "completed")];
    waits.extend(held.iter().map(|id| (*id, "hold", "running")));
    waits.extend(failed.iter().map(|id| (*id, "fail", "failed")));
    for (id, mode, _) in &waits {
        let body = json!({"saga_id": id, "saga": up.saga(), "payload": {"mode": mode}});
        assert_eq!(up.start(body).await.status(), 200);
    }
    for (id, _, status) in &waits {
        assert!(
            up.wait_status(*id, status, Duration::from_secs(10)).await,
            "{id} {status}"
        );
    }
    Ctx {
        up,
        down,
        held,
        done,
        failed,
        _participants: participants,
    }
}

#[actix_web::test]
async fn openapi_json_is_valid_and_every_documented_status_and_every_served_route_is_real() {
    let c = setup().await;
    let r =
        c.up.http
            .get(c.up.url("/openapi.json"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.expect("/openapi.json is JSON");
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1.")));
    validate_document(&doc);

    // The document and the probes name the same (method, path, status) triples.
    let probes: BTreeSet<(String, String, u16)> = PROBES
        .iter()
        .map(|(m, p, s)| (m.to_string(), p.to_string(), *s))
        .collect();
    let documented = documented(&doc);
    assert_eq!(
        documented.difference(&probes).collect::<Vec<_>>(),
        Vec::<&(String, String, u16)>::new(),
        "documented but never provoked"
    );
    assert_eq!(
        probes.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String, u16)>::new(),
        "provoked but not documented"
    );

    // Each documented status is answered, with a body the document describes.
    for (method, path, status) in PROBES {
        let response = &doc["paths"][*path][*method]["responses"][status.to_string()];
        for (i, request) in requests(&c, method, path, *status).into_iter().enumerate() {
            let what = format!("{method} {path} -> {status} (request {i})");
            let r = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = r.status().as_u16();
            let content_type = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(got, *status, "{what}: {body}");
            check_body(&doc, &what, response, &content_type, &body);
        }
    }

    // Every route the app registers is documented with its method, and no other method of a
    // documented path is served.
    let served: BTreeSet<(String, String)> = saga_service::http::SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let paths: BTreeSet<(String, String)> = documented
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    assert_eq!(served, paths);
    for path in doc["paths"].as_object().unwrap().keys() {
        let concrete = path
            .replace("{id}", &c.held[2].to_string())
            .replace("{action}", "abort")
            .replace("{name}", "default");
        for method in ["get", "post", "put", "patch", "delete"] {
            if paths.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r =
                c.up.http
                    .request(m, c.up.url(&concrete))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
            let got = r.unwrap().status().as_u16();
            assert!(matches!(got, 404 | 405), "{method} {path} answered {got}");
        }
    }
}
