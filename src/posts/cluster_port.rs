//! How a post counts its views and learns its readers elsewhere, as a port with two
//! implementations: [`crate::posts::local_counting::LocalCounting`] (a single node: every view
//! decided at once, nobody else) and the cluster's (`--redis`), which the cluster implements
//! above the posts. The posts never call the cluster by name, so they can be read and tested
//! without it, and the cluster calls the posts, not the other way round.

use std::future::Future;
use std::pin::Pin;

use crate::edge::reader_id::ReaderId;
use crate::edge::slug::Slug;
use crate::storage::writer::WriterError;

/// Counting views and live readers, alone or together with the other nodes.
pub trait Counting: Send + Sync {
    /// Counts a view this node's dedupe let through and records it where this counter keeps
    /// views. In a cluster the shared store decides (another node may have counted it within
    /// the window), or, unreachable, it is counted here and kept until the store takes it.
    fn count(&self, slug: &Slug, reader: ReaderId, at: u64) -> Verdict;

    /// A post's live readers on the other nodes.
    fn remote_live(&self, slug: &Slug) -> u64;

    /// Every post with live readers on other nodes, and how many.
    fn remote_posts(&self) -> Vec<(Slug, u64)>;

    /// A post's views counted here that the shared store does not have yet.
    fn unsynced(&self, slug: &Slug) -> u64;

    /// A post's live readers on this node moved: the other nodes are told.
    fn set_local_live(&self, slug: &Slug, live: u64);

    /// Views imported for a post awake here: what they add to its total at once.
    fn imported(&self, views: u64) -> u64;

    /// The store could not give a post's total (`error`): the total to wake it with, or the
    /// error that refuses it.
    fn unloaded(&self, slug: &Slug, error: WriterError) -> Result<u64, WriterError>;

    /// The store could not give a post's total (`error`) because the shared store lost it and
    /// is being rebuilt: what resolves once it may be back (bounded), for the wake to load it
    /// again; `None` for any other error.
    fn rebuilding<'a>(
        &'a self,
        _slug: &'a Slug,
        _error: &WriterError,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        None
    }

    /// This node serves the post (it wakes) or the whole site (a read of every post's live)
    /// from the call on (not from the future's first poll): it hears their
    /// changes from the other nodes, and knows their readers, once the future resolves. Each
    /// call is undone by one [`Counting::stop_serving`]: callers go through [`Serving`], which
    /// gives the hold back even when the request is dropped while it waits.
    fn serve<'a>(&'a self, what: Served<'a>) -> Hearing<'a>;

    /// This node no longer needs to hear of it (the post went to sleep, the read is done).
    fn stop_serving(&self, what: Served<'_>);

    /// The live readers on the other nodes of each of `slugs`, in order, for a read of them
    /// (`/count`, `/counts`): read once, following none (a post not followed here costs one
    /// read of the other nodes, not a subscription and its undoing).
    fn live_elsewhere<'a>(&'a self, slugs: &'a [Slug]) -> Elsewhere<'a> {
        Elsewhere::Now(slugs.iter().map(|slug| self.remote_live(slug)).collect())
    }
}

/// What [`Counting::live_elsewhere`] answers: known here, or once a read resolves.
pub enum Elsewhere<'a> {
    Now(Vec<u64>),
    Later(Pin<Box<dyn Future<Output = Vec<u64>> + Send + 'a>>),
}

impl Elsewhere<'_> {
    pub(crate) async fn get(self) -> Vec<u64> {
        match self {
            Self::Now(live) => live,
            Self::Later(read) => read.await,
        }
    }
}

/// A hold of [`Counting::serve`], given back ([`Counting::stop_serving`]) when dropped: a read
/// or a wake dropped while it waits (its client gone, a shutdown, Redis stalled) leaves no
/// channel subscribed for good.
pub(crate) struct Serving<'a> {
    counting: &'a dyn Counting,
    what: Served<'a>,
}

impl<'a> Serving<'a> {
    /// Takes the hold now; the node hears of `what` once the [`Hearing`] is done.
    pub(crate) fn start(counting: &'a dyn Counting, what: Served<'a>) -> (Self, Hearing<'a>) {
        let ready = counting.serve(what);
        (Self { counting, what }, ready)
    }

    /// The hold outlives this guard: it passes to the post woken with it, whose sleep gives
    /// it back.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.counting.stop_serving(self.what);
    }
}

/// What [`Counting::serve`] answers: the node hears of it already, or once a future resolves
/// (`Now` boxes nothing).
pub enum Hearing<'a> {
    /// Nothing to wait for: nobody else to hear, the post already followed, or Redis down.
    Now,
    /// Heard once this resolves (a subscription on its way).
    Once(Pin<Box<dyn Future<Output = ()> + Send + 'a>>),
}

impl Hearing<'_> {
    /// Waits until the node hears of what it serves.
    pub(crate) async fn heard(self) {
        if let Self::Once(ready) = self {
            ready.await;
        }
    }
}

/// What a node serves ([`Counting::serve`]).
#[derive(Debug, Clone, Copy)]
pub enum Served<'a> {
    Post(&'a Slug),
    /// Every post.
    Site,
}

/// What [`Counting::count`] answers: a decision now, or one to wait for.
pub enum Verdict {
    /// Decided at once: the post answers its reader with no future boxed.
    Ready(Decision),
    /// Decided once the shared store answers (at most `--redis-timeout`); the post goes on
    /// with other messages meanwhile.
    Later(Pin<Box<dyn Future<Output = Decision> + Send>>),
}

/// The decision on a view this node would count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Counted, with nobody else to ask: the post's total is one more.
    Added,
    /// The shared store answered: counted (or a duplicate of a view counted on another node).
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
