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

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

use hashbrown::{HashTable, hash_table};

use crate::edge::slug::Slug;
use crate::posts::changes::Changes;
use crate::posts::peaks::DayPeak;
use crate::storage::calendar::Calendar;
use crate::storage::presence::Peak;

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

/// A minute (since the Unix epoch) or a number of readers as a series keeps it: 32 bits, so
/// that 100,000 posts read once cost a few MB (minutes fit until the year 10,000; a count over
/// 4 billion readers at once is kept as 4 billion).
fn small(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One run of closed minutes with the same peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    last: u32,
    peak: u32,
}

/// A series' closed runs, oldest first. Most posts are read in one stretch and keep a single
/// run: it is held inline, so such a post costs no block of its own (a small block kept for a
/// day among the freed ones of a post gone to sleep keeps their page resident).
#[derive(Debug, Default)]
enum Runs {
    #[default]
    None,
    One(Run),
    // Boxed, so every post's `Runs` is 16 bytes (a run and its tag), not 40: the extra
    // allocation is only made by posts read over many minutes.
    #[allow(clippy::box_collection)]
    Many(Box<VecDeque<Run>>),
}

impl Runs {
    fn back_mut(&mut self) -> Option<&mut Run> {
        match self {
            Runs::None => None,
            Runs::One(run) => Some(run),
            Runs::Many(runs) => runs.back_mut(),
        }
    }

    fn back(&self) -> Option<&Run> {
        match self {
            Runs::None => None,
            Runs::One(run) => Some(run),
            Runs::Many(runs) => runs.back(),
        }
    }

    fn push_back(&mut self, run: Run) {
        match self {
            Runs::None => *self = Runs::One(run),
            Runs::One(one) => *self = Runs::Many(Box::new(VecDeque::from([*one, run]))),
            Runs::Many(runs) => runs.push_back(run),
        }
    }

    /// Drops the runs that end before `oldest` and cuts the one across it.
    fn forget_before(&mut self, oldest: u32) {
        match self {
            Runs::None => {}
            Runs::One(run) if run.last < oldest => *self = Runs::None,
            Runs::One(run) => run.first = run.first.max(oldest),
            Runs::Many(runs) => {
                while runs.front().is_some_and(|run| run.last < oldest) {
                    runs.pop_front();
                }
                match runs.len() {
                    0 => *self = Runs::None,
                    1 => *self = runs.pop_front().map_or(Runs::None, Runs::One),
                    _ => {
                        if let Some(run) = runs.front_mut() {
                            run.first = run.first.max(oldest);
                        }
                        runs.shrink_to_fit();
                    }
                }
            }
        }
    }

    /// The run holding `minute`, if any.
    fn at(&self, minute: u32) -> Option<&Run> {
        let found = match self {
            Runs::None => None,
            Runs::One(run) => Some(run),
            Runs::Many(runs) => runs.get(runs.partition_point(|run| run.last < minute)),
        };
        found.filter(|run| run.first <= minute && minute <= run.last)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Runs::None => 0,
            Runs::One(_) => 1,
            Runs::Many(runs) => runs.len(),
        }
    }

    #[cfg(test)]
    fn front(&self) -> Option<Run> {
        match self {
            Runs::None => None,
            Runs::One(run) => Some(*run),
            Runs::Many(runs) => runs.front().copied(),
        }
    }
}

/// A live count over time: the minute under way, and the closed minutes with readers.
#[derive(Debug)]
struct Series {
    /// The minute under way (the last one with a change).
    open: u32,
    /// The most readers at once in `open` so far.
    peak: u32,
    /// Readers now; every minute after `open` had exactly this many all along.
    level: u32,
    /// Closed minutes with readers, oldest first, none older than 24 h before `open`.
    closed: Runs,
}

impl Series {
    fn new(now: u64) -> Self {
        Self {
            open: small(now),
            peak: 0,
            level: 0,
            closed: Runs::None,
        }
    }

    fn push(&mut self, first: u32, last: u32, peak: u32) {
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
        let now = small(now);
        if now <= self.open {
            return;
        }
        self.push(self.open, self.open, self.peak);
        if now > self.open + 1 {
            self.push(self.open + 1, now - 1, self.level);
        }
        self.open = now;
        self.peak = self.level;
        self.closed
            .forget_before(now.saturating_sub(PULSE_MINUTES - 1));
    }

    fn set(&mut self, now: u64, live: u64) {
        self.roll(now);
        self.level = small(live);
        self.peak = self.peak.max(self.level);
    }

    /// The most readers at once in `minute`.
    fn at(&self, minute: u64) -> u64 {
        let minute = small(minute);
        let peak = match minute {
            m if m > self.open => self.level,
            m if m == self.open => self.peak,
            m => self.closed.at(m).map_or(0, |run| run.peak),
        };
        u64::from(peak)
    }

    /// Nothing to show for the last 24 h and nobody reading.
    fn is_empty(&self, now: u64) -> bool {
        let now = small(now);
        self.level == 0
            && (self.peak == 0 || self.open.saturating_add(PULSE_MINUTES) <= now)
            && self
                .closed
                .back()
                .is_none_or(|run| run.last.saturating_add(PULSE_MINUTES) <= now)
    }
}

/// A post's series, and where its slug is in [`Posts::slugs`].
#[derive(Debug)]
struct PostSeries {
    slug_at: u32,
    slug_len: u8,
    series: Series,
}

// 100,000 posts read once: 4 MB of table, plus their slugs.
const _: () = assert!(std::mem::size_of::<PostSeries>() <= 40);

/// Each post with readers now or in the last 24 h, and its series. The slugs are copied into
/// one string rather than kept as the posts' own (`Arc`) slugs: after a wave of posts read
/// once, 100,000 small blocks kept for a day each pinned a page the sleeping posts had freed
/// (BENCHMARKS.md, "The pulse's memory").
#[derive(Default)]
struct Posts {
    table: HashTable<PostSeries>,
    slugs: String,
    /// Bytes of `slugs` no post refers to any more.
    unused: usize,
    hasher: RandomState,
}

impl Posts {
    fn slug_of<'a>(slugs: &'a str, post: &PostSeries) -> &'a str {
        let at = post.slug_at as usize;
        slugs
            .get(at..at + usize::from(post.slug_len))
            .unwrap_or_default()
    }

    fn get(&self, slug: &Slug) -> Option<&Series> {
        let hash = self.hasher.hash_one(slug.as_str());
        self.table
            .find(hash, |post| {
                Self::slug_of(&self.slugs, post) == slug.as_str()
            })
            .map(|post| &post.series)
    }

    /// The post's series; a new one (from `now`) unless `create` is false.
    fn get_mut(&mut self, slug: &Slug, now: u64, create: bool) -> Option<&mut Series> {
        let hash = self.hasher.hash_one(slug.as_str());
        let Self {
            table,
            slugs,
            hasher,
            ..
        } = self;
        let entry = table.entry(
            hash,
            |post| Self::slug_of(slugs, post) == slug.as_str(),
            |post| hasher.hash_one(Self::slug_of(slugs, post)),
        );
        let post = match entry {
            hash_table::Entry::Occupied(post) => post.into_mut(),
            hash_table::Entry::Vacant(_) if !create => return None,
            hash_table::Entry::Vacant(vacant) => {
                let slug_at = small(slugs.len() as u64);
                slugs.push_str(slug.as_str());
                // MAX_SLUG_LEN is 200.
                let slug_len = u8::try_from(slug.as_str().len()).unwrap_or(u8::MAX);
                vacant
                    .insert(PostSeries {
                        slug_at,
                        slug_len,
                        series: Series::new(now),
                    })
                    .into_mut()
            }
        };
        Some(&mut post.series)
    }

    /// Rolls every series to `now` and forgets the posts with nothing left to show.
    fn roll(&mut self, now: u64) {
        let unused = &mut self.unused;
        self.table.retain(|post| {
            post.series.roll(now);
            let keep = !post.series.is_empty(now);
            if !keep {
                *unused += usize::from(post.slug_len);
            }
            keep
        });
        if self.table.is_empty() {
            self.slugs = String::new();
            self.unused = 0;
        } else if self.unused > self.slugs.len() / 2 {
            let mut slugs = String::with_capacity(self.slugs.len() - self.unused);
            for post in self.table.iter_mut() {
                let at = small(slugs.len() as u64);
                slugs.push_str(Self::slug_of(&self.slugs, post));
                post.slug_at = at;
            }
            self.slugs = slugs;
            self.unused = 0;
        }
        if self.table.len() < self.table.capacity() / 4 {
            self.table
                .shrink_to_fit(|post| self.hasher.hash_one(Self::slug_of(&self.slugs, post)));
        }
    }
}

struct Inner {
    /// Every post's readers summed: the one sum of the site's live (its pulse, its day's
    /// peak; the watchers of `*` sum the broadcasts instead, see [`crate::posts::site`]).
    site_live: u64,
    /// Cluster mode: the other nodes' readers of posts this node does not follow, which it
    /// knows as a sum only (in `site_live`, in no post's series).
    unfollowed: u64,
    site: Series,
    site_peak: DayPeak,
    /// The site's newest high not yet handed out (see [`Pulse::take_new_site_peak`]).
    untold_site_peak: Option<Peak>,
    posts: Posts,
}

impl Inner {
    /// The site's live is `live` since `unix`: its pulse and its peak hear it.
    /// True when `live` raised the site's high of the day.
    fn site_saw(&mut self, live: u64, unix: u64, calendar: &Calendar) -> bool {
        self.site.set(minute_of(unix), live);
        let peak = self.site_peak.saw(live, unix, calendar);
        let raised = peak.is_some();
        if raised {
            self.untold_site_peak = peak;
        }
        raised
    }
}

/// The site's pulse and every post's, and the site's peak of the day.
pub(crate) struct Pulse {
    calendar: Calendar,
    inner: Mutex<Inner>,
}

impl Pulse {
    pub(crate) fn new(calendar: Calendar) -> Self {
        let now = minute_of(calendar.clock().now_unix());
        Self {
            calendar,
            inner: Mutex::new(Inner {
                site_live: 0,
                unfollowed: 0,
                site: Series::new(now),
                site_peak: DayPeak::default(),
                untold_site_peak: None,
                posts: Posts::default(),
            }),
        }
    }

    /// The post's live count is `live` (in cluster mode: over all nodes) since `unix`
    /// (seconds, read once by the caller for all it does with the change). True when it
    /// raised the site's high of the day: only then does the caller (a post at its next
    /// broadcast) take it with [`Pulse::take_new_site_peak`], so a broadcast that raised
    /// nothing takes this lock once per change, not once more per broadcast.
    pub(crate) fn set(&self, slug: &Slug, live: u64, unix: u64) -> bool {
        let now = minute_of(unix);
        let mut inner = self.lock();
        let inner = &mut *inner;
        // A post not read in 24 h and still unread: nothing to keep.
        let Some(series) = inner.posts.get_mut(slug, now, live > 0) else {
            return false;
        };
        let before = u64::from(series.level);
        series.set(now, live);
        let site_live = (inner.site_live + live).saturating_sub(before);
        inner.site_live = site_live;
        inner.site_saw(site_live, unix, &self.calendar)
    }

    /// Cluster mode: the other nodes have `live` readers of posts this node does not follow
    /// (see [`crate::cluster::presence`]); true when that raised the site's high of the day
    /// (the caller tells the writer, as [`Pulse::set`]'s does).
    pub(crate) fn set_unfollowed(&self, live: u64, unix: u64) -> bool {
        let mut inner = self.lock();
        if inner.unfollowed == live {
            return false;
        }
        let before = inner.unfollowed;
        inner.unfollowed = live;
        let site_live = (inner.site_live + live).saturating_sub(before);
        inner.site_live = site_live;
        inner.site_saw(site_live, unix, &self.calendar)
    }

    /// The site's newest high of the day since the last call, if any: a wave of readers
    /// raises the peak once per join, and is told once per broadcast.
    pub(crate) fn take_new_site_peak(&self) -> Option<Peak> {
        self.lock().untold_site_peak.take()
    }

    /// The site's last `minutes` minutes, the one under way last: (minute, most readers).
    pub(crate) fn site(&self, minutes: u32) -> Vec<(u64, u64)> {
        let now = minute_of(self.calendar.clock().now_unix());
        let inner = self.lock();
        minutes_of(&inner.site, now, minutes)
    }

    /// A post's last `minutes` minutes, as [`Pulse::site`]; zeros for a post nobody read.
    pub(crate) fn post(&self, slug: &Slug, minutes: u32) -> Vec<(u64, u64)> {
        let now = minute_of(self.calendar.clock().now_unix());
        let inner = self.lock();
        match inner.posts.get(slug) {
            Some(series) => minutes_of(series, now, minutes),
            None => (first_of(now, minutes)..=now).map(|m| (m, 0)).collect(),
        }
    }

    /// Closes the minutes past and forgets posts with nothing left to show; the site's
    /// newest closed minute when one closed since `last` (then `last` moves on).
    fn tick(&self, last: &mut u64) -> Option<(u64, u64)> {
        let now = minute_of(self.calendar.clock().now_unix());
        if now <= *last {
            return None;
        }
        *last = now;
        let mut inner = self.lock();
        inner.posts.roll(now);
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
        let mut last = minute_of(self.calendar.clock().now_unix());
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
    use crate::storage::calendar::Clock;

    const DAY: u64 = 20_000 * 86_400;

    fn pulse() -> Pulse {
        let clock = Clock::default();
        clock.set_unix(DAY);
        Pulse::new(Calendar::new(jiff::tz::TimeZone::UTC, clock))
    }

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    #[test]
    fn a_post_in_the_pulse_keeps_no_hold_on_the_posts_own_slug() {
        // A post asleep frees its slug; one kept for a day by the pulse pinned its page.
        let pulse = pulse();
        let a = slug("a-post-read-once");
        pulse.set(&a, 1, DAY);
        pulse.set(&a, 0, DAY + 1);
        assert_eq!(a.holders(), 1);
        assert_eq!(pulse.post(&a, 1), [(DAY / 60, 1)], "still shown");
    }

    #[test]
    fn posts_forgotten_after_a_day_give_their_slugs_back_and_the_others_are_still_found() {
        let pulse = pulse();
        let slugs: Vec<Slug> = (0..100).map(|i| slug(&format!("post-{i}"))).collect();
        for s in &slugs {
            pulse.set(s, 2, DAY);
            pulse.set(s, 0, DAY);
        }
        let later = DAY + 600;
        let kept = &slugs[90..];
        for s in kept {
            pulse.set(s, 3, later);
            pulse.set(s, 0, later);
        }
        let mut last = later / 60;
        let a_day_on = later + u64::from(PULSE_MINUTES) * 60 - 300;
        pulse.calendar.clock().set_unix(a_day_on);
        assert!(pulse.tick(&mut last).is_some());
        let inner = pulse.lock();
        assert_eq!(inner.posts.table.len(), kept.len());
        assert_eq!(inner.posts.unused, 0, "compacted");
        drop(inner);
        for s in kept {
            assert_eq!(pulse.post(s, PULSE_MINUTES)[0].1, 0);
            let minute = pulse
                .post(s, PULSE_MINUTES)
                .into_iter()
                .find(|&(m, _)| m == later / 60);
            assert_eq!(minute, Some((later / 60, 3)), "{s}");
        }
        assert!(
            pulse
                .post(&slugs[0], PULSE_MINUTES)
                .iter()
                .all(|&(_, live)| live == 0)
        );
    }

    #[test]
    fn the_sites_peak_is_the_highest_sum_over_posts_told_once() {
        let pulse = pulse();
        let (a, b) = (slug("a"), slug("b"));
        let at = DAY;
        assert!(pulse.set(&a, 2, at), "a first reader raises the day's peak");
        assert_eq!(pulse.take_new_site_peak(), Some(Peak { live: 2, at }));
        assert!(pulse.set(&b, 1, at + 1));
        assert!(!pulse.set(&a, 0, at + 2), "a fall raises nothing");
        assert!(!pulse.set(&a, 2, at + 3), "3 again is no news");
        let three = Peak {
            live: 3,
            at: at + 1,
        };
        assert_eq!(pulse.take_new_site_peak(), Some(three));
        assert_eq!(pulse.take_new_site_peak(), None, "told once");
        assert!(pulse.set(&b, 2, at + 4));
        assert_eq!(
            pulse.take_new_site_peak(),
            Some(Peak {
                live: 4,
                at: at + 4
            })
        );
    }

    #[test]
    fn readers_of_posts_not_followed_here_count_in_the_sites_pulse_and_peak() {
        let pulse = pulse();
        let a = slug("a");
        let at = DAY;
        pulse.set(&a, 1, at);
        assert!(pulse.set_unfollowed(3, at + 1));
        assert!(!pulse.set_unfollowed(3, at + 1), "no news");
        assert_eq!(pulse.site(1), [(minute_of(at + 1), 4)]);
        assert_eq!(
            pulse.take_new_site_peak(),
            Some(Peak {
                live: 4,
                at: at + 1
            })
        );
        // A post followed from now on: its 2 readers elsewhere leave the sum, then join the
        // post (the lower first): the peak stays.
        assert!(!pulse.set_unfollowed(1, at + 2), "a fall raises nothing");
        assert!(!pulse.set(&a, 3, at + 2), "4 again is no news");
        assert_eq!(pulse.take_new_site_peak(), None);
        assert_eq!(pulse.site(1), [(minute_of(at + 2), 4)]);
    }

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
