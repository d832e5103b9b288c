//! One settings tree from flags, environment and defaults (CONTRACT.md section 1).
//!
//! Everything is parsed here, before any connection is tried: a bad value stops
//! start-up with one line naming it and exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::broker::AmqpTls;
use crate::domain::{load_definitions, Retention, SagaDefinition};

mod database;
#[cfg(test)]
mod database_tests;
mod redact;

pub use database::{parse_database_url, DatabaseSettings, SslMode};
pub use redact::{redact_url, REDACTED};

/// Command line of `saga-service`.
#[derive(Debug, Parser)]
#[command(
    name = "saga-service",
    version,
    about = "A saga orchestrator over RabbitMQ and PostgreSQL"
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Orchestrator settings (also read by `serve` when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, rehydrate unfinished sagas, serve HTTP (the default).
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate(MigrateArgs),
    /// Run a participant stub on one command queue.
    Stub(StubArgs),
    /// Operator commands on sagas over the HTTP API: list, show, abort, retry, resume, skip.
    Sagas(crate::cli::SagasArgs),
    /// Operator commands on saga definitions over the HTTP API: list, show, put.
    Definitions(crate::cli::DefinitionsArgs),
    /// Drive a running participant through the protocol's rules and report each.
    CheckParticipant(crate::cli::CheckParticipantArgs),
}

/// Queue type of the queues the orchestrator declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    /// Classic queues (compatible with queues participants declared plainly).
    Classic,
    /// Quorum queues (replicated, always on disk).
    Quorum,
}

/// Flags of `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL; libpq's `sslmode` and `sslrootcert` parameters select TLS
    /// [default: postgres://postgres:***@localhost:5432/postgres].
    #[arg(
        long,
        env = "SAGA_DATABASE_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "postgres://postgres:postgres@localhost:5432/postgres"
    )]
    pub database_url: String,
}

/// The RabbitMQ flags of every command that talks AMQP (`serve`, `stub`,
/// `check-participant`, `saga-bench`).
#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL; `amqps://` connects with TLS
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f].
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// PEM file of CA certificates trusted for `amqps://`, besides the system's.
    #[arg(long, env = "SAGA_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
}

impl AmqpArgs {
    /// The local broker, no extra CA.
    pub fn local(amqp_url: impl Into<String>) -> Self {
        AmqpArgs {
            amqp_url: amqp_url.into(),
            amqp_ca_file: None,
        }
    }

    /// Checks the URL and reads the CA file; returns the TLS roots for `amqps://`.
    pub fn check(&self) -> Result<AmqpTls, ConfigError> {
        check_amqp_url(&self.amqp_url)?;
        amqp_tls(self.amqp_ca_file.as_deref())
    }
}

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL URL; libpq's `sslmode` and `sslrootcert` parameters select TLS
    /// [default: postgres://postgres:***@localhost:5432/postgres].
    #[arg(
        long,
        env = "SAGA_DATABASE_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "postgres://postgres:postgres@localhost:5432/postgres"
    )]
    pub database_url: String,
    /// RabbitMQ.
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// HTTP listen address.
    #[arg(long, env = "SAGA_HTTP_ADDR", default_value = "0.0.0.0:3000")]
    pub http_addr: String,
    /// Path of a TOML file of saga definitions (the built-in `default` saga otherwise).
    #[arg(long, env = "SAGA_DEFINITIONS")]
    pub definitions: Option<PathBuf>,
    /// Queue the orchestrator consumes replies from.
    #[arg(long, env = "SAGA_REPLY_QUEUE", default_value = "responses")]
    pub reply_queue: String,
    /// Type of the queues the orchestrator declares.
    #[arg(long, env = "SAGA_QUEUE_TYPE", value_enum, default_value = "classic")]
    pub queue_type: QueueType,
    /// Replies the broker may hand over before any is acked.
    #[arg(long, env = "SAGA_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Maximum PostgreSQL connections.
    #[arg(long, env = "SAGA_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// Concurrent snapshot-writer transactions (each commits a batch of transitions).
    /// Two beat four here: fewer writers make larger batches (README, Performance).
    #[arg(long, env = "SAGA_SNAPSHOT_WRITERS", default_value_t = 2)]
    pub snapshot_writers: usize,
    /// Most transitions committed in one snapshot transaction.
    #[arg(long, env = "SAGA_SNAPSHOT_BATCH", default_value_t = 256)]
    pub snapshot_batch: usize,
    /// HTTP worker threads.
    #[arg(long, env = "SAGA_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Token required (as `Authorization: Bearer <token>`) by abort, retry, skip and resume.
    #[arg(long, env = "SAGA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Milliseconds a saga actor may wait idle before it is passivated (0: never).
    #[arg(long, env = "SAGA_PASSIVATE_AFTER_MS", default_value_t = 10_000)]
    pub passivate_after_ms: u64,
    /// Seconds given to in-flight work on SIGTERM before the process exits.
    #[arg(long, env = "SAGA_SHUTDOWN_TIMEOUT_S", default_value_t = 10)]
    pub shutdown_timeout_s: u64,
    /// This instance's name among several on one database (unique per running instance;
    /// the host name when omitted, so that a restarted instance takes its partitions back at once).
    #[arg(long, env = "SAGA_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Partitions the sagas are spread over (the same on every instance of one database).
    #[arg(long, env = "SAGA_PARTITIONS", default_value_t = 64)]
    pub partitions: u32,
    /// Milliseconds a partition lease lasts without renewal: a dead instance's partitions
    /// are taken over this long after its last renewal.
    #[arg(long, env = "SAGA_LEASE_MS", default_value_t = 5_000)]
    pub lease_ms: u64,
    /// Milliseconds between lease renewals (and rebalancing checks); below SAGA_LEASE_MS.
    #[arg(long, env = "SAGA_LEASE_RENEW_MS", default_value_t = 1_000)]
    pub lease_renew_ms: u64,
    /// Completed and compensated sagas are deleted, with their history, this long after
    /// their last transition: `<n>s`, `<n>m`, `<n>h` or `<n>d`; `0` keeps them for ever.
    #[arg(long, env = "SAGA_RETENTION", default_value = "30d")]
    pub retention: String,
}

/// Flags of the participant stub (`saga-service stub` and `saga-stub`).
#[derive(Debug, Clone, Args)]
pub struct StubArgs {
    /// Command queue to consume.
    #[arg(long, env = "SAGA_STUB_QUEUE")]
    pub queue: String,
    /// Service name put in replies (`service`); the queue name when omitted.
    #[arg(long, env = "SAGA_STUB_SERVICE")]
    pub service: Option<String>,
    /// Probability (0..1) of answering `error` to an execute.
    #[arg(long, env = "SAGA_STUB_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability (0..1) of answering a retryable `error` (`"retryable": true`) to an
    /// execute; such an answer is not remembered, so a re-send of the command runs it again.
    #[arg(long, env = "SAGA_STUB_RETRYABLE_ERROR_RATE", default_value_t = 0.0)]
    pub retryable_error_rate: f64,
    /// Delay before each reply, in milliseconds.
    #[arg(long, env = "SAGA_STUB_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Append one line per executed or compensated command to this file (an effect log).
    #[arg(long, env = "SAGA_STUB_EFFECTS")]
    pub effects: Option<PathBuf>,
    /// Commands handled at once.
    #[arg(long, env = "SAGA_STUB_PREFETCH", default_value_t = 200)]
    pub prefetch: u16,
    /// RabbitMQ.
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

/// A bad configuration value: start-up stops with this one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Validated settings of the orchestrator.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL connection settings, TLS included.
    pub database: DatabaseSettings,
    /// RabbitMQ URL (validated).
    pub amqp_url: String,
    /// TLS roots for `amqps://`.
    pub amqp_tls: AmqpTls,
    /// HTTP listen address (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// The definitions in force.
    pub definitions: Vec<SagaDefinition>,
    /// The reply queue.
    pub reply_queue: String,
    /// Queue type.
    pub queue_type: QueueType,
    /// Broker prefetch for replies.
    pub prefetch: u16,
    /// Pool size.
    pub db_pool_size: usize,
    /// Concurrent snapshot transactions.
    pub snapshot_writers: usize,
    /// Transitions per snapshot transaction at most.
    pub snapshot_batch: usize,
    /// HTTP workers.
    pub http_workers: usize,
    /// Grace period on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Idle time before a saga actor is passivated.
    pub passivate_after: Option<Duration>,
    /// Token for operator actions, if required.
    pub admin_token: Option<String>,
    /// Partitioned ownership among instances.
    pub cluster: ClusterSettings,
    /// How long finished sagas are kept.
    pub retention: Retention,
}

/// How this instance shares the sagas with others on the same database.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This instance's name.
    pub instance_id: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval.
    pub renew_every: Duration,
}

/// Most partitions: each is a reply queue and a lease row.
pub const MAX_PARTITIONS: u32 = 1024;

/// Checks a RabbitMQ URL, naming it (its password as `***`) on failure.
pub fn check_amqp_url(url: &str) -> Result<String, ConfigError> {
    lapin::uri::AMQPUri::from_str(url)
        .map(|_| url.to_string())
        .map_err(|e| {
            ConfigError(format!(
                "invalid SAGA_AMQP_URL `{}`: {}",
                redact_url(url),
                redact_url(&e.to_string())
            ))
        })
}

/// The URL with an AMQP `heartbeat` of half the lease (at least 1 s) unless it names one.
/// A process frozen or cut off holds the replies prefetched by its consumers until the
/// broker declares it dead; with the server's default (60 s) that outlasts the lease by far
/// and the steps behind those replies time out on the instance that took over. With a
/// heartbeat of half the lease the broker closes the dead connection, and hands its
/// unacked replies to the live instances, about when the lease expires.
pub fn with_heartbeat(url: &str, lease: std::time::Duration) -> String {
    let has_query = url.contains('?');
    if url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("heartbeat=")))
    {
        return url.to_string();
    }
    let secs = (lease.as_secs() / 2).max(1);
    let sep = if has_query { '&' } else { '?' };
    format!("{url}{sep}heartbeat={secs}")
}

/// Reads `SAGA_AMQP_CA_FILE`, naming it on failure.
pub fn amqp_tls(ca_file: Option<&std::path::Path>) -> Result<AmqpTls, ConfigError> {
    AmqpTls::from_ca_file(ca_file)
        .map_err(|e| ConfigError(format!("invalid SAGA_AMQP_CA_FILE: {e}")))
}

fn check_queue_name(what: &str, name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() || name.len() > 240 || name.starts_with("amq.") {
        return Err(ConfigError(format!(
            "invalid {what} `{name}`: must be 1-240 characters and not start with `amq.`"
        )));
    }
    Ok(())
}

impl ServeArgs {
    /// Validates every value; the error names the one that is wrong.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let database = parse_database_url(&self.database_url)?;
        let amqp_tls = self.amqp.check()?;
        let amqp_url = self.amqp.amqp_url.clone();
        let http_addr = SocketAddr::from_str(&self.http_addr).map_err(|e| {
            ConfigError(format!("invalid SAGA_HTTP_ADDR `{}`: {e}", self.http_addr))
        })?;
        let definitions = load_definitions(self.definitions.as_deref())
            .map_err(|e| ConfigError(format!("SAGA_DEFINITIONS: {e}")))?;
        check_queue_name("SAGA_REPLY_QUEUE", &self.reply_queue)?;
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(ConfigError(format!("{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        let cluster = self.cluster_settings()?;
        let amqp_url = with_heartbeat(&amqp_url, cluster.lease);
        let retention = Retention::parse(&self.retention).map_err(ConfigError)?;
        Ok(Settings {
            cluster,
            retention,
            database,
            amqp_url,
            amqp_tls,
            http_addr,
            definitions,
            reply_queue: self.reply_queue.clone(),
            queue_type: self.queue_type,
            prefetch: self.prefetch.max(1),
            db_pool_size: positive("SAGA_DB_POOL_SIZE", self.db_pool_size)?,
            snapshot_writers: positive("SAGA_SNAPSHOT_WRITERS", self.snapshot_writers)?,
            snapshot_batch: positive("SAGA_SNAPSHOT_BATCH", self.snapshot_batch)?,
            http_workers: positive("SAGA_HTTP_WORKERS", self.http_workers)?,
            shutdown_timeout: Duration::from_secs(if self.shutdown_timeout_s <= 3600 {
                self.shutdown_timeout_s
            } else {
                return Err(ConfigError(format!(
                    "invalid SAGA_SHUTDOWN_TIMEOUT_S `{}`: at most 3600",
                    self.shutdown_timeout_s
                )));
            }),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            passivate_after: (self.passivate_after_ms > 0)
                .then(|| Duration::from_millis(self.passivate_after_ms)),
        })
    }
}

/// The instance id without `SAGA_INSTANCE_ID`: the host name (`saga-service` if unreadable).
pub fn default_instance_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "saga-service".into())
}

impl ServeArgs {
    fn cluster_settings(&self) -> Result<ClusterSettings, ConfigError> {
        let instance_id = match &self.instance_id {
            Some(id) => id.clone(),
            None => default_instance_id(),
        };
        if instance_id.trim().is_empty()
            || instance_id.len() > 200
            || instance_id.chars().any(char::is_control)
        {
            return Err(ConfigError(format!(
                "invalid SAGA_INSTANCE_ID `{instance_id}`: 1-200 printable characters"
            )));
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(ConfigError(format!(
                "invalid SAGA_PARTITIONS `{}`: must be between 1 and {MAX_PARTITIONS}",
                self.partitions
            )));
        }
        if self.lease_renew_ms == 0 || self.lease_renew_ms.saturating_mul(2) > self.lease_ms {
            return Err(ConfigError(format!(
                "invalid SAGA_LEASE_RENEW_MS `{}`: must be at least 1 and at most half of SAGA_LEASE_MS ({})",
                self.lease_renew_ms, self.lease_ms
            )));
        }
        if self.lease_ms > 600_000 {
            return Err(ConfigError(format!(
                "invalid SAGA_LEASE_MS `{}`: at most 600000",
                self.lease_ms
            )));
        }
        Ok(ClusterSettings {
            instance_id,
            partitions: self.partitions,
            lease: Duration::from_millis(self.lease_ms),
            renew_every: Duration::from_millis(self.lease_renew_ms),
        })
    }
}

impl StubArgs {
    /// Validates the stub's values; returns its TLS roots for `amqps://`.
    pub fn check(&self) -> Result<AmqpTls, ConfigError> {
        let tls = self.amqp.check()?;
        check_queue_name("SAGA_STUB_QUEUE", &self.queue)?;
        for (name, rate) in [
            ("SAGA_STUB_ERROR_RATE", self.error_rate),
            ("SAGA_STUB_RETRYABLE_ERROR_RATE", self.retryable_error_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError(format!(
                    "invalid {name} `{rate}`: must be between 0 and 1"
                )));
            }
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["saga-service", "serve"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| ConfigError(e.to_string()))?;
        match cli.command {
            Some(Command::Serve(a)) => a.settings(),
            _ => Err(ConfigError("not serve".into())),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let s = args(&[]).unwrap();
        assert_eq!(s.reply_queue, "responses");
        assert_eq!(s.http_addr.port(), 3000);
        assert_eq!(s.definitions.len(), 1);
        assert_eq!(
            s.retention,
            Retention::after(Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn a_bad_value_is_named_in_the_error() {
        let e = args(&["--amqp-url", "http://nope"]).unwrap_err();
        assert!(e.0.contains("SAGA_AMQP_URL"), "{e}");
        let e = args(&["--http-addr", "localhost"]).unwrap_err();
        assert!(e.0.contains("SAGA_HTTP_ADDR"), "{e}");
        let e = args(&["--database-url", "postgres://a:b@h:notaport/x"]).unwrap_err();
        assert!(e.0.contains("SAGA_DATABASE_URL"), "{e}");
        let e = args(&["--definitions", "/nonexistent/defs.toml"]).unwrap_err();
        assert!(e.0.contains("/nonexistent/defs.toml"), "{e}");
        let e = args(&["--partitions", "0"]).unwrap_err();
        assert!(e.0.contains("SAGA_PARTITIONS"), "{e}");
        let e = args(&["--lease-ms", "1000", "--lease-renew-ms", "800"]).unwrap_err();
        assert!(e.0.contains("SAGA_LEASE_RENEW_MS"), "{e}");
        let e = args(&["--instance-id", " "]).unwrap_err();
        assert!(e.0.contains("SAGA_INSTANCE_ID"), "{e}");
        let e = args(&["--retention", "30"]).unwrap_err();
        assert!(
            e.0.contains("SAGA_RETENTION") && e.0.contains("`30`"),
            "{e}"
        );
    }

    #[test]
    fn the_amqp_heartbeat_is_half_the_lease_unless_the_url_names_one() {
        let lease = std::time::Duration::from_secs(5);
        assert_eq!(
            with_heartbeat("amqp://g:g@h:5672/%2f", lease),
            "amqp://g:g@h:5672/%2f?heartbeat=2"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192", lease),
            "amqp://h/%2f?frame_max=8192&heartbeat=2"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=30", lease),
            "amqp://h/%2f?heartbeat=30"
        );
        let short = std::time::Duration::from_millis(1500);
        assert!(with_heartbeat("amqp://h", short).ends_with("heartbeat=1"));
        assert!(check_amqp_url(&with_heartbeat("amqp://h/%2f", lease)).is_ok());
    }

    #[test]
    fn cluster_defaults() {
        let s = args(&[]).unwrap();
        assert_eq!(s.cluster.partitions, 64);
        assert_eq!(s.cluster.lease, Duration::from_secs(5));
        assert_eq!(s.cluster.renew_every, Duration::from_secs(1));
        assert!(!s.cluster.instance_id.is_empty());
    }
}
