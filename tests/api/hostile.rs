use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[actix_web::test]
async fn ten_thousand_concurrent_starts_of_one_saga_id_store_one_saga_and_answer_one_code() {
    // The production pool size (the tests' default is 4): this test is about one saga and
    // one code under a stampede, not about how small a pool survives it on a loaded CI
    // machine (with 4 connections, 500 requests in flight waited past the pool's 5 s).
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 3, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.db_pool_size = 16).await;
    let participants = Participants::start(&app.names, 3, always_done()).await;
    let id = Uuid::new_v4();
    let body = json!({"saga_id": id, "saga": app.saga(), "payload": {"n": 1}});
    let answers: Vec<(u16, String)> = futures_util::stream::iter(0..10_000)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/start");
            let body = body.clone();
            async move {
                match http.post(url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        // The code, or the error text when there is none.
                        let text = v["code"].as_str().or(v["error"].as_str());
                        (status, text.unwrap_or_default().to_string())
                    }
                    Err(e) => (0, e.to_string()),
                }
            }
        })
        .buffer_unordered(500)
        .collect()
        .await;
    let code = base62::encode(id.as_u128());
    assert!(
        answers.iter().all(|(s, c)| *s == 200 && *c == code),
        "{:?}",
        answers.iter().find(|(s, c)| *s != 200 || *c != code)
    );
    assert!(
        app.wait_status(id, "completed", Duration::from_secs(20))
            .await
    );
    let db = db(&app.names).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM sagas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(participants.distinct_ids(id, "s1", "execute").len(), 1);
    assert_eq!(
        participants
            .for_saga(id)
            .iter()
            .filter(|c| c.step() == "s1")
            .count(),
        1,
        "step 1 sent once"
    );
}

#[actix_web::test]
async fn hostile_http_input_gets_the_contract_codes_and_stores_nothing_wrong() {
    let app = spawn_app(None).await;
    let post = |ct: &'static str, body: Vec<u8>| {
        let req = app
            .http
            .post(app.url("/start"))
            .header("content-type", ct)
            .body(body);
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    // 1 MiB, and 64 KiB + 1.
    assert_eq!(post("application/json", vec![b' '; 1 << 20]).await, 413);
    assert_eq!(
        post("application/json", vec![b' '; 64 * 1024 + 1]).await,
        413
    );
    assert_eq!(post("text/xml", b"<start/>".to_vec()).await, 415);
    assert_eq!(
        post(
            "application/x-www-form-urlencoded",
            b"saga_id=%FF%FE".to_vec()
        )
        .await,
        400
    );
    assert_eq!(
        post("application/json", b"{\"saga_id\": 5}".to_vec()).await,
        400
    );
    assert_eq!(
        post("application/json", "[".repeat(10_000).into_bytes()).await,
        400
    );
    let sql = "'; DROP TABLE sagas; --";
    let id = Uuid::new_v4();
    let body = json!({"saga_id": id, "saga": app.saga(), "payload": {"note": sql, "k'\"": sql}});
    assert_eq!(
        post("application/json", body.to_string().into_bytes()).await,
        200
    );
    assert_eq!(
        post(
            "application/json",
            json!({"saga_id": sql}).to_string().into_bytes()
        )
        .await,
        400
    );
    assert_eq!(
        post(
            "application/json",
            json!({"saga_id": Uuid::new_v4(), "saga": sql})
                .to_string()
                .into_bytes()
        )
        .await,
        400
    );
    let r = app
        .http
        .get(app.url(&format!("/sagas?saga={}&status=running", urlencode(sql))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view = app.saga_view(&id.to_string()).await;
    assert_eq!(view["payload"]["note"], json!(sql), "stored verbatim");
    let db = db(&app.names).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM sagas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the valid start was stored");
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[actix_web::test]
async fn concurrent_starts_batched_together_each_get_their_own_answer() {
    // Starts are inserted in batches: 300 at once, of which 100 ids are started twice with
    // the same payload (200, the same code, one saga) and 50 twice with another payload
    // (one of the two is 409). Each answer must be the one for its own request.
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 3)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.db_pool_size = 16).await;
    let _participants = Participants::start(&app.names, 1, always_done()).await;
    let ids: Vec<Uuid> = (0..150).map(|_| Uuid::new_v4()).collect();
    let mut requests = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        requests.push((*id, json!({"n": i})));
        let again = if i < 100 {
            json!({"n": i})
        } else {
            json!({"n": i, "other": true})
        };
        requests.push((*id, again));
    }
    let answers: Vec<(Uuid, u16, serde_json::Value)> = futures_util::stream::iter(requests)
        .map(|(id, payload)| {
            let http = app.http.clone();
            let url = app.url("/start");
            let body = json!({"saga_id": id, "saga": app.saga(), "payload": payload});
            async move {
                match http.post(url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        (id, status, r.json().await.unwrap_or_default())
                    }
                    Err(e) => (id, 0, json!({"error": e.to_string()})),
                }
            }
        })
        .buffer_unordered(300)
        .collect()
        .await;
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<&(Uuid, u16, serde_json::Value)> =
            answers.iter().filter(|(a, _, _)| a == id).collect();
        let ok: Vec<_> = mine.iter().filter(|(_, s, _)| *s == 200).collect();
        let code = base62::encode(id.as_u128());
        assert!(
            ok.iter().all(|(_, _, v)| v["code"] == json!(code)),
            "saga {i}: {mine:?}"
        );
        if i < 100 {
            assert_eq!(ok.len(), 2, "saga {i}: {mine:?}");
        } else {
            assert_eq!(ok.len(), 1, "saga {i}: {mine:?}");
            assert!(mine.iter().any(|(_, s, _)| *s == 409), "saga {i}: {mine:?}");
        }
    }
    let db = db(&app.names).await;
    for (i, id) in ids.iter().enumerate() {
        let row = db
            .query_one("SELECT payload->>'n' FROM sagas WHERE id = $1", &[id])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0), Some(i.to_string()));
    }
    let n: i64 = db
        .query_one("SELECT count(*) FROM sagas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 150);
}
