//! A reader's stream of one post: the post's numbers each time they change. Counted as a
//! reader (and a view) on admission; departs when the stream ends.

use std::future::pending;

use bytes::Bytes;
use tokio::sync::watch;

use crate::http::streams::lifecycle::Content;
use crate::posts::post::Departure;
use crate::posts::update::Update;

/// One post's broadcasts, for one reader.
pub(crate) struct Updates {
    /// The post's latest broadcast; each is encoded once for all its readers.
    updates: watch::Receiver<Update>,
    /// Undoes the reader's count when the stream ends.
    _departure: Departure,
}

impl Updates {
    pub(crate) fn new(updates: watch::Receiver<Update>, departure: Departure) -> Self {
        Self {
            updates,
            _departure: departure,
        }
    }
}

impl Content for Updates {
    async fn next(&mut self) -> Option<Bytes> {
        // A closed channel (the post gone) sends nothing more: the stream lives on its
        // heartbeats until the client goes.
        if self.updates.changed().await.is_err() {
            pending::<()>().await;
        }
        Some(self.updates.borrow_and_update().plain.clone())
    }
}
