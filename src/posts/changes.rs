//! The registry-wide change feed: every post's coalesced broadcast, also told to whoever
//! watches all posts at once (the owner's dashboard stream, `GET /api/v1/admin/stream`).
//!
//! A post already sends at most a few updates a second (see [`crate::posts::post`]), so this
//! feed carries no more than the sum of those. A subscriber that falls behind is told so
//! (`Lagged`) and starts again from a snapshot rather than holding a backlog.

use tokio::sync::broadcast;

use crate::edge::slug::Slug;
use crate::posts::post_state::Counts;

/// Changes a slow subscriber may be behind before it must start over from a snapshot.
pub(crate) const FEED_CAPACITY: usize = 1024;

/// One thing a dashboard must learn.
#[derive(Debug, Clone)]
pub enum Change {
    /// A post's new numbers, as its readers see them.
    Post(Slug, Counts),
    /// Cluster mode: a post asleep on this node has this many live readers on the others
    /// (its total unchanged).
    Live(Slug, u64),
    /// Numbers moved outside counting (an import): start again from a snapshot.
    Resync,
    /// A minute of the site's pulse closed (minutes since the Unix epoch) with this many
    /// readers at most ([`crate::posts::pulse`]).
    Minute { minute: u64, live: u64 },
}

/// The sending side, shared by every post; sending with nobody subscribed costs a lock and
/// a slot write, no allocation (a [`Slug`] clone is a reference count).
#[derive(Debug, Clone)]
pub struct Changes(broadcast::Sender<Change>);

impl Default for Changes {
    fn default() -> Self {
        Self(broadcast::Sender::new(FEED_CAPACITY))
    }
}

impl Changes {
    pub fn post(&self, slug: &Slug, counts: Counts) {
        // Nobody subscribed is the common case, not an error.
        let _ = self.0.send(Change::Post(slug.clone(), counts));
    }

    pub fn live(&self, slug: &Slug, live: u64) {
        let _ = self.0.send(Change::Live(slug.clone(), live));
    }

    pub fn minute(&self, minute: u64, live: u64) {
        let _ = self.0.send(Change::Minute { minute, live });
    }

    pub fn resync(&self) {
        let _ = self.0.send(Change::Resync);
    }

    /// Who follows every post here (dashboards, admin streams, the `*` watchers' task).
    pub fn followers(&self) -> usize {
        self.0.receiver_count()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_changes_sent_after_they_subscribed() {
        let changes = Changes::default();
        let slug = Slug::parse("alpha").unwrap();
        changes.post(&slug, Counts { live: 1, total: 1 });
        let mut rx = changes.subscribe();
        changes.post(&slug, Counts { live: 2, total: 3 });
        changes.resync();
        match rx.recv().await.unwrap() {
            Change::Post(s, c) => assert_eq!((s.as_str(), c.live, c.total), ("alpha", 2, 3)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.recv().await.unwrap(), Change::Resync));
    }
}
