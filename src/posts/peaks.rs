//! The day's highest "reading now", per post and for the whole site (the posts' live summed,
//! by [`crate::posts::pulse`]): each new high is told once, with when it was reached, so the
//! writer keeps the day's peak.

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
}
