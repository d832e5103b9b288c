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
fn the_stub_refuses_a_retryable_error_rate_outside_zero_to_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_saga-stub"))
        .args(["--queue", "q", "--retryable-error-rate", "2"])
        .output()
        .expect("run saga-stub");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SAGA_STUB_RETRYABLE_ERROR_RATE"));
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
    let text = String::from_utf8_lossy(&out.stdout);
    for var in ["SAGA_STUB_QUEUE", "SAGA_STUB_RETRYABLE_ERROR_RATE"] {
        assert!(text.contains(var), "{var} missing from stub --help");
    }
    assert!(text.contains("--retryable-error-rate"));
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
            let db = saga_service::config::parse_database_url(&admin).unwrap();
            let (client, conn) = db
                .config
                .connect(db.connector.make_tls_connect())
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        });
    };
    psql(&format!("CREATE DATABASE \"{db}\""));
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let url = match base.rfind('/') {
        Some(i) => format!("{}/{db}?{query}", &base[..i]),
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

const SECRET: &str = "s3cret";

fn help_of(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("SAGA_DATABASE_URL", format!("postgres://u:{SECRET}@h/db"))
        .env("SAGA_AMQP_URL", format!("amqp://u:{SECRET}@h/%2f"))
        .output()
        .expect("run --help");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_never_shows_a_password_from_the_environment_or_the_defaults() {
    let service = env!("CARGO_BIN_EXE_saga-service");
    for (bin, args) in [
        (service, &["--help"][..]),
        (service, &["serve", "--help"]),
        (service, &["migrate", "--help"]),
        (service, &["stub", "--help"]),
        (service, &["check-participant", "--help"]),
        (env!("CARGO_BIN_EXE_saga-stub"), &["--help"]),
        (env!("CARGO_BIN_EXE_saga-bench"), &["--help"]),
    ] {
        let text = help_of(bin, args);
        assert!(text.contains("_URL"), "{bin} {args:?}: {text}");
        for secret in [SECRET, "postgres:postgres@", "guest:guest@"] {
            assert!(
                !text.contains(secret),
                "{bin} {args:?} shows {secret}: {text}"
            );
        }
    }
}

#[test]
fn a_malformed_url_is_named_with_its_password_hidden_and_exit_code_2() {
    let cases: &[(&[&str], &str, String)] = &[
        (
            &["serve"],
            "SAGA_DATABASE_URL",
            format!("postgres://u:{SECRET}@h:notaport/db"),
        ),
        (
            &["migrate"],
            "SAGA_DATABASE_URL",
            format!("postgres://u:{SECRET}@h:notaport/db"),
        ),
        (
            &["serve"],
            "SAGA_AMQP_URL",
            format!("amqp://u:{SECRET}@h:notaport/%2f"),
        ),
        (
            &["stub", "--queue", "q"],
            "SAGA_AMQP_URL",
            format!("amqp://u:{SECRET}@h:notaport/%2f"),
        ),
    ];
    for (args, var, url) in cases {
        let (code, stderr) = run(args, &[(var, url)]);
        assert_eq!(code, Some(2), "{var}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(stderr.contains("u:***@h"), "{var}: {stderr}");
        assert!(
            !stderr.contains(SECRET),
            "{var} leaks the password: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_bad_tls_setting_stops_start_up_with_exit_code_2() {
    let url = |query: &str| format!("postgres://u:{SECRET}@127.0.0.1/db?{query}");
    let missing = "/nonexistent/ca.pem";
    let cases: Vec<(&[&str], (&str, String), &str)> = vec![
        (
            &["serve"],
            ("SAGA_DATABASE_URL", url("sslmode=verify-everything")),
            "sslmode",
        ),
        (
            &["serve"],
            (
                "SAGA_DATABASE_URL",
                url(&format!("sslmode=verify-full&sslrootcert={missing}")),
            ),
            missing,
        ),
        (
            &["migrate"],
            (
                "SAGA_DATABASE_URL",
                url(&format!("sslmode=verify-ca&sslrootcert={missing}")),
            ),
            missing,
        ),
        (
            &["serve"],
            ("SAGA_AMQP_CA_FILE", missing.to_string()),
            "SAGA_AMQP_CA_FILE",
        ),
        (
            &["stub", "--queue", "q"],
            ("SAGA_AMQP_CA_FILE", missing.to_string()),
            "SAGA_AMQP_CA_FILE",
        ),
    ];
    for (args, (var, value), named) in cases {
        let (code, stderr) = run(args, &[(var, &value)]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
        assert!(!stderr.contains(SECRET), "leaks the password: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn the_operator_commands_help_shows_examples_exit_codes_and_their_environment() {
    for (args, vars) in [
        (
            &["sagas", "--help"][..],
            &["SAGA_URL", "SAGA_ADMIN_TOKEN"][..],
        ),
        (
            &["definitions", "--help"],
            &["SAGA_URL", "SAGA_ADMIN_TOKEN"],
        ),
        (&["check-participant", "--help"], &["SAGA_AMQP_URL"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_saga-service"))
            .args(args)
            .env("SAGA_ADMIN_TOKEN", SECRET)
            .output()
            .expect("run --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text.contains("Examples:") && text.contains("Exit codes"),
            "{args:?}: {text}"
        );
        for var in vars {
            assert!(text.contains(var), "{var} missing from {args:?}: {text}");
        }
        assert!(!text.contains(SECRET), "{args:?} shows the token: {text}");
    }
}

#[test]
fn an_operator_command_with_a_bad_url_or_id_is_bad_usage_exit_2() {
    for args in [
        &["sagas", "list", "--url", "https://saga.example"][..],
        &["sagas", "list", "--url", "not a url"],
        &["sagas", "show", "no such id!"],
        &["sagas", "skip", "5QFTNIubMf4y0c2hWv16hN"],
        &["definitions", "put", "/nonexistent/defs.toml"],
    ] {
        let (code, stderr) = run(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
