//! Flags of `sagas`, `definitions` and `check-participant`.

use crate::config::AmqpArgs;
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Where the service is and how to talk to it; given before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Base URL of the service's HTTP API.
    #[arg(
        long,
        env = "SAGA_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub url: String,
    /// Admin token sent as `Authorization: Bearer <token>` (needed by actions when the
    /// service sets one); never printed.
    #[arg(long, env = "SAGA_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer of the service.
    #[arg(long, env = "SAGA_TIMEOUT_S", default_value_t = 10, global = true)]
    pub timeout_s: u64,
}

const SAGAS_EXAMPLES: &str = "\
Examples:
  saga-service sagas list --status failed
  saga-service sagas list --stuck --json | jq '.sagas[].saga_id'
  saga-service sagas show 5PFbaGk5TLy8RnbRwqgJZk
  saga-service sagas abort 0b6e8f5e-3f55-4a8e-9c39-1b1a4c3f1f00 --by alice --reason 'customer cancelled'
  saga-service sagas skip 5PFbaGk5TLy8RnbRwqgJZk --step payment --by alice
  SAGA_URL=http://saga:3000 SAGA_ADMIN_TOKEN=... saga-service sagas retry <id>

Exit codes: 0 success, 1 the service refused (its error printed), 2 bad usage,
3 the service cannot be reached (connection refused, time-out, or a 5xx answer).";

const DEFINITIONS_EXAMPLES: &str = "\
Examples:
  saga-service definitions list
  saga-service definitions show trip --version 2
  saga-service definitions put sagas.toml      # every [[sagas]] of the file
  saga-service definitions put trip.json       # one definition, or an array of them

Exit codes: 0 success, 1 the service refused (its error printed), 2 bad usage or an
invalid file, 3 the service cannot be reached (connection refused, time-out, or a 5xx answer).";

/// `saga-service sagas ...`.
#[derive(Debug, Clone, Args)]
#[command(after_help = SAGAS_EXAMPLES)]
pub struct SagasArgs {
    /// Service URL, token, output.
    #[command(flatten)]
    pub api: OperatorArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: SagasCommand,
}

/// Who asks for an action and why (recorded in the saga's history).
#[derive(Debug, Clone, Args)]
pub struct Note {
    /// Who asks (recorded as `by <who>` in the history).
    #[arg(long)]
    pub by: Option<String>,
    /// Why (recorded in the history).
    #[arg(long)]
    pub reason: Option<String>,
}

/// The subcommands of `sagas`.
#[derive(Debug, Clone, Subcommand)]
pub enum SagasCommand {
    /// List sagas, newest first.
    List {
        /// Only sagas in this status (running, compensating, paused, completed, compensated, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only sagas of this type.
        #[arg(long)]
        saga: Option<String>,
        /// Only unfinished sagas with no transition for longer than any step may wait.
        #[arg(long)]
        stuck: bool,
        /// Sagas at most (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The `next` cursor of a previous page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one saga: its steps and history.
    Show {
        /// The saga's UUID or base62 code.
        id: String,
    },
    /// Abort a running or paused saga: it compensates.
    Abort {
        /// The saga's UUID or base62 code.
        id: String,
        /// Who and why.
        #[command(flatten)]
        note: Note,
    },
    /// Re-send the failed compensation of a failed saga.
    Retry {
        /// The saga's UUID or base62 code.
        id: String,
        /// Who and why.
        #[command(flatten)]
        note: Note,
    },
    /// Re-send the pending command of a running, compensating or paused saga now.
    Resume {
        /// The saga's UUID or base62 code.
        id: String,
        /// Who and why.
        #[command(flatten)]
        note: Note,
    },
    /// Count a step done without running it (a paused step, or a pending compensation).
    Skip {
        /// The saga's UUID or base62 code.
        id: String,
        /// The step to skip.
        #[arg(long)]
        step: String,
        /// Who and why.
        #[command(flatten)]
        note: Note,
    },
}

/// `saga-service definitions ...`.
#[derive(Debug, Clone, Args)]
#[command(after_help = DEFINITIONS_EXAMPLES)]
pub struct DefinitionsArgs {
    /// Service URL, token, output.
    #[command(flatten)]
    pub api: OperatorArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: DefinitionsCommand,
}

/// The subcommands of `definitions`.
#[derive(Debug, Clone, Subcommand)]
pub enum DefinitionsCommand {
    /// List the latest version of every definition.
    List,
    /// Show one definition (the latest version unless `--version`).
    Show {
        /// The saga type.
        name: String,
        /// An older version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Store the definitions of a file: TOML with one or more `[[sagas]]`, or JSON (one
    /// definition or an array of them).
    Put {
        /// The file (`.json`, or anything else read as TOML).
        file: PathBuf,
    },
}

const CHECK_EXAMPLES: &str = "\
Examples:
  saga-service check-participant --queue commands1
  saga-service check-participant --queue hotels --step hotel --timeout-ms 2000

Each rule of the participant protocol (README, Participant protocol) gets one line,
`pass` or `FAIL: why`:
  fresh       a fresh execute is answered done or error, with its command_id and saga_id
  repeat      the same command_id again gets the same answer (effects are not observable
              from here: only the answers are compared)
  resend      a re-send with a higher attempt gets the same answer
  compensate  a compensate for a never-executed command is answered done, and that
              command's execute sent afterwards is answered error
  replies     every reply is JSON with saga_id, status and command_id (or correlation_id),
              on the reply_to queue
It uses its own exclusive reply queue and fresh saga ids, and touches no database; the
participant runs the fresh command for real (its effect stays, under saga type --saga).

Exit codes: 0 every rule passed, 1 a rule failed, 2 bad usage, 3 the broker cannot be reached.";

/// `saga-service check-participant`.
#[derive(Debug, Clone, Args)]
#[command(after_help = CHECK_EXAMPLES)]
pub struct CheckParticipantArgs {
    /// The participant's command queue.
    #[arg(long)]
    pub queue: String,
    /// The step name put in the commands.
    #[arg(long, default_value = "check")]
    pub step: String,
    /// The saga type put in the commands.
    #[arg(long, default_value = "check-participant")]
    pub saga: String,
    /// Milliseconds to wait for each answer.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// RabbitMQ.
    #[command(flatten)]
    pub amqp: AmqpArgs,
}
