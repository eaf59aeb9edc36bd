//! The node's connection to Redis: one [`ConnectionManager`] (multiplexed, reconnecting by
//! itself, RESP3 so the same connection receives `vc:events` and resubscribes after a
//! reconnect), made lazily so a node starts while Redis is unreachable; every call bounded by
//! `--redis-timeout`; and the health every part reads (`redis: ok|down`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult};
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

pub(crate) struct Link {
    client: redis::Client,
    timeout: Duration,
    manager: Mutex<Option<ConnectionManager>>,
    /// Where the connection delivers `vc:events` messages.
    pushes: UnboundedSender<PushInfo>,
    pub(crate) health: Health,
}

impl Link {
    /// Checks the URL; connects later ([`Link::connect`]).
    pub(crate) fn new(
        url: &RedisUrl,
        timeout: Duration,
        pushes: UnboundedSender<PushInfo>,
    ) -> RedisResult<Self> {
        let mut info = url.expose().into_connection_info()?;
        info.redis.protocol = ProtocolVersion::RESP3;
        Ok(Self {
            client: redis::Client::open(info)?,
            timeout,
            manager: Mutex::new(None),
            pushes,
            health: Health::default(),
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
        let manager = self.bounded("connect", connecting).await?;
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
