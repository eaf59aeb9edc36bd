//! Small statistics helpers.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Percentile (nearest rank) of already sorted values; 0 when empty.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds to milliseconds, for reports.
pub fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

/// p50/p99/max in milliseconds of microsecond samples (sorts them).
pub fn summary_ms(samples: &mut [u32]) -> (f64, f64, f64) {
    samples.sort_unstable();
    (
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(samples.last().copied().unwrap_or(0)),
    )
}

/// Counts of errors by kind, shared between tasks.
#[derive(Default)]
pub struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub fn add(&self, kind: String) {
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Millisecond histogram for very many samples (0..=MAX ms, then overflow).
pub struct MsHistogram {
    buckets: Vec<u64>,
    count: u64,
}

impl MsHistogram {
    const MAX: usize = 60_000;

    pub fn new() -> MsHistogram {
        MsHistogram {
            buckets: vec![0; Self::MAX + 2],
            count: 0,
        }
    }

    pub fn add_us(&mut self, us: u64) {
        let b = ((us / 1000) as usize).min(Self::MAX + 1);
        self.buckets[b] += 1;
        self.count += 1;
    }

    /// Upper bound of the bucket holding the p-th percentile, in ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (i + 1) as f64;
            }
        }
        (Self::MAX + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn histogram_reports_bucket_upper_bounds() {
        let mut h = MsHistogram::new();
        for us in [500, 1500, 2500, 99_000] {
            h.add_us(us);
        }
        assert_eq!(h.percentile_ms(50.0), 2.0);
        assert_eq!(h.percentile_ms(100.0), 100.0);
    }
}
