//! The posts: one actor per post being read, and the registry that wakes them.
//!
//! Below HTTP and the cluster, and calling neither: a post broadcasts [`update::Update`]s (the
//! events encoded once) that streams forward, and reaches the other nodes in cluster mode only
//! through its port, `cluster_port::Counting`.

pub(crate) mod alert_port;
pub(crate) mod changes;
pub(crate) mod cluster_port;
pub(crate) mod peaks;
pub mod post;
pub(crate) mod post_state;
pub(crate) mod pulse;
pub(crate) mod registry;
pub(crate) mod site;
pub mod update;
