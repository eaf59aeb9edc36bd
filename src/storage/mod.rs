//! Storage: the debounced writer, the redb store behind it, and the calendar of days.

pub mod calendar;
pub mod store;
pub mod writer;
