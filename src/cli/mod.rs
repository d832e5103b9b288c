//! The operator's command line: `sagas` and `definitions` over the HTTP API, and
//! `check-participant` over AMQP (CONTRACT.md section 1).
//!
//! Each command returns its exit code: [`EXIT_OK`], [`EXIT_REFUSED`], [`EXIT_USAGE`] or
//! [`EXIT_UNREACHABLE`]; `main` only passes it to the process.

mod args;
pub mod check_participant;
mod client;
mod definitions;
mod output;
mod sagas;

pub use args::{
    CheckParticipantArgs, DefinitionsArgs, DefinitionsCommand, OperatorArgs, SagasArgs,
    SagasCommand,
};
pub use client::{ApiClient, ClientError};

/// Success.
pub const EXIT_OK: i32 = 0;
/// The service refused (a 4xx answer, its `error` printed), or a participant broke a rule.
pub const EXIT_REFUSED: i32 = 1;
/// Bad usage: a bad flag (clap's own), a missing or invalid file, a malformed saga id.
pub const EXIT_USAGE: i32 = 2;
/// The service (or the broker) cannot be reached: connection refused, a time-out, or a
/// 5xx answer (the service is there but cannot serve now, e.g. 503 while PostgreSQL is down).
pub const EXIT_UNREACHABLE: i32 = 3;

/// Runs `saga-service sagas ...`.
pub async fn run_sagas(args: SagasArgs) -> i32 {
    sagas::run(args).await
}

/// Runs `saga-service definitions ...`.
pub async fn run_definitions(args: DefinitionsArgs) -> i32 {
    definitions::run(args).await
}

/// Prints an error line to stderr and returns its exit code.
fn report(e: &ClientError) -> i32 {
    eprintln!("saga-service: {e}");
    e.exit_code()
}
