//! Days and the clock: which calendar day a view is counted on (`--timezone`), and the time
//! the server goes by, which tests can move (a view at 23:59:59 and one at 00:00:01 are two
//! days without waiting for midnight).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

/// Seconds since the Unix epoch, as the server sees them: the system's time plus an offset that
/// only tests set.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    pub fn now_unix(&self) -> u64 {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        system.saturating_add_signed(self.offset.load(Ordering::Relaxed))
    }

    /// From now on, the clock reads `unix` (seconds) and runs on from there.
    pub fn set_unix(&self, unix: u64) {
        let system = self.now_unix() as i64 - self.offset.load(Ordering::Relaxed);
        self.offset.store(unix as i64 - system, Ordering::Relaxed);
    }
}

/// A calendar day, stored as the number `YYYYMMDD` (which sorts like the days do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(Date);

impl Day {
    pub fn key(self) -> u32 {
        let (y, m, d) = (self.0.year(), self.0.month(), self.0.day());
        // Years before 1 are not days anyone counted views on.
        u32::try_from(y).unwrap_or(0) * 10_000 + m as u32 * 100 + d as u32
    }

    pub fn from_key(key: u32) -> Option<Self> {
        let y = i16::try_from(key / 10_000).ok()?;
        let (m, d) = ((key / 100 % 100) as i8, (key % 100) as i8);
        Date::new(y, m, d).ok().map(Self)
    }

    pub fn from_date(date: Date) -> Self {
        Self(date)
    }

    pub fn date(self) -> Date {
        self.0
    }

    /// The day `days` before this one (saturating at the calendar's start).
    pub fn back(self, days: u32) -> Self {
        self.0
            .checked_sub(Span::new().days(i64::from(days)))
            .map_or(self, Self)
    }

    /// The days from `first` to `last`, both included.
    pub fn range(first: Self, last: Self) -> impl Iterator<Item = Day> {
        std::iter::successors(Some(first), move |d| {
            d.0.tomorrow().ok().map(Self).filter(|next| *next <= last)
        })
        .take_while(move |d| *d <= last)
    }

    /// `YYYY-MM-DD`.
    pub fn parse(raw: &str) -> Option<Self> {
        let date: Date = raw.parse().ok()?;
        // jiff also reads forms like `20261201`; the API speaks one.
        (date.to_string() == raw).then_some(Self(date))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The calendar views are counted in: `--timezone`.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    clock: Clock,
}

impl Calendar {
    pub fn new(tz: TimeZone, clock: Clock) -> Self {
        Self { tz, clock }
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The day an instant (unix seconds) falls on.
    pub fn day_of(&self, unix: u64) -> Day {
        let at = i64::try_from(unix)
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Day(self.tz.to_datetime(at).date())
    }

    pub fn today(&self) -> Day {
        self.day_of(self.clock.now_unix())
    }

    /// An instant (unix seconds) as RFC 3339 with this zone's offset at that instant, e.g.
    /// `2026-12-07T14:03:09+01:00`.
    pub fn rfc3339(&self, unix: u64) -> String {
        let at = i64::try_from(unix)
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        at.to_zoned_datetime(self.tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    /// How long until the next day starts here (at least a second); `None` past the
    /// calendar's range.
    pub fn until_tomorrow(&self) -> Option<std::time::Duration> {
        let now = i64::try_from(self.clock.now_unix()).ok()?;
        let zoned = Timestamp::from_second(now)
            .ok()?
            .to_zoned_datetime(self.tz.clone());
        let next = zoned.tomorrow().ok()?.start_of_day().ok()?;
        let secs = (next.timestamp().as_second() - now).max(1);
        Some(std::time::Duration::from_secs(secs.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomorrow_starts_at_the_zones_midnight() {
        let clock = Clock::default();
        clock.set_unix(unix("2026-03-07T23:59:00Z"));
        let utc = Calendar::new(TimeZone::UTC, clock.clone());
        let secs = utc.until_tomorrow().unwrap().as_secs();
        assert!((59..=60).contains(&secs), "{secs}");
        // Paris is at UTC+1 in March: it is 00:59 there, the next midnight 23 h 01 min away.
        let paris = Calendar::new(TimeZone::get("Europe/Paris").unwrap(), clock);
        let secs = paris.until_tomorrow().unwrap().as_secs();
        assert!((23 * 3600 + 59..=23 * 3600 + 60).contains(&secs), "{secs}");
    }

    fn unix(rfc3339: &str) -> u64 {
        let ts: Timestamp = rfc3339.parse().unwrap();
        ts.as_second() as u64
    }

    #[test]
    fn a_view_just_before_and_just_after_local_midnight_lands_on_two_days() {
        let berlin = Calendar::new(TimeZone::get("Europe/Berlin").unwrap(), Clock::default());
        let before = berlin.day_of(unix("2026-11-30T22:59:59Z"));
        let after = berlin.day_of(unix("2026-11-30T23:00:01Z"));
        assert_eq!(
            (before.to_string(), after.to_string()),
            ("2026-11-30".into(), "2026-12-01".into())
        );
        let utc = Calendar::new(TimeZone::UTC, Clock::default());
        assert_eq!(
            utc.day_of(unix("2026-11-30T23:00:01Z")).to_string(),
            "2026-11-30"
        );
    }

    #[test]
    fn days_round_trip_through_their_keys_and_count_back() {
        let day = Day::parse("2024-03-01").unwrap();
        assert_eq!(day.key(), 20_240_301);
        assert_eq!(Day::from_key(20_240_301), Some(day));
        assert_eq!(Day::from_key(20_240_230), None);
        assert_eq!(day.back(1).to_string(), "2024-02-29");
        let days: Vec<String> = Day::range(day.back(2), day)
            .map(|d| d.to_string())
            .collect();
        assert_eq!(days, ["2024-02-28", "2024-02-29", "2024-03-01"]);
        assert_eq!(Day::parse("20240301"), None);
    }

    #[test]
    fn an_instant_is_written_with_the_zones_offset_then() {
        let berlin = Calendar::new(TimeZone::get("Europe/Berlin").unwrap(), Clock::default());
        assert_eq!(
            berlin.rfc3339(unix("2026-12-07T13:03:09Z")),
            "2026-12-07T14:03:09+01:00"
        );
        assert_eq!(
            berlin.rfc3339(unix("2026-07-07T13:03:09Z")),
            "2026-07-07T15:03:09+02:00"
        );
        let utc = Calendar::new(TimeZone::UTC, Clock::default());
        assert_eq!(utc.rfc3339(0), "1970-01-01T00:00:00+00:00");
    }

    #[test]
    fn a_set_clock_runs_on_from_the_time_it_was_set_to() {
        let clock = Clock::default();
        clock.set_unix(1_000);
        let now = clock.now_unix();
        assert!((1_000..1_010).contains(&now), "{now}");
    }
}
