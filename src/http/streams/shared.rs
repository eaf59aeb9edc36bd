//! Shared streams: one SSE connection carrying many readers, so that all tabs of a browser can
//! share one connection. Over HTTP/1.1 a browser opens at most six connections per origin; a
//! stream per tab would starve the seventh tab and the beacons.
//!
//! The script's leader tab opens `GET /api/v1/shared/{sid}` and attaches each tab's reader with
//! `POST /api/v1/shared/{sid}/join/{slug}` (the view, counted by the same rules as a stream of
//! its own); `.../leave/{slug}` detaches it. Each reader is a [`Member`] holding its post's
//! update channel and its departure, so it counts exactly like a stream of its own: when the
//! shared stream drops, every member departs.
//!
//! A member's place is a [`Seat`], taken before its post is asked and given back when the seat
//! is dropped, wherever that happens: a join request aborted halfway, a leave, the stream
//! ending. A shared stream counts as max(1, members) readers of its client: its connection
//! holds the first place, each further member one more ([`crate::edge::limits::ReaderSlot`]).
//!
//! A shared stream also carries the posts its tabs watch (index pages: numbers, no view, no
//! reader), set by `POST /api/v1/shared/{sid}/watch` (see [`crate::http::watch`]). A watch
//! stream of its own (`GET /api/v1/watch`) is a shared stream nobody can join: no id, no
//! members, only its watched posts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::WatchStream;

use crate::edge::limits::{ClientKey, ReaderSlot, StreamLimits};
use crate::edge::reader_id::{Presence, ReaderId};
use crate::edge::slug::Slug;
use crate::posts::post::{Departure, Watched, Watcher};
use crate::posts::update::Update;
use crate::refusal::Refusal;

/// Readers one shared stream may carry: more tabs than anyone keeps open, few enough that one
/// client cannot pose as a crowd.
pub(crate) const MAX_MEMBERS: usize = 64;

/// One reader attached to a shared stream.
pub(crate) struct Member {
    /// Its place on the stream; names the slug and presence.
    pub seat: Seat,
    /// Its numbers at the moment it joined, tagged with its slug.
    pub first: Bytes,
    pub updates: tokio::sync::watch::Receiver<Update>,
    pub departure: Departure,
}

enum Command {
    Join(Member),
    Leave(Slug, Presence),
    /// The watched posts change: these stop, those start.
    Watch {
        stopped: Vec<Slug>,
        started: Vec<(Slug, Watched)>,
    },
}

/// Who is attached to one shared stream, and the reader slots its members beyond the first hold.
#[derive(Default)]
struct Seats {
    taken: HashSet<(Slug, Presence)>,
    /// Always `taken.len() - 1` slots (none when empty): the connection's permit covers one.
    extra: Vec<ReaderSlot>,
}

type SharedSeats = Arc<Mutex<Seats>>;

fn lock(seats: &SharedSeats) -> std::sync::MutexGuard<'_, Seats> {
    seats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A member's place on a shared stream, given back on drop.
pub(crate) struct Seat {
    seats: SharedSeats,
    slug: Slug,
    presence: Presence,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = lock(&self.seats);
        seats.taken.remove(&(self.slug.clone(), self.presence));
        let keep = seats.taken.len().saturating_sub(1);
        seats.extra.truncate(keep);
    }
}

/// The posts a shared stream watches, as the newest watch request applied so far set them.
#[derive(Default)]
struct WatchSet {
    /// The request's number: an older one arriving late changes nothing.
    seq: u64,
    /// The posts being watched (those that exist: an unknown one is asked again next time).
    slugs: HashSet<Slug>,
}

/// How handlers reach one open shared stream.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    seats: SharedSeats,
    limits: Arc<StreamLimits>,
    /// Async: held across the subscriptions of one watch request, so that requests apply one
    /// at a time and the stream sees them in the order of their numbers.
    watches: Arc<tokio::sync::Mutex<WatchSet>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("already attached")]
    Already,
    #[error("shared stream is full")]
    Full,
    #[error(transparent)]
    OverBudget(Refusal),
    #[error("shared stream is closed")]
    Closed,
}

impl Handle {
    /// Claims a member's place (and, beyond the first member, a reader slot of `client`) before
    /// its post is asked, so double joins and overflow are refused without counting anything.
    pub(crate) fn reserve(
        &self,
        slug: &Slug,
        presence: Presence,
        client: ClientKey,
    ) -> Result<Seat, JoinError> {
        let mut seats = lock(&self.seats);
        let key = (slug.clone(), presence);
        if seats.taken.contains(&key) {
            return Err(JoinError::Already);
        }
        if seats.taken.len() >= MAX_MEMBERS {
            return Err(JoinError::Full);
        }
        if !seats.taken.is_empty() {
            let slot = self
                .limits
                .acquire_reader(client)
                .map_err(JoinError::OverBudget)?;
            seats.extra.push(slot);
        }
        seats.taken.insert(key);
        Ok(Seat {
            seats: Arc::clone(&self.seats),
            slug: slug.clone(),
            presence,
        })
    }

    pub(crate) fn join(&self, member: Member) -> Result<(), JoinError> {
        self.tx
            .send(Command::Join(member))
            .map_err(|_| JoinError::Closed)
    }

    pub(crate) fn leave(&self, slug: Slug, presence: Presence) {
        let _ = self.tx.send(Command::Leave(slug, presence));
    }

    /// Makes `slugs` the posts the stream watches, unless a request numbered `seq` or later
    /// was applied already (beacons may arrive in any order). `subscribe` is asked only for
    /// the posts not watched yet, and answers those that exist. A request dropped halfway
    /// changes nothing.
    pub(crate) async fn watch<F, Fut>(
        &self,
        seq: u64,
        slugs: Vec<Slug>,
        subscribe: F,
    ) -> Result<(), Refusal>
    where
        F: FnOnce(Vec<Slug>) -> Fut,
        Fut: Future<Output = Result<Vec<(Slug, Watched)>, Refusal>>,
    {
        let mut set = self.watches.lock().await;
        if seq <= set.seq {
            return Ok(());
        }
        let wanted: HashSet<Slug> = slugs.into_iter().collect();
        let new = wanted.difference(&set.slugs).cloned().collect();
        let started = subscribe(new).await?;
        let stopped = set.slugs.difference(&wanted).cloned().collect();
        let kept = set.slugs.intersection(&wanted).cloned();
        let slugs = kept.chain(started.iter().map(|(slug, _)| slug.clone()));
        let slugs = slugs.collect();
        self.tx
            .send(Command::Watch { stopped, started })
            .map_err(|_| Refusal::NoSharedStream)?;
        *set = WatchSet { seq, slugs };
        Ok(())
    }
}

/// The open shared streams, by id.
#[derive(Default)]
pub(crate) struct SharedStreams {
    open: Mutex<HashMap<String, (u64, Handle)>>,
    next: AtomicU64,
}

impl SharedStreams {
    /// The handle of an open stream.
    pub(crate) fn handle(&self, sid: &str) -> Option<Handle> {
        self.lock().get(sid).map(|(_, handle)| handle.clone())
    }

    /// Opens a stream under `sid`; an older stream with the same id (a reconnect the server has
    /// not yet seen drop) stays open but can no longer be joined.
    pub(crate) fn open(self: &Arc<Self>, sid: ReaderId, limits: Arc<StreamLimits>) -> SharedStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            tx,
            seats: SharedSeats::default(),
            limits,
            watches: Default::default(),
        };
        self.lock().insert(sid.as_str().to_owned(), (id, handle));
        let registration = Registration {
            streams: Arc::clone(self),
            sid,
            id,
        };
        SharedStream::new(Some(registration), rx)
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

/// A member's updates, holding its seat and departure: dropped together when the member leaves
/// or its updates end (the [`StreamMap`] drops a stream that ended).
struct Attached {
    updates: WatchStream<Update>,
    _seat: Seat,
    _departure: Departure,
}

impl Stream for Attached {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.updates.poll_next_unpin(cx)
    }
}

/// A watched post's updates (its current numbers first), holding the guard that keeps the
/// post awake: dropped when the post is no longer watched or the stream ends.
struct Watching {
    /// The post's state when the watch began, sent first.
    first: Option<Update>,
    /// The broadcasts after it.
    updates: WatchStream<Update>,
    _watcher: Watcher,
}

impl Watching {
    fn new(watched: Watched) -> Self {
        Self {
            first: Some(watched.first),
            updates: WatchStream::from_changes(watched.updates),
            _watcher: watched.watcher,
        }
    }
}

impl Stream for Watching {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        self.updates.poll_next_unpin(cx)
    }
}

/// What a shared stream sends: members' first events as they join, then their updates, and
/// the watched posts' numbers.
pub(crate) struct SharedStream {
    /// Keeps the stream joinable under its id while it lives; `None` for a watch stream,
    /// which has no id.
    _registration: Option<Registration>,
    /// Members' first events, sent before any update.
    queue: VecDeque<Bytes>,
    /// Joins, leaves and watch changes from the handlers.
    commands: mpsc::UnboundedReceiver<Command>,
    /// Polled from a random member each time, so a busy post cannot starve the others.
    members: StreamMap<(Slug, Presence), Attached>,
    /// The posts watched, by slug.
    watched: StreamMap<Slug, Watching>,
}

impl SharedStream {
    fn new(registration: Option<Registration>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        Self {
            _registration: registration,
            queue: VecDeque::new(),
            commands,
            members: StreamMap::new(),
            watched: StreamMap::new(),
        }
    }

    /// A watch stream (`GET /api/v1/watch`): these posts' numbers at once, then as they change.
    pub(crate) fn watching(watched: Vec<(Slug, Watched)>) -> Self {
        // Nobody can send it commands: the sender goes at once.
        let (_, commands) = mpsc::unbounded_channel();
        let mut stream = Self::new(None, commands);
        stream.start_watching(watched);
        stream
    }

    fn start_watching(&mut self, watched: Vec<(Slug, Watched)>) {
        for (slug, watched) in watched {
            self.watched.insert(slug, Watching::new(watched));
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Join(member) => {
                self.queue.push_back(member.first);
                let key = (member.seat.slug.clone(), member.seat.presence);
                // The seat is unique among the members, so no member is replaced here.
                self.members.insert(
                    key,
                    Attached {
                        updates: WatchStream::from_changes(member.updates),
                        _seat: member.seat,
                        _departure: member.departure,
                    },
                );
            }
            // Dropping the member gives its seat back and departs.
            Command::Leave(slug, presence) => {
                self.members.remove(&(slug, presence));
            }
            Command::Watch { stopped, started } => {
                for slug in &stopped {
                    self.watched.remove(slug);
                }
                self.start_watching(started);
            }
        }
    }
}

/// Never ends by itself: the stream ends with its connection or the server.
impl Stream for SharedStream {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        while let Poll::Ready(Some(command)) = this.commands.poll_recv(cx) {
            this.apply(command);
        }
        if let Some(first) = this.queue.pop_front() {
            return Poll::Ready(Some(first));
        }
        // A member whose post went away under it (cannot happen while it is attached) is
        // dropped by the map; no members left is `Ready(None)`, which is no event either.
        if let Poll::Ready(Some((_, update))) = this.members.poll_next_unpin(cx) {
            return Poll::Ready(Some(update.tagged));
        }
        if let Poll::Ready(Some((_, update))) = this.watched.poll_next_unpin(cx) {
            return Poll::Ready(Some(update.tagged));
        }
        Poll::Pending
    }
}
