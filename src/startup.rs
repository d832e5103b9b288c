//! Builds the service: HTTP first (so `/liveness` answers at once), then in the background
//! PostgreSQL, migrations, definitions, RabbitMQ, rehydration, the reply consumer, and
//! the upkeep of the database (retention, status gauges).

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use tokio::sync::oneshot;

use crate::actors::{Env, Registry, ReplyConsumer};
use crate::app_state::{AppState, Core};
use crate::broker::{Broker, ControlKey, InboxStreams, Topology};
use crate::cluster::lease::LeaseLoop;
use crate::cluster::Ownership;
use crate::config::Settings;
use crate::housekeeping::Housekeeping;
use crate::metrics::Metrics;
use crate::store::{self, SnapshotWriter};

/// A built service, listening, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    grace: Duration,
}

impl Application {
    /// Binds the HTTP listener and starts the background start-up; `handle_signals` is false in tests.
    pub fn build(settings: Settings, handle_signals: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http_addr)?;
        let settings_grace = settings.shutdown_timeout;
        let port = listener.local_addr()?.port();
        let pool = store::build_pool(&settings.database, settings.db_pool_size);
        let metrics = Metrics::new()?;
        for def in &settings.definitions {
            metrics.prime_saga(&def.name);
        }
        let mut app_state = AppState::new(pool, metrics);
        app_state.admin_token = settings.admin_token.clone();
        let state = web::Data::new(app_state);
        let http_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(http_state.clone())
                .configure(crate::http::routes)
        })
        .workers(settings.http_workers)
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .listen(listener)?;
        if !handle_signals {
            server = server.disable_signals();
        }
        let server = server.run();
        actix::spawn(boot(settings, state.clone()));
        Ok(Application {
            port,
            server,
            state,
            grace: settings_grace,
        })
    }

    /// The HTTP port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the registry through it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that stops the HTTP server.
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGTERM/SIGINT when signals are handled),
    /// then closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let state = self.state.clone();
        let grace = self.grace;
        let result = self.server.await;
        // HTTP has stopped taking requests; now stop taking replies and let the ones in
        // progress commit and settle, within the grace period, before closing up.
        state.drain.draining.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + grace;
        while state.drain.in_flight.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(core) = state.core.get() {
            crate::cluster::lease::leave(&state.pool, &core.env, &core.registry).await;
            core.env.broker.close().await;
        }
        state.pool.close();
        result
    }
}

/// Retries `op` with back-off (100 ms doubling to 5 s) until it succeeds, logging each failure
/// once with its causes (a refused TLS certificate is only named in a cause).
async fn retry<T, E: std::error::Error + 'static, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                log::warn!(
                    "{what} failed: {}; retrying in {delay:?}",
                    crate::logging::error_chain(&e)
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn boot(settings: Settings, state: web::Data<AppState>) {
    let pool = state.pool.clone();
    retry("migrations", || store::migrate(&pool)).await;
    let partitions = settings.cluster.partitions;
    retry("creating partition leases", || {
        store::leases::ensure_partitions(&pool, partitions)
    })
    .await;
    let catalog = Arc::new(
        retry("registering definitions", || {
            store::register_definitions(&pool, &settings.definitions)
        })
        .await,
    );
    // Versions stored later (PUT /definitions on any instance) become current here too.
    actix::spawn(store::listen_for_definitions(
        settings.database.clone(),
        pool.clone(),
        catalog.clone(),
        state.drain.clone(),
    ));
    let command_queues = catalog
        .all()
        .iter()
        .flat_map(|d| d.steps.iter().map(|s| s.queue.clone()))
        .collect();
    // Signs and checks hand-overs between instances; participants cannot read it.
    let key = retry("reading the cluster secret", || async {
        let secret = store::secret::cluster_secret(&pool).await?;
        ControlKey::new(&secret).ok_or_else(|| {
            store::StoreError::Corrupt("saga_cluster_secret holds fewer than 32 bytes".into())
        })
    })
    .await;
    let own_queue =
        Topology::instance_queue_for(&settings.reply_queue, &settings.cluster.instance_id);
    if own_queue.is_none() {
        log::warn!(
            "SAGA_REPLY_QUEUE and SAGA_INSTANCE_ID are too long together for a queue name: \
             with other instances, replies reach this one through its partitions' queues"
        );
    }
    let broker = Broker::new(
        settings.amqp_url.clone(),
        settings.amqp_tls.clone(),
        Topology {
            reply_queue: settings.reply_queue.clone(),
            command_queues,
            queue_type: settings.queue_type,
            partitions,
            instance_queue: own_queue.clone(),
            instance_queue_ttl_ms: u32::try_from(settings.cluster.lease.as_millis())
                .unwrap_or(u32::MAX),
        },
        key,
    );
    let ownership = Arc::new(Ownership::new(
        settings.cluster.instance_id.clone(),
        partitions,
    ));
    let env = Arc::new(Env {
        writer: SnapshotWriter::spawn(
            pool.clone(),
            settings.snapshot_writers,
            settings.snapshot_batch,
            ownership.instance(),
        ),
        broker: broker.clone(),
        catalog,
        metrics: state.metrics.clone(),
        passivate_after: settings.passivate_after,
        drain: state.drain.clone(),
        ownership,
        outbox: Arc::new(tokio::sync::Notify::new()),
    });
    actix::spawn(crate::relay::run(
        pool.clone(),
        broker.clone(),
        env.outbox.clone(),
        state.metrics.clone(),
    ));
    let registry = Registry::new(env.clone()).start();
    let _ = state.core.set(Core {
        registry: registry.clone(),
        env: env.clone(),
    });
    let streams = retry("connecting to RabbitMQ", || {
        broker.connect(settings.prefetch)
    })
    .await;
    // The lease loop takes this instance's share of the partitions (all of them when it
    // runs alone), rehydrates their unfinished sagas and consumes their queues.
    let (leased, first_round) = oneshot::channel();
    actix::spawn(
        LeaseLoop::new(
            store::build_lease_pool(&settings.database, settings.cluster.lease),
            env.clone(),
            registry.clone(),
            settings.cluster.clone(),
            settings.prefetch,
        )
        .run(leased),
    );
    let _ = first_round.await;
    // Retention and the status gauges: only the holder of partition 0 does either.
    let upkeep = Housekeeping {
        pool: pool.clone(),
        ownership: env.ownership.clone(),
        metrics: state.metrics.clone(),
        drain: state.drain.clone(),
    };
    actix::spawn(upkeep.clone().run_retention(settings.retention));
    actix::spawn(upkeep.run_status_gauges());
    let (mut shared_stopped, mut own_stopped) = start_inboxes(&env, &registry, streams);
    state.rehydrated.store(true, Ordering::Release);
    log::info!(
        "ready: instance {} holds {} of {partitions} partitions",
        env.ownership.instance(),
        env.ownership.held().len()
    );
    // Supervise the connection: whenever an inbox's consumer stops (its queue deleted, its
    // channel closed) consume it again; whenever the connection drops, reconnect and
    // consume both again.
    loop {
        let stopped = tokio::select! {
            _ = broker.closed() => None,
            _ = &mut shared_stopped => Some(Inbox::Shared),
            _ = own_ended(&mut own_stopped) => Some(Inbox::Own),
        };
        if state.drain.is_draining() {
            return;
        }
        match stopped {
            // Not worth a reconnection: without it, commands name their partition's queue.
            Some(Inbox::Own) if broker.is_ready() => {
                own_stopped = broker
                    .consume_own(settings.prefetch)
                    .await
                    .map(|stream| start_consumer(&env, &registry, stream));
                continue;
            }
            Some(Inbox::Shared) if broker.is_ready() => {
                match broker.consume_replies(settings.prefetch).await {
                    Ok(stream) => {
                        log::info!("reply queue declared and consumed again");
                        shared_stopped = start_consumer(&env, &registry, stream);
                        continue;
                    }
                    Err(e) => log::warn!("consuming the reply queue again failed ({e})"),
                }
            }
            _ => {}
        }
        log::warn!("RabbitMQ connection lost; reconnecting");
        broker.close().await;
        let streams = retry("reconnecting to RabbitMQ", || {
            broker.connect(settings.prefetch)
        })
        .await;
        log::info!("RabbitMQ connection re-established");
        (shared_stopped, own_stopped) = start_inboxes(&env, &registry, streams);
        // The lease loop consumes the partition queues on the new connection at once.
        env.ownership.recheck();
    }
}

/// The queues consumed whatever partitions are held: which one's consumer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbox {
    /// The shared reply queue.
    Shared,
    /// This instance's own queue.
    Own,
}

/// Starts the consumers of the inboxes; returns the signals of their ends.
fn start_inboxes(
    env: &Arc<Env>,
    registry: &Addr<Registry>,
    streams: InboxStreams,
) -> (oneshot::Receiver<()>, Option<oneshot::Receiver<()>>) {
    let shared = start_consumer(env, registry, streams.shared);
    let own = streams
        .own
        .map(|stream| start_consumer(env, registry, stream));
    (shared, own)
}

/// Resolves when the own queue's consumer stopped; never without one.
async fn own_ended(stopped: &mut Option<oneshot::Receiver<()>>) {
    match stopped {
        Some(rx) => {
            let _ = rx.await;
        }
        None => std::future::pending().await,
    }
}

fn start_consumer(
    env: &Arc<Env>,
    registry: &Addr<Registry>,
    stream: crate::broker::ReplyStream,
) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    ReplyConsumer::new(env.clone(), registry.clone(), stream, tx, None).start();
    rx
}
