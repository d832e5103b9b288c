//! The operator CLI (`saga-service sagas ...`, `definitions ...`) run as a process against
//! a test app: tables and JSON, exit codes 0/1/2/3, the admin token, definitions from TOML.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Output of one run of the CLI.
pub struct Run {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `saga-service <args>` without blocking the test's thread (the app under test
/// shares it); the environment's `SAGA_URL` and `SAGA_ADMIN_TOKEN` are not inherited.
pub async fn saga_service(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga-service"))
        .args(args)
        .env_remove("SAGA_URL")
        .env_remove("SAGA_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run saga-service");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn code_of(id: uuid::Uuid) -> String {
    saga_service::domain::SagaId(id).code()
}

#[actix_web::test]
async fn list_and_show_print_tables_or_json_and_abort_compensates_then_is_refused() {
    let app = spawn_app(None).await;
    let script: Script = std::sync::Arc::new(|c: &Received| match (c.step(), c.action()) {
        ("s2", "execute") => Answer::Silent,
        _ => Answer::Done(json!({})),
    });
    let _participants = Participants::start(&app.names, 3, script).await;
    let id = app.start_saga(json!({})).await;
    let at_s2 = wait_until(Duration::from_secs(10), || async {
        app.saga_view(&id.to_string()).await["step"] == json!("s2")
    })
    .await;
    assert!(at_s2);
    let url = app.address.as_str();

    let list = saga_service(&["sagas", "list", "--url", url, "--saga", app.saga()]).await;
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].starts_with("SAGA ID"), "{}", list.stdout);
    assert!(
        lines[1].contains(&id.to_string()) && lines[1].contains("running"),
        "{}",
        list.stdout
    );
    // The columns line up: STATUS starts at the same place in the header and the row.
    assert_eq!(
        lines[0].find("STATUS"),
        lines[1].find("running"),
        "{}",
        list.stdout
    );
    assert!(
        !list.stdout.contains('\x1b'),
        "no colours off a terminal: {}",
        list.stdout
    );

    let json_list = saga_service(&["sagas", "--url", url, "--json", "list", "--limit", "5"]).await;
    assert_eq!(json_list.code, Some(0), "{}", json_list.stderr);
    let page: Value = serde_json::from_str(&json_list.stdout).expect("--json prints JSON");
    assert_eq!(page["sagas"][0]["saga_id"], json!(id));

    let show = saga_service(&["sagas", "show", &code_of(id), "--url", url]).await;
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    assert!(show.stdout.contains(&id.to_string()), "{}", show.stdout);
    for expected in ["STEP", "s1", "s2", "started", "step_done"] {
        assert!(
            show.stdout.contains(expected),
            "{expected}: {}",
            show.stdout
        );
    }
    let show_json = saga_service(&["sagas", "show", &id.to_string(), "--url", url, "--json"]).await;
    let view: Value = serde_json::from_str(&show_json.stdout).expect("show --json");
    assert_eq!(view["code"], json!(code_of(id)));

    let abort = saga_service(&[
        "sagas",
        "abort",
        &code_of(id),
        "--url",
        url,
        "--by",
        "alice",
        "--reason",
        "cli test",
    ])
    .await;
    assert_eq!(abort.code, Some(0), "{}", abort.stderr);
    assert!(abort.stdout.contains("abort accepted"), "{}", abort.stdout);
    assert!(
        app.wait_status(id, "compensated", Duration::from_secs(10))
            .await
    );
    let history = app.saga_view(&id.to_string()).await["history"].to_string();
    assert!(history.contains("by alice: cli test"), "{history}");

    let again = saga_service(&["sagas", "abort", &id.to_string(), "--url", url]).await;
    assert_eq!(again.code, Some(1), "a finished saga: {}", again.stderr);
    assert!(again.stderr.contains("409"), "{}", again.stderr);
    assert_eq!(again.stderr.trim().lines().count(), 1, "{}", again.stderr);
}

#[actix_web::test]
async fn a_bad_id_is_exit_2_an_unreachable_service_exit_3_and_an_unknown_saga_exit_1() {
    let app = spawn_app(Some(vec![])).await;
    let bad = saga_service(&["sagas", "show", "not-a-uuid!", "--url", &app.address]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("not-a-uuid!"), "{}", bad.stderr);
    let flag = saga_service(&["sagas", "list", "--no-such-flag"]).await;
    assert_eq!(flag.code, Some(2), "{}", flag.stderr);
    let skip = saga_service(&["sagas", "skip", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(skip.code, Some(2), "skip needs --step: {}", skip.stderr);

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let down = saga_service(&["sagas", "list", "--url", &nobody]).await;
    assert_eq!(down.code, Some(3), "{}", down.stderr);
    assert!(down.stderr.contains("cannot reach"), "{}", down.stderr);

    let unknown = uuid::Uuid::new_v4().to_string();
    let missing = saga_service(&["sagas", "show", &unknown, "--url", &app.address]).await;
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
}

#[actix_web::test]
async fn with_an_admin_token_set_an_action_without_it_is_exit_1_and_the_token_is_never_printed() {
    const TOKEN: &str = "cli-s3cret";
    let names = Names::new();
    write_definitions(&names, &[steps(&names, 1, 30_000, 1)]);
    create_database(&names).await;
    let app = start_app_with(names, true, |s| s.admin_token = Some(TOKEN.into())).await;
    let id = app.start_saga(json!({})).await;
    let url = app.address.as_str();
    let refused = saga_service(&["sagas", "abort", &id.to_string(), "--url", url]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let wrong = saga_service(&[
        "sagas",
        "abort",
        &id.to_string(),
        "--url",
        url,
        "--token",
        "nope",
    ])
    .await;
    assert_eq!(wrong.code, Some(1), "{}", wrong.stderr);
    let done = saga_service(&[
        "sagas",
        "abort",
        &id.to_string(),
        "--url",
        url,
        "--token",
        TOKEN,
    ])
    .await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    for run in [&refused, &wrong, &done] {
        assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN));
    }
    let help = saga_service(&["sagas", "--help"]).await;
    assert!(help.stdout.contains("SAGA_ADMIN_TOKEN") && help.stdout.contains("SAGA_URL"));
    assert!(help.stdout.contains("Examples:") && help.stdout.contains("Exit codes"));
}

#[actix_web::test]
async fn definitions_put_stores_every_saga_of_a_toml_file_and_list_and_show_read_them_back() {
    let app = spawn_app(Some(vec![])).await;
    let url = app.address.as_str();
    let first = format!("{}_first", app.saga());
    let second = format!("{}_second", app.saga());
    let toml_file = |timeout_ms: u64| {
        format!(
            "[[sagas]]\nname = \"{first}\"\n[[sagas.steps]]\nname = \"reserve\"\nqueue = \"{q1}\"\n\
             timeout_ms = {timeout_ms}\n\n[[sagas]]\nname = \"{second}\"\ndeadline_ms = 60000\n\
             [[sagas.steps]]\nname = \"pay\"\nqueue = \"{q2}\"\npivot = true\n",
            q1 = app.names.queue(1),
            q2 = app.names.queue(2),
        )
    };
    let path = std::env::temp_dir().join(format!("{}-cli.toml", app.names.prefix));
    std::fs::write(&path, toml_file(1000)).unwrap();
    let file = path.to_string_lossy().to_string();
    let put = saga_service(&["definitions", "put", &file, "--url", url]).await;
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    assert!(
        put.stdout.contains(&format!("stored {first} version 1")),
        "{}",
        put.stdout
    );
    assert!(
        put.stdout.contains(&format!("stored {second} version 1")),
        "{}",
        put.stdout
    );

    std::fs::write(&path, toml_file(2000)).unwrap();
    let put = saga_service(&["definitions", "put", &file, "--url", url, "--json"]).await;
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    let answers: Value = serde_json::from_str(&put.stdout).expect("put --json");
    assert_eq!(
        answers,
        json!([{"name": first, "version": 2}, {"name": second, "version": 1}])
    );

    let list = saga_service(&["definitions", "list", "--url", url]).await;
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&first))
        .expect("listed");
    assert!(
        row.contains(" 2 ") && row.contains("reserve"),
        "{}",
        list.stdout
    );

    let old = saga_service(&[
        "definitions",
        "show",
        &first,
        "--version",
        "1",
        "--url",
        url,
    ])
    .await;
    assert_eq!(old.code, Some(0), "{}", old.stderr);
    assert!(
        old.stdout.contains("1000") && !old.stdout.contains("2000"),
        "{}",
        old.stdout
    );
    let latest = saga_service(&["definitions", "show", &first, "--url", url, "--json"]).await;
    let latest: Value = serde_json::from_str(&latest.stdout).expect("show --json");
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["steps"][0]["timeout_ms"], 2000);

    let unknown = saga_service(&[
        "definitions",
        "show",
        &first,
        "--version",
        "9",
        "--url",
        url,
    ])
    .await;
    assert_eq!(unknown.code, Some(1), "{}", unknown.stderr);
    let missing =
        saga_service(&["definitions", "put", "/nonexistent/defs.toml", "--url", url]).await;
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("/nonexistent/defs.toml"),
        "{}",
        missing.stderr
    );
    std::fs::write(&path, "{\"name\": \"x\", \"steps\": []}").unwrap();
    let json_path = path.with_extension("json");
    std::fs::rename(&path, &json_path).unwrap();
    let invalid = saga_service(&[
        "definitions",
        "put",
        &json_path.to_string_lossy(),
        "--url",
        url,
    ])
    .await;
    std::fs::remove_file(&json_path).ok();
    assert_eq!(
        invalid.code,
        Some(1),
        "refused by the service: {}",
        invalid.stderr
    );
    assert!(invalid.stderr.contains("no steps"), "{}", invalid.stderr);
}
