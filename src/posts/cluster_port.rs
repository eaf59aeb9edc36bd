//! What a post needs from the other nodes in cluster mode (`--redis`), as a port the cluster
//! implements ([`crate::cluster::Cluster`]): the posts never call the cluster by name, so they
//! can be read and tested without it, and the cluster calls the posts, not the other way round.

use std::future::Future;
use std::pin::Pin;

use crate::edge::reader_id::ReaderId;
use crate::edge::slug::Slug;

/// Counting views and live readers together with the other nodes.
pub trait Counting: Send + Sync {
    /// Counts a view this node's dedupe let through, for every node: the shared store decides
    /// (another node may have counted it within the window), or, unreachable, it is counted
    /// here and kept until the store takes it.
    fn count<'a>(
        &'a self,
        slug: &'a Slug,
        reader: &'a ReaderId,
        at: u64,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;

    /// A post's live readers on the other nodes.
    fn remote_live(&self, slug: &Slug) -> u64;

    /// Every post with live readers on other nodes, and how many.
    fn remote_posts(&self) -> Vec<(Slug, u64)>;

    /// A post's views counted here that the shared store does not have yet.
    fn unsynced(&self, slug: &Slug) -> u64;

    /// A post's live readers on this node moved: the other nodes are told.
    fn set_local_live(&self, slug: &Slug, live: u64);
}

/// The shared store's decision on a view this node would count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The store answered: counted (or a duplicate of a view counted on another node).
    Decided(Counted),
    /// The store did not answer: counted here, kept until the store takes it.
    Deferred,
}

/// What the shared store answered for one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The view is in the total (now, or by an earlier run of the same op).
    pub counted: bool,
    /// The post's total after it.
    pub total: u64,
}
