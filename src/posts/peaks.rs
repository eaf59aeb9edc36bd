//! The day's highest "reading now", per post and for the whole site (the posts' live summed):
//! each new high is told once, with when it was reached, so the writer keeps the day's peak.

use std::sync::{Mutex, PoisonError};

use crate::storage::calendar::Calendar;
use crate::storage::presence::Peak;

/// A day's highest live as one post (or the site) has seen it.
#[derive(Debug, Default)]
pub(crate) struct DayPeak {
    /// The (unix minute, day) last looked up: every zone's offset is whole minutes, so the day
    /// never changes within one, and a burst of changes costs one time-zone lookup a minute.
    day: Option<(u64, u32)>,
    peak: u64,
}

impl DayPeak {
    /// `live` readers at `unix` seconds: the new high of its day, if it is one.
    pub(crate) fn saw(&mut self, live: u64, unix: u64, calendar: &Calendar) -> Option<Peak> {
        if live == 0 {
            return None;
        }
        let minute = unix / 60;
        let day = match self.day {
            Some((m, day)) if m == minute => day,
            _ => calendar.day_of(unix).key(),
        };
        if self.day.is_some_and(|(_, d)| d != day) {
            self.peak = 0;
        }
        self.day = Some((minute, day));
        (live > self.peak).then(|| {
            self.peak = live;
            Peak { live, at: unix }
        })
    }
}

/// The whole site's live readers (every post awake here) and its day's peak.
#[derive(Debug, Default)]
pub(crate) struct SiteLive {
    state: Mutex<SiteState>,
}

#[derive(Debug, Default)]
struct SiteState {
    live: u64,
    peak: DayPeak,
    /// The newest high not yet handed out (see [`SiteLive::take_new_peak`]).
    untold: Option<Peak>,
}

impl SiteLive {
    /// A post's live moved from `before` to `after`; a new high of the site's is kept for
    /// [`SiteLive::take_new_peak`].
    pub(crate) fn moved(&self, before: u64, after: u64, unix: u64, calendar: &Calendar) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.live = state.live.saturating_add(after).saturating_sub(before);
        let live = state.live;
        if let Some(peak) = state.peak.saw(live, unix, calendar) {
            state.untold = Some(peak);
        }
    }

    /// The site's newest high since the last call, if any: a wave of readers raises the peak
    /// once per join, and is told once per broadcast.
    pub(crate) fn take_new_peak(&self) -> Option<Peak> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.untold.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::calendar::Clock;

    #[test]
    fn each_new_high_of_a_day_is_told_once_and_a_new_day_starts_from_nothing() {
        let calendar = Calendar::new(jiff::tz::TimeZone::UTC, Clock::default());
        let day = 20_000 * 86_400;
        let mut peak = DayPeak::default();
        assert_eq!(
            peak.saw(1, day + 10, &calendar),
            Some(Peak {
                live: 1,
                at: day + 10
            })
        );
        assert_eq!(
            peak.saw(3, day + 20, &calendar),
            Some(Peak {
                live: 3,
                at: day + 20
            })
        );
        assert_eq!(peak.saw(2, day + 30, &calendar), None);
        assert_eq!(
            peak.saw(3, day + 40, &calendar),
            None,
            "reached again, not higher"
        );
        let next = day + 86_400 + 5;
        assert_eq!(
            peak.saw(1, next, &calendar),
            Some(Peak { live: 1, at: next })
        );
    }

    #[test]
    fn the_site_peak_is_the_highest_sum_over_posts() {
        let calendar = Calendar::new(jiff::tz::TimeZone::UTC, Clock::default());
        let site = SiteLive::default();
        let at = 20_000 * 86_400;
        site.moved(0, 2, at, &calendar);
        assert_eq!(site.take_new_peak(), Some(Peak { live: 2, at }));
        site.moved(0, 1, at + 1, &calendar);
        site.moved(2, 0, at + 2, &calendar);
        site.moved(1, 3, at + 3, &calendar);
        let three = Peak {
            live: 3,
            at: at + 1,
        };
        assert_eq!(site.take_new_peak(), Some(three), "3 again is no news");
        assert_eq!(site.take_new_peak(), None, "told once");
        site.moved(0, 1, at + 4, &calendar);
        assert_eq!(
            site.take_new_peak(),
            Some(Peak {
                live: 4,
                at: at + 4
            })
        );
    }
}
