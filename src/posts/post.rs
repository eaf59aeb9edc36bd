//! One actor per post that has readers: live readers, total, dedupe memory, and the coalesced
//! broadcast of `{live,total}` to every open stream of that post.
//!
//! Inputs are plain messages ([`Join`], [`Leave`], [`Depart`], [`Watch`], [`GetCounts`], and in cluster
//! mode [`RemoteLive`], [`RemoteTotal`], [`Replayed`]) and the output is a `watch` channel of
//! encoded events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use crate::edge::limits::ViewCharge;
use crate::edge::reader_id::{Presence, ReaderId};
use crate::edge::slug::Slug;
use crate::edge::slug_list::NewPost;
use crate::metrics::Metrics;
use crate::posts::alert_port::Alerts;
use crate::posts::changes::Changes;
use crate::posts::cluster_port::{Counting, Decision};
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
    /// Cluster mode: where views are counted and live readers are merged.
    pub cluster: Option<Arc<dyn Counting>>,
}

/// A post's numbers in cluster mode: the total is Redis's plus the views counted here that
/// Redis does not have yet (the outbox); live adds the other nodes'.
#[derive(Debug, Default)]
struct Merged {
    /// The highest total Redis reported (totals only grow).
    redis_total: u64,
    unconfirmed: u64,
    remote_live: u64,
    /// The local live count last given to the cluster.
    reported_live: u64,
}

impl Merged {
    fn redis_said(&mut self, total: u64) {
        self.redis_total = self.redis_total.max(total.min(MAX_COUNT));
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
    /// `Some` in cluster mode.
    merged: Option<Merged>,
    /// Today's highest live.
    peak: DayPeak,
    /// A new high of `peak` not yet told to the writer (it is told with the next broadcast).
    untold_peak: Option<Peak>,
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
        let state = PostState::new(total, context.dedupe_window);
        let merged = context.cluster.as_ref().map(|cluster| Merged {
            redis_total: total,
            unconfirmed: cluster.unsynced(&slug),
            remote_live: cluster.remote_live(&slug),
            reported_live: 0,
        });
        let shown = shown(&state, merged.as_ref());
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
            merged,
            peak: DayPeak::default(),
            untold_peak: None,
            untold_reads: None,
        }
    }

    /// What readers see.
    fn counts(&self) -> Counts {
        shown(&self.state, self.merged.as_ref())
    }

    /// Applies Redis's decision on a view counted here; true when it is in the total.
    fn decided(&mut self, decision: Decision) -> bool {
        let metrics = &self.context.metrics;
        let Some(merged) = self.merged.as_mut() else {
            return false;
        };
        match decision {
            Decision::Decided(redis) => {
                merged.redis_said(redis.total);
                if redis.counted {
                    metrics.views_counted.inc();
                } else {
                    // Counted on another node within the window.
                    metrics.views_deduplicated.inc();
                }
                redis.counted
            }
            // Unconfirmed until the outbox replays it.
            Decision::Deferred => {
                merged.unconfirmed = add_counts(merged.unconfirmed, 1);
                metrics.views_counted.inc();
                true
            }
        }
    }

    /// Tells the cluster this node's live count if it moved since it was last told.
    fn report_live(&mut self) {
        let live = self.state.counts().live;
        if let (Some(cluster), Some(merged)) = (&self.context.cluster, self.merged.as_mut())
            && merged.reported_live != live
        {
            merged.reported_live = live;
            cluster.set_local_live(&self.slug, live);
        }
    }

    /// Seeds the dedupe memory with reader ids counted before a restart: (id, unix seconds).
    pub fn remembering(mut self, mut seen: Vec<(String, u64)>) -> Self {
        seen.sort_by_key(|&(_, at)| at);
        let (now, unix) = (Instant::now(), self.context.calendar.clock().now_unix());
        for (id, at) in seen {
            let Ok(id) = ReaderId::parse(&id) else {
                continue;
            };
            let age = Duration::from_secs(unix.saturating_sub(at));
            self.state
                .remember(id.key(), now.checked_sub(age).unwrap_or(now));
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
        let delta = self.state.counts().live as i64 - before as i64;
        if delta != 0 {
            self.context.metrics.readers_live.inc_by(delta);
            let remote = self.merged.as_ref().map_or(0, |m| m.remote_live);
            self.shown_live_moved(before + remote);
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
        context.pulse.set(&self.slug, counts.live, unix);
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
        if let Some(peak) = context.pulse.take_new_site_peak() {
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

/// Cluster mode: the numbers readers see.
fn shown(state: &PostState, merged: Option<&Merged>) -> Counts {
    let local = state.counts();
    match merged {
        None => local,
        Some(m) => Counts {
            live: local.live + m.remote_live,
            total: add_counts(m.redis_total, m.unconfirmed),
        },
    }
}

impl Handler<Join> for Post {
    type Result = ActorResponse<Self, Result<Joined, Asleep>>;

    /// A view this node would count is decided by Redis in cluster mode: the answer waits
    /// for it (at most `--redis-timeout`) while the post goes on with other messages. Without
    /// a cluster the answer is immediate, with no future boxed per join.
    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) -> Self::Result {
        if self.sleeping {
            return ActorResponse::reply(Err(Asleep));
        }
        let live_before = self.state.counts().live;
        let joined = self.state.join(
            join.presence,
            || join.charge.is_some_and(|c| c.take(&self.slug)),
            join.is_reader,
            Instant::now(),
        );
        let metrics = &self.context.metrics;
        let cluster = self
            .context
            .cluster
            .clone()
            .filter(|_| joined.counted && join.is_reader);
        match () {
            () if !join.is_reader => metrics.views_from_bots.inc(),
            // Counted once Redis has decided.
            () if cluster.is_some() => 0,
            () if joined.counted => metrics.views_counted.inc(),
            () if joined.deduplicated => metrics.views_deduplicated.inc(),
            () => metrics.views_rate_limited.inc(),
        };
        self.live_moved(live_before);
        let at = self.context.calendar.clock().now_unix();
        if joined.counted
            && let Some(place) = self.new_post.take()
        {
            place.keep();
        }
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
        // Cluster mode: the total moves once Redis has decided, so it never shows a view that
        // another node already counted and then takes it back.
        let Some(cluster) = cluster else {
            if joined.counted {
                self.context.writer.add_view(&self.slug, join.id, at);
            }
            return ActorResponse::reply(Ok(Joined {
                counts: self.counts(),
                counted: joined.counted,
                updates: self.updates.subscribe(),
                departure,
            }));
        };
        let slug = self.slug.clone();
        let decision = async move { cluster.count(&slug, &join.id, at).await };
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
        if let Some(merged) = self.merged.as_mut()
            && merged.remote_live != remote.live
        {
            let before = self.state.counts().live + merged.remote_live;
            merged.remote_live = remote.live;
            self.shown_live_moved(before);
            self.changed(ctx);
        }
    }
}

impl Handler<RemoteTotal> for Post {
    type Result = ();

    fn handle(&mut self, remote: RemoteTotal, ctx: &mut Context<Self>) {
        let before = self.counts();
        if let Some(merged) = self.merged.as_mut() {
            merged.redis_said(remote.total);
        }
        if self.counts() != before {
            self.changed(ctx);
        }
    }
}

impl Handler<Replayed> for Post {
    type Result = ();

    fn handle(&mut self, replayed: Replayed, ctx: &mut Context<Self>) {
        if let Some(merged) = self.merged.as_mut() {
            merged.unconfirmed = merged.unconfirmed.saturating_sub(1);
            merged.redis_said(replayed.total);
            self.changed(ctx);
        }
    }
}

impl Handler<Leave> for Post {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) {
        let live_before = self.state.counts().live;
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
        let live_before = self.state.counts().live;
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
        // Cluster mode: Redis announces the imported totals to every node (RemoteTotal);
        // adding them here too would count them twice when the announcement comes first.
        if self.merged.is_none() {
            self.state.add_to_total(imported.views);
        }
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
