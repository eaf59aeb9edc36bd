//! Abuse limits the server enforces itself: open readers per client, all streams, counted
//! views per client and post, new posts per client, and failed admin authentications per client.
//!
//! A client is its IPv4 address, or the prefix of its IPv6 address ([`ClientKey`]): one IPv6
//! host is handed a whole /64, so keying by the full address would give it 2^64 budgets.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::refusal::Refusal;

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
pub(crate) struct StreamPermit {
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
    pub(crate) fn acquire(self: &Arc<Self>, client: ClientKey) -> Result<StreamPermit, Refusal> {
        let Ok(stream) = Arc::clone(&self.streams).try_acquire_owned() else {
            return Err(Refusal::AtCapacity {
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
    ) -> Result<ReaderSlot, Refusal> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_ip.entry(client).or_insert(0);
        if self.per_ip != 0 && *count >= self.per_ip {
            if *count == 0 {
                by_ip.remove(&client);
            }
            return Err(Refusal::TooManyStreams {
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
/// (`--ip-new-post-rate` per hour) and failed admin authentications
/// ([`AUTH_FAILURES_PER_MINUTE`]).
///
/// Kept per client as the instant its share is full again (GCRA's theoretical arrival time),
/// under one lock: unlike governor's buckets, a try can be taken *before* knowing whether it
/// counts and given back once it turns out not to (an admin request whose credentials are
/// right), so that concurrent guesses cannot all pass a look that takes nothing.
pub(crate) struct ClientRate {
    /// One try comes back every `interval`; `None`: no limit.
    interval: Option<Duration>,
    /// The most tries at once (a full share).
    capacity: u32,
    /// Per client, when its share is full again; a client not here has a full share.
    full_at: Mutex<HashMap<ClientKey, Instant>>,
}

/// New posts per client with `--allow-any-slug`.
pub(crate) type NewPostRate = ClientRate;
/// Failed admin authentications per client, every admin route and the login form together.
pub(crate) type AuthFailureRate = ClientRate;

/// Failed admin authentications a client may make in a minute: a wrong bearer token, a session
/// cookie that is not valid (any admin route), a wrong token on the login form, together. One
/// more comes back every 6 s. Beyond, every admin request of that client that carries
/// credentials is answered `429` + `Retry-After` before they are compared, the right ones
/// included: otherwise a guesser would learn from `200` against `429`.
pub(crate) const AUTH_FAILURES_PER_MINUTE: u32 = 10;

impl ClientRate {
    /// `capacity` tries (0: no limit), one back every `period` / `capacity`.
    fn new(capacity: u32, period: Duration) -> Self {
        Self {
            interval: (capacity > 0).then(|| period / capacity),
            capacity,
            full_at: Mutex::new(HashMap::new()),
        }
    }

    /// `per_hour` tries (0: no limit), one back every hour / `per_hour`.
    pub(crate) fn per_hour(per_hour: u32) -> Self {
        Self::new(per_hour, Duration::from_secs(3600))
    }

    /// Failed admin authentications: [`AUTH_FAILURES_PER_MINUTE`], one back every 6 s.
    pub(crate) fn auth_failures() -> Self {
        Self::new(AUTH_FAILURES_PER_MINUTE, Duration::from_secs(60))
    }

    /// The time one try takes to come back.
    pub(crate) fn retry_after(&self) -> Duration {
        self.interval.unwrap_or_default()
    }

    /// Takes one try from `client`'s share; false when it is used up.
    pub(crate) fn take(&self, client: ClientKey) -> bool {
        self.try_take(client).is_ok()
    }

    /// Takes one try from `client`'s share, or says how long until one comes back.
    pub(crate) fn try_take(&self, client: ClientKey) -> Result<(), Duration> {
        self.try_take_at(client, Instant::now())
    }

    /// Gives back a try taken with [`ClientRate::try_take`] that turned out not to count.
    pub(crate) fn give_back(&self, client: ClientKey) {
        self.give_back_at(client, Instant::now());
    }

    fn try_take_at(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        let full = full_at.get(&client).copied().filter(|&t| t > now);
        let used = full.map_or(Duration::ZERO, |t| t - now);
        let share = interval * self.capacity;
        if used + interval > share {
            return Err(used + interval - share);
        }
        full_at.insert(client, now + used + interval);
        Ok(())
    }

    fn give_back_at(&self, client: ClientKey, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(full) = full_at.get_mut(&client) {
            match full.checked_sub(interval) {
                Some(earlier) if earlier > now => *full = earlier,
                _ => {
                    full_at.remove(&client);
                }
            }
        }
    }

    /// Forgets clients whose share is full again: they hold nothing a new one would not.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        full_at.retain(|_, full| *full > now);
        full_at.shrink_to_fit();
    }
}

/// A token bucket per key (governor's keyed limiter): `capacity` tokens, each bucket starting
/// full and refilled evenly over the quota's period; capacity 0 means no limit (and no limiter).
struct TokenBuckets<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    /// `per_period` is [`Quota::per_minute`] or [`Quota::per_hour`]: a burst of `capacity`,
    /// one token back every period / capacity.
    fn new(capacity: u32, per_period: fn(NonZeroU32) -> Quota) -> Self {
        let limiter = NonZeroU32::new(capacity).map(|burst| RateLimiter::keyed(per_period(burst)));
        Self { limiter }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    fn take(&self, key: K) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(&key).is_ok())
    }

    /// Drops buckets that have refilled completely: they hold nothing a new one would not.
    fn prune(&self) {
        if let Some(limiter) = &self.limiter {
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
            Err(Refusal::TooManyStreams { .. })
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
            Err(Refusal::TooManyStreams { .. })
        ));
        let _p3 = limits.acquire(b).unwrap();
        assert!(matches!(limits.acquire(b), Err(Refusal::AtCapacity { .. })));
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
    fn the_eleventh_auth_failure_in_a_minute_waits_for_one_to_come_back() {
        let rate = AuthFailureRate::auth_failures();
        assert_eq!(rate.retry_after(), Duration::from_secs(6));
        let (a, b) = (client("10.0.0.1"), client("10.0.0.2"));
        let start = Instant::now();
        assert!((0..10).all(|_| rate.try_take_at(a, start).is_ok()));
        assert_eq!(rate.try_take_at(a, start), Err(Duration::from_secs(6)));
        let later = start + Duration::from_secs(4);
        assert_eq!(rate.try_take_at(a, later), Err(Duration::from_secs(2)));
        assert!(rate.try_take_at(b, start).is_ok(), "per client");
        let back = start + Duration::from_secs(6);
        assert!(rate.try_take_at(a, back).is_ok(), "one came back");
        assert!(rate.try_take_at(a, back).is_err());
    }

    #[test]
    fn a_try_given_back_is_as_if_never_taken() {
        let rate = AuthFailureRate::auth_failures();
        let a = client("10.0.0.1");
        let now = Instant::now();
        for _ in 0..100 {
            assert!(rate.try_take_at(a, now).is_ok());
            rate.give_back_at(a, now);
        }
        assert!((0..10).all(|_| rate.try_take_at(a, now).is_ok()));
        assert!(rate.try_take_at(a, now).is_err());
        rate.give_back_at(a, now);
        assert!(rate.try_take_at(a, now).is_ok());
        rate.give_back(client("10.0.0.9"));
        assert!(
            rate.full_at.lock().unwrap().len() == 1,
            "nothing made for a stranger"
        );
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
