//! One actor per post that has readers: live readers, total, dedupe memory, and the coalesced
//! broadcast of `{live,total}` to every open stream of that post.
//!
//! Inputs are plain messages ([`Join`], [`Leave`], [`Depart`], [`Watch`], [`GetCounts`], and in cluster
//! mode [`RemoteLive`], [`RemoteTotal`], [`Replayed`]) and the output is a `watch` channel of
//! encoded events. Views are counted through the post's [`Counting`] port, whichever it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use crate::edge::limits::ViewCharge;
use crate::edge::reader_id::{Presence, ReaderId, ReaderKey};
use crate::edge::slug::Slug;
use crate::edge::slug_list::NewPost;
use crate::metrics::Metrics;
use crate::posts::alert_port::Alerts;
use crate::posts::changes::Changes;
use crate::posts::cluster_port::{Counting, Decision, Verdict};
use crate::posts::peaks::DayPeak;
pub use crate::posts::post_state::Counts;
use crate::posts::post_state::{Ended, PostState};
use crate::posts::pulse::Pulse;
use crate::posts::update::Update;
use crate::storage::calendar::Calendar;
use crate::storage::presence::{Peak, Reads};
use crate::storage::writer::Writer;
use crate::storage::{MAX_COUNT, add_counts};

/// Readers get at most one update per this interval; the newest state wins.
pub const MIN_BROADCAST_INTERVAL: Duration = Duration::from_millis(250);
/// A post with no readers and nothing to remember sleeps after this long.
pub const IDLE_GRACE: Duration = Duration::from_secs(5);

/// The post is going to sleep; ask the registry for a fresh actor.
#[derive(Debug, Clone, Copy)]
pub struct Asleep;

/// A stream opens.
#[derive(Clone)]
pub struct Join {
    pub id: ReaderId,
    pub presence: Presence,
    /// What a counted view is charged to; `None` when it must not count (bot).
    pub charge: Option<ViewCharge>,
    /// False for bots: they get numbers but are not live readers.
    pub is_reader: bool,
}

/// What a joining stream needs: its first numbers, the updates after them, and the guard that
/// undoes the join. The post makes the guard itself, so a join whose answer is never received
/// (the request was dropped meanwhile: a client's half-close, a timeout) is undone when the
/// answer is dropped: nothing outlives an aborted request.
pub struct Joined {
    pub counts: Counts,
    pub counted: bool,
    pub updates: watch::Receiver<Update>,
    pub departure: Departure,
}

impl Message for Join {
    type Result = Result<Joined, Asleep>;
}

/// A `sendBeacon` leave: every stream of this presence (reader id and page showing) stops
/// counting as live; other showings of the same reader id stay.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub presence: Presence,
    /// How long the page says it was visible while counted (newer scripts send it).
    pub visible: Option<Duration>,
}

/// A stream closed. `epoch` tells whether a beacon already took it off the live count.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Depart {
    presence: Presence,
    epoch: u32,
    is_reader: bool,
}

/// Tells the post when a stream (or a shared-stream membership) goes away, however it goes:
/// client close, reset, beacon followed by close, an answer never delivered, server shutdown.
pub struct Departure {
    post: Addr<Post>,
    depart: Depart,
}

impl Drop for Departure {
    fn drop(&mut self) {
        self.post.do_send(self.depart);
    }
}

/// Someone follows the post's numbers without reading it (an index page, `GET /watch`): no
/// view, no live reader. The post stays awake until the answer's [`Watcher`] is dropped.
#[derive(Debug, Clone, Copy)]
pub struct Watch;

impl Message for Watch {
    type Result = Result<Watched, Asleep>;
}

/// What a watcher gets: the post's state now, its updates from then on, and the guard that
/// lets the post sleep once nobody watches it.
pub struct Watched {
    /// The post's numbers when the watch began. Not the channel's value: between two
    /// coalesced broadcasts that is up to 250 ms older than the state (readers, too, start
    /// from the state, [`Joined::counts`]).
    pub first: Update,
    /// Marked seen as of `first`: it yields only broadcasts made after it.
    pub updates: watch::Receiver<Update>,
    pub watcher: Watcher,
}

/// Tells the post when a watcher goes, however it goes (like [`Departure`] for readers).
/// The whole site's watcher ([`crate::posts::site`]) keeps no post awake: `None`.
pub struct Watcher {
    pub(crate) post: Option<Addr<Post>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(post) = &self.post {
            post.do_send(Unwatch);
        }
    }
}

/// A watcher went away.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct Unwatch;

/// Views imported for this post (`viewcounter import`): its readers see the new total.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Imported {
    pub views: u64,
}

/// Cluster mode: the post's live readers on all other nodes together.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RemoteLive {
    pub live: u64,
}

/// Cluster mode: the post's total as Redis has it (announced by a node that counted a view).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RemoteTotal {
    pub total: u64,
}

/// Cluster mode: a view of this post from the outbox is now in Redis, whose total is `total`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Replayed {
    pub total: u64,
}

/// The current numbers, counting nothing.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Counts, Asleep>")]
pub struct GetCounts;

/// What every post needs from outside, shared by all of them: where counted views go, the
/// time, the metrics, and whom to tell that a post goes to sleep.
pub struct PostContext {
    pub writer: Writer,
    /// The time, and the days peaks are kept by.
    pub calendar: Calendar,
    pub metrics: Arc<Metrics>,
    pub dedupe_window: Duration,
    /// Every broadcast is also told here, for the owner's dashboard.
    pub changes: Changes,
    /// Every change of a post's live count, as it happens (not coalesced); it sums them
    /// for the site's pulse and peak.
    pub(crate) pulse: Arc<Pulse>,
    /// `--alert-live`: told when a post reaches that many readers.
    pub(crate) alerts: Option<Arc<dyn Alerts>>,
    /// Called by a post going to sleep, so the next reader wakes a fresh actor.
    pub asleep: Box<AsleepReport>,
    /// Where views are counted and live readers elsewhere come from: this node alone, or
    /// the cluster.
    pub counting: Arc<dyn Counting>,
}

/// A post's numbers as its counter makes them: the total is the one decided plus the views
/// counted here that the shared store has not confirmed yet; live adds the other nodes'. A
/// single node decides every view at once and has no other node: its `unconfirmed` and
/// `remote_live` stay 0.
#[derive(Debug, Default)]
struct Tally {
    /// The views decided: the post's own on a single node; in a cluster the highest total
    /// the shared store reported (totals only grow).
    total: u64,
    unconfirmed: u64,
    remote_live: u64,
    /// The local live count last given to the counter.
    reported_live: u64,
}

impl Tally {
    /// The shared store has `total` views of the post.
    fn store_said(&mut self, total: u64) {
        self.total = self.total.max(total.min(MAX_COUNT));
    }
}

/// How a post going to sleep says so (slug, its own address).
pub type AsleepReport = dyn Fn(&Slug, &Addr<Post>) + Send + Sync;

pub struct Post {
    slug: Slug,
    context: Arc<PostContext>,
    /// Its place under `--max-slugs` while it has no view (see [`NewPost`]).
    new_post: Option<NewPost>,
    state: PostState,
    updates: watch::Sender<Update>,
    last_broadcast: Option<Instant>,
    broadcast_pending: bool,
    housekeeping: Option<SpawnHandle>,
    sleeping: bool,
    tally: Tally,
    /// Today's highest live.
    peak: DayPeak,
    /// A new high of `peak` not yet told to the writer (it is told with the next broadcast).
    untold_peak: Option<Peak>,
    /// A change here raised the site's high of the day: the next broadcast takes it from the
    /// pulse (another post may have taken it first; the writer keeps the highest).
    site_peak_raised: bool,
    /// Reading times of showings ended since the last broadcast, told with it (one writer
    /// entry per broadcast, not one per reader gone): the unix second of the newest, and
    /// the readings, all of that second's minute (so of one day). Boxed, as the writer takes
    /// them: an awake post carries 16 bytes for this, not 80.
    untold_reads: Option<(u64, Box<Reads>)>,
}

impl Post {
    /// `new_post`: the `--max-slugs` place of a post with no row yet, kept once it is viewed.
    pub fn new(
        slug: Slug,
        total: u64,
        context: Arc<PostContext>,
        new_post: Option<NewPost>,
    ) -> Self {
        let state = PostState::new(context.dedupe_window);
        let tally = Tally {
            total,
            unconfirmed: context.counting.unsynced(&slug),
            remote_live: context.counting.remote_live(&slug),
            reported_live: 0,
        };
        let shown = shown(&state, &tally);
        Self {
            updates: watch::Sender::new(Update::new(&slug, shown)),
            slug,
            context,
            new_post,
            state,
            last_broadcast: None,
            broadcast_pending: false,
            housekeeping: None,
            sleeping: false,
            tally,
            peak: DayPeak::default(),
            untold_peak: None,
            site_peak_raised: false,
            untold_reads: None,
        }
    }

    /// What readers see.
    fn counts(&self) -> Counts {
        shown(&self.state, &self.tally)
    }

    /// Applies the counter's decision on a view counted here; true when it is in the total.
    fn decided(&mut self, decision: Decision) -> bool {
        let metrics = &self.context.metrics;
        let tally = &mut self.tally;
        match decision {
            Decision::Added => {
                tally.total = add_counts(tally.total, 1);
                metrics.views_counted.inc();
                true
            }
            Decision::Decided(store) => {
                tally.store_said(store.total);
                if store.counted {
                    metrics.views_counted.inc();
                } else {
                    // Counted on another node within the window.
                    metrics.views_deduplicated.inc();
                }
                store.counted
            }
            // Unconfirmed until the outbox replays it.
            Decision::Deferred => {
                tally.unconfirmed = add_counts(tally.unconfirmed, 1);
                metrics.views_counted.inc();
                true
            }
        }
    }

    /// Tells the counter this node's live count if it moved since it was last told.
    fn report_live(&mut self) {
        let live = self.state.live();
        if self.tally.reported_live != live {
            self.tally.reported_live = live;
            self.context.counting.set_local_live(&self.slug, live);
        }
    }

    /// Seeds the dedupe memory with reader ids counted before a restart: (key, unix seconds).
    pub fn remembering(mut self, mut seen: Vec<(ReaderKey, u64)>) -> Self {
        seen.sort_by_key(|&(_, at)| at);
        let (now, unix) = (Instant::now(), self.context.calendar.clock().now_unix());
        for (reader, at) in seen {
            let age = Duration::from_secs(unix.saturating_sub(at));
            self.state
                .remember(reader, now.checked_sub(age).unwrap_or(now));
        }
        self
    }

    /// Sends the new numbers now if the post has been quiet, otherwise once the interval since
    /// the last broadcast has passed; changes in between merge into that one event.
    fn changed(&mut self, ctx: &mut Context<Self>) {
        if self.broadcast_pending {
            return;
        }
        let now = Instant::now();
        let ready_at = self
            .last_broadcast
            .map_or(now, |at| at + MIN_BROADCAST_INTERVAL);
        if ready_at <= now {
            self.broadcast(now);
        } else {
            self.broadcast_pending = true;
            ctx.run_later(ready_at - now, |post, _| {
                post.broadcast_pending = false;
                post.broadcast(Instant::now());
            });
        }
    }

    /// Moves the all-posts live gauge by what this post's live did since `before`.
    fn live_moved(&mut self, before: u64) {
        let delta = self.state.live() as i64 - before as i64;
        if delta != 0 {
            self.context.metrics.readers_live.inc_by(delta);
            self.shown_live_moved(before + self.tally.remote_live);
        }
    }

    /// The live count readers see moved from `before`: the pulse hears every move, however
    /// short-lived (the coalesced broadcast may merge it away), and so do alerts and peaks.
    ///
    /// Live is then shown, so in cluster mode with the other nodes': today's peaks of the
    /// post and (through the pulse's sum) of the site rise exactly; the writer hears of them
    /// with the next broadcast ([`Post::tell_writer`]), not once per join of a wave.
    fn shown_live_moved(&mut self, before: u64) {
        let counts = self.counts();
        let context = &self.context;
        let unix = context.calendar.clock().now_unix();
        if context.pulse.set(&self.slug, counts.live, unix) {
            self.site_peak_raised = true;
        }
        if let Some(alerts) = &context.alerts
            && before < alerts.threshold()
            && counts.live >= alerts.threshold()
        {
            alerts.reached(&self.slug, counts);
        }
        if let Some(peak) = self.peak.saw(counts.live, unix, &context.calendar) {
            self.untold_peak = Some(peak);
        }
    }

    /// Tells the writer the new highs and the readings since the last broadcast.
    fn tell_writer(&mut self) {
        let context = &self.context;
        if let Some(peak) = self.untold_peak.take() {
            context.writer.raise_peak(&self.slug, peak);
        }
        if std::mem::take(&mut self.site_peak_raised)
            && let Some(peak) = context.pulse.take_new_site_peak()
        {
            context.writer.raise_site_peak(peak);
        }
        if let Some((at, reads)) = self.untold_reads.take() {
            context.writer.add_reads(&self.slug, reads, at);
        }
    }

    /// A showing stopped being live: its reading time, if it has one, goes to the day's with
    /// the next broadcast (a changed live count always makes one).
    fn ended(&mut self, ended: Ended) {
        let Some(read) = ended.read else {
            return;
        };
        let at = self.context.calendar.clock().now_unix();
        match &mut self.untold_reads {
            // Every zone's offset is whole minutes: one minute is one day.
            Some((newest, reads)) if *newest / 60 == at / 60 => {
                *newest = at;
                reads.add(read);
            }
            _ => {
                if let Some((newest, reads)) =
                    self.untold_reads.replace((at, Box::new(Reads::one(read))))
                {
                    self.context.writer.add_reads(&self.slug, reads, newest);
                }
            }
        }
    }

    fn broadcast(&mut self, now: Instant) {
        self.last_broadcast = Some(now);
        self.report_live();
        self.tell_writer();
        let counts = self.counts();
        // Encoded once; every reader's stream shares these bytes.
        self.updates.send_replace(Update::new(&self.slug, counts));
        self.context.changes.post(&self.slug, counts);
    }

    /// Arms the one timer that expires dedupe entries and puts an idle post to sleep.
    fn schedule_housekeeping(&mut self, ctx: &mut Context<Self>) {
        if self.housekeeping.is_some() {
            return;
        }
        let now = Instant::now();
        let at = match self.state.next_expiry() {
            Some(expiry) => expiry,
            None if self.state.is_idle() => now + IDLE_GRACE,
            None => return,
        };
        let handle = ctx.run_later(at.saturating_duration_since(now), |post, ctx| {
            post.housekeeping = None;
            post.state.expire(Instant::now());
            if post.state.is_idle() {
                post.sleep(ctx);
            } else {
                post.schedule_housekeeping(ctx);
            }
        });
        self.housekeeping = Some(handle);
    }

    fn sleep(&mut self, ctx: &mut Context<Self>) {
        self.sleeping = true;
        self.report_live();
        self.tell_writer();
        (self.context.asleep)(&self.slug, &ctx.address());
        // A new post never viewed (a bot, a refused view) gives its --max-slugs place back.
        self.new_post = None;
        ctx.stop();
    }
}

impl Actor for Post {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A post woken only to be counted by a bot or refused by the rate limit still sleeps.
        self.schedule_housekeeping(ctx);
    }

    /// Stopped by the system (shutdown) with a broadcast still due: what it would have told.
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.tell_writer();
    }
}

/// The numbers readers see.
fn shown(state: &PostState, tally: &Tally) -> Counts {
    Counts {
        live: state.live() + tally.remote_live,
        total: add_counts(tally.total, tally.unconfirmed),
    }
}

impl Handler<Join> for Post {
    type Result = ActorResponse<Self, Result<Joined, Asleep>>;

    /// A view this node would count goes to the counter. A single node's decides at once, and
    /// the answer is immediate, with no future boxed per join; in cluster mode Redis decides:
    /// the answer waits for it (at most `--redis-timeout`) while the post goes on with other
    /// messages.
    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) -> Self::Result {
        if self.sleeping {
            return ActorResponse::reply(Err(Asleep));
        }
        let live_before = self.state.live();
        let joined = self.state.join(
            join.presence,
            || join.charge.is_some_and(|c| c.take(&self.slug)),
            join.is_reader,
            Instant::now(),
        );
        let metrics = &self.context.metrics;
        match () {
            () if !join.is_reader => metrics.views_from_bots.inc(),
            // Counted once the counter has decided.
            () if joined.counted => 0,
            () if joined.deduplicated => metrics.views_deduplicated.inc(),
            () => metrics.views_rate_limited.inc(),
        };
        let at = self.context.calendar.clock().now_unix();
        // The total moves once the counter has decided: in a cluster it never shows a view
        // that another node already counted and then takes it back.
        let (mut counted, mut later) = (false, None);
        if joined.counted {
            match self.context.counting.count(&self.slug, join.id, at) {
                Verdict::Ready(decision) => counted = self.decided(decision),
                Verdict::Later(decision) => later = Some(decision),
            }
            if let Some(place) = self.new_post.take() {
                place.keep();
            }
        }
        self.live_moved(live_before);
        if joined.changed {
            self.changed(ctx);
        }
        self.schedule_housekeeping(ctx);
        let departure = Departure {
            post: ctx.address(),
            depart: Depart {
                presence: join.presence,
                epoch: joined.epoch,
                is_reader: join.is_reader,
            },
        };
        let Some(decision) = later else {
            return ActorResponse::reply(Ok(Joined {
                counts: self.counts(),
                counted,
                updates: self.updates.subscribe(),
                departure,
            }));
        };
        ActorResponse::r#async(decision.into_actor(self).map(move |decision, post, ctx| {
            let counted = post.decided(decision);
            post.changed(ctx);
            Ok(Joined {
                counts: post.counts(),
                counted,
                // Subscribed with its first numbers: a broadcast made while Redis decided
                // (which may take --redis-timeout) is older than them, and would follow them.
                updates: post.updates.subscribe(),
                departure,
            })
        }))
    }
}

impl Handler<RemoteLive> for Post {
    type Result = ();

    fn handle(&mut self, remote: RemoteLive, ctx: &mut Context<Self>) {
        if self.tally.remote_live != remote.live {
            let before = self.state.live() + self.tally.remote_live;
            self.tally.remote_live = remote.live;
            self.shown_live_moved(before);
            self.changed(ctx);
        }
    }
}

impl Handler<RemoteTotal> for Post {
    type Result = ();

    fn handle(&mut self, remote: RemoteTotal, ctx: &mut Context<Self>) {
        let before = self.counts();
        self.tally.store_said(remote.total);
        if self.counts() != before {
            self.changed(ctx);
        }
    }
}

impl Handler<Replayed> for Post {
    type Result = ();

    fn handle(&mut self, replayed: Replayed, ctx: &mut Context<Self>) {
        self.tally.unconfirmed = self.tally.unconfirmed.saturating_sub(1);
        self.tally.store_said(replayed.total);
        self.changed(ctx);
    }
}

impl Handler<Leave> for Post {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) {
        let live_before = self.state.live();
        let ended = self
            .state
            .leave(leave.presence, leave.visible, Instant::now());
        if ended.moved {
            self.live_moved(live_before);
            self.ended(ended);
            self.changed(ctx);
        }
    }
}

impl Handler<Depart> for Post {
    type Result = ();

    fn handle(&mut self, depart: Depart, ctx: &mut Context<Self>) {
        let live_before = self.state.live();
        let ended = self.state.depart(
            depart.presence,
            depart.epoch,
            depart.is_reader,
            Instant::now(),
        );
        if ended.moved {
            self.live_moved(live_before);
            self.ended(ended);
            self.changed(ctx);
        }
        if self.state.is_idle() {
            self.schedule_housekeeping(ctx);
        }
    }
}

impl Handler<Watch> for Post {
    type Result = Result<Watched, Asleep>;

    fn handle(&mut self, _: Watch, ctx: &mut Context<Self>) -> Self::Result {
        if self.sleeping {
            return Err(Asleep);
        }
        self.state.observe();
        Ok(Watched {
            first: Update::new(&self.slug, self.counts()),
            updates: self.updates.subscribe(),
            watcher: Watcher {
                post: Some(ctx.address()),
            },
        })
    }
}

impl Handler<Unwatch> for Post {
    type Result = ();

    fn handle(&mut self, _: Unwatch, ctx: &mut Context<Self>) {
        self.state.unobserve();
        if self.state.is_idle() {
            self.schedule_housekeeping(ctx);
        }
    }
}

impl Handler<Imported> for Post {
    type Result = ();

    fn handle(&mut self, imported: Imported, ctx: &mut Context<Self>) {
        let added = self.context.counting.imported(imported.views);
        self.tally.total = add_counts(self.tally.total, added);
        self.changed(ctx);
    }
}

impl Handler<GetCounts> for Post {
    type Result = Result<Counts, Asleep>;

    fn handle(&mut self, _: GetCounts, _: &mut Context<Self>) -> Self::Result {
        if self.sleeping {
            Err(Asleep)
        } else {
            Ok(self.counts())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use super::*;
    use crate::edge::limits::{ClientKey, ViewRate};
    use crate::posts::cluster_port::{Counted, Hearing, Served};
    use crate::storage::calendar::Clock;
    use crate::storage::store::RedbStore;
    use crate::storage::writer::{FlushPolicy, WriterError};

    /// A counter standing in for any: it keeps what the post asked of it, answers every
    /// view with `answer` (a decision at once, or one the test gives later), and says the
    /// post has `remote_live` readers on other nodes.
    struct FakeCounting {
        answer: Mutex<Option<Answer>>,
        counted: Mutex<Vec<String>>,
        local_live: Mutex<Vec<u64>>,
        remote_live: u64,
    }

    enum Answer {
        Now(Decision),
        Later(oneshot::Receiver<Decision>),
    }

    impl FakeCounting {
        fn answering(answer: Answer, remote_live: u64) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(Some(answer)),
                counted: Mutex::default(),
                local_live: Mutex::default(),
                remote_live,
            })
        }
    }

    impl Counting for FakeCounting {
        fn count(&self, _: &Slug, reader: ReaderId, _: u64) -> Verdict {
            self.counted
                .lock()
                .unwrap()
                .push(reader.as_str().to_owned());
            match self.answer.lock().unwrap().take() {
                Some(Answer::Now(decision)) => Verdict::Ready(decision),
                Some(Answer::Later(decision)) => Verdict::Later(Box::pin(async move {
                    decision.await.unwrap_or(Decision::Deferred)
                })),
                None => panic!("one view only"),
            }
        }

        fn remote_live(&self, _: &Slug) -> u64 {
            self.remote_live
        }

        fn remote_posts(&self) -> Vec<(Slug, u64)> {
            Vec::new()
        }

        fn unsynced(&self, _: &Slug) -> u64 {
            0
        }

        fn set_local_live(&self, _: &Slug, live: u64) {
            self.local_live.lock().unwrap().push(live);
        }

        fn imported(&self, views: u64) -> u64 {
            views / 2
        }

        fn unloaded(&self, _: &Slug, error: WriterError) -> Result<u64, WriterError> {
            Err(error)
        }

        fn serve<'a>(&'a self, _: Served<'a>) -> Hearing<'a> {
            Hearing::Now
        }

        fn stop_serving(&self, _: Served<'_>) {}
    }

    const READER: &str = "reader-000000000001";

    /// A post of `total` views counting through a [`FakeCounting`], its writer on a real
    /// redb file.
    struct Probe {
        post: Addr<Post>,
        counting: Arc<FakeCounting>,
        _dir: tempfile::TempDir,
    }

    impl Probe {
        fn start(total: u64, answer: Answer, remote_live: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let counting = FakeCounting::answering(answer, remote_live);
            let calendar = Calendar::new(jiff::tz::TimeZone::UTC, Clock::default());
            let metrics = Metrics::new();
            let db = RedbStore::open(&dir.path().join("views.redb")).unwrap();
            let policy = FlushPolicy {
                after: Duration::from_secs(1),
                max_wait: Duration::from_secs(5),
                dedupe_window: Duration::from_secs(1800),
            };
            let writer =
                Writer::spawn(Box::new(db), policy, calendar.clone(), Arc::clone(&metrics))
                    .unwrap();
            let context = PostContext {
                writer,
                pulse: Arc::new(Pulse::new(calendar.clone())),
                calendar,
                metrics,
                dedupe_window: policy.dedupe_window,
                changes: Changes::default(),
                alerts: None,
                asleep: Box::new(|_, _| {}),
                counting: Arc::clone(&counting) as Arc<dyn Counting>,
            };
            let slug = Slug::parse("a-post").unwrap();
            let post = Post::new(slug, total, Arc::new(context), None).start();
            Self {
                post,
                counting,
                _dir: dir,
            }
        }

        /// A reader opens a stream: its view goes to the counter.
        fn join(&self) -> impl Future<Output = Joined> + use<> {
            let id = ReaderId::parse(READER).unwrap();
            let join = Join {
                presence: Presence {
                    reader: id.key(),
                    show: 0,
                },
                id,
                charge: Some(ViewCharge {
                    rate: Arc::new(ViewRate::new(100)),
                    client: ClientKey::new([127, 0, 0, 1].into(), 64),
                }),
                is_reader: true,
            };
            let answer = self.post.send(join);
            async move { answer.await.unwrap().unwrap() }
        }

        async fn counts(&self) -> Counts {
            self.post.send(GetCounts).await.unwrap().unwrap()
        }

        async fn tell<M>(&self, message: M)
        where
            M: Message<Result = ()> + Send + 'static,
            Post: Handler<M>,
        {
            self.post.send(message).await.unwrap();
        }
    }

    #[actix_web::test]
    async fn a_view_the_counter_decides_at_once_is_in_the_readers_first_numbers() {
        let probe = Probe::start(40, Answer::Now(Decision::Added), 2);
        let joined = probe.join().await;
        assert!(joined.counted);
        assert_eq!(joined.counts, Counts { live: 3, total: 41 });
        assert_eq!(*probe.counting.counted.lock().unwrap(), [READER]);
        let told = probe.counting.local_live.lock().unwrap().clone();
        assert_eq!(told, [1], "told with the broadcast");
        // What an import adds is the counter's call.
        probe.tell(Imported { views: 10 }).await;
        assert_eq!(probe.counts().await, Counts { live: 3, total: 46 });
    }

    #[actix_web::test]
    async fn a_view_the_counter_defers_is_shown_unconfirmed_until_the_store_has_it() {
        let (decide, decision) = oneshot::channel();
        let probe = Probe::start(40, Answer::Later(decision), 0);
        let joining = probe.join();
        // The post goes on with other messages while the counter decides.
        assert_eq!(probe.counts().await, Counts { live: 1, total: 40 });
        decide.send(Decision::Deferred).unwrap();
        let joined = joining.await;
        assert!(joined.counted);
        assert_eq!(joined.counts, Counts { live: 1, total: 41 });
        // The store takes it: the same total, now confirmed, never one more.
        probe.tell(Replayed { total: 41 }).await;
        assert_eq!(probe.counts().await, Counts { live: 1, total: 41 });
        // A total the store announces that is behind the post's moves nothing.
        probe.tell(RemoteTotal { total: 12 }).await;
        assert_eq!(probe.counts().await, Counts { live: 1, total: 41 });
    }

    #[actix_web::test]
    async fn at_the_largest_count_a_view_is_still_counted_and_the_total_no_longer_moves() {
        let probe = Probe::start(MAX_COUNT, Answer::Now(Decision::Added), 0);
        let joined = probe.join().await;
        assert!(joined.counted);
        assert_eq!(joined.counts.total, MAX_COUNT);
        probe.tell(Imported { views: u64::MAX }).await;
        assert_eq!(probe.counts().await.total, MAX_COUNT);
    }

    #[actix_web::test]
    async fn a_view_the_store_found_counted_elsewhere_is_not_shown() {
        let found = Decision::Decided(Counted {
            counted: false,
            total: 50,
        });
        let probe = Probe::start(40, Answer::Now(found), 0);
        let joined = probe.join().await;
        assert!(!joined.counted);
        assert_eq!(joined.counts, Counts { live: 1, total: 50 });
    }
}
