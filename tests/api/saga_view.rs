//! `GET /sagas/{id}` answers one page of a long history (and of many quarantined replies),
//! the latest first by default, and pages back to the first row.

use serde_json::{json, Value};

use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.http.get(app.url(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn versions(view: &Value) -> Vec<i64> {
    view["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|r| r["version"].as_i64()).collect())
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_saga_with_thousands_of_history_rows_answers_the_latest_hundred_and_pages_back() {
    let app = spawn_app(None).await;
    let id = app.start_saga(json!({})).await; // no participants: waits at s1, version 1
    let db = db(&app.names).await;
    db.execute(
        "INSERT INTO saga_events (saga_id, version, event, step, status)
         SELECT $1, v, 'step_resent', 's1', 'running' FROM generate_series(2, 3000) v",
        &[&id],
    )
    .await
    .expect("history rows");
    db.execute(
        "INSERT INTO saga_quarantine (saga_id, reason, body)
         SELECT $1, 'bad reply ' || n, '{}' FROM generate_series(1, 150) n",
        &[&id],
    )
    .await
    .expect("quarantined replies");

    let (status, view) = get(&app, &format!("/sagas/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(versions(&view), (2901..=3000).collect::<Vec<_>>());
    assert_eq!(view["history_more"], json!(true));
    assert_eq!(view["history_total"], json!(3000));
    let q = view["quarantined"].as_array().cloned().unwrap_or_default();
    assert_eq!(q.len(), 100);
    assert_eq!(q[99]["reason"], json!("bad reply 150"), "latest last");
    assert_eq!(view["quarantined_more"], json!(true));
    assert_eq!(view["quarantined_total"], json!(150));
    // The steps are dated from the whole history, not the page shown.
    let s1 = &view["steps"][0];
    assert!(s1["sent_at"].is_string(), "{s1}");
    assert_eq!(s1["last_event"], json!("step_resent"));

    // Page back, 1,000 at a time, to the first row.
    let mut all = versions(&view);
    let mut more = true;
    while more {
        let before = all[0];
        let (status, page) = get(
            &app,
            &format!("/sagas/{id}?history_before={before}&history_limit=1000"),
        )
        .await;
        assert_eq!(status, 200);
        let got = versions(&page);
        assert!(!got.is_empty() && got.len() <= 1000 && got[got.len() - 1] == before - 1);
        more = page["history_more"] == json!(true);
        all = got.into_iter().chain(all).collect();
    }
    assert_eq!(all, (1..=3000).collect::<Vec<_>>());

    let first = q[0]["id"].as_i64().expect("quarantine id");
    let (_, older) = get(&app, &format!("/sagas/{id}?quarantined_before={first}")).await;
    assert_eq!(older["quarantined"].as_array().map(Vec::len), Some(50));
    assert_eq!(older["quarantined"][0]["reason"], json!("bad reply 1"));
    assert_eq!(older["quarantined_more"], json!(false));

    for bad in [
        "history_limit=0",
        "history_limit=1001",
        "history_before=x",
        "quarantined_limit=-1",
    ] {
        let (status, body) = get(&app, &format!("/sagas/{id}?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
