//! Shared streams: one SSE connection carrying many readers, so that all tabs of a browser can
//! share one connection. Over HTTP/1.1 a browser opens at most six connections per origin; a
//! stream per tab would starve the seventh tab and the beacons.
//!
//! The script's leader tab opens `GET /api/v1/shared/{sid}` and attaches each tab's reader with
//! `POST /api/v1/shared/{sid}/join/{slug}` (the view, counted by the same rules as a stream of
//! its own); `.../leave/{slug}` detaches it. Each reader is a [`Member`] holding its post's
//! update channel and its departure, so it counts exactly like a stream of its own: when the
//! shared stream drops, every member departs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::WatchStream;

use crate::limits::StreamPermit;
use crate::reader_id::{ReaderId, ReaderKey};
use crate::slug::Slug;
use crate::sse::{self, Departure, Signals, Update};

/// Readers one shared stream may carry: more tabs than anyone keeps open, few enough that one
/// client cannot pose as a crowd.
pub const MAX_MEMBERS: usize = 64;

/// One reader attached to a shared stream.
pub struct Member {
    pub slug: Slug,
    pub reader: ReaderKey,
    /// Its numbers at the moment it joined, tagged with its slug.
    pub first: Bytes,
    pub updates: tokio::sync::watch::Receiver<Update>,
    pub departure: Departure,
}

enum Command {
    Join(Member),
    Leave(Slug, ReaderKey),
}

/// How handlers reach one open shared stream.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    members: Arc<Mutex<HashSet<(Slug, ReaderKey)>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("already attached")]
    Already,
    #[error("shared stream is full")]
    Full,
    #[error("shared stream is closed")]
    Closed,
}

impl Handle {
    /// Claims a member's place before its post is asked, so double joins and overflow are
    /// refused without counting anything.
    pub fn reserve(&self, slug: &Slug, reader: ReaderKey) -> Result<(), JoinError> {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if members.contains(&(slug.clone(), reader)) {
            return Err(JoinError::Already);
        }
        if members.len() >= MAX_MEMBERS {
            return Err(JoinError::Full);
        }
        members.insert((slug.clone(), reader));
        Ok(())
    }

    /// Gives back a place reserved for a join that did not happen.
    pub fn unreserve(&self, slug: &Slug, reader: ReaderKey) {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(slug.clone(), reader));
    }

    pub fn join(&self, member: Member) -> Result<(), JoinError> {
        self.tx
            .send(Command::Join(member))
            .map_err(|_| JoinError::Closed)
    }

    pub fn leave(&self, slug: Slug, reader: ReaderKey) {
        let _ = self.tx.send(Command::Leave(slug, reader));
    }
}

/// The open shared streams, by id.
#[derive(Default)]
pub struct SharedStreams {
    open: Mutex<HashMap<String, (u64, Handle)>>,
    next: AtomicU64,
}

impl SharedStreams {
    /// The handle of an open stream.
    pub fn handle(&self, sid: &str) -> Option<Handle> {
        self.lock().get(sid).map(|(_, handle)| handle.clone())
    }

    /// Opens a stream under `sid`; an older stream with the same id (a reconnect the server has
    /// not yet seen drop) stays open but can no longer be joined.
    pub fn open(
        self: &Arc<Self>,
        sid: ReaderId,
        signals: Signals,
        permit: StreamPermit,
    ) -> SharedStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let members = Arc::new(Mutex::new(HashSet::new()));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            tx,
            members: Arc::clone(&members),
        };
        self.lock().insert(sid.as_str().to_owned(), (id, handle));
        SharedStream {
            registration: Some(Registration {
                streams: Arc::clone(self),
                sid,
                id,
            }),
            queue: VecDeque::from([sse::shared_start()]),
            commands: rx,
            members: Vec::new(),
            member_keys: members,
            heartbeat: WatchStream::from_changes(signals.heartbeat),
            shutdown: WatchStream::from_changes(signals.shutdown),
            next: 0,
            _permit: permit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Handle)>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes the stream from [`SharedStreams`] when it ends, unless a newer one took its id.
struct Registration {
    streams: Arc<SharedStreams>,
    sid: ReaderId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if open
            .get(self.sid.as_str())
            .is_some_and(|(id, _)| *id == self.id)
        {
            open.remove(self.sid.as_str());
        }
    }
}

struct Attached {
    slug: Slug,
    reader: ReaderKey,
    updates: WatchStream<Update>,
    _departure: Departure,
}

/// The body of a shared stream: members' first events as they join, then their updates,
/// heartbeats, and a `retry:` hint on shutdown.
pub struct SharedStream {
    registration: Option<Registration>,
    queue: VecDeque<Bytes>,
    commands: mpsc::UnboundedReceiver<Command>,
    members: Vec<Attached>,
    member_keys: Arc<Mutex<HashSet<(Slug, ReaderKey)>>>,
    heartbeat: WatchStream<()>,
    shutdown: WatchStream<bool>,
    /// Where the next scan of members starts, so a busy post cannot starve the others.
    next: usize,
    _permit: StreamPermit,
}

impl SharedStream {
    fn apply(&mut self, command: Command) {
        match command {
            Command::Join(member) => {
                self.queue.push_back(member.first);
                self.members.push(Attached {
                    slug: member.slug,
                    reader: member.reader,
                    updates: WatchStream::from_changes(member.updates),
                    _departure: member.departure,
                });
            }
            Command::Leave(slug, reader) => {
                self.members
                    .retain(|m| m.slug != slug || m.reader != reader);
                self.forget(&slug, reader);
            }
        }
    }

    fn forget(&self, slug: &Slug, reader: ReaderKey) {
        self.member_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(slug.clone(), reader));
    }

    /// The next update of any member, scanning from where the last scan stopped.
    fn poll_members(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let count = self.members.len();
        for step in 0..count {
            let i = (self.next + step) % count;
            match self.members[i].updates.poll_next_unpin(cx) {
                Poll::Ready(Some(update)) => {
                    self.next = i + 1;
                    return Poll::Ready(Some(update.tagged));
                }
                // The post went away under a reader: cannot happen while the reader is
                // attached, but if it does, the member is simply gone.
                Poll::Ready(None) => {
                    let gone = self.members.swap_remove(i);
                    self.forget(&gone.slug, gone.reader);
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

impl Stream for SharedStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.registration.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(Some(true)) = this.shutdown.poll_next_unpin(cx) {
            // Ends after this event; members depart with the stream.
            this.registration = None;
            return Poll::Ready(Some(Ok(sse::shutdown_event())));
        }
        while let Poll::Ready(Some(command)) = this.commands.poll_recv(cx) {
            this.apply(command);
        }
        if let Some(first) = this.queue.pop_front() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            match this.poll_members(cx) {
                Poll::Ready(Some(event)) => return Poll::Ready(Some(Ok(event))),
                // A member went away: scan the rest again.
                Poll::Ready(None) => continue,
                Poll::Pending => break,
            }
        }
        match this.heartbeat.poll_next_unpin(cx) {
            Poll::Ready(Some(())) => Poll::Ready(Some(Ok(sse::HEARTBEAT))),
            _ => Poll::Pending,
        }
    }
}
