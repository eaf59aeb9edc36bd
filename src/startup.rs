//! Building and running the server: open the store, start the writer and the shared state
//! once, then the workers of [`crate::http::server`] on a listener; stop by draining streams and
//! flushing totals.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use actix_cors::Cors;
use actix_http::{HttpService, KeepAlive};
use actix_service::map_config;
use actix_web::dev::AppConfig;
use actix_web::dev::Service;
use actix_web::http::{StatusCode, header};
use actix_web::{App, web};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::alerts::{self, Deliveries};
use crate::cluster;
use crate::cluster::Cluster;
use crate::cluster::store::RedisStore;
use crate::config::{Config, ConfigError, Posts};
use crate::edge::limits::{AuthFailureRate, StreamLimits, ViewRate, raise_fd_limit};
use crate::edge::origin::OriginPolicy;
use crate::edge::slug_list::{OpenPosts, POLL_INTERVAL, SlugList, SlugPolicy};
use crate::http::api;
use crate::http::assets;
use crate::http::dashboard;
use crate::http::error::json_error;
use crate::http::owner;
use crate::http::server::{Server, Settings};
use crate::http::state::AppState;
use crate::http::streams::lifecycle::Signals;
use crate::import::session::Sessions;
use crate::metrics::Metrics;
use crate::posts::alert_port::Alerts;
use crate::posts::cluster_port::Counting;
use crate::posts::local_counting::LocalCounting;
use crate::posts::registry::Registry;
use crate::shutdown::{Shutdown, Tasks, Trigger};
use crate::storage::calendar::Calendar;
use crate::storage::store::{RedbStore, Store, StoreError};
use crate::storage::writer::Writer;

/// How long in-flight requests get to finish once streams were told to go.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client must finish its request head within this time or is dropped.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes that find a peer that vanished without FIN or RST.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 4;
/// Unacknowledged data (a heartbeat to a dead peer) gives up after this long.
/// With a 15 s heartbeat, a vanished reader is dropped within about 55 s.
const USER_TIMEOUT: Duration = Duration::from_secs(40);
/// Connections the kernel queues before the workers accept them.
const LISTEN_BACKLOG: i32 = 4096;
/// How often rate-limit buckets are pruned and freed memory is given back.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a group of background tasks gets to end once told to: each finishes the round of
/// work it is in (a Redis call gives up after `--redis-timeout`), then returns.
const TASKS_STOP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("final flush failed, recent views may be lost: {0}")]
    Flush(String),
}

/// A server bound to its port, not yet serving until [`Application::run_until`].
pub struct Application {
    server: Server,
    addr: SocketAddr,
    state: web::Data<AppState>,
    shutdown: Trigger,
    heartbeat: watch::Sender<()>,
    heartbeat_every: Duration,
    /// Registered at build time, so a SIGHUP right after start reloads instead of killing.
    hangup: Option<Signal>,
    /// The heartbeat, housekeeping and allow-list watcher: stopped once the server is.
    background: Tasks,
    /// Cluster mode's heartbeat, listener, replay, …: stopped first, so none of them writes
    /// this node's presence again after it left.
    cluster_tasks: Tasks,
    /// `--alert-url`: the task that sends alerts, started with the serving.
    alerts: Option<Deliveries>,
}

impl Application {
    /// Checks `config` (before anything is bound or opened), binds `config.listen`, then as
    /// [`Application::build_with_listener`].
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        Self::wire(config, listener).await
    }

    /// Checks `config`, opens the store, starts the writer and the workers on `listener`;
    /// serving starts with [`Application::run_until`].
    pub async fn build_with_listener(
        config: Config,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        config.validate()?;
        Self::wire(config, listener).await
    }

    /// Both builds after their one check of the config.
    async fn wire(config: Config, listener: TcpListener) -> Result<Self, StartError> {
        let fd_room = raise_fd_limit();
        let capacity = config.limits.max_streams.unwrap_or(fd_room as usize);
        let mut db = RedbStore::open(&config.db)?;
        db.refuse_retired()?;
        let policy = config.flush;
        let calendar = Calendar::new(config.timezone.clone(), config.clock.clone());
        let metrics = match &config.cluster {
            Some(_) => Metrics::clustered(),
            None => Metrics::new(),
        };
        let (mut store, cluster): (Box<dyn Store>, _) = match &config.cluster {
            None => (Box::new(db), None),
            Some(cc) => {
                let addr = listener.local_addr()?;
                let (store, cluster) =
                    join_cluster(cc, addr, db, &calendar, policy, &metrics).await?;
                (store, Some(cluster))
            }
        };
        let existing = match store.row_count() {
            Ok(n) => n,
            // Cluster mode with Redis down: --max-slugs counts from 0 until a restart.
            Err(e) if cluster.is_some() => {
                tracing::warn!(error = %e, "cannot count the posts in Redis");
                0
            }
            Err(e) => return Err(e.into()),
        };
        let writer = Writer::spawn(store, policy, calendar.clone(), Arc::clone(&metrics))?;
        let counting: Arc<dyn Counting> = match &cluster {
            Some(cluster) => Arc::new(Arc::clone(cluster)),
            None => Arc::new(LocalCounting::new(writer.clone())),
        };
        let (shutdown, shutdown_rx) = Trigger::new();
        let (heartbeat, heartbeat_rx) = watch::channel(());
        let (alerter, deliveries) = config.alerts.as_ref().map(alerts::alerts).unzip();
        let state = web::Data::new(AppState {
            registry: Registry::new(
                writer,
                policy.dedupe_window,
                calendar.clone(),
                Arc::clone(&metrics),
                counting,
                alerter.map(|a| a as Arc<dyn Alerts>),
            ),
            cluster,
            calendar,
            metrics,
            auth_failures: AuthFailureRate::auth_failures(),
            imports: Sessions::new(config.import_idle),
            slugs: slug_policy(&config.posts, existing),
            origins: config.origins.clone(),
            proxies: config.trusted_proxies.clone(),
            limits: StreamLimits::new(config.limits.ip_streams, capacity),
            view_rate: Arc::new(ViewRate::new(config.limits.ip_views_per_minute)),
            bots: (!config.count_bots).then(isbot::Bots::default),
            admin_token: config.admin_token.as_deref().map(str::to_owned),
            shared: Arc::default(),
            ipv6_prefix: config.limits.ipv6_prefix,
            direct_streams: AtomicUsize::new(0),
            signals: Signals {
                heartbeat: heartbeat_rx,
                shutdown: shutdown_rx,
            },
        });
        tune_listener(&listener)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, capacity, "stream capacity (from the open-files limit unless --max-streams)");
        let server = http_server(state.clone(), listener, &config)?;
        Ok(Self {
            server,
            addr,
            state,
            shutdown,
            heartbeat,
            heartbeat_every: config.heartbeat,
            hangup: signal(SignalKind::hangup()).ok(),
            background: Tasks::new(),
            cluster_tasks: Tasks::new(),
            alerts: deliveries,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves until `stop` completes, then: streams end with a `retry:` hint, the listener
    /// closes, in-flight requests finish, and every pending total is written.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), StartError> {
        let Self {
            server,
            state,
            shutdown,
            heartbeat,
            heartbeat_every,
            hangup,
            background,
            cluster_tasks,
            alerts,
            ..
        } = self;
        spawn_background(
            &background,
            &state,
            &server,
            heartbeat,
            heartbeat_every,
            hangup,
        );
        let cluster = state.cluster.clone();
        if let Some(cluster) = &cluster {
            cluster.spawn_tasks(&state.registry, &cluster_tasks);
        }
        if let Some(alerts) = alerts {
            let cluster = cluster.clone();
            background.spawn("alerts", move |stop| alerts.run(cluster, stop));
        }
        stop.await;
        // Other nodes drop this one's readers now, not when its presence expires.
        cluster_tasks.stop(TASKS_STOP).await;
        if let Some(cluster) = &cluster {
            cluster.leave().await;
        }
        tracing::info!("shutting down: closing streams, then writing totals");
        shutdown.fire();
        server.stop(SHUTDOWN_GRACE).await;
        background.stop(TASKS_STOP).await;
        let flushed = state.registry.writer().shutdown().await;
        if let Some(cluster) = &cluster {
            cluster.close().await;
        }
        flushed.map_err(|e| StartError::Flush(e.to_string()))?;
        tracing::info!("totals written; bye");
        Ok(())
    }
}

/// Cluster mode: the redb file holds the node's record and outbox; the writer reads and imports
/// through Redis.
async fn join_cluster(
    config: &cluster::Settings,
    addr: SocketAddr,
    db: RedbStore,
    calendar: &Calendar,
    policy: crate::storage::writer::FlushPolicy,
    metrics: &Arc<Metrics>,
) -> Result<(Box<dyn Store>, Arc<Cluster>), StartError> {
    let cluster = Cluster::start(
        config,
        addr,
        db,
        calendar.clone(),
        policy,
        Arc::clone(metrics),
    )
    .await?;
    let store = RedisStore::new(config, Arc::clone(&cluster))?;
    Ok((Box::new(store), cluster))
}

/// `existing`: the posts with a row, for `--max-slugs`.
fn slug_policy(posts: &Posts, existing: u64) -> SlugPolicy {
    match posts {
        Posts::Any { max, new_per_hour } => {
            SlugPolicy::Any(OpenPosts::new(*max, existing, *new_per_hour))
        }
        Posts::Listed { file } => SlugPolicy::Listed(SlugList::load(file)),
    }
}

/// The server: workers answer event streams themselves (see [`direct`]) and hand everything
/// else to the actix-web app below.
fn http_server(
    state: web::Data<AppState>,
    listener: TcpListener,
    config: &Config,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let settings = Settings {
        workers: config.workers,
        scheduling: config.scheduling,
        head_timeout: REQUEST_HEAD_TIMEOUT,
    };
    let app_state = state.clone();
    let fallback = move || {
        let state = app_state.clone();
        let counted = state.clone();
        let app = App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, srv| {
                let state = counted.clone();
                let answered = srv.call(req);
                async move {
                    let res = answered.await?;
                    owner::count_refusal(&state, &res);
                    Ok(res)
                }
            })
            .wrap(cors(&state.origins))
            .service(
                web::scope("/api/v1")
                    .configure(api::routes)
                    .configure(owner::routes)
                    .configure(crate::http::pulse::routes)
                    .configure(crate::http::watch::routes),
            )
            .configure(dashboard::routes)
            .route("/badge/{file:.*}", web::get().to(owner::badge))
            .route("/metrics", web::get().to(owner::metrics))
            .route("/counter.js", web::get().to(assets::counter_js))
            .route("/healthz", web::get().to(api::healthz))
            .route("/", web::get().to(assets::index))
            .default_service(web::to(|| async {
                json_error(StatusCode::NOT_FOUND, "not found")
            }));
        let stopping = state.signals.shutdown.clone();
        HttpService::build()
            // A connection kept open after a request here would carry the browser's (or the
            // proxy's) next request, often the stream itself, past `direct`; closing it
            // sends every stream to a fresh connection that `direct` serves.
            .keep_alive(KeepAlive::Disabled)
            // A client that closes its side is gone: notice it now, not at the next heartbeat.
            .h1_allow_half_closed(false)
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
            .local_addr(addr)
            // Idle keep-alive connections close at once on shutdown instead of holding it up.
            .graceful_shutdown_signal(move || {
                let mut stopping = stopping.clone();
                async move { stopping.started().await }
            })
            .h1(map_config(app, |_| AppConfig::default()))
    };
    let shutdown = state.signals.shutdown.clone();
    Server::start(listener, state, settings, shutdown, fallback)
}

fn cors(origins: &OriginPolicy) -> Cors {
    let origins = origins.clone();
    Cors::default()
        .allowed_origin_fn(move |origin, _| origins.is_listed(origin.as_bytes()))
        .allowed_methods(["GET", "POST"])
        // Never `owner::IMPORT_HEADER`: an import must stay out of every other page's reach.
        .allowed_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("last-event-id"),
        ])
        // Refusals are answered by the handlers, as JSON and before anything is counted.
        .block_on_origin_mismatch(false)
        .max_age(86_400)
}

/// Keepalive probes and a user timeout, so a reader whose network vanished is dropped. Set
/// on the listener: Linux copies them to every accepted socket, which saves six system calls
/// per connection.
fn tune_listener(listener: &TcpListener) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(listener);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    sock.set_tcp_nodelay(true)?;
    // A burst of arrivals waits in the kernel instead of being refused; Linux caps this at
    // net.core.somaxconn.
    sock.listen(LISTEN_BACKLOG)
}

/// The heartbeat shared by all streams, the allow-list watcher and limit bookkeeping.
fn spawn_background(
    tasks: &Tasks,
    state: &web::Data<AppState>,
    server: &Server,
    heartbeat: watch::Sender<()>,
    every: Duration,
    hangup: Option<Signal>,
) {
    tasks.spawn("stream heartbeat", move |mut shutdown| async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        while shutdown.unless_started(tick.tick()).await.is_some() {
            heartbeat.send_replace(());
        }
    });
    let (pulse, changes) = (
        Arc::clone(state.registry.pulse()),
        state.registry.changes().clone(),
    );
    tasks.spawn("pulse", move |shutdown| pulse.run(changes, shutdown));
    let st = state.clone();
    let workers = server.threads();
    tasks.spawn("housekeeping", move |mut shutdown| async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        while shutdown.unless_started(tick.tick()).await.is_some() {
            st.view_rate.prune();
            st.auth_failures.prune();
            if let SlugPolicy::Any(posts) = &st.slugs {
                posts.prune();
            }
            let fallen = st.limits.take_fall();
            st.registry.reclaim_if_worthwhile(fallen, &workers).await;
        }
    });
    if let SlugPolicy::Listed(list) = &state.slugs {
        let list = Arc::clone(list);
        tasks.spawn("allow-list watcher", move |shutdown| {
            watch_slug_list(list, hangup, shutdown)
        });
    }
}

/// Re-reads the allow-list when its file changes, and on SIGHUP.
async fn watch_slug_list(list: Arc<SlugList>, mut hup: Option<Signal>, mut shutdown: Shutdown) {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = shutdown.started() => return,
            _ = poll.tick() => list.reload_if_changed(),
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the allow-list");
                list.reload();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The app's two task groups, watched from outside, after a run that `stop` ends.
    async fn tasks_after_a_run(configure: impl FnOnce(&mut Config)) -> [bool; 2] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = Config::new(dir.path().join("db.redb"), dir.path().join("slugs.txt"));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        configure(&mut config);
        let app = Application::build(config).await.expect("the app builds");
        let groups = [app.background.tracker(), app.cluster_tasks.tracker()];
        let stop = tokio::time::sleep(Duration::from_millis(300));
        app.run_until(stop).await.expect("a clean stop");
        groups.map(|tasks| tasks.is_closed() && tasks.is_empty())
    }

    #[actix_web::test]
    async fn when_run_until_returns_every_background_task_has_ended() {
        assert_eq!(tasks_after_a_run(|_| {}).await, [true, true]);
    }

    /// Without a Redis to reach (a closed port), the cluster's tasks run and retry all along.
    #[actix_web::test]
    async fn when_run_until_returns_every_cluster_task_has_ended_too() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let ended = tasks_after_a_run(|c| {
            c.cluster = Some(crate::cluster::Settings::new(format!("redis://{closed}/0")));
        })
        .await;
        assert_eq!(ended, [true, true]);
    }
}
