//! What presence leaves behind per post and day, as counts only: reading times folded into a
//! fixed-bucket histogram and a sum (no reading of any one reader is kept), and the peak of
//! "reading now" with when it was reached. Pure values, stored as a few dozen bytes.

use std::time::Duration;

/// A reading time is never taken as longer than this: a tab left open all day is not read
/// all day, and a showing whose leave never comes counts at most this long.
pub const READ_CAP: Duration = Duration::from_secs(30 * 60);

/// Buckets of the reading-time histogram.
pub const READ_BUCKETS: usize = 16;

/// Where each bucket but the first starts, in seconds: bucket `i` holds readings from
/// `READ_BUCKET_STARTS_S[i - 1]` (0 for the first) up to the next start; the last one up to
/// [`READ_CAP`] included. Roughly logarithmic, so a glance and a long read both get detail.
pub const READ_BUCKET_STARTS_S: [u32; READ_BUCKETS - 1] =
    [1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600];

/// Reading times of one post on one day (or of many, merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub buckets: [u32; READ_BUCKETS],
    /// Every reading added, in milliseconds.
    pub sum_ms: u64,
}

impl Reads {
    /// One reading of `time` (taken as at most [`READ_CAP`]).
    pub fn one(time: Duration) -> Self {
        let mut reads = Self::default();
        reads.add(time);
        reads
    }

    pub fn add(&mut self, time: Duration) {
        let time = time.min(READ_CAP);
        let secs = time.as_millis() as f64 / 1000.0;
        let bucket = READ_BUCKET_STARTS_S.partition_point(|&start| f64::from(start) <= secs);
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
        self.sum_ms = self.sum_ms.saturating_add(time.as_millis() as u64);
    }

    /// Both histograms together.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }

    /// How many readings.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&n| u64::from(n)).sum()
    }

    /// The median reading time in seconds (one decimal), `None` without readings. Within the
    /// bucket holding the median it is interpolated linearly; when every reading is in that
    /// one bucket the mean (from the sum) is exact, and stays within the bucket.
    pub fn median_s(&self) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let target = n as f64 / 2.0;
        let mut before = 0u64;
        for (i, &count) in self.buckets.iter().enumerate() {
            let count = u64::from(count);
            if count == 0 || ((before + count) as f64) < target {
                before += count;
                continue;
            }
            let (lo, hi) = bucket_range_s(i);
            let median = if count == n {
                (self.sum_ms as f64 / 1000.0 / n as f64).clamp(lo, hi)
            } else {
                lo + (hi - lo) * (target - before as f64) / count as f64
            };
            return Some((median * 10.0).round() / 10.0);
        }
        None
    }
}

/// Where bucket `i` starts and ends, in seconds.
fn bucket_range_s(i: usize) -> (f64, f64) {
    let lo = i.checked_sub(1).map_or(0, |j| READ_BUCKET_STARTS_S[j]);
    let hi = READ_BUCKET_STARTS_S
        .get(i)
        .copied()
        .unwrap_or(READ_CAP.as_secs() as u32);
    (f64::from(lo), f64::from(hi))
}

/// The most readers at once, and when (unix seconds) it was first reached; `live` 0: nobody.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    pub live: u64,
    pub at: u64,
}

impl Peak {
    /// Keeps the higher peak; at a tie, the earlier one (when it was first reached).
    pub fn raise(&mut self, other: Peak) {
        if other.live > self.live
            || (other.live == self.live && other.live > 0 && other.at < self.at)
        {
            *self = other;
        }
    }
}

/// What presence left of one post on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayPresence {
    pub reads: Reads,
    pub peak: Peak,
}

/// Stored size: the buckets, the sum, the peak and its time, little-endian.
const ENCODED: usize = READ_BUCKETS * 4 + 3 * 8;

impl DayPresence {
    pub fn merge(&mut self, other: &Self) {
        self.reads.merge(&other.reads);
        self.peak.raise(other.peak);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED);
        for n in self.reads.buckets {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for n in [self.reads.sum_ms, self.peak.live, self.peak.at] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// `None` for bytes of another length (not written by this format).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED {
            return None;
        }
        let (buckets, rest) = bytes.split_at(READ_BUCKETS * 4);
        let mut out = Self::default();
        for (n, raw) in out.reads.buckets.iter_mut().zip(buckets.chunks_exact(4)) {
            *n = u32::from_le_bytes(raw.try_into().ok()?);
        }
        let mut words = rest
            .chunks_exact(8)
            .map(|raw| raw.try_into().map(u64::from_le_bytes));
        let mut next = || words.next().and_then(Result::ok);
        out.reads.sum_ms = next()?;
        out.peak = Peak {
            live: next()?,
            at: next()?,
        };
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn readings_fall_into_the_bucket_that_starts_at_or_below_them() {
        let bucket_of = |s| {
            let r = Reads::one(secs(s));
            r.buckets.iter().position(|&n| n == 1).unwrap()
        };
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.999), 0);
        assert_eq!(bucket_of(1.0), 1);
        assert_eq!(bucket_of(599.0), 14);
        assert_eq!(bucket_of(600.0), 15);
        assert_eq!(bucket_of(7200.0), 15);
        assert_eq!(Reads::one(secs(7200.0)).sum_ms, 1_800_000, "capped");
    }

    #[test]
    fn the_median_of_readings_in_one_bucket_is_their_mean() {
        let mut r = Reads::one(secs(10.0));
        assert_eq!(r.median_s(), Some(10.0));
        r.add(secs(12.0));
        assert_eq!(r.median_s(), Some(11.0));
        assert_eq!(Reads::default().median_s(), None);
    }

    proptest! {
        #[test]
        fn the_median_lies_in_the_bucket_of_the_true_median(
            times in prop::collection::vec(0u64..2_000_000, 1..60),
        ) {
            let mut reads = Reads::default();
            for &ms in &times {
                reads.add(Duration::from_millis(ms));
            }
            prop_assert_eq!(reads.count(), times.len() as u64);
            let mut sorted: Vec<f64> = times.iter().map(|&ms| ms.min(1_800_000) as f64 / 1000.0).collect();
            sorted.sort_by(f64::total_cmp);
            let median = reads.median_s().unwrap();
            // The true median lies between the two middle readings; ours within their buckets.
            let (a, b) = (sorted[(sorted.len() - 1) / 2], sorted[sorted.len() / 2]);
            let lo = bucket_range_s(Reads::one(secs(a)).buckets.iter().position(|&n| n == 1).unwrap()).0;
            let hi = bucket_range_s(Reads::one(secs(b)).buckets.iter().position(|&n| n == 1).unwrap()).1;
            prop_assert!(median >= lo - 0.05 && median <= hi + 0.05, "{median} not in {lo}..{hi}");
        }

        #[test]
        fn a_day_reads_back_as_written(
            buckets in prop::array::uniform16(any::<u32>()),
            sum_ms in any::<u64>(), live in any::<u64>(), at in any::<u64>(),
        ) {
            let day = DayPresence { reads: Reads { buckets, sum_ms }, peak: Peak { live, at } };
            prop_assert_eq!(DayPresence::decode(&day.encode()), Some(day));
        }
    }

    #[test]
    fn a_peak_keeps_the_higher_and_at_a_tie_the_earlier() {
        let mut p = Peak::default();
        p.raise(Peak { live: 2, at: 50 });
        p.raise(Peak { live: 1, at: 10 });
        assert_eq!(p, Peak { live: 2, at: 50 });
        p.raise(Peak { live: 2, at: 40 });
        assert_eq!(p, Peak { live: 2, at: 40 });
        p.raise(Peak { live: 3, at: 60 });
        assert_eq!(p, Peak { live: 3, at: 60 });
    }
}
