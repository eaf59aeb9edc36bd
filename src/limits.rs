//! Abuse limits the server enforces itself: open streams per client IP, all streams, and
//! counted views per client IP and post.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// What a refused client is told to wait before trying again.
pub const PER_IP_RETRY_AFTER: Duration = Duration::from_secs(10);
pub const CAPACITY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// File descriptors kept back from `--max-streams` for the listener, the db, logs and beacons.
pub const RESERVED_FDS: u64 = 200;

/// Counts open streams, per client IP and in all.
pub struct StreamLimits {
    per_ip: u32,
    max: usize,
    open: AtomicUsize,
    /// The most streams open at once since [`StreamLimits::take_fall`] last looked.
    peak: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// One stream's place in the limits, given back on drop.
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    ip: IpAddr,
}

impl StreamLimits {
    pub fn new(per_ip: u32, max: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ip,
            max,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn capacity(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How far the open streams fell from their peak since the last call: the streams whose
    /// memory has been freed meanwhile (see [`crate::memory`]).
    pub fn take_fall(&self) -> usize {
        let open = self.open();
        self.peak.swap(open, Ordering::Relaxed).saturating_sub(open)
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<StreamPermit, ApiError> {
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if previous >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::AtCapacity {
                retry_after: CAPACITY_RETRY_AFTER,
            });
        }
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_ip.entry(ip).or_insert(0);
        if self.per_ip != 0 && *count >= self.per_ip {
            if *count == 0 {
                by_ip.remove(&ip);
            }
            drop(by_ip);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyStreams {
                retry_after: PER_IP_RETRY_AFTER,
            });
        }
        *count += 1;
        drop(by_ip);
        self.peak.fetch_max(previous + 1, Ordering::Relaxed);
        Ok(StreamPermit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut by_ip = limits.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
        drop(by_ip);
        limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client's claim on a view, charged by the post only if the view counts.
#[derive(Clone)]
pub struct ViewCharge {
    pub rate: Arc<ViewRate>,
    pub ip: IpAddr,
}

impl ViewCharge {
    pub fn take(&self, slug: &(impl Hash + ?Sized)) -> bool {
        self.rate.allow(self.ip, slug)
    }
}

/// A token bucket per (client IP, post): `per_minute` views, refilled evenly.
pub struct ViewRate {
    per_minute: u32,
    hasher: std::hash::RandomState,
    buckets: Mutex<HashMap<(IpAddr, u64), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ViewRate {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            hasher: Default::default(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one view from the bucket; false when it is empty.
    pub fn allow(&self, ip: IpAddr, slug: &(impl Hash + ?Sized)) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let capacity = f64::from(self.per_minute);
        let key = (ip, self.hasher.hash_one(slug));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * capacity / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely: they hold nothing a new one would not.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
    }
}

/// Raises the open-files soft limit to the hard limit and returns how many streams fit.
pub fn raise_fd_limit() -> u64 {
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

    #[test]
    fn the_fall_is_measured_from_the_peak_since_the_last_look() {
        let limits = StreamLimits::new(0, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
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
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
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
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| rate.allow(ip, "a")));
        assert!(!rate.allow(ip, "a"));
        assert!(rate.allow(ip, "b"), "buckets are per post");
    }
}
