//! The single node's [`Counting`]: its writer is the only record and no other node reads.

use crate::edge::reader_id::ReaderId;
use crate::edge::slug::Slug;

use crate::posts::cluster_port::{Counting, Decision, Hearing, Served, Verdict};
use crate::storage::writer::{Writer, WriterError};

/// Every view is decided at once and goes to the writer; nobody else has readers or views.
pub(crate) struct LocalCounting {
    writer: Writer,
}

impl LocalCounting {
    pub(crate) fn new(writer: Writer) -> Self {
        Self { writer }
    }
}

impl Counting for LocalCounting {
    fn count(&self, slug: &Slug, reader: ReaderId, at: u64) -> Verdict {
        self.writer.add_view(slug, reader, at);
        Verdict::Ready(Decision::Added)
    }

    fn remote_live(&self, _: &Slug) -> u64 {
        0
    }

    fn remote_posts(&self) -> Vec<(Slug, u64)> {
        Vec::new()
    }

    fn unsynced(&self, _: &Slug) -> u64 {
        0
    }

    fn set_local_live(&self, _: &Slug, _: u64) {}

    /// The writer took them: the post's total is the only one to move.
    fn imported(&self, views: u64) -> u64 {
        views
    }

    /// The writer is the only source of the total: without it, no post.
    fn unloaded(&self, _: &Slug, error: WriterError) -> Result<u64, WriterError> {
        Err(error)
    }

    /// Nobody else has readers: serving is nothing to set up (asked once per wake, not per
    /// reader).
    fn serve<'a>(&'a self, _: Served<'a>) -> Hearing<'a> {
        Hearing::Now
    }

    fn stop_serving(&self, _: Served<'_>) {}
}
