//! Prometheus metrics of the orchestrator.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `outcome` values of `saga_replies_total`.
const REPLY_OUTCOMES: &[&str] = &[
    "accepted",
    "ignored",
    "dead_lettered",
    "requeued",
    "forwarded",
    "forward_failed",
    "handed_over",
    "forged_hand_over",
];
/// `change` values of `saga_partition_changes_total`.
const PARTITION_CHANGES: &[&str] = &["acquired", "lost", "released", "expired"];
/// `reason` values of `saga_retries_total`.
const RETRY_REASONS: &[&str] = &["timeout", "retryable_error", "compensate_error"];
/// `table` values of `saga_retention_deleted_total`.
const RETENTION_TABLES: &[&str] = &["sagas", "saga_events", "saga_quarantine", "saga_instances"];
/// `status` values of `saga_finished_total`.
const FINISHED_STATUSES: &[&str] = &["completed", "compensated", "failed", "paused"];

fn prime(counter: &IntCounterVec, values: &[&str]) {
    for v in values {
        counter.with_label_values(&[v]);
    }
}

/// Every metric the service exports at `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sagas started, by type.
    pub sagas_started: IntCounterVec,
    /// Sagas that reached completed, compensated or failed, by type and status.
    pub sagas_finished: IntCounterVec,
    /// Replies by outcome: accepted, ignored (duplicate/stale/finished), dead_lettered,
    /// requeued, forwarded (to the instance holding the saga's partition), handed_over.
    pub replies: IntCounterVec,
    /// Commands published, by action (`execute`, `compensate`) and kind (`first`, `resend`).
    pub commands: IntCounterVec,
    /// Commands the broker confirmed.
    pub commands_confirmed: IntCounter,
    /// Transitions committed, by event.
    pub transitions: IntCounterVec,
    /// Snapshot commit time, seconds.
    pub snapshot_seconds: Histogram,
    /// Live saga actors.
    pub live_actors: IntGauge,
    /// Sagas aborted by an operator, by type.
    pub sagas_aborted: IntCounterVec,
    /// Sagas that entered `paused`, by type.
    pub sagas_paused: IntCounterVec,
    /// Commands scheduled to be sent again, by reason: `timeout` (no reply in time),
    /// `retryable_error` (a participant asked), `compensate_error` (a compensate failed).
    pub retries: IntCounterVec,
    /// Command sent to its accepted reply, seconds, by saga type.
    pub step_seconds: HistogramVec,
    /// Start to completed/compensated/failed, seconds, by saga type.
    pub saga_seconds: HistogramVec,
    /// Publish to broker confirm, seconds.
    pub confirm_seconds: Histogram,
    /// Unfinished and failed sagas per status in PostgreSQL, exported by the holder of
    /// partition 0 only and refreshed every 15 s (`crate::housekeeping`); completed and
    /// compensated sagas are not counted (README "Metrics").
    pub sagas_by_status: IntGaugeVec,
    /// Rows deleted by the retention sweep, by table (`sagas`, `saga_events`,
    /// `saga_quarantine`, `saga_instances`).
    pub retention_deleted: IntCounterVec,
    /// Partitions this instance holds.
    pub partitions_held: IntGauge,
    /// Partition leases acquired, lost (taken by another) and released (rebalancing).
    pub partition_changes: IntCounterVec,
    /// Lifecycle events the outbox relay published and the broker confirmed.
    pub events_announced: IntCounter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let sagas_started = counter("saga_started_total", "Sagas started", &["saga"])?;
        let sagas_finished = counter(
            "saga_finished_total",
            "Sagas that reached completed, compensated or failed",
            &["saga", "status"],
        )?;
        let replies = counter(
            "saga_replies_total",
            "Replies received, by outcome",
            &["outcome"],
        )?;
        let commands = counter(
            "saga_commands_sent_total",
            "Commands published",
            &["action", "kind"],
        )?;
        let commands_confirmed = IntCounter::new(
            "saga_commands_confirmed_total",
            "Commands the broker confirmed",
        )?;
        registry.register(Box::new(commands_confirmed.clone()))?;
        let transitions = counter(
            "saga_transitions_total",
            "Transitions committed",
            &["event"],
        )?;
        let snapshot_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "saga_snapshot_commit_seconds",
                "Time to commit one transition",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
        )?;
        registry.register(Box::new(snapshot_seconds.clone()))?;
        let live_actors = IntGauge::new("saga_live_actors", "Saga actors in memory")?;
        registry.register(Box::new(live_actors.clone()))?;
        let sagas_aborted = counter(
            "saga_aborted_total",
            "Sagas aborted by an operator",
            &["saga"],
        )?;
        let sagas_paused = counter(
            "saga_paused_total",
            "Sagas that entered paused (a step with on_error = pause, or past a pivot, failed)",
            &["saga"],
        )?;
        let retries = counter(
            "saga_retries_total",
            "Commands scheduled to be sent again, by reason (timeout, retryable_error, compensate_error)",
            &["reason"],
        )?;
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let step_seconds = HistogramVec::new(
            HistogramOpts::new("saga_step_seconds", "Command sent to its accepted reply")
                .buckets(buckets.clone()),
            &["saga"],
        )?;
        registry.register(Box::new(step_seconds.clone()))?;
        let saga_seconds = HistogramVec::new(
            HistogramOpts::new(
                "saga_duration_seconds",
                "Start to completed, compensated or failed",
            )
            .buckets(buckets.clone()),
            &["saga"],
        )?;
        registry.register(Box::new(saga_seconds.clone()))?;
        let confirm_seconds = Histogram::with_opts(
            HistogramOpts::new("saga_publish_confirm_seconds", "Publish to broker confirm")
                .buckets(buckets),
        )?;
        registry.register(Box::new(confirm_seconds.clone()))?;
        let sagas_by_status = IntGaugeVec::new(
            Opts::new(
                "saga_sagas",
                "Unfinished and failed sagas per status in PostgreSQL (holder of partition 0 only)",
            ),
            &["status"],
        )?;
        registry.register(Box::new(sagas_by_status.clone()))?;
        let partitions_held =
            IntGauge::new("saga_partitions_held", "Partitions this instance holds")?;
        registry.register(Box::new(partitions_held.clone()))?;
        let partition_changes = counter(
            "saga_partition_changes_total",
            "Partition leases acquired, lost and released",
            &["change"],
        )?;
        let events_announced = IntCounter::new(
            "saga_events_announced_total",
            "Lifecycle events published from the outbox and confirmed by the broker",
        )?;
        registry.register(Box::new(events_announced.clone()))?;
        let retention_deleted = counter(
            "saga_retention_deleted_total",
            "Rows deleted by the retention sweep",
            &["table"],
        )?;
        // Every label value the service can count starts at 0, so that a first increment is
        // an increase to rules and dashboards (`increase()` sees no change in a series that
        // is born at 1: the first dead-lettered reply would never fire an alert).
        prime(&replies, REPLY_OUTCOMES);
        prime(&partition_changes, PARTITION_CHANGES);
        prime(&retries, RETRY_REASONS);
        prime(&retention_deleted, RETENTION_TABLES);
        Ok(Metrics {
            events_announced,
            retention_deleted,
            partitions_held,
            partition_changes,
            registry,
            sagas_started,
            sagas_finished,
            replies,
            commands,
            commands_confirmed,
            transitions,
            snapshot_seconds,
            live_actors,
            sagas_aborted,
            sagas_paused,
            retries,
            step_seconds,
            saga_seconds,
            confirm_seconds,
            sagas_by_status,
        })
    }

    /// Starts the per-type series of saga type `saga` at 0 (see [`Metrics::new`]): on
    /// start-up for the configured definitions, and with the first saga of a type started.
    pub fn prime_saga(&self, saga: &str) {
        for status in FINISHED_STATUSES {
            self.sagas_finished.with_label_values(&[saga, status]);
        }
        for counter in [&self.sagas_started, &self.sagas_aborted, &self.sagas_paused] {
            counter.with_label_values(&[saga]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
