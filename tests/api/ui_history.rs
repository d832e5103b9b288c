//! The saga browser shows the latest 100 transitions of a long history, says how many are
//! hidden, and loads the older ones on request.

use serde_json::json;

use crate::helpers::*;
use crate::ui::{browser_paths, click, js, until, with_browser};

const ROWS: &str = "document.querySelectorAll('#history tbody tr').length";

#[actix_web::test]
async fn the_saga_page_shows_the_latest_hundred_transitions_and_loads_older_ones() {
    browser_paths(); // fails at once, saying what to install, when the browser is missing
    let app = spawn_app(None).await;
    let id = app.start_saga(json!({})).await; // no participants: waits at s1, version 1
    db(&app.names)
        .await
        .execute(
            "INSERT INTO saga_events (saga_id, version, event, step, status)
             SELECT $1, v, 'step_resent', 's1', 'running' FROM generate_series(2, 250) v",
            &[&id],
        )
        .await
        .expect("history rows");
    with_browser(|c| async move {
        c.goto(&app.url(&format!("/ui/sagas/{id}")))
            .await
            .expect("open the saga page");
        until(&c, "the latest 100 rows", &format!("{ROWS} === 100")).await;
        let hidden = js(&c, "document.querySelector('#history-hidden').textContent").await;
        assert!(
            hidden.as_str().is_some_and(|t| t.starts_with("150 older")),
            "{hidden}"
        );
        click(&c, "#history-older").await;
        until(&c, "200 rows after one click", &format!("{ROWS} === 200")).await;
        click(&c, "#history-older").await;
        until(
            &c,
            "every row, and nothing said hidden",
            &format!("{ROWS} === 250 && !document.querySelector('#history-hidden')"),
        )
        .await;
        let first = js(
            &c,
            "document.querySelector('#history tbody tr').dataset.version",
        )
        .await;
        assert_eq!(first, json!("1"), "oldest first");
    })
    .await;
}
