//! Abuse limits the server enforces itself: open readers per client, all streams, counted
//! views per client and post, and new posts per client.
//!
//! A client is its IPv4 address, or the prefix of its IPv6 address ([`ClientKey`]): one IPv6
//! host is handed a whole /64, so keying by the full address would give it 2^64 budgets.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::error::ApiError;

/// What a refused client is told to wait before trying again.
pub(crate) const PER_IP_RETRY_AFTER: Duration = Duration::from_secs(10);
pub(crate) const CAPACITY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// File descriptors kept back from `--max-streams` for the listener, the db, logs and beacons.
pub(crate) const RESERVED_FDS: u64 = 200;

/// Whose budget a request draws on: an IPv4 address, or an IPv6 address cut to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// `ip` as a budget key; IPv6 keeps its first `v6_prefix` bits (32–128).
    pub fn new(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
        }
    }
}

/// Counts open readers per client and open streams in all.
pub(crate) struct StreamLimits {
    per_ip: u32,
    max: usize,
    /// One permit per stream that may be open; a [`StreamPermit`] holds one (an `Arc` clone, no
    /// allocation). Giving it back takes the semaphore's waiter lock, which nothing waits on.
    streams: Arc<Semaphore>,
    /// The most streams open at once since [`StreamLimits::take_fall`] last looked.
    peak: AtomicUsize,
    by_ip: Mutex<HashMap<ClientKey, u32>>,
}

/// One reader's place in its client's budget, given back on drop.
pub(crate) struct ReaderSlot {
    limits: Arc<StreamLimits>,
    client: ClientKey,
}

/// One stream's place in the limits (its connection, and its first reader), given back on drop.
pub struct StreamPermit {
    _slot: ReaderSlot,
    _stream: OwnedSemaphorePermit,
}

impl StreamLimits {
    pub(crate) fn new(per_ip: u32, max: usize) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            per_ip,
            max,
            streams: Arc::new(Semaphore::new(max)),
            peak: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    pub(crate) fn open(&self) -> usize {
        self.max - self.streams.available_permits()
    }

    /// How far the open streams fell from their peak since the last call: the streams whose
    /// memory has been freed meanwhile (see [`crate::memory`]).
    pub(crate) fn take_fall(&self) -> usize {
        let open = self.open();
        self.peak.swap(open, Ordering::Relaxed).saturating_sub(open)
    }

    /// A new stream: a place among all streams and one in the client's reader budget.
    pub(crate) fn acquire(self: &Arc<Self>, client: ClientKey) -> Result<StreamPermit, ApiError> {
        let Ok(stream) = Arc::clone(&self.streams).try_acquire_owned() else {
            return Err(ApiError::AtCapacity {
                retry_after: CAPACITY_RETRY_AFTER,
            });
        };
        // Refused by the client's budget: the stream's permit goes back with `stream`.
        let slot = self.acquire_reader(client)?;
        self.peak.fetch_max(self.open(), Ordering::Relaxed);
        Ok(StreamPermit {
            _slot: slot,
            _stream: stream,
        })
    }

    /// One more reader of the client on a stream it already holds (a shared stream's member).
    pub(crate) fn acquire_reader(
        self: &Arc<Self>,
        client: ClientKey,
    ) -> Result<ReaderSlot, ApiError> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_ip.entry(client).or_insert(0);
        if self.per_ip != 0 && *count >= self.per_ip {
            if *count == 0 {
                by_ip.remove(&client);
            }
            return Err(ApiError::TooManyStreams {
                retry_after: PER_IP_RETRY_AFTER,
            });
        }
        *count += 1;
        Ok(ReaderSlot {
            limits: Arc::clone(self),
            client,
        })
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .limits
            .by_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.client);
            }
        }
    }
}

/// One client's claim on a view, charged by the post only if the view counts.
#[derive(Clone)]
pub struct ViewCharge {
    pub rate: Arc<ViewRate>,
    pub client: ClientKey,
}

impl ViewCharge {
    pub fn take(&self, slug: &(impl Hash + ?Sized)) -> bool {
        self.rate.allow(self.client, slug)
    }
}

/// Counted views per (client, post): `--ip-view-rate` per minute.
pub struct ViewRate {
    hasher: std::hash::RandomState,
    /// Keyed by a hash of the slug, so a bucket holds no copy of it.
    buckets: TokenBuckets<(ClientKey, u64)>,
}

impl ViewRate {
    pub fn new(per_minute: u32) -> Self {
        Self {
            hasher: Default::default(),
            buckets: TokenBuckets::new(per_minute, Quota::per_minute),
        }
    }

    /// Takes one view from the bucket; false when it is empty.
    pub fn allow(&self, client: ClientKey, slug: &(impl Hash + ?Sized)) -> bool {
        self.buckets.take((client, self.hasher.hash_one(slug)))
    }

    pub fn prune(&self) {
        self.buckets.prune();
    }
}

/// Tries per client, each client's share refilled evenly: new posts with `--allow-any-slug`
/// (`--ip-new-post-rate` per hour) and admin token guesses on the login form
/// ([`LOGIN_TRIES_PER_MINUTE`]).
pub(crate) struct ClientRate(TokenBuckets<ClientKey>);

/// New posts per client with `--allow-any-slug`.
pub(crate) type NewPostRate = ClientRate;
/// Admin token guesses per client on the login form.
pub(crate) type LoginRate = ClientRate;

/// Login attempts a client may make at once; then one more every minute / this.
pub(crate) const LOGIN_TRIES_PER_MINUTE: u32 = 5;

impl ClientRate {
    /// `per_hour` tries (0: no limit), one back every hour / `per_hour`.
    pub(crate) fn per_hour(per_hour: u32) -> Self {
        Self(TokenBuckets::new(per_hour, Quota::per_hour))
    }

    /// The login form's: [`LOGIN_TRIES_PER_MINUTE`], one back every 12 s.
    pub(crate) fn logins() -> Self {
        Self(TokenBuckets::new(LOGIN_TRIES_PER_MINUTE, Quota::per_minute))
    }

    /// What a refused client is told to wait: the time one try takes to come back.
    pub(crate) fn retry_after(&self) -> Duration {
        self.0.refill_time()
    }

    /// Takes one try from `client`'s share; false when it is used up.
    pub(crate) fn take(&self, client: ClientKey) -> bool {
        self.0.take(client)
    }

    pub(crate) fn prune(&self) {
        self.0.prune();
    }
}

/// A token bucket per key (governor's keyed limiter): `capacity` tokens, each bucket starting
/// full and refilled evenly over the quota's period; capacity 0 means no limit (and no limiter).
struct TokenBuckets<K: Hash + Eq + Clone> {
    limiter: Option<(Quota, DefaultKeyedRateLimiter<K>)>,
}

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    /// `per_period` is [`Quota::per_minute`] or [`Quota::per_hour`]: a burst of `capacity`,
    /// one token back every period / capacity.
    fn new(capacity: u32, per_period: fn(NonZeroU32) -> Quota) -> Self {
        let limiter = NonZeroU32::new(capacity).map(|burst| {
            let quota = per_period(burst);
            (quota, RateLimiter::keyed(quota))
        });
        Self { limiter }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    fn take(&self, key: K) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|(_, limiter)| limiter.check_key(&key).is_ok())
    }

    /// The time one token takes to refill; zero without a limit.
    fn refill_time(&self) -> Duration {
        self.limiter
            .as_ref()
            .map_or(Duration::ZERO, |(quota, _)| quota.replenish_interval())
    }

    /// Drops buckets that have refilled completely: they hold nothing a new one would not.
    fn prune(&self) {
        if let Some((_, limiter)) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Raises the open-files soft limit to the hard limit and returns how many streams fit.
pub(crate) fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit.saturating_sub(RESERVED_FDS).max(1),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024 - RESERVED_FDS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str) -> ClientKey {
        ClientKey::new(ip.parse().unwrap(), 64)
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_prefix() {
        let key = |ip: &str, prefix| ClientKey::new(ip.parse().unwrap(), prefix);
        assert_eq!(key("2001:db8:1:2::1", 64), key("2001:db8:1:2:ffff::9", 64));
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_ne!(key("2001:db8:1:2::1", 128), key("2001:db8:1:2::2", 128));
        assert_eq!(key("2001:db8:1:2::1", 32), key("2001:db8:ffff::1", 32));
        assert_ne!(
            key("10.0.0.1", 32),
            key("10.0.0.2", 32),
            "IPv4 is never cut"
        );
    }

    #[test]
    fn shared_members_draw_on_the_same_budget_as_streams() {
        let limits = StreamLimits::new(2, 100);
        let a = client("10.0.0.1");
        let _stream = limits.acquire(a).unwrap();
        let member = limits.acquire_reader(a).unwrap();
        assert!(matches!(
            limits.acquire_reader(a),
            Err(ApiError::TooManyStreams { .. })
        ));
        assert!(limits.acquire(a).is_err());
        drop(member);
        assert!(limits.acquire_reader(a).is_ok());
        assert_eq!(limits.open(), 1, "members are not connections");
    }

    #[test]
    fn the_fall_is_measured_from_the_peak_since_the_last_look() {
        let limits = StreamLimits::new(0, 100);
        let ip = client("10.0.0.1");
        let mut permits: Vec<_> = (0..10).map(|_| limits.acquire(ip).unwrap()).collect();
        permits.truncate(4);
        assert_eq!(limits.take_fall(), 6);
        // Nothing fell since: the peak is now where the streams were.
        assert_eq!(limits.take_fall(), 0);
        permits.extend((0..2).map(|_| limits.acquire(ip).unwrap()));
        permits.truncate(1);
        assert_eq!(limits.take_fall(), 5);
        // A refused stream is no peak.
        let capped = StreamLimits::new(0, 1);
        let _one = capped.acquire(ip).unwrap();
        assert!(capped.acquire(ip).is_err());
        assert_eq!(capped.take_fall(), 0);
    }

    #[test]
    fn per_ip_and_global_caps_refuse_and_release() {
        let limits = StreamLimits::new(2, 3);
        let a = client("10.0.0.1");
        let b = client("10.0.0.2");
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert!(matches!(
            limits.acquire(a),
            Err(ApiError::TooManyStreams { .. })
        ));
        let _p3 = limits.acquire(b).unwrap();
        assert!(matches!(
            limits.acquire(b),
            Err(ApiError::AtCapacity { .. })
        ));
        drop(p1);
        assert_eq!(limits.open(), 2);
        assert!(limits.acquire(a).is_ok());
    }

    #[test]
    fn view_rate_empties_then_refuses() {
        let rate = ViewRate::new(3);
        let ip = client("10.0.0.1");
        assert!((0..3).all(|_| rate.allow(ip, "a")));
        assert!(!rate.allow(ip, "a"));
        assert!(rate.allow(ip, "b"), "buckets are per post");
    }

    #[test]
    fn pruning_keeps_emptied_buckets_and_zero_means_no_limit() {
        let rate = ViewRate::new(2);
        let ip = client("10.0.0.1");
        assert!(rate.allow(ip, "a") && rate.allow(ip, "a"));
        rate.prune();
        assert!(!rate.allow(ip, "a"), "an emptied bucket survives pruning");
        let unlimited = ViewRate::new(0);
        assert!((0..1000).all(|_| unlimited.allow(ip, "a")));
    }

    #[test]
    fn login_attempts_are_five_a_minute_per_client() {
        let rate = LoginRate::logins();
        assert_eq!(rate.retry_after(), Duration::from_secs(12));
        let (a, b) = (client("10.0.0.1"), client("10.0.0.2"));
        assert!((0..5).all(|_| rate.take(a)));
        assert!(!rate.take(a));
        assert!(rate.take(b), "per client");
    }

    #[test]
    fn new_posts_refill_one_per_hour_over_capacity() {
        let rate = NewPostRate::per_hour(4);
        assert_eq!(rate.retry_after(), Duration::from_secs(900));
        let a = client("10.0.0.1");
        assert!((0..4).all(|_| rate.take(a)));
        assert!(!rate.take(a));
    }
}
