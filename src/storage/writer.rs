//! The debounced writer: one thread that owns the [`Store`], gathers counted views as deltas
//! and commits every dirty post in one transaction once a post has been quiet for
//! `flush_after`, or `flush_max_wait` after its first unwritten view, whichever comes first.
//!
//! Store calls block, so they run here and never on the async threads. Answers to loads and
//! totals include views not yet written, so callers always see exact numbers.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use crate::edge::reader_id::{ReaderId, ReaderKey};
use crate::edge::slug::Slug;
use crate::memory::{CachedBlocks, HoldsCachedBlocks};
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::storage::calendar::{Calendar, Day};
use crate::storage::presence::{DayPresence, Peak, Reads};
use crate::storage::store::{
    Counted, DayViews, PresenceDelta, SLICE_MAX_SECS, Seen, Store, StoreError,
};
use crate::storage::{MAX_COUNT, add_counts};

/// How long a failing flush waits before it is tried again, at the least.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// How many stored totals the writer remembers for serving posts while the file cannot be read.
/// Only the most recently loaded posts: a wave of posts read once must not leave one entry
/// each behind for good, and a post read lately is the one likely to be read again.
const KNOWN_CAP: usize = 4096;

/// Expired reader ids are swept from the store at most this often, and at least once a slice
/// (a window / `SEEN_SLICES`): the sweep reads a few bytes per remembered view, and a file swept
/// once a slice holds ids at most two slices past the window.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Counted reader ids are kept in the file in slices of about a window / `SEEN_SLICES` (one
/// row per post and slice, dropped whole by the sweep once its newest view is out of the
/// window): the file holds them up to a slice longer than the window (and the sweep's
/// interval), and a flush appends to one row per post.
const SEEN_SLICES: u64 = 8;

#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub after: Duration,
    pub max_wait: Duration,
    /// How long counted reader ids are kept, so restarts keep deduplicating.
    pub dedupe_window: Duration,
}

/// Why a post is loaded: to wake it for readers (its dedupe memory comes along) or only to
/// read its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFor {
    Readers,
    Numbers,
}

/// A post as the writer knows it, unwritten views included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub total: u64,
    /// The reader ids counted within the dedupe window (as keys, unix seconds); empty for
    /// [`LoadFor::Numbers`].
    pub seen: Vec<(ReaderKey, u64)>,
    /// No row and no unwritten view: whether it may exist is for the slug admission
    /// ([`crate::edge::slug_list::Admission`]) to say.
    pub new: bool,
}

/// Counted views gather here without waking the writer; only the first view after a drain
/// sends a wake-up, and the writer drains at most every `DRAIN_EVERY`. At thousands of views
/// per second this saves a thread wake-up (two context switches) per view.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// What goes to the store through the inbox.
enum Entry {
    /// One counted view, and the key of the reader id it was counted for.
    View {
        slug: Slug,
        reader: ReaderKey,
        at: u64,
    },
    /// Views counted without a reader id to remember (cluster mode: Redis keeps the
    /// markers): `total` added to the post's total, `day`'s views to that day's.
    Added {
        slug: Slug,
        total: u64,
        day: Option<(u32, u64)>,
    },
    /// Page showings' reading times, the newest ended at `at`, all on its day (boxed: the
    /// inbox's entries stay the size of a view).
    Reads {
        slug: Slug,
        at: u64,
        reads: Box<Reads>,
    },
    /// A post reached a new high of readers at once.
    Peak { slug: Slug, peak: Peak },
    /// The whole site reached a new high of readers at once (on `day`, or on the day of its
    /// time).
    SitePeak { day: Option<u32>, peak: Peak },
    /// Presence of a post on a day that another writer took first (a node's record takes what
    /// its node's readers left): reading times added, the peak raised.
    Presence {
        slug: Slug,
        day: u32,
        presence: Box<DayPresence>,
    },
}

type Inbox = Arc<Mutex<Vec<Entry>>>;

enum Command {
    /// Views arrived in the inbox.
    Views,
    Load(Slug, LoadFor, oneshot::Sender<Result<Loaded, StoreError>>),
    Totals(oneshot::Sender<Result<Vec<(String, u64)>, StoreError>>),
    /// Empty the writer thread's allocator cache (see [`crate::memory`]).
    TakeCachedBlocks(oneshot::Sender<CachedBlocks>),
    /// A read or an import for the owner, run on the writer's state (see [`Writer::ask`]).
    Run(Box<dyn FnOnce(&mut State) + Send>),
    Shutdown(oneshot::Sender<Result<(), StoreError>>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    inbox: Inbox,
    moves: broadcast::Sender<PresenceMoved>,
}

/// Moves a slow follower of [`Writer::presence_moves`] may be behind before it is told it
/// lagged (and reads a snapshot instead).
pub const PRESENCE_FEED_CAPACITY: usize = 256;

/// A post's presence on a day moved (a reading added, a new peak): all of it as it stands
/// now, unwritten included. What the owner's dashboard follows to keep a post's median
/// reading time and peak live.
#[derive(Debug, Clone)]
pub struct PresenceMoved {
    pub slug: Slug,
    /// `YYYYMMDD`.
    pub day: u32,
    pub presence: DayPresence,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("the writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Writer {
    /// Starts the thread. `store` has been opened by the caller so that open errors surface
    /// before the server binds.
    pub fn spawn(
        mut store: Box<dyn Store>,
        policy: FlushPolicy,
        calendar: Calendar,
        metrics: Arc<Metrics>,
    ) -> Result<Self, std::io::Error> {
        let (tx, rx) = mpsc::channel();
        let inbox = Inbox::default();
        let now = calendar.clock().now_unix();
        let cutoff = now.saturating_sub(policy.dedupe_window.as_secs());
        // Nothing is older than the epoch: no sweep, and no write, for a window that long.
        if cutoff > 0
            && let Err(e) = store.forget_seen_before(cutoff)
        {
            tracing::warn!(error = %e, "cannot sweep expired reader ids");
        }
        let moves = broadcast::Sender::new(PRESENCE_FEED_CAPACITY);
        let state = State::new(
            store,
            policy,
            calendar,
            metrics,
            Arc::clone(&inbox),
            moves.clone(),
        );
        thread::Builder::new()
            .name("viewcounter-writer".into())
            .spawn(move || state.run(rx))?;
        Ok(Self { tx, inbox, moves })
    }

    /// Every post's presence as it moves from now on: at most one [`PresenceMoved`] per post
    /// and day each time the writer takes in what was counted (every 50 ms at most), sent
    /// only while someone follows.
    pub fn presence_moves(&self) -> broadcast::Receiver<PresenceMoved> {
        self.moves.subscribe()
    }

    /// Records one counted view and the reader id it was counted for; never blocks.
    pub fn add_view(&self, slug: &Slug, reader: ReaderId, at: u64) {
        self.push(Entry::View {
            slug: slug.clone(),
            // The key the post keeps (a hash of the id, tens of nanoseconds): what the file
            // keeps, 8 bytes rather than the id's string.
            reader: reader.key(),
            at,
        });
    }

    /// Records views without their reader ids: `total` more for the post, and `views` more
    /// on `day` (`YYYYMMDD`) when given; never blocks. The total and the day move apart only
    /// for an import of totals alone.
    pub fn add_counts(&self, slug: &Slug, total: u64, day: Option<(u32, u64)>) {
        self.push(Entry::Added {
            slug: slug.clone(),
            total,
            day,
        });
    }

    /// Records page showings' reading times, all ended on the day of `at` (unix seconds);
    /// never blocks.
    pub fn add_reads(&self, slug: &Slug, reads: Box<Reads>, at: u64) {
        self.push(Entry::Reads {
            slug: slug.clone(),
            at,
            reads,
        });
    }

    /// Records a post's new high of readers at once; never blocks.
    pub fn raise_peak(&self, slug: &Slug, peak: Peak) {
        self.push(Entry::Peak {
            slug: slug.clone(),
            peak,
        });
    }

    /// Records the whole site's new high of readers at once; never blocks.
    pub fn raise_site_peak(&self, peak: Peak) {
        self.push(Entry::SitePeak { day: None, peak });
    }

    /// Records the whole site's peak on `day` (`YYYYMMDD`), raised; never blocks.
    pub fn raise_site_peak_on(&self, day: u32, peak: Peak) {
        self.push(Entry::SitePeak {
            day: Some(day),
            peak,
        });
    }

    /// Records a post's presence on `day` (`YYYYMMDD`): reading times added, the peak
    /// raised; never blocks.
    pub fn add_presence(&self, slug: &Slug, day: u32, presence: DayPresence) {
        self.push(Entry::Presence {
            slug: slug.clone(),
            day,
            presence: Box::new(presence),
        });
    }

    fn push(&self, entry: Entry) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let first = inbox.is_empty();
        inbox.push(entry);
        drop(inbox);
        if first {
            // A stopped writer only happens during shutdown, after the final flush.
            let _ = self.tx.send(Command::Views);
        }
    }

    /// The post's total including unwritten views.
    pub async fn load(&self, slug: &Slug, purpose: LoadFor) -> Result<Loaded, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Load(slug.clone(), purpose, reply))?;
        Ok(rx.await.map_err(|_| WriterError::Stopped)??)
    }

    /// Every total including unwritten views, sorted by slug.
    pub async fn totals(&self) -> Result<Vec<(String, u64)>, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Totals(reply))?;
        Ok(rx.await.map_err(|_| WriterError::Stopped)??)
    }

    /// Writes everything pending and stops the thread.
    pub async fn shutdown(&self) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown(reply))?;
        Ok(rx.await.map_err(|_| WriterError::Stopped)??)
    }

    fn send(&self, cmd: Command) -> Result<(), WriterError> {
        self.tx.send(cmd).map_err(|_| WriterError::Stopped)
    }

    /// Runs `query` on the writer thread, after every view counted before it was asked.
    async fn ask<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut State) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Run(Box::new(move |state| {
            let _ = reply.send(query(state));
        })))?;
        Ok(rx.await.map_err(|_| WriterError::Stopped)??)
    }

    /// One post's views and presence on each of `days`, including unwritten ones.
    pub async fn history(
        &self,
        slug: Slug,
        days: Vec<Day>,
    ) -> Result<Vec<(u64, DayPresence)>, WriterError> {
        self.ask(move |state| state.history(&slug, &days)).await
    }

    /// Every post's presence on each of `days` merged per post (reading times added, the
    /// highest peak), including unwritten ones, sorted by slug.
    pub async fn presence_over(
        &self,
        days: Vec<Day>,
    ) -> Result<Vec<(String, DayPresence)>, WriterError> {
        self.ask(move |state| {
            let mut all: BTreeMap<String, DayPresence> = BTreeMap::new();
            for day in days {
                for (slug, p) in state.day_presence(day.key())? {
                    all.entry(slug).or_default().merge(&p);
                }
            }
            Ok(all.into_iter().collect())
        })
        .await
    }

    /// The totals of `slugs`, including unwritten views; `None` for a post with no views.
    /// Wakes no post.
    pub async fn totals_of(&self, slugs: Vec<Slug>) -> Result<Vec<Option<u64>>, WriterError> {
        self.ask(move |state| Ok(slugs.iter().map(|s| state.total_of(s)).collect()))
            .await
    }

    /// Every total and every post's views on `day` (both with unwritten views), read at one
    /// point of the writer's queue: a view counted is in both or in neither.
    pub async fn totals_and_day(&self, day: Day) -> Result<TotalsAndDay, WriterError> {
        self.ask(move |state| Ok((state.totals()?, state.day_views(day)?)))
            .await
    }

    /// All posts' views together on each of `days`, with the site's presence (every post's
    /// reading times, the site's peak), including unwritten ones.
    pub async fn history_all(
        &self,
        days: Vec<Day>,
    ) -> Result<Vec<(u64, DayPresence)>, WriterError> {
        self.ask(move |state| {
            let keys: Vec<u32> = days.iter().map(|d| d.key()).collect();
            let peaks = state.site_peaks(&keys)?;
            days.iter()
                .zip(peaks)
                .map(|(&day, peak)| {
                    let views = state.day_views(day)?;
                    let views = views.iter().fold(0, |all, (_, v)| add_counts(all, *v));
                    let mut site = DayPresence {
                        peak,
                        ..DayPresence::default()
                    };
                    for (_, p) in state.day_presence(day.key())? {
                        site.reads.merge(&p.reads);
                    }
                    Ok((views, site))
                })
                .collect()
        })
        .await
    }

    /// The presence of each (post, day `YYYYMMDD`) of `rows`, including unwritten, in order.
    pub async fn presence_of(
        &self,
        rows: Vec<(Slug, u32)>,
    ) -> Result<Vec<DayPresence>, WriterError> {
        self.ask(move |state| state.presence_of(&rows)).await
    }

    /// The site's peak on each of `days` (`YYYYMMDD`), including unwritten ones.
    pub async fn site_peaks(&self, days: Vec<u32>) -> Result<Vec<Peak>, WriterError> {
        self.ask(move |state| state.site_peaks(&days)).await
    }

    /// Every post's presence on `day`, including unwritten, sorted by slug.
    pub async fn day_presence(&self, day: Day) -> Result<Vec<(String, DayPresence)>, WriterError> {
        self.ask(move |state| state.day_presence(day.key())).await
    }

    /// Every (slug, day, presence), including unwritten, sorted by slug then day.
    pub async fn all_presence(&self) -> Result<Vec<(String, Day, DayPresence)>, WriterError> {
        self.ask(State::all_presence).await
    }

    /// Every day's site peak (day, peak), including unwritten ones, by day.
    pub async fn all_site_peaks(&self) -> Result<Vec<(Day, Peak)>, WriterError> {
        self.ask(State::all_site_peaks).await
    }

    /// Every post's views on `day`, including unwritten views, sorted by slug.
    pub async fn day_views(&self, day: Day) -> Result<Vec<(String, u64)>, WriterError> {
        self.ask(move |state| state.day_views(day)).await
    }

    /// Every total and every (slug, day, views), unwritten views included, read at one point
    /// of the writer's queue: every view recorded before it was asked is in both.
    pub async fn snapshot(
        &self,
    ) -> Result<(Vec<(String, u64)>, Vec<(String, Day, u64)>), WriterError> {
        self.ask(|state| Ok((state.totals()?, state.all_days()?)))
            .await
    }

    /// Views recorded and not yet written to the file (every post's unwritten total).
    pub async fn unwritten(&self) -> Result<u64, WriterError> {
        self.ask(|state| {
            Ok(state
                .pending
                .values()
                .fold(0, |all, p| add_counts(all, p.delta)))
        })
        .await
    }

    /// Every (slug, day, views), including unwritten views, sorted by slug then day.
    pub async fn all_days(&self) -> Result<Vec<(String, Day, u64)>, WriterError> {
        self.ask(State::all_days).await
    }

    /// Applies an import in one transaction (or only works it out, `plan.dry_run`).
    pub async fn import(&self, plan: ImportPlan) -> Result<ImportReport, WriterError> {
        self.ask(move |state| state.import(&plan)).await
    }
}

/// A reclaim after a wave of readers empties the writer thread's allocator cache too.
impl HoldsCachedBlocks for Writer {
    async fn take_cached_blocks(&self) -> Option<CachedBlocks> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::TakeCachedBlocks(reply)).ok()?;
        rx.await.ok()
    }
}

/// Every (slug, total), then every (slug, views on the day asked), each sorted by slug.
pub type TotalsAndDay = (Vec<(String, u64)>, Vec<(String, u64)>);

/// How imported numbers meet the ones already counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// A post's total (and each day) becomes the file's, never lower than already counted.
    Set,
    /// The file's numbers are added.
    Add,
}

impl ImportMode {
    /// A count after the file's number `file` met the one counted so far, `before`: never
    /// lower than `before`, never above [`MAX_COUNT`].
    fn apply(self, before: u64, file: u64) -> u64 {
        match self {
            Self::Set => before.max(file).min(MAX_COUNT),
            Self::Add => add_counts(before, file),
        }
    }

    /// What to merge into `before` (reading times add up, the peak is raised) for a day's
    /// presence to meet the file's `file`; nothing (the default) when it would not change.
    fn apply_presence(self, before: &DayPresence, file: &DayPresence) -> DayPresence {
        let mut delta = DayPresence::default();
        match self {
            Self::Add => delta.reads = file.reads,
            Self::Set => {
                let buckets = before.reads.buckets.iter().zip(&file.reads.buckets);
                for (d, (&b, &f)) in delta.reads.buckets.iter_mut().zip(buckets) {
                    *d = f.saturating_sub(b);
                }
                delta.reads.sum_ms = file.reads.sum_ms.saturating_sub(before.reads.sum_ms);
            }
        }
        let mut raised = before.peak;
        raised.raise(file.peak);
        if raised != before.peak {
            delta.peak = file.peak;
        }
        delta
    }
}

/// What to import: totals and views per day, by post.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub totals: BTreeMap<Slug, u64>,
    pub days: BTreeMap<(Slug, Day), u64>,
    /// Reading times and peaks per post and day: added (`add`) or raised to the file's
    /// (`set`, bucket by bucket, never lower), the peak the higher either way.
    pub presence: BTreeMap<(Slug, Day), DayPresence>,
    /// The whole site's peak per day: raised to the file's, in either mode.
    pub site_peaks: BTreeMap<Day, Peak>,
    pub mode: ImportMode,
    pub dry_run: bool,
}

/// What an import changed (or would change).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    /// Posts whose total moves: (slug, before, after).
    pub changed: Vec<(String, u64, u64)>,
    /// Posts in the file whose total stays.
    pub unchanged: usize,
    /// Views added to days (at most [`MAX_COUNT`]).
    pub day_views: u64,
    /// Post-days whose reading times or peak changed.
    #[serde(default)]
    pub day_presence: usize,
    /// Days whose site peak was raised.
    #[serde(default)]
    pub site_peaks: usize,
    pub written: bool,
}

/// The stored totals of about the last `KNOWN_CAP` posts loaded, in two generations: new
/// entries go into `recent`; when it is full, it becomes `older` and the previous `older` is
/// dropped whole. A lookup in `older` moves the entry back to `recent`. That is least recently
/// used eviction at the granularity of a generation, with no per-entry bookkeeping, and memory
/// that is freed in one go rather than kept at the peak.
///
/// Entries are keyed by a 128-bit keyed hash of the slug rather than a copy of it: a wave of
/// posts would otherwise leave thousands of small key allocations scattered over the writer's
/// heap, each pinning a page. Two slugs share a key with probability about n²/2¹²⁹ (1e-31
/// for 4,096 posts); the cost of one would be a wrong total served during a disk fault.
struct Known {
    hashers: (RandomState, RandomState),
    recent: HashMap<(u64, u64), u64>,
    older: HashMap<(u64, u64), u64>,
}

impl Default for Known {
    fn default() -> Self {
        Self {
            hashers: (RandomState::new(), RandomState::new()),
            recent: HashMap::new(),
            older: HashMap::new(),
        }
    }
}

impl Known {
    fn key(&self, slug: &str) -> (u64, u64) {
        (self.hashers.0.hash_one(slug), self.hashers.1.hash_one(slug))
    }

    fn insert(&mut self, slug: &str, total: u64) {
        let key = self.key(slug);
        self.insert_key(key, total);
    }

    fn insert_key(&mut self, key: (u64, u64), total: u64) {
        if let Some(t) = self.recent.get_mut(&key) {
            *t = total;
            return;
        }
        self.older.remove(&key);
        if self.recent.len() >= KNOWN_CAP / 2 {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(key, total);
    }

    fn get(&mut self, slug: &str) -> Option<u64> {
        let key = self.key(slug);
        if let Some(&t) = self.recent.get(&key) {
            return Some(t);
        }
        let total = self.older.get(&key).copied()?;
        self.insert_key(key, total);
        Some(total)
    }

    /// Views written for a post: its remembered total, if any, follows the file.
    fn add(&mut self, slug: &str, delta: u64) {
        let key = self.key(slug);
        if let Some(t) = self
            .recent
            .get_mut(&key)
            .or_else(|| self.older.get_mut(&key))
        {
            *t = add_counts(*t, delta);
        }
    }
}

/// Views (and presence) of one post not yet written.
struct Pending {
    /// Reading times and peaks by day, nearly always one entry.
    presence: Vec<(u32, DayPresence)>,
    delta: u64,
    /// The same views by day (`YYYYMMDD`), in the order they were counted: nearly always one
    /// entry, two around midnight.
    days: Vec<(u32, u64)>,
    /// Reader ids counted with them, by slice (start in unix seconds): nearly always one.
    seen: Vec<(u64, Vec<Counted>)>,
    first: Instant,
    last: Instant,
}

struct State {
    store: Box<dyn Store>,
    policy: FlushPolicy,
    /// Which day a view is counted on, and the time.
    calendar: Calendar,
    /// The last (unix minute, day) looked up, see [`State::day_of`].
    last_day: Option<(u64, u32)>,
    metrics: Arc<Metrics>,
    pending: HashMap<Slug, Pending>,
    /// The site's peaks by day not yet written.
    site_pending: Vec<(u32, Peak)>,
    /// Stored totals of the posts loaded most recently: what loads answer while the file
    /// cannot be read (a disk gone read-only), so those posts keep being served.
    known: Known,
    /// When to look at the pending set again; never later than the earliest due flush.
    wake: Option<Instant>,
    inbox: Inbox,
    /// Where moved presence is told ([`Writer::presence_moves`]).
    moves: broadcast::Sender<PresenceMoved>,
    /// When the inbox is to be drained next, if it has views.
    drain_at: Option<Instant>,
    last_drain: Instant,
    last_failure_log: Option<Instant>,
    last_sweep: Instant,
}

impl State {
    fn new(
        store: Box<dyn Store>,
        policy: FlushPolicy,
        calendar: Calendar,
        metrics: Arc<Metrics>,
        inbox: Inbox,
        moves: broadcast::Sender<PresenceMoved>,
    ) -> Self {
        Self {
            store,
            policy,
            calendar,
            last_day: None,
            metrics,
            pending: HashMap::new(),
            site_pending: Vec::new(),
            known: Known::default(),
            wake: None,
            inbox,
            moves,
            drain_at: None,
            last_drain: Instant::now(),
            last_failure_log: None,
            last_sweep: Instant::now(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let next = match (self.wake, self.drain_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match next {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(Command::Views) => {
                    // Let more views gather before draining.
                    self.drain_at = Some(Instant::now().max(self.last_drain + DRAIN_EVERY));
                }
                Ok(Command::Shutdown(reply)) => {
                    self.drain();
                    let flushed = self.flush();
                    // Close the file before answering, so a process exiting right after
                    // leaves it cleanly closed.
                    drop(self);
                    let _ = reply.send(flushed);
                    return;
                }
                Ok(cmd) => {
                    // Loads and totals must see every view counted before they were asked.
                    self.drain();
                    self.handle(cmd);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.drain_at.is_some_and(|at| at <= Instant::now()) {
                        self.drain();
                    }
                    if self.wake.is_some_and(|at| at <= Instant::now()) {
                        self.on_wake();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.drain();
                    // Every handle is gone without a shutdown: still write what we have.
                    if let Err(e) = self.flush() {
                        tracing::error!(error = %e, "final flush failed");
                    }
                    return;
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Views => {}
            Command::Load(slug, purpose, reply) => {
                let _ = reply.send(self.load(&slug, purpose));
            }
            Command::Totals(reply) => {
                let _ = reply.send(self.totals());
            }
            Command::TakeCachedBlocks(reply) => {
                let _ = reply.send(CachedBlocks::take());
            }
            Command::Run(query) => query(self),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Moves the inbox's views into the pending set.
    fn drain(&mut self) {
        self.drain_at = None;
        self.last_drain = Instant::now();
        let entries =
            std::mem::take(&mut *self.inbox.lock().unwrap_or_else(PoisonError::into_inner));
        // Posts whose presence moved, told once each below; nothing is kept without a follower.
        let follow = self.moves.receiver_count() > 0;
        let mut moved = Vec::new();
        for entry in entries {
            match entry {
                Entry::View { slug, reader, at } => self.add(slug, reader, at),
                Entry::Added { slug, total, day } => {
                    let p = self.pending_of(slug);
                    p.delta = add_counts(p.delta, total);
                    if let Some((day, views)) = day {
                        match p.days.iter_mut().find(|(d, _)| *d == day) {
                            Some((_, v)) => *v = add_counts(*v, views),
                            None => p.days.push((day, views)),
                        }
                    }
                }
                Entry::Reads { slug, at, reads } => {
                    let day = self.day_of(at);
                    if follow {
                        moved.push((slug.clone(), day));
                    }
                    self.pending_presence(slug, day, |p| p.reads.merge(&reads));
                }
                Entry::Peak { slug, peak } => {
                    let day = self.day_of(peak.at);
                    if follow {
                        moved.push((slug.clone(), day));
                    }
                    self.pending_presence(slug, day, |p| p.peak.raise(peak));
                }
                Entry::Presence {
                    slug,
                    day,
                    presence,
                } => {
                    if follow {
                        moved.push((slug.clone(), day));
                    }
                    self.pending_presence(slug, day, |p| p.merge(&presence));
                }
                Entry::SitePeak { day, peak } => {
                    let day = day.unwrap_or_else(|| self.day_of(peak.at));
                    match self.site_pending.iter_mut().find(|(d, _)| *d == day) {
                        Some((_, p)) => p.raise(peak),
                        None => self.site_pending.push((day, peak)),
                    }
                    // Written with the next flush; due like a post's first change.
                    self.due_by(Instant::now() + self.policy.after);
                }
            }
        }
        self.tell_moved(moved);
    }

    /// Tells each post's presence on each day in `moved` as it stands now (stored and
    /// unwritten together), read in one go: in cluster mode the store is Redis, and this
    /// thread also loads the posts being woken.
    fn tell_moved(&mut self, mut moved: Vec<(Slug, u32)>) {
        if moved.is_empty() {
            return;
        }
        moved.sort_unstable();
        moved.dedup();
        let presence = match self.presence_of(&moved) {
            Ok(presence) => presence,
            // The dashboard keeps the rows it shows until its next snapshot.
            Err(e) => {
                tracing::debug!(error = %e, "cannot read presence to tell");
                return;
            }
        };
        for ((slug, day), presence) in moved.into_iter().zip(presence) {
            // Nobody following any more is not an error.
            let _ = self.moves.send(PresenceMoved {
                slug,
                day,
                presence,
            });
        }
    }

    fn add(&mut self, slug: Slug, reader: ReaderKey, at: u64) {
        let day = self.day_of(at);
        let length = (self.policy.dedupe_window.as_secs() / SEEN_SLICES).clamp(1, SLICE_MAX_SECS);
        let start = at - at % length;
        // Below `length`, itself at most SLICE_MAX_SECS (u16::MAX).
        let counted = Counted::new(reader, (at - start) as u16);
        let p = self.pending_of(slug);
        p.delta = add_counts(p.delta, 1);
        match p.days.last_mut() {
            Some((d, views)) if *d == day => *views = add_counts(*views, 1),
            _ => p.days.push((day, 1)),
        }
        match p.seen.iter_mut().find(|(s, _)| *s == start) {
            Some((_, readers)) => readers.push(counted),
            None => p.seen.push((start, vec![counted])),
        }
    }

    /// Changes the post's unwritten presence on `day`.
    fn pending_presence(&mut self, slug: Slug, day: u32, change: impl FnOnce(&mut DayPresence)) {
        let p = self.pending_of(slug);
        match p.presence.iter_mut().find(|(d, _)| *d == day) {
            Some((_, presence)) => change(presence),
            None => {
                let mut presence = DayPresence::default();
                change(&mut presence);
                p.presence.push((day, presence));
            }
        }
    }

    /// The post's unwritten changes, marked as changed now.
    fn pending_of(&mut self, slug: Slug) -> &mut Pending {
        let now = Instant::now();
        if !self.pending.contains_key(&slug) {
            // A new entry is due no later than `after` from now; older entries keep their own
            // (earlier or equal) deadlines, so the wake-up stays a lower bound.
            self.due_by(now + self.policy.after);
        }
        let p = self.pending.entry(slug).or_insert_with(|| Pending {
            presence: Vec::new(),
            delta: 0,
            days: Vec::new(),
            seen: Vec::new(),
            first: now,
            last: now,
        });
        p.last = now;
        p
    }

    fn due_by(&mut self, due: Instant) {
        self.wake = Some(self.wake.map_or(due, |w| w.min(due)));
    }

    /// The day (`YYYYMMDD`) of a view counted at `at`, remembered per minute: every time zone's
    /// offset is whole minutes, so a day never changes within one, and a burst of views costs
    /// one time-zone lookup a minute rather than one each.
    fn day_of(&mut self, at: u64) -> u32 {
        let minute = at / 60;
        match self.last_day {
            Some((m, day)) if m == minute => day,
            _ => {
                let day = self.calendar.day_of(at).key();
                self.last_day = Some((minute, day));
                day
            }
        }
    }

    fn load(&mut self, slug: &Slug, purpose: LoadFor) -> Result<Loaded, StoreError> {
        let stored = match self.store.load(slug.as_str()) {
            Ok(stored) => {
                // Posts woken for readers are remembered, with 0 when they have no row yet.
                if stored.is_some() || purpose == LoadFor::Readers {
                    self.known.insert(slug.as_str(), stored.unwrap_or(0));
                }
                stored
            }
            // A failing read is no new post: the total remembered, or an error.
            Err(e) => match self.known.get(slug.as_str()) {
                Some(total) => Some(total),
                None => return Err(e),
            },
        };
        // Presence alone (a reader of a post counted before a restart) makes no view.
        let pending = self.pending.get(slug).map(|p| p.delta).filter(|&d| d > 0);
        let new = stored.is_none() && pending.is_none();
        let total = add_counts(stored.unwrap_or(0), pending.unwrap_or(0));
        if new || purpose == LoadFor::Numbers {
            return Ok(Loaded {
                total,
                seen: Vec::new(),
                new,
            });
        }
        let since = self
            .calendar
            .clock()
            .now_unix()
            .saturating_sub(self.policy.dedupe_window.as_secs());
        // Without the file, the dedupe memory of a restart is lost; the post is still served.
        let mut seen = self.store.seen(slug.as_str(), since).unwrap_or_default();
        if let Some(p) = self.pending.get(slug) {
            for (start, readers) in &p.seen {
                seen.extend(
                    readers
                        .iter()
                        .map(|c| (c.reader(), start + u64::from(c.after()))),
                );
            }
        }
        Ok(Loaded { total, seen, new })
    }

    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut all: BTreeMap<String, u64> = self.store.totals()?.into_iter().collect();
        for (slug, p) in &self.pending {
            let total = all.entry(slug.as_str().to_owned()).or_default();
            *total = add_counts(*total, p.delta);
        }
        Ok(all.into_iter().collect())
    }

    /// A post's total with its unwritten views; `None` when it has neither. While the file
    /// cannot be read, the total remembered from its last load.
    fn total_of(&mut self, slug: &Slug) -> Option<u64> {
        let stored = match self.store.load(slug.as_str()) {
            Ok(stored) => stored,
            Err(_) => self.known.get(slug.as_str()),
        };
        let pending = self.pending.get(slug).map(|p| p.delta).filter(|&d| d > 0);
        match (stored, pending) {
            (None, None) => None,
            (a, b) => Some(add_counts(a.unwrap_or(0), b.unwrap_or(0))),
        }
    }

    fn pending_on(&self, slug: &Slug, day: u32) -> u64 {
        self.pending.get(slug).map_or(0, |p| {
            p.days
                .iter()
                .filter(|(d, _)| *d == day)
                .fold(0, |all, (_, v)| add_counts(all, *v))
        })
    }

    /// The presence of each (post, day) of `rows`, stored and unwritten together, in order.
    fn presence_of(&mut self, rows: &[(Slug, u32)]) -> Result<Vec<DayPresence>, StoreError> {
        let keys: Vec<(&str, u32)> = rows.iter().map(|(s, d)| (s.as_str(), *d)).collect();
        let mut all = self.store.presence_of(&keys)?;
        for ((slug, day), presence) in rows.iter().zip(&mut all) {
            if let Some(pending) = self.pending_presence_on(slug, *day) {
                presence.merge(pending);
            }
        }
        Ok(all)
    }

    /// The post's unwritten presence on `day`.
    fn pending_presence_on(&self, slug: &Slug, day: u32) -> Option<&DayPresence> {
        let p = self.pending.get(slug)?;
        p.presence
            .iter()
            .find_map(|(d, presence)| (*d == day).then_some(presence))
    }

    fn history(
        &mut self,
        slug: &Slug,
        days: &[Day],
    ) -> Result<Vec<(u64, DayPresence)>, StoreError> {
        let keys: Vec<u32> = days.iter().map(|d| d.key()).collect();
        let stored = self.store.days_of(slug.as_str(), &keys)?;
        let rows: Vec<(&str, u32)> = keys.iter().map(|&day| (slug.as_str(), day)).collect();
        let presence = self.store.presence_of(&rows)?;
        Ok(keys
            .iter()
            .zip(stored.into_iter().zip(presence))
            .map(|(&day, (views, mut presence))| {
                if let Some(p) = self.pending_presence_on(slug, day) {
                    presence.merge(p);
                }
                (add_counts(views, self.pending_on(slug, day)), presence)
            })
            .collect())
    }

    fn day_presence(&mut self, day: u32) -> Result<Vec<(String, DayPresence)>, StoreError> {
        let mut all: BTreeMap<String, DayPresence> =
            self.store.day_presence(day)?.into_iter().collect();
        for (slug, p) in &self.pending {
            if let Some((_, presence)) = p.presence.iter().find(|(d, _)| *d == day) {
                all.entry(slug.as_str().to_owned())
                    .or_default()
                    .merge(presence);
            }
        }
        Ok(all.into_iter().collect())
    }

    fn site_peaks(&mut self, days: &[u32]) -> Result<Vec<Peak>, StoreError> {
        let mut peaks = self.store.site_peaks(days)?;
        for (day, peak) in days.iter().zip(&mut peaks) {
            for (d, pending) in &self.site_pending {
                if d == day {
                    peak.raise(*pending);
                }
            }
        }
        Ok(peaks)
    }

    fn all_site_peaks(&mut self) -> Result<Vec<(Day, Peak)>, StoreError> {
        let mut all: BTreeMap<u32, Peak> = self.store.all_site_peaks()?.into_iter().collect();
        for &(day, pending) in &self.site_pending {
            all.entry(day).or_default().raise(pending);
        }
        Ok(all
            .into_iter()
            .filter_map(|(day, peak)| Some((Day::from_key(day)?, peak)))
            .collect())
    }

    fn all_presence(&mut self) -> Result<Vec<(String, Day, DayPresence)>, StoreError> {
        let mut all: BTreeMap<(String, u32), DayPresence> = self
            .store
            .all_presence()?
            .into_iter()
            .map(|(slug, day, p)| ((slug, day), p))
            .collect();
        for (slug, p) in &self.pending {
            for (day, presence) in &p.presence {
                all.entry((slug.as_str().to_owned(), *day))
                    .or_default()
                    .merge(presence);
            }
        }
        Ok(all
            .into_iter()
            .filter_map(|((slug, day), p)| Some((slug, Day::from_key(day)?, p)))
            .collect())
    }

    fn day_views(&mut self, day: Day) -> Result<Vec<(String, u64)>, StoreError> {
        let key = day.key();
        let mut all: BTreeMap<String, u64> = self.store.day(key)?.into_iter().collect();
        for slug in self.pending.keys() {
            let views = self.pending_on(slug, key);
            if views > 0 {
                let all = all.entry(slug.as_str().to_owned()).or_default();
                *all = add_counts(*all, views);
            }
        }
        Ok(all.into_iter().collect())
    }

    fn all_days(&mut self) -> Result<Vec<(String, Day, u64)>, StoreError> {
        let mut all: BTreeMap<(String, u32), u64> = self
            .store
            .all_days()?
            .into_iter()
            .map(|(slug, day, views)| ((slug, day), views))
            .collect();
        for (slug, p) in &self.pending {
            for &(day, views) in &p.days {
                let all = all.entry((slug.as_str().to_owned(), day)).or_default();
                *all = add_counts(*all, views);
            }
        }
        Ok(all
            .into_iter()
            .filter_map(|((slug, day), views)| Some((slug, Day::from_key(day)?, views)))
            .collect())
    }

    /// Works out the deltas an import means against the numbers counted so far (unwritten
    /// views included) and, unless it is a dry run, writes them in one transaction.
    fn import(&mut self, plan: &ImportPlan) -> Result<ImportReport, StoreError> {
        let mut report = ImportReport::default();
        let mut totals = Vec::new();
        for (slug, &file) in &plan.totals {
            let stored = self.store.load(slug.as_str())?.unwrap_or(0);
            let before = add_counts(stored, self.pending.get(slug).map_or(0, |p| p.delta));
            let after = plan.mode.apply(before, file);
            if after == before {
                report.unchanged += 1;
            } else {
                report
                    .changed
                    .push((slug.as_str().to_owned(), before, after));
                totals.push((slug.as_str(), after - before));
            }
        }
        let mut days = Vec::new();
        for ((slug, day), &file) in &plan.days {
            let key = day.key();
            let stored = self.store.days_of(slug.as_str(), &[key])?[0];
            let before = add_counts(stored, self.pending_on(slug, key));
            let views = plan.mode.apply(before, file) - before;
            if views > 0 {
                report.day_views = add_counts(report.day_views, views);
                days.push(DayViews {
                    slug: slug.as_str(),
                    day: key,
                    views,
                });
            }
        }
        let rows: Vec<(Slug, u32)> = (plan.presence.keys())
            .map(|(slug, day)| (slug.clone(), day.key()))
            .collect();
        let stood = self.presence_of(&rows)?;
        let mut presence = Vec::new();
        for (((slug, day), file), before) in plan.presence.iter().zip(stood) {
            let key = day.key();
            let delta = plan.mode.apply_presence(&before, file);
            if delta != DayPresence::default() {
                report.day_presence += 1;
                presence.push(PresenceDelta {
                    slug: slug.as_str(),
                    day: key,
                    presence: delta,
                });
            }
        }
        let mut site = Vec::new();
        for (day, &file) in &plan.site_peaks {
            let key = day.key();
            let before = self.site_peaks(&[key])?[0];
            let mut raised = before;
            raised.raise(file);
            if raised != before {
                report.site_peaks += 1;
                site.push((key, file));
            }
        }
        let nothing = totals.is_empty() && days.is_empty() && presence.is_empty();
        if plan.dry_run || (nothing && site.is_empty()) {
            return Ok(report);
        }
        self.store.add_all(&totals, &days, &[], &presence, &site)?;
        for &(slug, delta) in &totals {
            self.known.add(slug, delta);
        }
        report.written = true;
        Ok(report)
    }

    fn due(&self, p: &Pending) -> Instant {
        (p.last + self.policy.after).min(p.first + self.policy.max_wait)
    }

    fn on_wake(&mut self) {
        let now = Instant::now();
        let site_due = (!self.site_pending.is_empty()).then_some(now);
        let earliest = self
            .pending
            .values()
            .map(|p| self.due(p))
            .chain(site_due)
            .min();
        match earliest {
            None => self.wake = None,
            Some(due) if due > now => self.wake = Some(due),
            Some(_) => match self.flush() {
                Ok(()) => self.wake = None,
                Err(e) => {
                    self.log_failure(&e, now);
                    self.wake = Some(now + self.policy.after.max(MIN_RETRY));
                }
            },
        }
    }

    /// One write transaction for every dirty post; on failure nothing is forgotten.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() && self.site_pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<(&str, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.delta > 0)
            .map(|(slug, p)| (slug.as_str(), p.delta))
            .collect();
        let presence: Vec<PresenceDelta<'_>> = self
            .pending
            .iter()
            .flat_map(|(slug, p)| {
                p.presence.iter().map(|&(day, presence)| PresenceDelta {
                    slug: slug.as_str(),
                    day,
                    presence,
                })
            })
            .collect();
        let seen: Vec<Seen<'_>> = self
            .pending
            .iter()
            .flat_map(|(slug, p)| {
                p.seen.iter().map(|(start, readers)| Seen {
                    slug: slug.as_str(),
                    start: *start,
                    readers,
                })
            })
            .collect();
        let days: Vec<DayViews<'_>> = self
            .pending
            .iter()
            .flat_map(|(slug, p)| {
                p.days.iter().map(|&(day, views)| DayViews {
                    slug: slug.as_str(),
                    day,
                    views,
                })
            })
            .collect();
        let flushing = Instant::now();
        let written = self
            .store
            .add_all(&batch, &days, &seen, &presence, &self.site_pending);
        self.metrics.flushed(flushing.elapsed(), written.is_ok());
        written?;
        for (slug, p) in &self.pending {
            self.known.add(slug.as_str(), p.delta);
        }
        tracing::debug!(posts = batch.len(), "flushed totals");
        // A fresh map rather than clear(): after a spike of posts the old one keeps its size.
        self.pending = HashMap::new();
        self.site_pending = Vec::new();
        if self.last_failure_log.take().is_some() {
            tracing::info!("writing totals works again; nothing was lost");
        }
        self.sweep_expired_ids();
        Ok(())
    }

    /// Forgets reader ids older than the dedupe window, every `SWEEP_EVERY` or slice.
    fn sweep_expired_ids(&mut self) {
        // Slices are whole seconds (at least one): a sweep more often frees nothing more,
        // and each is a write transaction of its own (a short window would double the fsyncs).
        let slice = (self.policy.dedupe_window / SEEN_SLICES as u32).max(Duration::from_secs(1));
        if self.last_sweep.elapsed() < SWEEP_EVERY.min(slice) {
            return;
        }
        self.last_sweep = Instant::now();
        let cutoff = self
            .calendar
            .clock()
            .now_unix()
            .saturating_sub(self.policy.dedupe_window.as_secs());
        if let Err(e) = self.store.forget_seen_before(cutoff) {
            tracing::warn!(error = %e, "cannot sweep expired reader ids");
        }
    }

    /// Logs a failing flush at most once per `max_wait`, so a full disk does not flood logs.
    fn log_failure(&mut self, e: &StoreError, now: Instant) {
        let quiet = self
            .last_failure_log
            .is_none_or(|at| now.duration_since(at) >= self.policy.max_wait);
        if quiet {
            tracing::error!(error = %e, pending_posts = self.pending.len(), "cannot write totals; keeping them in memory and retrying");
            self.last_failure_log = Some(now);
        }
    }
}

/// A failure of the writer or its store, as a request's answer: 503 while the disk is
/// unreadable (the writer logs the cause, throttled), 500 otherwise.
impl From<WriterError> for Refusal {
    fn from(e: WriterError) -> Self {
        match e {
            WriterError::Store(StoreError::Storage(cause) | StoreError::Lost(cause)) => {
                tracing::debug!(%cause, "storage unavailable");
                Self::StorageUnavailable
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_totals_keep_the_recently_loaded_posts_and_forget_the_rest() {
        let mut known = Known::default();
        known.insert("first", 7);
        // Keep `first` in use while a wave of other posts goes by: it stays.
        for i in 0..KNOWN_CAP * 2 {
            known.insert(&format!("post-{i}"), 1);
            if i % (KNOWN_CAP / 4) == 0 {
                assert_eq!(known.get("first"), Some(7), "after {i} posts");
            }
        }
        known.add("first", 3);
        assert_eq!(known.get("first"), Some(10));
        // A post loaded once, two generations ago, is gone; the memory is bounded.
        assert_eq!(known.get("post-0"), None);
        assert_eq!(known.get(&format!("post-{}", KNOWN_CAP * 2 - 1)), Some(1));
        assert!(known.recent.len() + known.older.len() <= KNOWN_CAP);
    }
}
