//! `GET /api/v1/admin/stream`: the owner's dashboard, live, over one stream. First a
//! `snapshot` event (every post: reading now, today, all-time), then one message per post
//! whose numbers moved and an `event: pulse` as each of the site's minutes closes (see
//! [`crate::posts::pulse`]), fed by the registry's change feed ([`crate::posts::changes`]). This is
//! its content; admission (the admin rule) is [`crate::http::streams`]'.
//!
//! "Today" is worked out here rather than asked of the writer on every change: the snapshot
//! reads each post's total and today's views at one point of the writer's queue, and from then
//! on a post's total only grows by views counted now, which are today's. What breaks that
//! rule starts again from a fresh snapshot: an import, a new day, a post the snapshot did not
//! have, or a subscriber that fell behind the feed. In cluster mode the board is the
//! cluster's: a post asleep here but read on another node comes from the cluster's presence
//! and its announced totals (`Change::Live`, and `Change::Post` from the cluster listener).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::edge::slug::Slug;
use crate::edge::slug_list::SlugPolicy;
use crate::http::sse;
use crate::http::state::AppState;
use crate::posts::changes::Change;
use crate::posts::post::Counts;
use crate::posts::pulse::MinuteJson;
use crate::refusal::Refusal;
use crate::storage::add_counts;
use crate::storage::calendar::Day;
use crate::storage::presence::DayPresence;
use crate::storage::writer::PresenceMoved;

/// Changes written in one go when many are waiting.
const MAX_BATCH: usize = 256;
/// The day is looked at least this often, besides at the midnight the calendar expects
/// (a clock that jumps, as in tests, is noticed too).
const DAY_CHECK: Duration = Duration::from_secs(60);

/// One post as the dashboard shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Row {
    live: u64,
    total: u64,
    today: u64,
    /// Today's most readers at once: stored, then raised by the live the board sees.
    peak: u64,
    /// Today's median reading time in tenths of a second: stored, then as the writer tells
    /// it moved.
    read_median_ds: Option<u64>,
}

#[derive(serde::Serialize)]
struct SnapshotJson<'a> {
    day: String,
    posts: Vec<RowJson<'a>>,
}

#[derive(serde::Serialize)]
struct RowJson<'a> {
    slug: &'a str,
    live: u64,
    total: u64,
    today: u64,
    peak: u64,
    read_median_s: Option<f64>,
}

impl Row {
    fn json<'a>(&self, slug: &'a Slug) -> RowJson<'a> {
        RowJson {
            slug: slug.as_str(),
            live: self.live,
            total: self.total,
            today: self.today,
            peak: self.peak,
            read_median_s: self.read_median_ds.map(|ds| ds as f64 / 10.0),
        }
    }

    /// Live moved to `live`: today's peak follows it up.
    fn set_live(&mut self, live: u64) {
        self.live = live;
        self.peak = self.peak.max(live);
    }
}

/// Every post's numbers on one day.
struct Board {
    day: Day,
    posts: HashMap<Slug, Row>,
}

/// What a change does to the board.
enum Applied {
    Row(Row),
    /// Nothing the board shows moved.
    Same,
    /// The board cannot tell (a post it does not have): take a new snapshot.
    Unknown,
}

impl Board {
    /// Every post with views, every listed post, every post being read: totals and today's
    /// views read together, live from [`read_live`].
    async fn read(state: &AppState) -> Result<Self, Refusal> {
        let day = state.calendar.today();
        let (totals, today) = state
            .registry
            .writer()
            .totals_and_day(day)
            .await
            .map_err(Refusal::from)?;
        let presence = state
            .registry
            .writer()
            .day_presence(day)
            .await
            .map_err(Refusal::from)?;
        let live = read_live(state).await;
        let mut posts: HashMap<Slug, Row> = HashMap::with_capacity(totals.len());
        if let SlugPolicy::Listed(list) = &state.slugs {
            for slug in list.all().iter().filter_map(|s| Slug::parse(s).ok()) {
                posts.insert(slug, Row::default());
            }
        }
        // A post being read stays on the board even if it left the allow-list, with its
        // total: otherwise each of its broadcasts would be news, or count all-time as today.
        for (raw, total) in totals {
            match Slug::parse(&raw) {
                Ok(slug) if state.is_listed(&slug) || live.contains_key(&slug) => {
                    posts.entry(slug).or_default().total = total;
                }
                _ => {}
            }
        }
        for (raw, views) in today {
            if let Some(row) = Slug::parse(&raw).ok().and_then(|s| posts.get_mut(&s)) {
                row.today = views;
            }
        }
        for (raw, presence) in presence {
            if let Some(row) = Slug::parse(&raw).ok().and_then(|s| posts.get_mut(&s)) {
                row.peak = presence.peak.live;
                row.read_median_ds = median_ds(&presence);
            }
        }
        for (slug, live) in live {
            // Its total stays the writer's: a view counted since the writer was asked has
            // its broadcast still to come, which adds it to today as well.
            posts.entry(slug).or_default().set_live(live);
        }
        Ok(Self { day, posts })
    }

    /// Cluster mode: readers on other nodes of a post asleep here moved.
    fn apply_live(&mut self, slug: &Slug, live: u64) -> Applied {
        let Some(row) = self.posts.get_mut(slug) else {
            return Applied::Unknown;
        };
        if row.live == live {
            return Applied::Same;
        }
        row.set_live(live);
        Applied::Row(*row)
    }

    /// The writer took in a reading or a new peak of a post: its day as it stands now.
    fn apply_presence(&mut self, moved: &PresenceMoved) -> Applied {
        let row = match self.posts.get_mut(&moved.slug) {
            Some(row) if moved.day == self.day.key() => row,
            // Another day's (a reading that ended at midnight), or a post the board does not
            // show: its views bring it with a snapshot.
            _ => return Applied::Same,
        };
        let before = *row;
        row.read_median_ds = median_ds(&moved.presence);
        row.peak = row.peak.max(moved.presence.peak.live);
        if *row == before {
            Applied::Same
        } else {
            Applied::Row(*row)
        }
    }

    fn apply(&mut self, slug: &Slug, counts: Counts) -> Applied {
        let Some(row) = self.posts.get_mut(slug) else {
            return Applied::Unknown;
        };
        let before = *row;
        // Totals only grow by counting; what else moves them (an import) asks for a snapshot.
        row.today = add_counts(row.today, counts.total.saturating_sub(row.total));
        row.total = counts.total.max(row.total);
        row.set_live(counts.live);
        if *row == before {
            Applied::Same
        } else {
            Applied::Row(*row)
        }
    }

    /// `event: snapshot` with `{"day":…,"posts":[…]}`, posts by slug.
    fn event(&self) -> Bytes {
        let mut rows: Vec<RowJson<'_>> = self
            .posts
            .iter()
            .map(|(slug, row)| row.json(slug))
            .collect();
        rows.sort_unstable_by(|a, b| a.slug.cmp(b.slug));
        let mut out = BytesMut::with_capacity(64 + rows.len() * 64);
        out.put_slice(b"event: snapshot\ndata: ");
        let body = SnapshotJson {
            day: self.day.to_string(),
            posts: rows,
        };
        // Serialising plain structs into memory cannot fail.
        let _ = serde_json::to_writer((&mut out).writer(), &body);
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

/// A day's median reading time in tenths of a second (medians have one decimal).
fn median_ds(presence: &DayPresence) -> Option<u64> {
    presence.reads.median_s().map(|s| (s * 10.0).round() as u64)
}

/// Live readers per post: every awake post here (readers on other nodes included), and in
/// cluster mode the posts asleep here that other nodes' readers hold.
async fn read_live(state: &AppState) -> HashMap<Slug, u64> {
    let mut live: HashMap<Slug, u64> = (state.registry.awake_counts().await.into_iter())
        .map(|(slug, counts)| (slug, counts.live))
        .collect();
    for (slug, remote) in state.registry.remote_posts() {
        live.entry(slug).or_insert(remote);
    }
    live
}

fn row_event(out: &mut BytesMut, slug: &Slug, row: Row) {
    out.put_slice(b"data: ");
    let _ = serde_json::to_writer((&mut *out).writer(), &row.json(slug));
    out.put_slice(b"\n\n");
}

/// `event: pulse` with `{"at":…,"live":L}`: a minute of the site's pulse as it closes.
fn pulse_event(out: &mut BytesMut, state: &AppState, minute: u64, live: u64) {
    out.put_slice(b"event: pulse\ndata: ");
    let body = MinuteJson::new(&state.calendar, minute, live);
    let _ = serde_json::to_writer((&mut *out).writer(), &body);
    out.put_slice(b"\n\n");
}

/// `event: unavailable` then the end: the browser reconnects after `retry`.
fn error_event(e: &Refusal) -> Bytes {
    let body = serde_json::json!({ "error": e.to_string() });
    Bytes::from(format!("event: unavailable\ndata: {body}\n\n"))
}

/// The dashboard's first event (the reconnect delay, then the snapshot) and the rows that
/// follow it. The stream holds no place in `--max-streams` or the per-client budgets: only
/// the owner can open it, and a reader's budget should not be taken by the dashboard.
pub(crate) async fn board(
    state: &Arc<AppState>,
) -> Result<(Bytes, LocalBoxStream<'static, Bytes>), Refusal> {
    // Subscribed before the snapshot is read: nothing falls between the two.
    let feed = state.registry.changes().subscribe();
    let moves = state.registry.writer().presence_moves();
    let board = Board::read(state).await?;
    let mut first = BytesMut::new();
    first.put_slice(&sse::shared_start());
    first.put_slice(&board.event());
    let rows = AdminStream {
        state: Arc::clone(state),
        feed,
        moves,
        board,
    };
    Ok((first.freeze(), rows.into_stream()))
}

/// The board as it follows the change feed.
struct AdminStream {
    /// Where snapshots are read from.
    state: Arc<AppState>,
    /// Every post's changes, subscribed before the first snapshot was read.
    feed: broadcast::Receiver<Change>,
    /// Every post's readings and peaks as the writer takes them in, subscribed alike.
    moves: broadcast::Receiver<PresenceMoved>,
    /// What the dashboard shows now.
    board: Board,
}

/// What woke the stream.
enum Wake {
    Change(Result<Change, RecvError>),
    Presence(Result<PresenceMoved, RecvError>),
    DayCheck,
}

impl AdminStream {
    /// The rows as a stream, which holds the work under way (a snapshot being read) between
    /// polls: the stream's heartbeats and shutdown do not cut it short.
    fn into_stream(self) -> LocalBoxStream<'static, Bytes> {
        futures_util::stream::unfold(Some(self), |stream| async move {
            let mut st = stream?;
            loop {
                let day_check = st.state.calendar.until_tomorrow().unwrap_or(DAY_CHECK);
                let wake = tokio::select! {
                    biased;
                    // First: it comes in bursts at most every 50 ms (the writer's drains),
                    // so it cannot starve the feed, which a busy site keeps full.
                    moved = st.moves.recv() => Wake::Presence(moved),
                    change = st.feed.recv() => Wake::Change(change),
                    () = tokio::time::sleep(day_check.min(DAY_CHECK)) => Wake::DayCheck,
                };
                let out = match wake {
                    Wake::DayCheck if st.state.calendar.today() == st.board.day => None,
                    Wake::DayCheck => Some(st.resync().await),
                    Wake::Change(Err(RecvError::Closed))
                    | Wake::Presence(Err(RecvError::Closed)) => return None,
                    Wake::Change(first) => st.changes(first).await,
                    Wake::Presence(first) => st.presence(first).await,
                };
                match out {
                    Some(Ok(bytes)) => return Some((bytes, Some(st))),
                    // The board could not be read: say why and end; the browser comes back.
                    Some(Err(e)) => return Some((error_event(&e), None)),
                    None => continue,
                }
            }
        })
        .boxed_local()
    }

    /// A new snapshot, as its event.
    async fn resync(&mut self) -> Result<Bytes, Refusal> {
        self.board = Board::read(&self.state).await?;
        Ok(self.board.event())
    }

    /// `first` and the changes waiting behind it, as one write; `None` when nothing shown
    /// moved.
    async fn changes(
        &mut self,
        first: Result<Change, RecvError>,
    ) -> Option<Result<Bytes, Refusal>> {
        let mut resync = self.state.calendar.today() != self.board.day;
        let mut out = BytesMut::new();
        // Kept apart from the rows: a snapshot supersedes those, never a closed minute.
        let mut pulse = BytesMut::new();
        let (board, state) = (&mut self.board, &self.state);
        take_waiting(&mut self.feed, first, |change| match change {
            Ok(Change::Post(slug, counts)) if !resync => {
                let applied = board.apply(&slug, counts);
                resync = write_applied(&mut out, &slug, applied);
            }
            Ok(Change::Live(slug, live)) if !resync => {
                let applied = board.apply_live(&slug, live);
                resync = write_applied(&mut out, &slug, applied);
            }
            Ok(Change::Post(..) | Change::Live(..)) => {}
            Ok(Change::Minute { minute, live }) => pulse_event(&mut pulse, state, minute, live),
            Ok(Change::Resync) | Err(_) => resync = true,
        });
        if resync {
            // The snapshot supersedes every row written before it.
            return Some(self.resync().await.map(|snapshot| {
                pulse.put_slice(&snapshot);
                pulse.freeze()
            }));
        }
        pulse.put_slice(&out);
        (!pulse.is_empty()).then(|| Ok(pulse.freeze()))
    }

    /// `first` and the presence moves waiting behind it, as one write; `None` when nothing
    /// shown moved.
    async fn presence(
        &mut self,
        first: Result<PresenceMoved, RecvError>,
    ) -> Option<Result<Bytes, Refusal>> {
        let mut resync = self.state.calendar.today() != self.board.day;
        let mut out = BytesMut::new();
        let board = &mut self.board;
        take_waiting(&mut self.moves, first, |moved| match moved {
            Ok(moved) if !resync => {
                let applied = board.apply_presence(&moved);
                resync = write_applied(&mut out, &moved.slug, applied);
            }
            Ok(_) => {}
            Err(_) => resync = true,
        });
        if resync {
            return Some(self.resync().await);
        }
        (!out.is_empty()).then(|| Ok(out.freeze()))
    }
}

/// Gives `take` the message `first`, then those already waiting behind it in `rx`, up to
/// [`MAX_BATCH`] in all: what one write carries. A lag is given as an error; the feed closing
/// ends the batch (the stream ends at its next wait).
fn take_waiting<T: Clone>(
    rx: &mut broadcast::Receiver<T>,
    first: Result<T, RecvError>,
    mut take: impl FnMut(Result<T, RecvError>),
) {
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(item) = next.take() {
        if matches!(item, Err(RecvError::Closed)) {
            return;
        }
        take(item);
        taken += 1;
        if taken < MAX_BATCH {
            next = match rx.try_recv() {
                Ok(item) => Some(Ok(item)),
                Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                Err(TryRecvError::Empty | TryRecvError::Closed) => None,
            };
        }
    }
}

/// Writes a moved row; whether the board needs a new snapshot instead.
fn write_applied(out: &mut BytesMut, slug: &Slug, applied: Applied) -> bool {
    match applied {
        Applied::Row(row) => row_event(out, slug, row),
        Applied::Same => {}
        Applied::Unknown => return true,
    }
    false
}
