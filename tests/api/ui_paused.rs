//! The saga browser on the optional keys of the contract: a parallel group shown side by side
//! in one labelled frame, a pivot step marked, a paused saga with its actions (skip names the
//! paused step; resume and skip move the saga on; abort refused once past a done pivot), the
//! deadline and whether it passed, the `paused` count, and the definitions page.
//!
//! Screenshots go where `tests/api/ui.rs` puts its own (`7-*.png` onwards).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Client;
use serde_json::{json, Value};
use uuid::Uuid;

use saga_service::domain::{OnError, SagaDefinition};

use crate::helpers::*;
use crate::ui::{
    browser_paths, click, code, js, screenshot, screenshot_dir, status_is, until, with_browser,
    HISTORY, STEP_STATES,
};

const WAIT: Duration = Duration::from_secs(15);

/// A trip: `hotel` and `flight` booked together (group `book`), then `confirm` (pauses on
/// error), `charge` (the pivot), `ship`, on this test's queues 1..5.
fn trip(names: &Names) -> SagaDefinition {
    let mut def = steps(names, 5, 30_000, 3);
    def.name = "trip".into();
    def.deadline_ms = Some(3_600_000);
    for (step, name) in def
        .steps
        .iter_mut()
        .zip(["hotel", "flight", "confirm", "charge", "ship"])
    {
        step.name = name.into();
    }
    def.steps[0].group = Some("book".into());
    def.steps[1].group = Some("book".into());
    def.steps[2].on_error = OnError::Pause;
    def.steps[3].pivot = true;
    def
}

/// One step, `wait`, on queue 1, with a deadline that goes off while it is held.
fn rush(names: &Names) -> SagaDefinition {
    let mut def = steps(names, 1, 30_000, 3);
    def.name = "rush".into();
    def.deadline_ms = Some(1_500);
    def.steps[0].name = "wait".into();
    def
}

/// Replies `done`, except to the execute of the step named in the payload's `fail_at` (always
/// `error`), of `fail_once_at` (`error` the first time for that saga), and of `hold_at` (never).
fn scripted() -> Script {
    let failed_once = Arc::new(Mutex::new(HashSet::<String>::new()));
    Arc::new(move |c: &Received| {
        let payload = &c.body["payload"];
        let is = |key: &str| payload[key].as_str() == Some(c.step()) && c.action() == "execute";
        let first_time = || {
            failed_once
                .lock()
                .map(|mut s| s.insert(c.saga_id().to_string()))
                .unwrap_or(false)
        };
        if is("hold_at") {
            Answer::Silent
        } else if is("fail_at") || (is("fail_once_at") && first_time()) {
            Answer::Error("no answer from the desk".into())
        } else {
            Answer::Done(json!({ "step": c.step(), "attempt": c.body["attempt"] }))
        }
    })
}

async fn start(app: &TestApp, saga: &str, payload: Value) -> Uuid {
    let id = Uuid::new_v4();
    let r = app
        .start(json!({"saga_id": id, "saga": saga, "payload": payload}))
        .await;
    assert_eq!(r.status(), 200, "start: {:?}", r.text().await);
    id
}

/// The events of a saga's history, through the API.
async fn events(app: &TestApp, id: Uuid) -> Vec<String> {
    let view = app.saga_view(&id.to_string()).await;
    view["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|r| r["event"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

const ENABLED: &str = "[...document.querySelectorAll('#actions button:enabled')].map(b => b.dataset.action + (b.dataset.step ? ':' + b.dataset.step : ''))";

/// Opens a saga's page and waits for its status.
async fn open_saga(c: &Client, app: &TestApp, id: Uuid, status: &str) {
    c.goto(&app.url(&format!("/ui/sagas/{}", code(id))))
        .await
        .expect("open the saga page");
    until(c, &format!("status {status}"), &status_is(status)).await;
}

/// Confirms the action dialog opened by a button, and waits until it closed (202).
async fn confirm(c: &Client) {
    until(
        c,
        "the action dialog",
        "document.querySelector('#action-dialog').open",
    )
    .await;
    click(c, "#action-submit").await;
    until(
        c,
        "the dialog closed (202)",
        "!document.querySelector('#action-dialog').open",
    )
    .await;
}

#[actix_web::test]
async fn the_saga_browser_shows_groups_side_by_side_and_moves_a_paused_saga_on_with_resume_or_skip()
{
    browser_paths(); // fails at once, saying what to install, when the browser is missing
    let names = Names::new();
    write_definitions(&names, &[trip(&names), rush(&names)]);
    create_database(&names).await;
    let app = start_app(names, true).await;
    let _participants = Participants::start(&app.names, 5, scripted()).await;
    let skipped = start(&app, "trip", json!({"fail_at": "confirm"})).await;
    let resumed = start(&app, "trip", json!({"fail_once_at": "ship"})).await;
    let late = start(&app, "rush", json!({"hold_at": "wait"})).await;
    assert!(app.wait_status(skipped, "paused", WAIT).await);
    assert!(app.wait_status(resumed, "paused", WAIT).await);
    assert!(app.wait_status(late, "compensated", WAIT).await);
    assert!(events(&app, late).await.contains(&"deadline".to_string()));
    let dir = screenshot_dir();

    with_browser(|c| async move {
        // The list counts the paused sagas and filters on them.
        c.goto(&app.url("/ui")).await.expect("open /ui");
        let count = "document.querySelector('[data-count=\"paused\"]').textContent";
        until(&c, "2 paused", &format!("{count} === '2'")).await;
        click(&c, "button[data-filter='paused']").await;
        let rows = "[...document.querySelectorAll('#sagas tbody tr')].map(r => r.dataset.status)";
        until(
            &c,
            "only the paused sagas",
            &format!("JSON.stringify({rows}) === '[\"paused\",\"paused\"]'"),
        )
        .await;
        screenshot(&c, &dir, "7-list-paused.png").await;

        // A saga paused before its pivot: the group's two steps in one frame, side by side.
        open_saga(&c, &app, skipped, "paused").await;
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!([
                "hotel:done",
                "flight:done",
                "confirm:failed",
                "charge:not_started",
                "ship:not_started"
            ])
        );
        let frame = "document.querySelector('#steps li.stage-group[data-group=book]')";
        let held = format!("[...{frame}.querySelectorAll('li.step')].map(li => li.dataset.step)");
        assert_eq!(js(&c, &held).await, json!(["hotel", "flight"]));
        let label = js(&c, &format!("{frame}.querySelector('.group-label').textContent")).await;
        assert!(
            label.as_str().is_some_and(|t| t.contains("book")),
            "{label}"
        );
        let row = format!(
            "(([a, b]) => Math.abs(a.top - b.top) < 2 && b.left > a.right - 1)\
             ([...{frame}.querySelectorAll('li.step')].map(li => li.getBoundingClientRect()))"
        );
        assert_eq!(js(&c, &row).await, json!(true), "side by side, one row");
        let pivot = "document.querySelector('#steps li[data-step=charge] .badge.pivot')?.textContent";
        assert_eq!(
            js(&c, pivot).await,
            json!("pivot: no compensation after this")
        );
        let paused = "document.querySelector('#steps li[data-step=confirm] .pending').textContent";
        let paused = js(&c, paused).await;
        assert!(
            paused.as_str().is_some_and(|t| t.contains("paused here")),
            "{paused}"
        );
        let deadline = js(&c, "document.querySelector('#saga-deadline').textContent").await;
        assert!(
            deadline.as_str().is_some_and(|t| t.contains(" · in ")),
            "{deadline}"
        );
        assert_eq!(
            js(&c, ENABLED).await,
            json!(["abort", "resume", "skip:confirm"])
        );
        let skip = "document.querySelector('#actions button[data-action=skip]').textContent";
        assert_eq!(js(&c, skip).await, json!("Skip confirm"), "names the step");
        screenshot(&c, &dir, "8-saga-paused-group.png").await;

        // Skip: the paused step counts done with output {} and the saga goes on to the end.
        click(&c, "button[data-action=skip]").await;
        confirm(&c).await;
        assert!(app.wait_status(skipped, "completed", WAIT).await);
        let view = app.saga_view(&skipped.to_string()).await;
        assert_eq!(view["steps"][2]["output"], json!({}));
        assert!(events(&app, skipped).await.contains(&"step_skipped".into()));
        until(&c, "the page follows: completed", &status_is("completed")).await;

        // A saga paused past its pivot: abort is refused with the reason; resume moves it on.
        open_saga(&c, &app, resumed, "paused").await;
        assert_eq!(
            js(&c, STEP_STATES).await,
            json!([
                "hotel:done",
                "flight:done",
                "confirm:done",
                "charge:done",
                "ship:failed"
            ])
        );
        assert_eq!(
            js(&c, ENABLED).await,
            json!(["resume", "skip:ship"]),
            "no abort past the pivot"
        );
        let abort = "document.querySelector('#actions button[data-action=abort]').disabled";
        assert_eq!(js(&c, abort).await, json!(true));
        let why = js(&c, "document.querySelector('#abort-refused').textContent").await;
        assert!(
            why.as_str()
                .is_some_and(|t| t.contains("pivot step charge is done")),
            "{why}"
        );
        screenshot(&c, &dir, "9-saga-paused-past-pivot.png").await;
        click(&c, "button[data-action=resume]").await;
        confirm(&c).await;
        assert!(app.wait_status(resumed, "completed", WAIT).await);
        let view = app.saga_view(&resumed.to_string()).await;
        assert_eq!(view["steps"][4]["output"]["step"], json!("ship"));
        assert!(events(&app, resumed).await.contains(&"resumed".into()));
        until(&c, "the page follows: completed", &status_is("completed")).await;
        screenshot(&c, &dir, "10-saga-resumed-completed.png").await;

        // A saga whose deadline went off: the page says it passed.
        open_saga(&c, &app, late, "compensated").await;
        let passed = "document.querySelector('#saga-deadline')?.dataset.passed";
        assert_eq!(js(&c, passed).await, json!("true"));
        let history = js(&c, HISTORY).await;
        assert!(
            history
                .as_array()
                .is_some_and(|h| h.contains(&json!("deadline"))),
            "{history}"
        );
        screenshot(&c, &dir, "11-saga-deadline-passed.png").await;

        // The definitions page, from the header.
        click(&c, "#nav-definitions").await;
        until(
            &c,
            "the definitions page",
            "location.pathname === '/ui/definitions'",
        )
        .await;
        let served = app
            .http
            .get(app.url("/definitions"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if !served {
            // GET /definitions comes with another branch: until it is merged the page must say
            // it is missing; the rest of this part runs once it answers.
            until(
                &c,
                "the page says GET /definitions is missing",
                "document.querySelector('#defs-error')?.textContent.includes('404')",
            )
            .await;
            eprintln!("NOTE: GET /definitions answers 404 here: the definitions page's checks were skipped");
            return;
        }
        let card = "document.querySelector('#def-trip')";
        until(&c, "the trip's card", &format!("{card} !== null")).await;
        let group = format!(
            "[...{card}.querySelectorAll('li.stage-group[data-group=book] li.step')].map(li => li.dataset.step)"
        );
        assert_eq!(js(&c, &group).await, json!(["hotel", "flight"]));
        let pivot = format!("{card}.querySelector('li[data-step=charge] .badge.pivot') !== null");
        assert_eq!(js(&c, &pivot).await, json!(true));
        let on_error = format!(
            "{card}.querySelector('li[data-step=confirm] dd[data-key=on_error]').textContent"
        );
        assert_eq!(js(&c, &on_error).await, json!("pause"));
        let versions = "[...document.querySelectorAll('#def-version-trip option')].map(o => o.value)";
        assert_eq!(js(&c, versions).await, json!(["1"]));
        screenshot(&c, &dir, "12-definitions.png").await;
    })
    .await;
}
