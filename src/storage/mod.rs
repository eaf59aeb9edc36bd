//! Storage: the debounced writer, the redb store behind it, and the calendar of days. It knows
//! neither the command line nor the posts; the allocator cache it holds is given back through
//! [`crate::memory::HoldsCachedBlocks`].

pub mod calendar;
pub mod presence;
pub mod store;
pub mod writer;

/// The largest count, a post's total or its views on a day: 9,223,372,036,854,775,807.
/// Redis keeps counts as signed 64-bit integers (`HINCRBY` refuses to go past `i64::MAX`), so
/// every layer stops there, with Redis or without: a file exported from one imports into the
/// other, and a count never means one thing here and another there. Adding saturates at it
/// (`add_counts`); an import row above it is refused.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// `a + b`, stopping at [`MAX_COUNT`]: how counts are added everywhere.
pub(crate) fn add_counts(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(MAX_COUNT)
}
