//! The whole site as one watched "post", `*` (`GET /api/v1/watch?slug=*`,
//! `data-viewcounter-watch="*"`): everyone reading any post now and all views of all posts,
//! counting nothing, followed live like a post (coalesced the same way).
//!
//! Started by the first watcher of `*` and running while one watches: a task that keeps every
//! post's numbers from a snapshot (all totals, every post's live readers) and the change
//! feed ([`crate::posts::changes`]), and broadcasts their sums at most once per
//! [`MIN_BROADCAST_INTERVAL`]. When the last watcher has gone it stops and lets go of the
//! feed: in cluster mode a node follows every post's channel only while the feed has a
//! follower, so one passing watcher of `*` must not keep it doing so. A feed it fell behind, or numbers moved outside counting (an
//! import), make it read a new snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};

use crate::edge::slug::Slug;
use crate::posts::changes::{Change, Changes};
use crate::posts::post::{MIN_BROADCAST_INTERVAL, Watched, Watcher};
use crate::posts::post_state::Counts;
use crate::posts::update::Update;
use crate::refusal::Refusal;
use crate::storage::add_counts;

/// Reads every post's numbers now: all totals, and the live readers of the posts being read.
pub(crate) type Snapshot = Arc<dyn Fn() -> LocalBoxFuture<'static, Result<Sums, Refusal>>>;

/// Every post's numbers and their sums.
#[derive(Debug, Default)]
pub(crate) struct Sums {
    posts: HashMap<Slug, Counts>,
    sum: Counts,
}

impl Sums {
    pub(crate) fn new(totals: Vec<(String, u64)>, live: Vec<(Slug, u64)>) -> Self {
        let mut sums = Self::default();
        for (slug, total) in totals {
            if let Ok(slug) = Slug::parse(&slug) {
                sums.set(&slug, None, Some(total));
            }
        }
        for (slug, live) in live {
            sums.set(&slug, Some(live), None);
        }
        sums
    }

    /// A post's new numbers (`None`: unchanged). Totals only grow by counting: a total lower
    /// than one already seen is an older message.
    fn set(&mut self, slug: &Slug, live: Option<u64>, total: Option<u64>) {
        let post = match self.posts.get_mut(slug) {
            Some(post) => post,
            None => self.posts.entry(slug.clone()).or_default(),
        };
        let before = *post;
        post.live = live.unwrap_or(before.live);
        post.total = total.map_or(before.total, |t| t.max(before.total));
        self.sum.live = (self.sum.live + post.live).saturating_sub(before.live);
        self.sum.total = add_counts(self.sum.total, post.total - before.total);
    }

    pub(crate) fn counts(&self) -> Counts {
        self.sum
    }
}

/// The site's broadcast, while someone watches it.
#[derive(Default)]
pub(crate) struct Site {
    updates: Arc<tokio::sync::Mutex<Option<watch::Sender<Update>>>>,
}

impl Site {
    /// A watcher of `*`: the sums now, then their broadcasts.
    pub(crate) async fn watch(
        &self,
        changes: &Changes,
        snapshot: Snapshot,
    ) -> Result<Watched, Refusal> {
        let mut updates = self.updates.lock().await;
        let tx = match &*updates {
            Some(tx) => tx.clone(),
            None => {
                // Subscribed before the snapshot is read: nothing falls between the two.
                let feed = changes.subscribe();
                let sums = snapshot().await?;
                let tx = watch::Sender::new(update(sums.counts()));
                let site = Arc::clone(&self.updates);
                actix_rt::spawn(follow(tx.clone(), feed, sums, snapshot, site));
                updates.insert(tx).clone()
            }
        };
        let mut rx = tx.subscribe();
        let first = rx.borrow_and_update().clone();
        Ok(Watched {
            first,
            updates: rx,
            watcher: Watcher { post: None },
        })
    }
}

fn update(counts: Counts) -> Update {
    Update::new(&Slug::site(), counts)
}

/// Keeps the sums as the feed moves them, broadcasting at most once per interval, until the
/// last watcher has gone (then `site`, the site's broadcast, is emptied for the next one).
async fn follow(
    tx: watch::Sender<Update>,
    mut feed: broadcast::Receiver<Change>,
    mut sums: Sums,
    snapshot: Snapshot,
    site: Arc<tokio::sync::Mutex<Option<watch::Sender<Update>>>>,
) {
    let mut shown = sums.counts();
    loop {
        let change = tokio::select! {
            change = feed.recv() => change,
            () = tx.closed() => {
                // A watcher subscribes under this lock: none can come between the check and
                // the broadcast's removal.
                let mut updates = site.lock().await;
                if tx.receiver_count() == 0 {
                    *updates = None;
                    return;
                }
                continue;
            }
        };
        let mut next = Some(change);
        let mut resync = false;
        while let Some(change) = next.take() {
            match change {
                Ok(Change::Post(slug, counts)) => {
                    sums.set(&slug, Some(counts.live), Some(counts.total));
                }
                Ok(Change::Live(slug, live)) => sums.set(&slug, Some(live), None),
                Ok(Change::Minute { .. }) => {}
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => resync = true,
                Err(RecvError::Closed) => return,
            }
            next = match feed.try_recv() {
                Ok(change) => Some(Ok(change)),
                Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                Err(TryRecvError::Empty | TryRecvError::Closed) => None,
            };
        }
        if resync {
            match snapshot().await {
                Ok(fresh) => sums = fresh,
                // Kept as they are until the next change tries again.
                Err(e) => tracing::warn!(error = %e, "the site's numbers could not be read"),
            }
        }
        if sums.counts() != shown {
            shown = sums.counts();
            tx.send_replace(update(shown));
            tokio::time::sleep(MIN_BROADCAST_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sums_follow_each_posts_newest_numbers() {
        let a = Slug::parse("a").unwrap();
        let b = Slug::parse("b").unwrap();
        let mut sums = Sums::new(
            vec![("a".into(), 10), ("b".into(), 5)],
            vec![(a.clone(), 2)],
        );
        assert_eq!(sums.counts(), Counts { live: 2, total: 15 });
        sums.set(&b, Some(3), Some(6));
        sums.set(&a, Some(1), Some(9));
        assert_eq!(
            sums.counts(),
            Counts { live: 4, total: 16 },
            "no total goes back"
        );
        sums.set(&Slug::parse("c").unwrap(), None, Some(1));
        assert_eq!(sums.counts(), Counts { live: 4, total: 17 });
    }
}
