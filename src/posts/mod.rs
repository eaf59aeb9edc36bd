//! The posts: one actor per post being read, and the registry that wakes them.

pub(crate) mod changes;
pub mod post;
pub(crate) mod post_state;
pub(crate) mod registry;
