//! The saga browser at `/ui`: its assets and API additions over HTTP, and the pages
//! themselves in headless Chromium driven through chromedriver (WebDriver).
//!
//! Screenshots of each page go to `target/ui-screenshots/` (or `$CARGO_TARGET_DIR/ui-screenshots/`);
//! with `SAGA_UI_UPDATE_DOCS=1` the saga page's is also written to `docs/saga-page.png`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{json, Value};
use uuid::Uuid;

use saga_service::domain::SagaDefinition;

use crate::helpers::*;

const TOKEN: &str = "ui-test-token";
const WAIT: Duration = Duration::from_secs(15);

/// Replies `done` with an output naming the step, except: the step named in the payload's
/// `hold_at` is never answered, and the one in `fail_at` answers `error`.
fn scripted() -> Script {
    std::sync::Arc::new(|c: &Received| {
        let payload = &c.body["payload"];
        let is = |key: &str| payload[key].as_str() == Some(c.step()) && c.action() == "execute";
        if is("hold_at") {
            Answer::Silent
        } else if is("fail_at") {
            Answer::Error("card declined".into())
        } else {
            let confirmation = format!("{}-{}", c.step(), payload["order"]);
            Answer::Done(json!({ "step": c.step(), "confirmation": confirmation }))
        }
    })
}

#[actix_web::test]
async fn the_ui_is_served_from_the_binary_with_a_content_security_policy() {
    let app = spawn_app(None).await;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/sagas/5QFTNIubMf4y0c2hWv16hN", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = app.http.get(app.url(path)).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("script-src 'self'"));
        assert_eq!(header("x-content-type-options"), "nosniff");
        let body = r.text().await.expect("body");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let r = app
        .http
        .get(app.url("/ui/nope.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 404);
}

#[actix_web::test]
async fn counts_list_every_status_and_a_saga_shows_each_step_with_its_output_error_and_times() {
    let app = spawn_app(None).await;
    let _participants = Participants::start(&app.names, 3, scripted()).await;
    let done = app.start_saga(json!({"order": 1})).await;
    let failed = app.start_saga(json!({"order": 2, "fail_at": "s2"})).await;
    assert!(app.wait_status(done, "completed", WAIT).await);
    assert!(app.wait_status(failed, "compensated", WAIT).await);

    let counts: Value = app
        .http
        .get(app.url("/sagas/counts"))
        .send()
        .await
        .expect("GET counts")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        counts,
        json!({
            "counts": {"running": 0, "compensating": 0, "paused": 0, "completed": 1, "compensated": 1, "failed": 0},
            "total": 2
        })
    );

    let view = app.saga_view(&done.to_string()).await;
    let steps = view["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 3);
    for (i, s) in steps.iter().enumerate() {
        let name = format!("s{}", i + 1);
        assert_eq!(s["name"], json!(name));
        assert_eq!(s["queue"], json!(app.names.queue(i + 1)));
        assert_eq!(s["status"], json!("done"));
        assert_eq!(s["attempts"], json!(1));
        assert_eq!(s["output"]["step"], json!(name));
        assert!(
            s["sent_at"].is_string() && s["last_event_at"].is_string(),
            "{s}"
        );
        assert!(s["pending"].is_null());
    }
    assert!(
        view["history"].is_array() && view["state"].is_object(),
        "existing fields stay"
    );

    let view = app.saga_view(&failed.to_string()).await;
    let status: Vec<&str> = view["steps"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["status"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(status, ["compensated", "failed", "not_started"]);
    assert_eq!(view["steps"][1]["error"], json!("card declined"));
    assert!(view["steps"][2]["sent_at"].is_null());
}

// ------------------------------------------------------------------ the browser

/// chromedriver in a process group of its own; dropping it kills the group (and so Chromium).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // killpg(2) directly: procps-ng 4.0.2's `kill -KILL -<pgid>` reads only the first
        // digit of the group, so `-1xxxx` became kill(-1): every process.
        if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscalls about our own, not yet reaped, child. Only a group the child
            // leads (it called setpgid(0, 0)) is signalled, never ours or a broadcast.
            unsafe {
                if group > 1 && libc::getpgid(group) == group && libc::getpgrp() != group {
                    libc::killpg(group, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium and chromedriver to use: `SAGA_TEST_CHROMIUM` / `SAGA_TEST_CHROMEDRIVER`, or
/// Debian's. Missing ones fail the test with what to install: this test never skips.
pub(crate) fn browser_paths() -> (PathBuf, PathBuf) {
    let path = |var: &str, default: &str| {
        PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()))
    };
    let chromium = path("SAGA_TEST_CHROMIUM", "/usr/bin/chromium");
    let driver = path("SAGA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let missing: Vec<String> = [&chromium, &driver]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "the saga browser test needs headless Chromium and chromedriver, and {} is missing: \
         run `make test` or `make services SERVICES_ARGS=--with-browser` as root (they install \
         them), or `apt-get install -y chromium chromium-driver` (or point SAGA_TEST_CHROMIUM / \
         SAGA_TEST_CHROMEDRIVER at them)",
        missing.join(" and ")
    );
    (chromium, driver)
}

/// Starts chromedriver on a free port and waits until it reports ready.
async fn start_driver(driver: &Path, log: &Path) -> Driver {
    use std::os::unix::process::CommandExt;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(log).expect("chromedriver log file");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = wait_until(Duration::from_secs(10), || async {
            match http.get(format!("{}/status", d.url)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == json!(true)),
                Err(_) => false,
            }
        })
        .await;
        if ready {
            return d;
        }
    }
    panic!("chromedriver did not become ready (log: {})", log.display());
}

/// A headless Chromium session.
async fn open_browser(chromium: &Path, driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1050", "--force-device-scale-factor=1", "--lang=en-US"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}"))
}

pub(crate) fn screenshot_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// What the page says: the value of a JavaScript expression.
pub(crate) async fn js(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return {expr};"), vec![])
        .await
        .unwrap_or(Value::Null)
}

/// Waits until a JavaScript expression is true; fails with what it was waiting for.
pub(crate) async fn until(c: &Client, what: &str, expr: &str) {
    let ok = wait_until(WAIT, || async { js(c, expr).await == json!(true) }).await;
    assert!(
        ok,
        "timed out waiting for: {what} ({expr}) on {:?}",
        c.current_url().await.ok()
    );
}

pub(crate) async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

pub(crate) async fn type_into(c: &Client, css: &str, text: &str) {
    let field = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    field
        .clear()
        .await
        .unwrap_or_else(|e| panic!("clear {css}: {e}"));
    field
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

pub(crate) async fn screenshot(c: &Client, dir: &Path, name: &str) -> Vec<u8> {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), &png).expect("write screenshot");
    png
}

/// Runs `scenario` with a browser, then closes the browser and chromedriver whatever happened.
pub(crate) async fn with_browser<F, Fut>(scenario: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let (chromium, driver_path) = browser_paths();
    let dir = screenshot_dir();
    let driver = start_driver(&driver_path, &dir.join("chromedriver.log")).await;
    let client = open_browser(&chromium, &driver).await;
    let outcome = AssertUnwindSafe(scenario(client.clone()))
        .catch_unwind()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub(crate) fn code(id: Uuid) -> String {
    saga_service::domain::SagaId(id).code()
}

/// The browser test's saga: an order, on this test's queues.
fn order_saga(names: &Names) -> SagaDefinition {
    let mut def = steps(names, 3, 30_000, 3);
    def.name = "order".into();
    for (step, name) in def
        .steps
        .iter_mut()
        .zip(["reserve_stock", "charge_card", "ship_parcel"])
    {
        step.name = name.into();
    }
    def
}

async fn start_order(app: &TestApp, payload: Value) -> Uuid {
    let id = Uuid::new_v4();
    let r = app
        .start(json!({"saga_id": id, "saga": "order", "payload": payload}))
        .await;
    assert_eq!(r.status(), 200, "start: {:?}", r.text().await);
    id
}

/// Each step of the timeline as `name:status`, in order (a group's steps are in its frame).
pub(crate) const STEP_STATES: &str =
    "[...document.querySelectorAll('#steps li.step')].map(li => li.dataset.step + ':' + li.dataset.status)";
pub(crate) const HISTORY: &str =
    "[...document.querySelectorAll('#history tbody tr')].map(r => r.dataset.event)";

pub(crate) fn status_is(status: &str) -> String {
    format!("document.querySelector('#saga-status')?.dataset.status === '{status}'")
}

#[actix_web::test]
async fn the_saga_browser_lists_finds_shows_and_aborts_sagas_in_headless_chromium() {
    browser_paths(); // fails at once, saying what to install, when the browser is missing
    let names = Names::new();
    write_definitions(&names, &[order_saga(&names)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.admin_token = Some(TOKEN.into())).await;
    let _participants = Participants::start(&app.names, 3, scripted()).await;
    let done = start_order(&app, json!({"order": 1041, "customer": "grace"})).await;
    let failed = start_order(
        &app,
        json!({"order": 1042, "customer": "alan", "fail_at": "charge_card"}),
    )
    .await;
    let held = start_order(
        &app,
        json!({"order": 1043, "customer": "ada", "hold_at": "ship_parcel"}),
    )
    .await;
    assert!(app.wait_status(done, "completed", WAIT).await);
    assert!(app.wait_status(failed, "compensated", WAIT).await);
    let at_step_3 = wait_until(WAIT, || async {
        app.saga_view(&held.to_string()).await["step"] == json!("ship_parcel")
    })
    .await;
    assert!(at_step_3);
    let dir = screenshot_dir();
    println!("ui screenshots: {}", dir.display());

    with_browser(|c| async move {
        // The list: every saga, newest first, with the counts per status.
        c.goto(&app.url("/ui")).await.expect("open /ui");
        let rows = "document.querySelectorAll('#sagas tbody tr')";
        until(&c, "three rows", &format!("{rows}.length === 3")).await;
        let counts = [
            ("all", 3),
            ("running", 1),
            ("paused", 0),
            ("completed", 1),
            ("compensated", 1),
            ("failed", 0),
        ];
        for (status, n) in counts {
            let count = format!("document.querySelector('[data-count=\"{status}\"]').textContent");
            until(&c, &format!("{n} {status}"), &format!("{count} === '{n}'")).await;
        }
        let codes = js(&c, &format!("[...{rows}].map(r => r.dataset.code)")).await;
        assert_eq!(
            codes,
            json!([code(held), code(failed), code(done)]),
            "newest first"
        );
        screenshot(&c, &dir, "1-list.png").await;

        // A status filter.
        click(&c, "button[data-filter='running']").await;
        let only_held = format!(
            "(r => r.length === 1 && r[0].dataset.code === '{}')({rows})",
            code(held)
        );
        until(&c, "only the running saga", &only_held).await;
        assert_eq!(js(&c, "location.search").await, json!("?status=running"));
        click(&c, "button[data-filter='']").await;
        until(&c, "all rows again", &format!("{rows}.length === 3")).await;

        // Search by base62 code opens the saga's page, which shows its steps and history.
        type_into(&c, "#search-input", &code(held)).await;
        click(&c, "#search button[type=submit]").await;
        let path = format!("location.pathname === '/ui/sagas/{}'", code(held));
        until(&c, "the saga page", &path).await;
        until(&c, "status running", &status_is("running")).await;
        let uuid = js(&c, "document.querySelector('#saga-uuid').textContent").await;
        assert_eq!(uuid, json!(held.to_string()));
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!([
                "reserve_stock:done",
                "charge_card:done",
                "ship_parcel:executing"
            ])
        );
        let first = js(&c, "document.querySelector('#steps li').textContent").await;
        let first = first.as_str().unwrap_or_default();
        for shown in ["attempts 1/3", "step done +", "reserve_stock-1043"] {
            assert!(first.contains(shown), "{shown} in {first}");
        }
        let last = js(
            &c,
            "document.querySelector('#steps li:last-child').textContent",
        )
        .await;
        let last = last.as_str().unwrap_or_default();
        assert!(
            last.contains("waiting for a reply to execute, attempt 1 of 3"),
            "{last}"
        );
        assert_eq!(
            js(&c, HISTORY).await,
            json!(["started", "step_done", "step_done"])
        );
        let enabled =
            "[...document.querySelectorAll('#actions button:enabled')].map(b => b.dataset.action)";
        assert_eq!(js(&c, enabled).await, json!(["abort", "resume"]));
        screenshot(&c, &dir, "2-saga-running.png").await;

        // Abort: without the token the service answers 401 and the page asks for it.
        click(&c, "button[data-action=abort]").await;
        until(
            &c,
            "the action dialog",
            "document.querySelector('#action-dialog').open",
        )
        .await;
        type_into(&c, "#action-reason", "customer cancelled").await;
        type_into(&c, "#action-by", "ada").await;
        click(&c, "#action-submit").await;
        until(
            &c,
            "the token prompt",
            "!document.querySelector('#token-row').hidden",
        )
        .await;
        let help = js(&c, "document.querySelector('#token-help').textContent").await;
        assert!(
            help.as_str()
                .is_some_and(|t| t.contains("requires an admin token")),
            "{help}"
        );
        assert_eq!(
            app.status(held).await,
            "running",
            "nothing happened on a 401"
        );

        // A wrong token is refused (401 again) and not kept.
        type_into(&c, "#action-token", "not-the-token").await;
        click(&c, "#action-submit").await;
        let refused = "document.querySelector('#token-help').textContent.includes('refused')";
        until(&c, "the token refused", refused).await;
        let kept = "sessionStorage.getItem('saga-admin-token')";
        assert_eq!(js(&c, kept).await, Value::Null);
        screenshot(&c, &dir, "3-token-refused.png").await;
        assert_eq!(app.status(held).await, "running");

        // The right one: 202, the dialog closes, the page follows the compensation by itself.
        type_into(&c, "#action-token", TOKEN).await;
        click(&c, "#action-submit").await;
        until(
            &c,
            "the dialog closed",
            "!document.querySelector('#action-dialog').open",
        )
        .await;
        assert_eq!(js(&c, kept).await, json!(TOKEN), "kept for the tab");
        until(&c, "status compensated", &status_is("compensated")).await;
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!([
                "reserve_stock:compensated",
                "charge_card:compensated",
                "ship_parcel:compensated"
            ])
        );
        assert_eq!(
            js(&c, HISTORY).await,
            json!([
                "started",
                "step_done",
                "step_done",
                "aborted",
                "step_compensated",
                "step_compensated",
                "compensated"
            ])
        );
        let why = "document.querySelector('#history tr[data-event=aborted] .detail').textContent";
        assert_eq!(js(&c, why).await, json!("by ada: customer cancelled"));
        let live = js(&c, "document.querySelector('#saga-live').textContent").await;
        assert_eq!(live, json!("finished · not refreshing"));
        let png = screenshot(&c, &dir, "4-saga-aborted-compensated.png").await;
        if std::env::var_os("SAGA_UI_UPDATE_DOCS").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
            std::fs::create_dir_all(&docs).expect("docs folder");
            std::fs::write(docs.join("saga-page.png"), png).expect("write docs/saga-page.png");
        }
        assert_eq!(app.status(held).await, "compensated");

        // A completed saga, opened by UUID: every step done with its output; no action applies.
        c.goto(&app.url(&format!("/ui/sagas/{done}")))
            .await
            .expect("open saga");
        until(&c, "status completed", &status_is("completed")).await;
        let shown = js(&c, "document.querySelector('#saga-code').textContent").await;
        assert_eq!(shown, json!(code(done)));
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!(["reserve_stock:done", "charge_card:done", "ship_parcel:done"])
        );
        let outputs = "document.querySelectorAll('#steps .output pre').length";
        assert_eq!(js(&c, outputs).await, json!(3));
        let buttons = "document.querySelectorAll('#actions button').length";
        assert_eq!(js(&c, buttons).await, json!(0), "no action applies");
        screenshot(&c, &dir, "5-saga-completed.png").await;

        // A saga whose step 2 failed: its error is on the step, step 1 compensated.
        c.goto(&app.url(&format!("/ui/sagas/{}", code(failed))))
            .await
            .expect("open saga");
        until(&c, "status compensated", &status_is("compensated")).await;
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!([
                "reserve_stock:compensated",
                "charge_card:failed",
                "ship_parcel:not_started"
            ])
        );
        let error =
            "document.querySelector('#steps li[data-step=charge_card] .step-error').textContent";
        assert_eq!(js(&c, error).await, json!("error: card declined"));
        screenshot(&c, &dir, "6-saga-failed-step.png").await;

        // An unknown code says so.
        c.goto(&app.url("/ui/sagas/0000000000000000000001"))
            .await
            .expect("open saga");
        until(
            &c,
            "not found",
            "document.querySelector('#not-found') !== null",
        )
        .await;
    })
    .await;
}
