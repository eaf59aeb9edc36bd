//! The pulse: readers minute by minute over the last 24 hours, the most at once in each
//! minute, for the whole site and for each post (`GET /api/v1/pulse`, the dashboard).
//!
//! Fed by every change of a post's live count as the post makes it ([`Pulse::set`], called by
//! the post actor and, in cluster mode, for posts asleep here that other nodes' readers hold),
//! not by the coalesced broadcasts: a reader who comes and goes within 250 ms still makes the
//! minute's peak. Kept in memory only (a restart may lose it). A series holds runs of minutes
//! with the same peak, so a post read steadily costs one entry however long, and at most one
//! entry per minute of the last 24 h: memory follows the minutes that had readers, never the
//! readers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use crate::edge::slug::Slug;
use crate::posts::changes::Changes;
use crate::storage::calendar::{Calendar, Clock};

/// Minutes kept: 24 hours.
pub(crate) const PULSE_MINUTES: u32 = 1440;

#[derive(serde::Serialize)]
pub(crate) struct MinuteJson {
    at: String,
    live: u64,
}

impl MinuteJson {
    /// `minute`: minutes since the Unix epoch; `at` is its start in `--timezone`.
    pub(crate) fn new(calendar: &Calendar, minute: u64, live: u64) -> Self {
        Self {
            at: calendar.rfc3339(minute * 60),
            live,
        }
    }
}

/// Minutes since the Unix epoch.
pub(crate) fn minute_of(unix: u64) -> u64 {
    unix / 60
}

/// One run of closed minutes with the same peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u64,
    last: u64,
    peak: u64,
}

/// A live count over time: the minute under way, and the closed minutes with readers.
#[derive(Debug)]
struct Series {
    /// The minute under way (the last one with a change).
    open: u64,
    /// The most readers at once in `open` so far.
    peak: u64,
    /// Readers now; every minute after `open` had exactly this many all along.
    level: u64,
    /// Closed minutes with readers, oldest first, none older than 24 h before `open`.
    closed: VecDeque<Run>,
}

impl Series {
    fn new(now: u64) -> Self {
        Self {
            open: now,
            peak: 0,
            level: 0,
            closed: VecDeque::new(),
        }
    }

    fn push(&mut self, first: u64, last: u64, peak: u64) {
        if peak == 0 {
            return;
        }
        match self.closed.back_mut() {
            Some(run) if run.peak == peak && run.last + 1 == first => run.last = last,
            _ => self.closed.push_back(Run { first, last, peak }),
        }
    }

    /// Closes the minutes before `now`.
    fn roll(&mut self, now: u64) {
        if now <= self.open {
            return;
        }
        self.push(self.open, self.open, self.peak);
        if now > self.open + 1 {
            self.push(self.open + 1, now - 1, self.level);
        }
        self.open = now;
        self.peak = self.level;
        let oldest = now.saturating_sub(u64::from(PULSE_MINUTES) - 1);
        while let Some(run) = self.closed.front_mut() {
            if run.last < oldest {
                self.closed.pop_front();
            } else {
                run.first = run.first.max(oldest);
                break;
            }
        }
    }

    fn set(&mut self, now: u64, live: u64) {
        self.roll(now);
        self.level = live;
        self.peak = self.peak.max(live);
    }

    /// The most readers at once in `minute`.
    fn at(&self, minute: u64) -> u64 {
        if minute > self.open {
            return self.level;
        }
        if minute == self.open {
            return self.peak;
        }
        let i = self.closed.partition_point(|run| run.last < minute);
        match self.closed.get(i) {
            Some(run) if run.first <= minute => run.peak,
            _ => 0,
        }
    }

    /// Nothing to show for the last 24 h and nobody reading.
    fn is_empty(&self, now: u64) -> bool {
        self.level == 0
            && (self.peak == 0 || self.open + u64::from(PULSE_MINUTES) <= now)
            && self
                .closed
                .back()
                .is_none_or(|run| run.last + u64::from(PULSE_MINUTES) <= now)
    }
}

struct Inner {
    /// Every post's readers summed.
    site: Series,
    site_live: u64,
    /// Each post with readers now or in the last 24 h: its readers now and its series.
    posts: HashMap<Slug, Series>,
}

/// The site's pulse and every post's.
pub(crate) struct Pulse {
    clock: Clock,
    inner: Mutex<Inner>,
}

impl Pulse {
    pub(crate) fn new(clock: Clock) -> Self {
        let now = minute_of(clock.now_unix());
        Self {
            clock,
            inner: Mutex::new(Inner {
                site: Series::new(now),
                site_live: 0,
                posts: HashMap::new(),
            }),
        }
    }

    /// The post's live count is now `live` (in cluster mode: over all nodes).
    pub(crate) fn set(&self, slug: &Slug, live: u64) {
        let now = minute_of(self.clock.now_unix());
        let mut inner = self.lock();
        let inner = &mut *inner;
        let series = match inner.posts.get_mut(slug) {
            Some(series) => series,
            // A post not read in 24 h and still unread: nothing to keep.
            None if live == 0 => return,
            None => inner
                .posts
                .entry(slug.clone())
                .or_insert_with(|| Series::new(now)),
        };
        let before = series.level;
        series.set(now, live);
        inner.site_live = (inner.site_live + live).saturating_sub(before);
        inner.site.set(now, inner.site_live);
    }

    /// The site's last `minutes` minutes, the one under way last: (minute, most readers).
    pub(crate) fn site(&self, minutes: u32) -> Vec<(u64, u64)> {
        let now = minute_of(self.clock.now_unix());
        let inner = self.lock();
        minutes_of(&inner.site, now, minutes)
    }

    /// A post's last `minutes` minutes, as [`Pulse::site`]; zeros for a post nobody read.
    pub(crate) fn post(&self, slug: &Slug, minutes: u32) -> Vec<(u64, u64)> {
        let now = minute_of(self.clock.now_unix());
        let inner = self.lock();
        match inner.posts.get(slug) {
            Some(series) => minutes_of(series, now, minutes),
            None => (first_of(now, minutes)..=now).map(|m| (m, 0)).collect(),
        }
    }

    /// Closes the minutes past and forgets posts with nothing left to show; the site's
    /// newest closed minute when one closed since `last` (then `last` moves on).
    fn tick(&self, last: &mut u64) -> Option<(u64, u64)> {
        let now = minute_of(self.clock.now_unix());
        if now <= *last {
            return None;
        }
        *last = now;
        let mut inner = self.lock();
        inner.posts.retain(|_, series| {
            series.roll(now);
            !series.is_empty(now)
        });
        inner.site.roll(now);
        let closed = now - 1;
        Some((closed, inner.site.at(closed)))
    }

    /// Once a second: tells `changes` each minute of the site as it closes (a clock that
    /// jumps, as in tests, is noticed within the second).
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        changes: Changes,
        mut stop: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = minute_of(self.clock.now_unix());
        while stop.unless_started(tick.tick()).await.is_some() {
            if let Some((minute, live)) = self.tick(&mut last) {
                changes.minute(minute, live);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps whole: a panicking holder breaks nothing.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn first_of(now: u64, minutes: u32) -> u64 {
    now.saturating_sub(u64::from(minutes.max(1)) - 1)
}

fn minutes_of(series: &Series, now: u64, minutes: u32) -> Vec<(u64, u64)> {
    (first_of(now, minutes)..=now)
        .map(|m| (m, series.at(m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_keeps_its_peak_and_the_minutes_after_it_the_level_it_ended_on() {
        let mut s = Series::new(100);
        s.set(100, 3);
        s.set(100, 7);
        s.set(100, 2);
        assert_eq!((s.at(99), s.at(100), s.at(101), s.at(500)), (0, 7, 2, 2));
        s.set(105, 0);
        assert_eq!(
            (100..=106).map(|m| s.at(m)).collect::<Vec<_>>(),
            [7, 2, 2, 2, 2, 2, 0]
        );
        assert_eq!(s.closed.len(), 2, "a steady level is one run");
    }

    #[test]
    fn minutes_older_than_a_day_are_forgotten() {
        let mut s = Series::new(0);
        s.set(0, 4);
        s.set(10, 0);
        // Minutes 0 to 10 had 4 (minute 10 began at 4): one run, cut at 24 h back.
        s.roll(10 + u64::from(PULSE_MINUTES) - 5);
        assert_eq!(s.closed.front().map(|r| (r.first, r.last)), Some((6, 10)));
        assert!(!s.is_empty(10 + u64::from(PULSE_MINUTES) - 5));
        s.roll(10 + u64::from(PULSE_MINUTES));
        assert!(s.is_empty(10 + u64::from(PULSE_MINUTES)));
    }
}
