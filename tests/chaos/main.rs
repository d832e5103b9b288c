//! Fault suite: kill -9 loops, broker and database outages, graceful shutdown; and the
//! cluster faults of CONTRACT.md section 7: a database cut off from one instance through a
//! proxy, an instance frozen past its lease, a partition queue deleted, a twin instance id,
//! and the nemesis that mixes them all.
//!
//! These tests stop PostgreSQL and RabbitMQ (or load the machine), so they hold one lock
//! and run one at a time; a guard restarts both services whatever happens. `make test`
//! runs the small versions; `make chaos` runs the full ones (the `#[ignore]`d tests).

// Each test runs on its own thread and runtime: a std Mutex held across awaits is
// exactly what serialises them, and blocks nothing else.
#![allow(clippy::await_holding_lock)]

#[path = "../api/helpers.rs"]
mod helpers;

mod audit;
mod classic;
mod cluster;
mod db_cut;
mod freeze;
mod language;
mod nemesis;
mod proxy;
mod queue_loss;
mod run;
mod twin;

use std::process::{Command, Stdio};
use std::sync::Mutex;

pub static SERIAL: Mutex<()> = Mutex::new(());

/// Restarts PostgreSQL and RabbitMQ when dropped, whatever the test did.
pub struct ServicesGuard;

impl Drop for ServicesGuard {
    fn drop(&mut self) {
        start_postgres();
        start_rabbitmq();
    }
}

pub fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .unwrap_or_else(|| "15".into())
}

pub fn sh(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn stop_postgres() {
    sh(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &pg_version(),
            "main",
            "stop",
            "-m",
            "fast",
        ],
    );
}
pub fn start_postgres() {
    sh(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &pg_version(), "main", "start"],
    );
}
pub fn stop_rabbitmq() {
    sh("rabbitmqctl", &["stop_app"]);
}
pub fn start_rabbitmq() {
    sh("rabbitmqctl", &["start_app"]);
    sh("rabbitmqctl", &["await_startup"]);
}
