//! The node's connection to Redis: one [`ConnectionManager`] (multiplexed, reconnecting by
//! itself, RESP3 so the same connection receives `vc:events` and resubscribes after a
//! reconnect), made lazily so a node starts while Redis is unreachable; every call bounded by
//! `--redis-timeout`; and the health every part reads (`redis: ok|down`).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::secret::RedisUrl;

/// The channel every node publishes presence changes and new totals on.
pub(crate) const EVENTS: &str = "vc:events";

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
        return redis::Client::open(info).map_err(|e| e.to_string());
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
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| format!("--redis-ca {}: {e}", ca.display()))
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
    timeout: Duration,
    manager: Mutex<Option<ConnectionManager>>,
    /// Where the connection delivers `vc:events` messages.
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
            client: client(info, ca)?,
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

    fn current(&self) -> Option<ConnectionManager> {
        self.manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the connection if there is none yet (the manager reconnects by itself after
    /// that) and subscribes to [`EVENTS`]. Called by the heartbeat, never on a reader's path.
    pub(crate) async fn connect(&self) -> Result<(), LinkError> {
        if self.current().is_some() {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_max_delay(MAX_RECONNECT_DELAY_MS)
            .set_push_sender(self.pushes.clone())
            .set_automatic_resubscription();
        let connecting = async {
            let mut manager =
                ConnectionManager::new_with_config(self.client.clone(), config).await?;
            manager.subscribe(EVENTS).await?;
            Ok::<_, redis::RedisError>(manager)
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
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(manager) = self.current() else {
            self.health.failed(what, &LinkError::NotConnected);
            return Err(LinkError::NotConnected);
        };
        self.bounded(what, call(manager)).await
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
        let info: String = self
            .call("INFO", |mut c| async move {
                redis::cmd("INFO").query_async(&mut c).await
            })
            .await?;
        // Refused by hosted Redis and by ACL users without +config: then we cannot tell.
        let save = self
            .call("CONFIG GET save", |mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("save")
                    .query_async::<std::collections::HashMap<String, String>>(&mut c)
                    .await
            })
            .await
            .ok()
            .and_then(|mut config| config.remove("save"));
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
            if learnt.mode == "cluster" {
                tracing::warn!(
                    "Redis Cluster: this version counts on one Redis; use a standalone Redis \
                     (or a primary with replicas)"
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
}
