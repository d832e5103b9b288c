use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn list(app: &TestApp, query: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(&format!("/sagas?{query}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn ids(v: &Value) -> Vec<String> {
    v["sagas"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["saga_id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn the_list_filters_by_creation_time_and_finds_stuck_sagas() {
    let app = spawn_app(None).await; // no participants: every saga waits at s1
    let first = app.start_saga(json!({})).await;
    let db = db(&app.names).await;
    let created: chrono::DateTime<chrono::Utc> = db
        .query_one("SELECT created_at FROM sagas WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    let between = wait_until(Duration::from_secs(2), || async {
        chrono::Utc::now() > created + chrono::Duration::milliseconds(5)
    })
    .await;
    assert!(between);
    let cut = (chrono::Utc::now()).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let second = app.start_saga(json!({})).await;
    let enc = |s: &str| s.replace('+', "%2B").replace(':', "%3A");

    let (code, v) = list(&app, &format!("created_after={}", enc(&cut))).await;
    assert_eq!(code, 200);
    assert_eq!(ids(&v), [second.to_string()]);
    let (_, v) = list(&app, &format!("created_before={}", enc(&cut))).await;
    assert_eq!(ids(&v), [first.to_string()]);

    // Nothing has moved for a while: with stuck_s=0 both are stuck, none is with a day.
    let (_, v) = list(&app, "stuck_s=0").await;
    assert_eq!(ids(&v).len(), 2);
    let (_, v) = list(&app, "stuck_s=86400").await;
    assert!(ids(&v).is_empty());
    // stuck=true uses the longest legitimate wait (30 s x 3 attempts here): none yet.
    let (_, v) = list(&app, "stuck=true").await;
    assert!(ids(&v).is_empty());

    for bad in ["created_after=yesterday", "stuck_s=-1", "stuck=maybe"] {
        let (code, v) = list(&app, bad).await;
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string());
    }
}
