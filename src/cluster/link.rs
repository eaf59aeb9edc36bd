//! The node's connection to Redis: one [`Conn`], made lazily so a node starts while Redis is
//! unreachable; every call bounded by `--redis-timeout`; and the health every part reads
//! (`redis: ok|down`). A standalone Redis gets a [`ConnectionManager`] (multiplexed,
//! reconnecting by itself, RESP3 so the same connection receives `vc:events` and the post
//! channels followed; the node's channel keeper subscribes to them again after a reconnect,
//! see [`crate::cluster::channels`]); a Redis Cluster (found by
//! `INFO`'s `cluster_enabled:1` on connect) the `redis` crate's cluster client, which routes
//! each command to its slot's master, follows `MOVED` after a failover, and receives the
//! channels the same way (a classic `PUBLISH` reaches every node of a Redis Cluster).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisFuture, RedisResult, Value,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::secret::RedisUrl;

pub(crate) use crate::cluster::keys::{ALL_POSTS, EVENTS, POST_CHANNELS, post_channel};

/// A change of this node's subscriptions ([`Link::subscription`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscription {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
}

/// A failing Redis is logged at most this often, not once per call.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between the connection manager's reconnect attempts.
const MAX_RECONNECT_DELAY_MS: u64 = 500;

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("no connection to Redis")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Redis could not be reached (no connection, a timeout, a connection refused or lost, a reply
/// that does not parse, a failed login, a server still loading its data): it is down. Redis
/// answering that it refuses a command (a script's error, a value of the wrong type, out of
/// memory, a read-only replica) is an answer: Redis is up, that one call failed.
pub(crate) fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error() || e.kind() == redis::ErrorKind::BusyLoadingError
}

/// Whether Redis answers, as the last call found; logs a failing Redis once per interval.
#[derive(Debug, Default)]
pub(crate) struct Health {
    up: AtomicBool,
    last_log: Mutex<Option<Instant>>,
}

impl Health {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A call failed: Redis is down until one succeeds.
    pub(crate) fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.up.store(false, Ordering::Relaxed);
        let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(%error, what, "Redis unavailable: serving from this node, counted views go to the outbox");
            *last = Some(Instant::now());
        }
    }

    /// A call succeeded. True when Redis was down until now.
    pub(crate) fn succeeded(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::Relaxed);
        if was_down {
            let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
            if last.take().is_some() {
                tracing::info!("Redis answers again");
            }
        }
        was_down
    }
}

/// A client for `info`. A `rediss://` one verifies the server against the PEM file `ca`
/// (`--redis-ca`, for a private CA) or else the system's roots. The error names the flag.
pub(crate) fn client(info: ConnectionInfo, ca: Option<&Path>) -> Result<redis::Client, String> {
    match certificates(&info, ca)? {
        None => redis::Client::open(info).map_err(|e| e.to_string()),
        Some(certificates) => redis::Client::build_with_tls(info, certificates).map_err(|e| {
            format!(
                "--redis-ca {}: {e}",
                ca.map_or("".into(), |ca| ca.display().to_string())
            )
        }),
    }
}

/// A client of the Redis Cluster `info` is a node of, with the same TLS, CA, user and password
/// (taken from `info`). Its initial nodes are `info` and every node of `slots` (`CLUSTER
/// SLOTS` as `info`'s node answered it): the `redis` crate's cluster client goes back to its
/// initial nodes when it lost its connections, and `--redis` may be the master that failed.
/// A command waits for its answer at most `timeout`.
pub(crate) fn cluster_builder(
    info: &ConnectionInfo,
    slots: &Value,
    ca: Option<&Path>,
    timeout: Duration,
) -> Result<ClusterClientBuilder, String> {
    let mut initial = vec![info.clone()];
    for (host, port) in cluster_nodes(slots) {
        let addr = match &info.addr {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        if addr != info.addr {
            initial.push(ConnectionInfo {
                addr,
                redis: info.redis.clone(),
            });
        }
    }
    let mut builder = ClusterClientBuilder::new(initial)
        .use_protocol(info.redis.protocol)
        .connection_timeout(timeout)
        .response_timeout(timeout);
    if let Some(certificates) = certificates(info, ca)? {
        builder = builder.certs(certificates);
    }
    Ok(builder)
}

/// The CA of `--redis-ca` for a `rediss://` `info`; `None`: no CA file (the system's roots for
/// TLS). The error names the flag.
fn certificates(
    info: &ConnectionInfo,
    ca: Option<&Path>,
) -> Result<Option<redis::TlsCertificates>, String> {
    let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
    if tls {
        // rustls picks no provider by itself once a second one is compiled in (a dependency's
        // feature can add aws-lc-rs): ours is ring, installed before the first handshake. Ring
        // is deprecated for lacking post-quantum key exchange; aws-lc-rs would add a C library
        // build of minutes to every build, for a link to a Redis on a private network.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let Some(ca) = ca else {
        return Ok(None);
    };
    if !tls {
        return Err("--redis-ca applies to a rediss:// URL (TLS) only".into());
    }
    let pem = std::fs::read(ca).map_err(|e| format!("--redis-ca {}: {e}", ca.display()))?;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .filter(Result::is_ok)
        .count();
    if certificates == 0 {
        return Err(format!(
            "--redis-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            ca.display()
        ));
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// `INFO` and `CONFIG GET save` of one Redis. `CONFIG` is refused by hosted Redis and by ACL
/// users without +config: then we cannot tell (`None`).
async fn node_info(
    mut conn: impl redis::aio::ConnectionLike + Send,
) -> RedisResult<(String, Option<String>)> {
    let info: String = redis::cmd("INFO").query_async(&mut conn).await?;
    let save = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async::<std::collections::HashMap<String, String>>(&mut conn)
        .await
        .ok()
        .and_then(|mut config| config.remove("save"));
    Ok((info, save))
}

/// The `(host, port)` of every master and replica in `CLUSTER SLOTS`'s answer: per slot range
/// `[start, end, [host, port, id, …], [host, port, id, …]…]`.
fn cluster_nodes(slots: &Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else { continue };
        for node in range.iter().skip(2) {
            let Value::Array(node) = node else { continue };
            let host = node
                .first()
                .and_then(|h| redis::from_redis_value::<String>(h).ok());
            let port = node
                .get(1)
                .and_then(|p| redis::from_redis_value::<u16>(p).ok());
            if let (Some(host), Some(port)) = (host, port)
                && !nodes.contains(&(host.clone(), port))
            {
                nodes.push((host, port));
            }
        }
    }
    nodes
}

/// Whether `INFO`'s text says a Redis Cluster node (`cluster_enabled:1`).
pub(crate) fn is_cluster(info: &str) -> bool {
    info.lines()
        .any(|line| line.trim_end() == "cluster_enabled:1")
}

/// The connection to a standalone Redis or a Redis Cluster: one type for every caller.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    /// Commands go on `data`, subscriptions on `pubsub`, a connection of their own: the
    /// cluster client (redis 0.32) subscribes every channel again in one `SUBSCRIBE` whenever
    /// it recovers its connections (a failover, all members lost at once), which cannot be
    /// turned off while it has a push sender, and takes the first confirmation for that
    /// command's reply; the others are handed to the commands behind it. On `pubsub` those are
    /// only subscriptions, whose replies are all alike; on one connection a read got one (test
    /// `reads_on_a_redis_cluster_after_its_client_resubscribed_…`).
    Cluster {
        data: ClusterConnection,
        pubsub: ClusterConnection,
    },
}

impl Conn {
    /// Subscribes to or unsubscribes from `channels` (patterns for the `P` ones).
    ///
    /// One channel per command, the commands concurrent: redis 0.32 counts each channel's
    /// (un)subscribe confirmation as a reply (`PushKind::has_reply`), so one command of k
    /// channels would hand k - 1 replies to the commands sent after it on the multiplexed
    /// connection (a heartbeat read a subscribe confirmation, and the crate panicked parsing
    /// it). The test `reads_beside_a_subscription_of_many_channels_…` fails when it happens.
    async fn subscription(&mut self, change: Subscription, channels: &[String]) -> RedisResult<()> {
        let calls = channels.iter().map(|channel| {
            let mut conn = self.clone();
            async move { conn.subscription_of(change, channel).await }
        });
        futures_util::future::try_join_all(calls).await.map(drop)
    }

    async fn subscription_of(&mut self, change: Subscription, channel: &str) -> RedisResult<()> {
        match (self, change) {
            (Self::Single(c), Subscription::Subscribe) => c.subscribe(channel).await,
            (Self::Single(c), Subscription::Unsubscribe) => c.unsubscribe(channel).await,
            (Self::Single(c), Subscription::PSubscribe) => c.psubscribe(channel).await,
            (Self::Single(c), Subscription::PUnsubscribe) => c.punsubscribe(channel).await,
            (Self::Cluster { pubsub: c, .. }, Subscription::Subscribe) => {
                c.subscribe(channel).await
            }
            (Self::Cluster { pubsub: c, .. }, Subscription::Unsubscribe) => {
                c.unsubscribe(channel).await
            }
            (Self::Cluster { pubsub: c, .. }, Subscription::PSubscribe) => {
                c.psubscribe(channel).await
            }
            (Self::Cluster { pubsub: c, .. }, Subscription::PUnsubscribe) => {
                c.punsubscribe(channel).await
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster { data: c, .. } => c.req_packed_command(cmd),
        }
    }

    /// The `redis` crate's cluster client refuses a pipeline whose keys are in several slots
    /// (`CrossSlot`, before sending it). One that is not a transaction goes as one pipeline
    /// per hash tag instead, concurrently, each in its order, the replies put back in the
    /// pipeline's order. A transaction (`MULTI`) must be of one slot, as Redis Cluster wants.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster { data: c, .. } => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(by_tag(c.clone(), pipeline, offset, count))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster { data: c, .. } => c.get_db(),
        }
    }
}

/// The hash tag of a command's key (its first argument after the name): the part between
/// the first `{` and the next `}` when not empty, else the whole key (Redis Cluster's rule).
fn tag(cmd: &Cmd) -> Vec<u8> {
    let Some(redis::Arg::Simple(key)) = cmd.args_iter().nth(1) else {
        return Vec::new();
    };
    let inner = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    inner.unwrap_or(key).to_vec()
}

async fn by_tag(
    conn: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    use redis::aio::ConnectionLike;
    let mut groups: std::collections::BTreeMap<Vec<u8>, (Pipeline, Vec<usize>)> =
        std::collections::BTreeMap::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate().skip(offset).take(count) {
        let (sub, at) = groups
            .entry(tag(cmd))
            .or_insert_with(|| (redis::pipe(), Vec::new()));
        sub.add_command(cmd.clone());
        at.push(i - offset);
    }
    let sent = groups.into_values().map(|(sub, at)| {
        let mut conn = conn.clone();
        async move {
            let n = at.len();
            let replies = conn.req_packed_commands(&sub, 0, n).await?;
            Ok::<_, redis::RedisError>(at.into_iter().zip(replies).collect::<Vec<_>>())
        }
    });
    let mut replies = vec![Value::Nil; count];
    for (i, reply) in futures_util::future::try_join_all(sent)
        .await?
        .into_iter()
        .flatten()
    {
        replies[i] = reply;
    }
    Ok(replies)
}

/// What a node learns of its Redis when it (re)connects: logged, and shown in `/api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    /// `redis_version`; Valkey's own version, named, for a Valkey (`valkey 8.0.1`).
    pub(crate) version: String,
    /// `redis_mode`: `standalone`, `cluster` or `sentinel`.
    pub(crate) mode: String,
    /// What survives a Redis crash: see [`Persistence`].
    pub(crate) persistence: Persistence,
}

/// Redis's persistence as `INFO` and `CONFIG GET save` tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// An append-only file (`appendonly yes`): a crash loses at most its fsync interval.
    Aof,
    /// Snapshots only (Debian's default): a crash loses the writes since the last one.
    Rdb,
    /// Neither: a restart starts empty.
    None,
    /// `CONFIG` refused (hosted Redis, an ACL user without it) and no append-only file.
    Unknown,
}

impl Persistence {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Aof => "aof",
            Self::Rdb => "rdb",
            Self::None => "none",
            Self::Unknown => "unknown",
        }
    }
}

/// `info`: the text of `INFO`; `save`: `CONFIG GET save`'s value, `None` when refused.
fn server_info(info: &str, save: Option<&str>) -> ServerInfo {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let version = match (field("server_name"), field("valkey_version")) {
        (Some(name), Some(version)) => format!("{name} {version}"),
        _ => field("redis_version").unwrap_or("unknown").to_owned(),
    };
    let persistence = match (field("aof_enabled"), save.map(str::trim)) {
        (Some("1"), _) => Persistence::Aof,
        (_, Some("")) => Persistence::None,
        (_, Some(_)) => Persistence::Rdb,
        (_, None) => Persistence::Unknown,
    };
    ServerInfo {
        version,
        mode: field("redis_mode").unwrap_or("standalone").to_owned(),
        persistence,
    }
}

pub(crate) struct Link {
    client: redis::Client,
    /// For a Redis Cluster's client (the same URL, CA, user and password).
    info: ConnectionInfo,
    ca: Option<std::path::PathBuf>,
    timeout: Duration,
    manager: Mutex<Option<Conn>>,
    /// Where the connection delivers the messages of the channels subscribed.
    pushes: UnboundedSender<PushInfo>,
    pub(crate) health: Health,
    /// What the last (re)connect learnt of the server; `None` until one has.
    server: Mutex<Option<ServerInfo>>,
}

impl Link {
    /// Checks the URL and the CA file; connects later ([`Link::connect`]).
    pub(crate) fn new(
        url: &RedisUrl,
        ca: Option<&Path>,
        timeout: Duration,
        pushes: UnboundedSender<PushInfo>,
    ) -> Result<Self, String> {
        let mut info = url
            .expose()
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        info.redis.protocol = ProtocolVersion::RESP3;
        Ok(Self {
            client: client(info.clone(), ca)?,
            info,
            ca: ca.map(Path::to_path_buf),
            timeout,
            manager: Mutex::new(None),
            pushes,
            health: Health::default(),
            server: Mutex::new(None),
        })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn current(&self) -> Option<Conn> {
        self.manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the connection if there is none yet (either kind reconnects by itself after
    /// that) and subscribes to [`EVENTS`]. Called by the heartbeat, never on a reader's path.
    /// `INFO cluster` tells a Redis Cluster (`cluster_enabled:1`) from a standalone Redis.
    pub(crate) async fn connect(&self) -> Result<(), LinkError> {
        if self.current().is_some() {
            return Ok(());
        }
        let connecting = async {
            let mut probe = self.client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut probe)
                .await?;
            if is_cluster(&info) {
                let slots: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut probe)
                    .await?;
                let builder = || {
                    cluster_builder(&self.info, &slots, self.ca.as_deref(), self.timeout).map_err(
                        |e| {
                            redis::RedisError::from((
                                redis::ErrorKind::InvalidClientConfig,
                                "Redis Cluster client",
                                e,
                            ))
                        },
                    )
                };
                let data = builder()?.build()?.get_async_connection().await?;
                let pubsub = builder()?.push_sender(self.pushes.clone()).build()?;
                let mut pubsub = pubsub.get_async_connection().await?;
                pubsub.subscribe(EVENTS).await?;
                return Ok(Conn::Cluster { data, pubsub });
            }
            // Not `set_automatic_resubscription`: redis 0.32 sends one `SUBSCRIBE` of every
            // channel and takes its first confirmation for the reply, handing the others to
            // the commands behind it (test `reads_after_redis_dropped_the_connection_…`). The
            // channel keeper subscribes again, one channel per command, once it hears the
            // `Disconnection` push the manager sends on.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.timeout)
                .set_max_delay(MAX_RECONNECT_DELAY_MS)
                .set_push_sender(self.pushes.clone());
            let mut manager =
                ConnectionManager::new_with_config(self.client.clone(), config).await?;
            manager.subscribe(EVENTS).await?;
            Ok::<_, redis::RedisError>(Conn::Single(manager))
        };
        let manager = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(manager)) => {
                self.health.succeeded();
                manager
            }
            Ok(Err(e)) => return Err(self.not_connected(LinkError::Redis(e))),
            // The manager retries by itself and so never says why it failed (a certificate
            // from an unknown CA, a wrong password): one plain attempt tells the log.
            Err(_) => {
                let once = self.client.get_multiplexed_async_connection();
                let why = match tokio::time::timeout(self.timeout, once).await {
                    Ok(Err(e)) => LinkError::Redis(e),
                    _ => LinkError::Timeout(self.timeout),
                };
                return Err(self.not_connected(why));
            }
        };
        *self.manager.lock().unwrap_or_else(PoisonError::into_inner) = Some(manager);
        Ok(())
    }

    /// Runs `call` on the connection within the timeout; a failure to reach Redis
    /// ([`is_unavailable`], or the timeout) marks it down, a refusal does not. Fails at once
    /// while there is no connection, so a reader never waits for a connect.
    pub(crate) async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, LinkError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(manager) = self.current() else {
            self.health.failed(what, &LinkError::NotConnected);
            return Err(LinkError::NotConnected);
        };
        self.bounded(what, call(manager)).await
    }

    /// Subscribes to (or unsubscribes from) `channels` (patterns for the `P` ones), one
    /// command per channel (see [`Conn::subscription`]). After a reconnect a standalone
    /// Redis's connection has none: the channel keeper subscribes again.
    pub(crate) async fn subscription(
        &self,
        change: Subscription,
        channels: &[String],
    ) -> Result<(), LinkError> {
        if channels.is_empty() {
            return Ok(());
        }
        self.call("subscribe", |mut conn| async move {
            conn.subscription(change, channels).await
        })
        .await
    }

    /// Failing to connect is Redis down, whatever the reason.
    fn not_connected(&self, why: LinkError) -> LinkError {
        self.health.failed("connect", &why);
        why
    }

    pub(crate) fn server(&self) -> Option<ServerInfo> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the server what it is and how it keeps its data, and says so in the log when that
    /// is news (the first connect, or a Redis that came back with another configuration).
    pub(crate) async fn learn_server(&self) -> Result<(), LinkError> {
        let client = &self.client;
        let (info, save): (String, Option<String>) = self
            .call("INFO", |c| async move {
                // A Redis Cluster client sends `INFO` and `CONFIG GET` to every master and
                // answers a map of them: ask the node of the URL alone.
                match c {
                    Conn::Single(_) => node_info(c).await,
                    Conn::Cluster { .. } => {
                        node_info(client.get_multiplexed_async_connection().await?).await
                    }
                }
            })
            .await?;
        let learnt = server_info(&info, save.as_deref());
        let mut known = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if known.as_ref() != Some(&learnt) {
            let ServerInfo {
                version,
                mode,
                persistence,
            } = &learnt;
            let persistence = persistence.as_str();
            tracing::info!(%version, %mode, %persistence, "Redis");
            if learnt.persistence != Persistence::Aof {
                tracing::warn!(
                    %persistence,
                    "Redis keeps no append-only file: a Redis crash loses the sums it took \
                     since its last snapshot (appendonly yes keeps them)"
                );
            }
            *known = Some(learnt);
        }
        Ok(())
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, LinkError> {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(LinkError::Redis(e)),
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        };
        match &outcome {
            Err(LinkError::Redis(e)) if is_unavailable(e) => self.health.failed(what, e),
            Err(e @ (LinkError::NotConnected | LinkError::Timeout(_))) => {
                self.health.failed(what, e)
            }
            // An answer, a refusal too: Redis is there.
            Ok(_) | Err(LinkError::Redis(_)) => {
                self.health.succeeded();
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS_7: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
                           # Persistence\r\naof_enabled:0\r\n";

    #[test]
    fn debians_default_redis_is_snapshots_only() {
        let info = server_info(REDIS_7, Some("3600 1 300 100 60 10000"));
        assert_eq!(info.version, "7.0.15");
        assert_eq!(info.mode, "standalone");
        assert_eq!(info.persistence, Persistence::Rdb);
    }

    #[test]
    fn an_append_only_file_wins_over_snapshots_and_an_empty_save_is_none() {
        let aof = REDIS_7.replace("aof_enabled:0", "aof_enabled:1");
        assert_eq!(server_info(&aof, Some("")).persistence, Persistence::Aof);
        assert_eq!(server_info(&aof, None).persistence, Persistence::Aof);
        assert_eq!(
            server_info(REDIS_7, Some("")).persistence,
            Persistence::None
        );
        assert_eq!(server_info(REDIS_7, None).persistence, Persistence::Unknown);
    }

    #[test]
    fn a_valkey_names_itself_and_its_own_version() {
        let valkey = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\n\
                      valkey_version:8.0.1\r\nredis_mode:cluster\r\n";
        let info = server_info(valkey, None);
        assert_eq!(info.version, "valkey 8.0.1");
        assert_eq!(info.mode, "cluster");
    }

    /// Reads sent while the connection comes back after Redis dropped it each get their own
    /// reply. redis 0.32's automatic resubscription sends one `SUBSCRIBE` of every channel
    /// (`SubscriptionTracker::get_subscription_pipeline`) and takes its first confirmation
    /// for the reply: the others were handed to the reads behind it, so every later command
    /// on the connection got another one's reply. The channels are subscribed again by the
    /// node's channel keeper instead, one per command (see [`Conn::subscription`]).
    #[tokio::test]
    async fn reads_after_redis_dropped_the_connection_each_get_their_own_reply() {
        use crate::cluster::counter::tests::{Server, conn, connected_with};
        use redis::{AsyncCommands, PushKind};
        let Some(server) = Server::start() else {
            return;
        };
        let (pushes, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let link = connected_with(&server, pushes).await;
        let keys: Vec<String> = (0..50).map(|i| format!("probe:{i}")).collect();
        let mut admin = conn(&server);
        for key in &keys {
            let _: () = redis::Commands::set(&mut admin, key, key).expect("SET");
        }
        let channels: Vec<String> = (0..20_000)
            .map(|i| format!("vc:{{ch}}:p:post-{i}"))
            .collect();
        link.subscription(Subscription::Subscribe, &channels)
            .await
            .expect("subscribed");
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut admin)
            .expect("CLIENT KILL");
        assert_eq!(
            killed, 1,
            "the link's connection, subscribed to every channel"
        );
        // The manager starts its new connection before it passes the drop on.
        while heard.recv().await.expect("pushes").kind != PushKind::Disconnection {}
        let reads = keys.iter().map(|key| {
            link.call(
                "get",
                move |mut c| async move { c.get::<_, String>(key).await },
            )
        });
        for (key, got) in keys.iter().zip(futures_util::future::join_all(reads).await) {
            assert_eq!(got.as_deref().ok(), Some(key.as_str()), "{key}: {got:?}");
        }
    }

    /// On a Redis Cluster the client subscribes every channel again in one `SUBSCRIBE` when it
    /// recovers its connections (here: the master of the channels' slot drops every client)
    /// and takes its first confirmation for the reply. Reads on that master must still each
    /// get their own reply: subscriptions go on a connection of their own.
    #[tokio::test]
    async fn reads_on_a_redis_cluster_after_its_client_resubscribed_each_get_their_own_reply() {
        use redis::AsyncCommands;
        let Some(cluster) = testkit::RedisCluster::start().await else {
            return;
        };
        let (pushes, _heard) = tokio::sync::mpsc::unbounded_channel();
        let link = crate::cluster::counter::tests::connected_to(&cluster.url(0), pushes).await;
        // In the channels' slot, so on the same master as the subscriptions.
        let keys: Vec<String> = (0..50).map(|i| format!("vc:{{ch}}:probe:{i}")).collect();
        for key in &keys {
            let set = link.call(
                "set",
                |mut c| async move { c.set::<_, _, ()>(key, key).await },
            );
            set.await.expect("SET");
        }
        let channels: Vec<String> = (0..20_000)
            .map(|i| format!("vc:{{ch}}:p:post-{i}"))
            .collect();
        // In parts: each call is bounded by the link's timeout.
        for part in channels.chunks(1000) {
            let subscribed = link.subscription(Subscription::Subscribe, part).await;
            subscribed.expect("subscribed");
        }
        let master = cluster.master_of(&keys[0]).await;
        let mut admin = redis::Client::open(cluster.url(master))
            .and_then(|c| c.get_connection())
            .expect("the master");
        for kind in ["pubsub", "normal"] {
            let _: u64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", kind][..])
                .query(&mut admin)
                .expect("CLIENT KILL");
        }
        // Until every read of a round answers: each answer must be its own key's.
        let mut answered = 0;
        for round in 0.. {
            assert!(round < 200, "reads never answered again");
            let reads = keys.iter().map(|key| {
                link.call(
                    "get",
                    move |mut c| async move { c.get::<_, String>(key).await },
                )
            });
            let got = futures_util::future::join_all(reads).await;
            answered = 0;
            for (key, got) in keys.iter().zip(&got) {
                match got {
                    Ok(value) => {
                        assert_eq!(value, key, "another command's reply");
                        answered += 1;
                    }
                    Err(LinkError::Redis(e)) => {
                        assert!(is_unavailable(e), "{key}: {e}");
                    }
                    Err(_) => {}
                }
            }
            if answered == keys.len() && round > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answered, keys.len());
    }

    /// Reads sent while a subscription of many channels is confirmed each get their own
    /// reply (redis 0.32 takes every channel's confirmation for a reply of its own: a command
    /// of several channels once handed the extra confirmations to the reads behind it).
    #[tokio::test]
    async fn reads_beside_a_subscription_of_many_channels_each_get_their_own_reply() {
        use crate::cluster::counter::tests::{Server, connected};
        use redis::AsyncCommands;
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let keys: Vec<String> = (0..50).map(|i| format!("probe:{i}")).collect();
        for key in &keys {
            let _: () = link
                .call("set", |mut c| async move { c.set(key, key).await })
                .await
                .expect("SET");
        }
        let channels: Vec<String> = (0..50).map(|i| format!("vc:{{ch}}:p:burst-{i}")).collect();
        let reads = keys.iter().map(|key| {
            link.call(
                "get",
                move |mut c| async move { c.get::<_, String>(key).await },
            )
        });
        let (subscribed, read) = tokio::join!(
            link.subscription(Subscription::Subscribe, &channels),
            futures_util::future::join_all(reads)
        );
        subscribed.expect("subscribed");
        for (key, got) in keys.iter().zip(read) {
            assert_eq!(got.as_deref().ok(), Some(key.as_str()), "{key}: {got:?}");
        }
    }
}
