//! The binaries' command line: bad values stop start-up with one line and exit code 2.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_saga-service"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run saga-service");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_it_and_exit_code_2() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("SAGA_AMQP_URL", "http://nope")], "SAGA_AMQP_URL"),
        (
            &[("SAGA_DATABASE_URL", "postgres://a@h:port/x")],
            "SAGA_DATABASE_URL",
        ),
        (&[("SAGA_HTTP_ADDR", "not an address")], "SAGA_HTTP_ADDR"),
        (
            &[("SAGA_DEFINITIONS", "/nonexistent/defs.toml")],
            "/nonexistent/defs.toml",
        ),
        (&[("SAGA_QUEUE_TYPE", "stream")], "stream"),
        (&[("SAGA_RETENTION", "30x")], "SAGA_RETENTION"),
    ];
    for (env, named) in cases {
        let (code, stderr) = run(&["serve"], env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_step_without_a_queue_is_refused_at_start_up() {
    let path = std::env::temp_dir().join(format!("noqueue-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "[[sagas]]\nname = \"x\"\n[[sagas.steps]]\nname = \"a\"\nqueue = \"\"\n",
    )
    .unwrap();
    let (code, stderr) = run(&["serve"], &[("SAGA_DEFINITIONS", path.to_str().unwrap())]);
    std::fs::remove_file(&path).ok();
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("step `a` of saga `x` has no queue"),
        "{stderr}"
    );
}

#[test]
fn the_stub_refuses_an_error_rate_outside_zero_to_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_saga-stub"))
        .args(["--queue", "q", "--error-rate", "1.5"])
        .output()
        .expect("run saga-stub");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SAGA_STUB_ERROR_RATE"));
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_saga-service"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for var in [
        "SAGA_DATABASE_URL",
        "SAGA_AMQP_URL",
        "SAGA_HTTP_ADDR",
        "SAGA_DEFINITIONS",
        "SAGA_REPLY_QUEUE",
        "SAGA_QUEUE_TYPE",
    ] {
        assert!(text.contains(var), "{var} missing from --help");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_saga-service"))
        .args(["stub", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SAGA_STUB_QUEUE"));
}

#[test]
fn migrate_is_idempotent_on_a_fresh_database() {
    let admin = std::env::var("SAGA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!(
        "saga_cli_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let psql = |sql: &str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        });
    };
    psql(&format!("CREATE DATABASE \"{db}\""));
    let url = match admin.rfind('/') {
        Some(i) => format!("{}/{db}", &admin[..i]),
        None => admin.clone(),
    };
    let first = run(&["migrate"], &[("SAGA_DATABASE_URL", &url)]);
    let second = run(&["migrate"], &[("SAGA_DATABASE_URL", &url)]);
    psql(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
    assert_eq!(first.0, Some(0), "{}", first.1);
    assert_eq!(second.0, Some(0), "{}", second.1);
    let all = saga_service::store::MIGRATIONS.len();
    assert!(
        first.1.contains(&format!("{all} migrations applied")),
        "{}",
        first.1
    );
    assert!(second.1.contains("0 migrations applied"), "{}", second.1);
}
