//! Cluster mode (`--redis`): several nodes share one Redis, so every reader sees the same
//! numbers whichever node serves them.
//!
//! - `link`: the connection (TLS with `rediss://`, a private CA with `--redis-ca`), its
//!   timeouts and health, and what it learnt of the server (version, mode, persistence);
//! - `counter`: one counted view as one Lua script (its reader's record, total, day, announcement);
//! - `presence`: each node's live readers in Redis, merged into every post's live count;
//! - `channels`: the post channels this node listens to (the posts it serves, every post
//!   while a whole-site view follows it), so a change reaches only the nodes that need it;
//! - `outbox`: views counted while Redis did not answer, replayed exactly once;
//! - `fate`: this node's ops whose fate Redis has not told yet (a call that timed out may
//!   still run, late), so each view is confirmed to its post exactly once;
//! - `record`: what this node counted, in its `--db` file: the durable copy from which the
//!   node rebuilds its part of Redis's sums when Redis loses them;
//! - `store`: the writer's [`crate::storage::store::Store`] on Redis, for the owner's reads.
//!
//! The cluster sits above the posts: posts reach it only through their port,
//! `posts::cluster_port::Counting`, which `Cluster` implements; the cluster's tasks
//! reach the posts through the registry, with the messages of [`crate::posts::post`]. Its
//! [`Settings`] are built by [`crate::config`], which this module does not know.

pub(crate) mod channels;
pub(crate) mod counter;
pub(crate) mod fate;
pub mod keys;
pub(crate) mod link;
pub(crate) mod outbox;
pub(crate) mod presence;
pub(crate) mod record;
pub(crate) mod store;

pub(crate) use link::client;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::cluster::channels::{Channels, Work};
use crate::cluster::counter::View;
use crate::cluster::fate::{Fates, Heard, Replay};
use crate::cluster::keys::Group;
use crate::cluster::link::{ALL_POSTS, EVENTS, Link, LinkError, Subscription, post_channel};
use crate::cluster::outbox::{Outbox, REPLAY_BATCH};
use crate::cluster::presence::{BEAT, Event, Moved, Presence};
use crate::cluster::record::Record;
use crate::edge::reader_id::ReaderId;
use crate::edge::slug::Slug;
use crate::metrics::Metrics;
use crate::posts::cluster_port::{
    Counted, Counting, Decision, Elsewhere, Hearing, Served, Verdict,
};
use crate::posts::post::{Counts, RemoteLive, Replayed};
use crate::posts::registry::Registry;
use crate::secret::RedisUrl;
use crate::shutdown::{Shutdown, Tasks};
use crate::storage::calendar::Calendar;
use crate::storage::store::{RedbStore, StoreError};
use crate::storage::writer::{FlushPolicy, WriterError};

/// How often the outbox is looked at while it holds views.
const REPLAY_EVERY: Duration = Duration::from_millis(250);
/// How often silent nodes are looked for: a killed node leaves within EXPIRY + 1 beat + this.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// Totals asked of Redis per `HMGET` when awake posts catch up after a reconnect.
const REFRESH_CHUNK: usize = 500;

/// How this node joins the cluster of every node on one Redis (built by [`crate::config`]
/// from `--redis`, `--node-id` and `--redis-timeout`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `redis://…` (or `rediss://`, `unix://`): checked when the config is.
    pub redis: RedisUrl,
    /// `--redis-ca`: the PEM file of the CA a `rediss://` server's certificate is checked
    /// against, for a private CA; `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// This node's name; `None`: `HOST:PORT-xxxx`, made once the port is known.
    pub node_id: Option<String>,
    /// Every Redis call gives up after this long.
    pub timeout: Duration,
}

/// `--redis-timeout`'s default: a Redis call that takes longer is a Redis that is down for
/// the readers waiting on it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

impl Settings {
    /// `--redis URL` alone: the other settings are the command line's defaults.
    pub fn new(redis: impl Into<String>) -> Self {
        Self {
            redis: RedisUrl::from(redis.into()),
            ca: None,
            node_id: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// True for a usable `--node-id`: it is part of Redis keys and space-separated messages.
pub(crate) fn is_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// `HOST:PORT-xxxx`: the host name, the port served, and a random suffix so a restarted node
/// is a new node.
fn default_node_id(addr: SocketAddr) -> String {
    let mut host = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let named = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let host: String = if named {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .take(40)
            .collect()
    } else {
        String::new()
    };
    let host = if host.is_empty() { "node".into() } else { host };
    let mut suffix = [0u8; 2];
    let _ = getrandom::fill(&mut suffix);
    format!("{host}:{}-{:04x}", addr.port(), u16::from_be_bytes(suffix))
}

/// What the background tasks consume, taken once when they start.
struct Receivers {
    pushes: UnboundedReceiver<PushInfo>,
    changes: UnboundedReceiver<Slug>,
}

pub(crate) struct Cluster {
    link: Link,
    presence: Presence,
    fates: Fates,
    ops: counter::OpIds,
    record: Record,
    calendar: Calendar,
    dedupe_window: Duration,
    receivers: std::sync::Mutex<Option<Receivers>>,
    channels: Channels,
    /// The readers elsewhere of posts not followed here, as the pulse was last told.
    told_elsewhere: AtomicU64,
    /// The last refresh of totals failed: the heartbeat refreshes every awake post's. (A
    /// Redis Cluster client resubscribes when a master fails, perhaps before its replica took
    /// over, so the refresh after the resubscription can fail, and totals announced meanwhile
    /// were missed.)
    totals_stale: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Joins the cluster: the redb file at `db` holds the node's record and its outbox;
    /// Redis is tried once (a node starts without it, `redis: down`, and keeps trying).
    pub(crate) async fn start(
        settings: &Settings,
        addr: SocketAddr,
        db: RedbStore,
        calendar: Calendar,
        policy: FlushPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StoreError> {
        let (push_tx, pushes) = unbounded_channel();
        let (change_tx, changes) = unbounded_channel();
        let link = Link::new(
            &settings.redis,
            settings.ca.as_deref(),
            settings.timeout,
            push_tx,
        )
        .map_err(|e| StoreError::Storage(format!("--redis \"{}\": {e}", settings.redis)))?;
        let node = settings
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id(addr));
        // The URL prints with its password masked.
        tracing::info!(%node, redis = %settings.redis, "cluster mode: joining the nodes on Redis");
        let ops = counter::OpIds::new(&node, record::random());
        let cluster = Self {
            link,
            presence: Presence::new(node, change_tx, policy.dedupe_window),
            record: Record::open(db, policy, calendar.clone(), metrics)?,
            fates: Fates::default(),
            ops,
            calendar,
            dedupe_window: policy.dedupe_window,
            receivers: std::sync::Mutex::new(Some(Receivers { pushes, changes })),
            channels: Channels::default(),
            told_elsewhere: AtomicU64::new(0),
            totals_stale: std::sync::atomic::AtomicBool::new(false),
        };
        if cluster.link.connect().await.is_ok() {
            // Seen by the others at once, not only after the first heartbeat.
            let _ = cluster.presence.beat(&cluster.link, true).await;
            let _ = cluster.link.learn_server().await;
            // Before the first view: this node's part is of this generation from the start.
            cluster
                .rebuild_record(crate::cluster::keys::ALL, None)
                .await;
        }
        Ok(Arc::new(cluster))
    }

    pub(crate) fn node(&self) -> &str {
        self.presence.node()
    }

    pub(crate) fn is_up(&self) -> bool {
        self.link.health.is_up()
    }

    pub(crate) fn nodes(&self) -> usize {
        self.presence.nodes()
    }

    /// The other nodes counting with another `--dedupe-window` (node, its window in ms).
    pub(crate) fn window_conflicts(&self) -> Vec<(String, u64)> {
        self.presence.window_conflicts()
    }

    /// What the node learnt of Redis on its last (re)connect.
    pub(crate) fn server(&self) -> Option<link::ServerInfo> {
        self.link.server()
    }

    fn outbox(&self) -> &Outbox {
        self.record.outbox()
    }

    /// This node's part of `slug`'s key group, once sealed (see [`counter::Part`]).
    fn part_of(&self, slug: &str) -> Option<counter::Part<'_>> {
        let salt = self.record.salt(Group::of(slug))?;
        Some(counter::Part {
            record: self.record.id(),
            salt,
        })
    }

    pub(crate) fn outbox_len(&self) -> u64 {
        self.outbox().len()
    }

    pub(crate) fn health(&self) -> &link::Health {
        &self.link.health
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.link.timeout()
    }

    fn op_id(&self, slug: &Slug) -> String {
        self.ops.next(Group::of(slug.as_str()))
    }

    /// The heartbeat, the announcer, the listener, the replay and the expiry, in `tasks`:
    /// each returns once their signal fires.
    pub(crate) fn spawn_tasks(self: &Arc<Self>, registry: &Arc<Registry>, tasks: &Tasks) {
        let Some(Receivers { pushes, changes }) = self
            .receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let (me, posts) = (Arc::clone(self), Arc::clone(registry));
        tasks.spawn("cluster heartbeat", |stop| me.heartbeat(posts, stop));
        let me = Arc::clone(self);
        tasks.spawn("cluster announcer", |stop| me.announce(changes, stop));
        let (me, posts) = (Arc::clone(self), Arc::clone(registry));
        tasks.spawn("cluster listener", |stop| me.listen(pushes, posts, stop));
        let (me, posts) = (Arc::clone(self), Arc::clone(registry));
        tasks.spawn("outbox replay", |stop| me.replay(posts, stop));
        let (me, posts) = (Arc::clone(self), Arc::clone(registry));
        tasks.spawn("cluster expiry", |stop| me.expire(posts, stop));
        let (me, posts) = (Arc::clone(self), Arc::clone(registry));
        tasks.spawn("cluster channels", |stop| me.keep_channels(posts, stop));
        let me = Arc::clone(self);
        tasks.spawn("presence sync", |stop| me.sync_presence(stop));
    }

    /// Brings Redis to the reading times and peaks the record took: as soon as it took some,
    /// and once a beat to try again what Redis did not take.
    async fn sync_presence(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let due = async |tick: &mut tokio::time::Interval| {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.record.dirtied() => {}
            }
        };
        while stop.unless_started(due(&mut tick)).await.is_some() {
            if let Err(e) = self.record.sync_presence(&self.link).await {
                tracing::debug!(error = %e, "reading times and peaks wait for Redis");
            }
        }
    }

    /// Once a second: connect if needed, write our presence, read the others', drop the silent.
    async fn heartbeat(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut grace = true;
        while stop.unless_started(tick.tick()).await.is_some() {
            let beat = match self.link.connect().await {
                Ok(()) => self.presence.beat(&self.link, grace).await,
                Err(e) => Err(e),
            };
            // Back after a failure (perhaps a restarted Redis, configured anew): ask again.
            if beat.is_ok() && (grace || self.link.server().is_none()) {
                let _ = self.link.learn_server().await;
            }
            grace = beat.is_err();
            if let Ok(moved) = beat {
                self.tell_moved(&registry, moved);
                self.keep_record(&registry).await;
                if self.totals_stale.load(std::sync::atomic::Ordering::Relaxed) {
                    self.refresh_totals(&registry).await;
                }
            }
        }
    }

    /// Rebuilds this node's part of the sums when Redis lost it (or, first after start, adds
    /// it); O(1) Redis work otherwise.
    async fn keep_record(&self, registry: &Registry) {
        if let Ok(lost) = self.record.lost(&self.link).await
            && !lost.is_empty()
        {
            self.rebuild_record(lost, Some(registry)).await;
        }
    }

    /// Rebuilds this node's part; the awake posts of `registry` then hear their totals.
    async fn rebuild_record(
        &self,
        groups: crate::cluster::keys::Groups,
        registry: Option<&Registry>,
    ) {
        match self.record.rebuild(&self.link, groups).await {
            Ok(rebuilt) => {
                tracing::info!(
                    record = %self.record.id(),
                    groups = rebuilt.groups,
                    moved = rebuilt.moved,
                    adopted = rebuilt.adopted,
                    views = rebuilt.views,
                    "rebuilt this node's part of the sums in Redis from its record"
                );
                if let Some(registry) = registry {
                    self.refresh_totals(registry).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild this node's part of the sums yet")
            }
        }
    }

    /// Rebuilds of this node's part since start (the first adds it after a start).
    pub(crate) fn rebuilds(&self) -> u64 {
        self.record.rebuilds()
    }

    /// `viewcounter retire`: a stopped node's record (id `old`) becomes part of this one's.
    pub(crate) async fn take_retired(
        &self,
        registry: &Registry,
        old: &str,
        retired: record::Retired,
    ) -> Result<record::Taken, record::RebuildError> {
        let taken = self.record.take_retired(&self.link, old, retired).await?;
        match &taken {
            record::Taken::Now(rebuilt) => tracing::info!(
                retired = old,
                record = %self.record.id(),
                moved = rebuilt.moved,
                views = rebuilt.views,
                "took a retired node's record into this node's"
            ),
            record::Taken::Before => tracing::info!(
                retired = old,
                record = %self.record.id(),
                "a retired node's record was taken into this node's before: nothing to do"
            ),
        }
        self.refresh_totals(registry).await;
        Ok(taken)
    }

    /// The id of this node's record: its parts of the sums are `vc:{gN}:part:{id}`.
    pub(crate) fn record_id(&self) -> String {
        self.record.id().to_owned()
    }

    /// Held by an import on the writer's thread (never an async one): it waits for a rebuild.
    pub(crate) fn import_fence(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.record.enter_blocking()
    }

    /// Redis took an import into the sums and this node's part: the record takes it too.
    pub(crate) fn imported(
        &self,
        totals: &std::collections::BTreeMap<&str, u64>,
        days: &std::collections::BTreeMap<(u32, &str), u64>,
    ) {
        for (slug, &views) in totals {
            if let Ok(slug) = Slug::parse(slug) {
                self.record.counted(&slug, views, None);
            }
        }
        for (&(day, slug), &views) in days {
            if let Ok(slug) = Slug::parse(slug) {
                self.record.recorded_day(&slug, day, views);
            }
        }
    }

    /// This node's readers left `presence` and the site's peaks `site` (or an import brought
    /// them): the record takes them, and Redis from it.
    pub(crate) fn presence(
        &self,
        presence: &[crate::storage::store::PresenceDelta<'_>],
        site: &[(u32, crate::storage::presence::Peak)],
    ) {
        self.record.presence(presence, site);
    }

    /// Views counted here that the `--db` file does not hold yet.
    pub(crate) async fn unwritten(&self) -> Option<u64> {
        self.record.unwritten().await
    }

    /// Posts whose readers elsewhere moved, and the readers elsewhere of the posts not
    /// followed here (see [`presence`]): the site's live moves by both, the lower first, so
    /// the site's peak never counts a reader on its way from one to the other twice (the
    /// whole site followed for a read, a post followed as it wakes).
    fn tell_moved(&self, registry: &Registry, moved: Moved) {
        let elsewhere = self.presence.elsewhere();
        let before = self.told_elsewhere.swap(elsewhere, Ordering::Relaxed);
        if elsewhere < before {
            registry.live_unfollowed(elsewhere);
            tell_live(registry, moved);
        } else {
            tell_live(registry, moved);
            registry.live_unfollowed(elsewhere);
        }
    }

    /// Drops the nodes gone silent (killed, or cut off with Redis), Redis or not; and
    /// follows the whole site while someone here watches it (see [`channels`]).
    async fn expire(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        while stop.unless_started(tick.tick()).await.is_some() {
            self.tell_moved(&registry, self.presence.expire());
            self.channels
                .want_whole_site(registry.changes().followers() > 0);
        }
    }

    /// Turns the posts' holds on their channels into subscriptions (see [`channels`]): when
    /// they change, and once a beat to try again what Redis did not take.
    async fn keep_channels(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let woken = async {
                tokio::select! {
                    () = self.channels.changed.notified() => {}
                    _ = tick.tick() => {}
                }
            };
            if stop.unless_started(woken).await.is_none() {
                return;
            }
            let work = self.channels.work();
            if !work.is_empty() {
                self.change_channels(&registry, work).await;
                self.tell_moved(&registry, Vec::new());
            }
        }
    }

    async fn change_channels(&self, registry: &Registry, work: Work) {
        let link = &self.link;
        // Before the posts: the listener catches up once it hears the subscribe, and the
        // posts' own subscribes below read what they missed.
        if work.events
            && link
                .subscription(Subscription::Subscribe, &[EVENTS.into()])
                .await
                .is_ok()
        {
            self.channels.events_back();
        }
        // Followed before subscribing: what is heard from the subscribe on is kept.
        self.presence.follow(&work.subscribe);
        let channels: Vec<String> = work
            .subscribe
            .iter()
            .map(|s| post_channel(s.as_str()))
            .collect();
        let subscribed = link
            .subscription(Subscription::Subscribe, &channels)
            .await
            .is_ok();
        if subscribed && !work.subscribe.is_empty() {
            // After the subscribe on the same connection: a change is heard or read, or both.
            let peers = self.presence.peer_nodes();
            if let Ok(moved) = self
                .presence
                .read_posts(link, &peers, &work.subscribe)
                .await
            {
                self.tell_moved(registry, moved);
            }
            // Posts awake already (subscribed late: Redis was down when they woke) may have
            // missed totals meanwhile; a post waking now reads its own.
            let late: Vec<Slug> = (work.subscribe.iter())
                .filter(|slug| registry.is_awake(slug))
                .cloned()
                .collect();
            self.refresh_totals_of(registry, &late).await;
        }
        let patterned = match work.whole_site {
            Some(true) => {
                self.presence.whole_site(true);
                let ok = link
                    .subscription(Subscription::PSubscribe, &[ALL_POSTS.into()])
                    .await;
                if ok.is_ok() {
                    let peers = self.presence.peer_nodes();
                    if let Ok(moved) = self.presence.read_all(link, &peers).await {
                        self.tell_moved(registry, moved);
                    }
                    // Totals moved meanwhile on posts not served here: the views start over.
                    registry.changes().resync();
                }
                ok.is_ok()
            }
            Some(false) => {
                let ok = link
                    .subscription(Subscription::PUnsubscribe, &[ALL_POSTS.into()])
                    .await;
                for slug in self.presence.whole_site(false) {
                    if !self.channels.is_held(&slug) {
                        registry.live_elsewhere(&slug, 0);
                    }
                }
                ok.is_ok()
            }
            None => false,
        };
        self.channels.done(&work, subscribed, patterned);
        if work.unsubscribe {
            let unheld = self.channels.take_unheld();
            for slug in self.presence.unfollow(&unheld) {
                // Its readers elsewhere now count in the site's sum only.
                registry.live_elsewhere(&slug, 0);
            }
            let channels: Vec<String> = unheld.iter().map(|s| post_channel(s.as_str())).collect();
            if link
                .subscription(Subscription::Unsubscribe, &channels)
                .await
                .is_err()
            {
                self.channels.still_subscribed(unheld);
            }
        }
    }

    /// Announces local live changes as they come, a burst in one round trip. One not written
    /// (Redis down, a failed call) is written by the next heartbeat, with the whole presence.
    async fn announce(self: Arc<Self>, mut changes: UnboundedReceiver<Slug>, mut stop: Shutdown) {
        while let Some(Some(first)) = stop.unless_started(changes.recv()).await {
            let mut slugs = HashSet::from([first]);
            while let Ok(more) = changes.try_recv() {
                slugs.insert(more);
            }
            let _ = self.presence.announce(&self.link, &slugs).await;
        }
    }

    /// The channels of the posts followed here, and [`EVENTS`]: other nodes' live changes,
    /// new totals, nodes leaving.
    async fn listen(
        self: Arc<Self>,
        mut pushes: UnboundedReceiver<PushInfo>,
        registry: Arc<Registry>,
        mut stop: Shutdown,
    ) {
        while let Some(Some(push)) = stop.unless_started(pushes.recv()).await {
            let text = match push.kind {
                PushKind::Message => push_text(&push.data, 1),
                PushKind::PMessage => push_text(&push.data, 2),
                // Redis forgot the connection's subscriptions: the keeper subscribes again.
                PushKind::Disconnection => {
                    self.channels.lost();
                    continue;
                }
                // (Re)subscribed after a (re)connect: what was announced meanwhile was missed.
                PushKind::Subscribe if push_text(&push.data, 0).as_deref() == Some(EVENTS) => {
                    self.catch_up(&registry).await;
                    continue;
                }
                _ => continue,
            };
            let Some(event) = text.and_then(|t| Event::parse(&t)) else {
                continue;
            };
            if let Event::Total { slug, total, op } = &event {
                match op.as_deref().filter(|op| self.is_own(op)) {
                    Some(op) => self.own_total(&registry, slug, *total, op),
                    None => self.tell_total(&registry, slug, *total),
                }
            } else {
                tell_live(&registry, self.presence.on_event(event));
            }
        }
    }

    /// After a (re)connect: the totals of the awake posts, and the other nodes' readers of
    /// the posts followed here, read again.
    async fn catch_up(&self, registry: &Registry) {
        self.refresh_totals(registry).await;
        let peers = self.presence.peer_nodes();
        let read = if self.presence.follows_whole_site() {
            self.presence.read_all(&self.link, &peers).await
        } else {
            let held = self.channels.held();
            self.presence.read_posts(&self.link, &peers, &held).await
        };
        if let Ok(moved) = read {
            self.tell_moved(registry, moved);
        }
        registry.changes().resync();
    }

    /// A post's new total, counted on another node: its readers here hear it from the post;
    /// a post asleep here has none, but the dashboards show every post of the cluster.
    fn tell_total(&self, registry: &Registry, slug: &Slug, total: u64) {
        let told = registry.tell_total(slug, total);
        self.unless_told(registry, slug, total, told);
    }

    /// A post asleep here (`told` false): only the dashboards need to hear its total.
    fn unless_told(&self, registry: &Registry, slug: &Slug, total: u64, told: bool) {
        if !told {
            let live = self.presence.remote_live(slug);
            registry.changes().post(slug, Counts { live, total });
        }
    }

    /// An op id of this node ([`Cluster::op_id`]): the node's id, `-` and 32 hex digits (16
    /// before issue 22's op memory: an outbox may still hold such), so a node whose id starts
    /// with this one's and a `-` is not taken for it.
    fn is_own(&self, op: &str) -> bool {
        op.strip_prefix(self.node())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|digits| {
                matches!(digits.len(), 16 | 32) && digits.bytes().all(|b| b.is_ascii_hexdigit())
            })
    }

    /// This node's `op` announced at `total`. A call still in flight: the post hears it now.
    /// A view that timed out into the outbox ran late in Redis: confirmed now (no longer
    /// pending; its post told with one [`Replayed`], which moves the total and takes the
    /// unconfirmed view back together; recorded when the replay deletes its row). Any other (a call answered already, a view the
    /// replay is running): its post hears the total from there, not twice from here.
    ///
    /// Never waits for a rebuild (the listener serves every node's events): while one holds
    /// the fence nothing is confirmed here; the replay, which waits for it, confirms the view.
    fn own_total(&self, registry: &Registry, slug: &Slug, total: u64, op: &str) {
        let counting = self.record.try_enter();
        let confirm = || self.outbox().confirmed(slug.as_str());
        match self.fates.announced(op, total, counting.is_some(), confirm) {
            Heard::InFlight => self.tell_total(registry, slug, total),
            Heard::Confirmed => {
                let told = registry.tell(slug, Replayed { total });
                if !told {
                    // A post waking meanwhile has no unconfirmed view: it takes the total
                    // as any announced one (its load may have read Redis before the run).
                    registry.tell_total(slug, total);
                }
                self.unless_told(registry, slug, total, told);
            }
            Heard::Told => {}
        }
    }

    /// The totals of every awake post, from Redis: one `HMGET` per key group in a pipeline
    /// per chunk (a Redis Cluster gets each group's on its master).
    async fn refresh_totals(&self, registry: &Registry) {
        self.totals_stale
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.refresh_totals_of(registry, &registry.awake_slugs())
            .await;
    }

    /// The totals of `slugs`, from Redis, told to those awake.
    async fn refresh_totals_of(&self, registry: &Registry, slugs: &[Slug]) {
        for chunk in slugs.chunks(REFRESH_CHUNK) {
            let mut by_group: std::collections::BTreeMap<Group, Vec<&Slug>> = Default::default();
            for slug in chunk {
                by_group
                    .entry(Group::of(slug.as_str()))
                    .or_default()
                    .push(slug);
            }
            let mut read = redis::pipe();
            for (group, slugs) in &by_group {
                let fields: Vec<&str> = slugs.iter().map(|s| s.as_str()).collect();
                read.cmd("HMGET").arg(group.totals()).arg(fields);
            }
            let got: Result<Vec<Vec<Option<u64>>>, _> = self
                .link
                .call("totals", |mut conn| async move {
                    read.query_async(&mut conn).await
                })
                .await;
            let Ok(totals) = got else {
                self.totals_stale
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            let slugs = by_group.values().flatten();
            for (slug, total) in slugs.zip(totals.into_iter().flatten()) {
                if let Some(total) = total {
                    registry.tell_total(slug, total);
                }
            }
        }
    }

    /// While the outbox holds views and Redis answers: replay them, oldest first, each with
    /// the script it missed; delete them once Redis has them.
    async fn replay(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(REPLAY_EVERY);
        while stop.unless_started(tick.tick()).await.is_some() {
            if self.is_up() {
                counter::expire_settled(&self.link, &self.ops).await;
            }
            if self.outbox().len() == 0 || !self.is_up() {
                continue;
            }
            if let Err(e) = self.replay_batch(&registry).await {
                tracing::warn!(error = %e, "cannot read the outbox");
            }
        }
    }

    async fn replay_batch(&self, registry: &Registry) -> Result<(), StoreError> {
        let views = self.outbox().oldest(REPLAY_BATCH).await?;
        let mut done = Vec::with_capacity(views.len());
        let mut results = Vec::with_capacity(views.len());
        // After a rebuild, never during one.
        let _counting = self.record.enter().await;
        for (row, view) in views {
            // Not sealed yet (Redis came back, the rebuild is due): the next round.
            let Some(part) = self.part_of(&view.slug) else {
                break;
            };
            let counted = match counter::count(&self.link, &view, self.dedupe_window, part).await {
                Ok(counted) => counted,
                Err(e) => {
                    self.refused(&view, &e);
                    break;
                }
            };
            // Its announcement may have confirmed it already: its post was told then.
            let pending = self.fates.replayed(&view.op) == Replay::Confirm;
            if pending {
                results.push((view.slug.clone(), counted));
            }
            done.push(outbox::Done {
                row,
                view,
                counted: counted.counted,
                pending,
            });
        }
        let replayed = done.len();
        let settled: Vec<String> = done.iter().map(|d| d.view.op.clone()).collect();
        // The record takes what Redis counted as the rows go, in one transaction.
        for view in self.outbox().settle(done).await? {
            if let Ok(slug) = Slug::parse(&view.slug) {
                self.record.acknowledged(&slug, 1);
            }
        }
        // Deleted: never sent again.
        for op in settled {
            self.ops.settled(&op);
        }
        // A view Redis found a duplicate (another node counted that reader within the window)
        // still takes the total back by one here: this node could not know before Redis
        // answered, and showed it meanwhile.
        for (slug, counted) in results {
            if let Ok(slug) = Slug::parse(&slug) {
                let total = counted.total;
                let told = registry.tell(&slug, Replayed { total });
                self.unless_told(registry, &slug, total, told);
            }
        }
        if replayed > 0 {
            tracing::info!(
                views = replayed,
                left = self.outbox().len(),
                "outbox replayed into Redis"
            );
        }
        Ok(())
    }

    /// Claims the one alert of the cluster for `slug` this hour (`SET vc:alert:{slug} 1 NX EX
    /// 3600`): true for the node that set it, false when another node (or this one) did.
    pub(crate) async fn claim_alert(
        &self,
        slug: &Slug,
        every: Duration,
    ) -> Result<bool, LinkError> {
        let key = format!("vc:alert:{{{slug}}}");
        let claimed: Option<String> = self
            .link
            .call("alert claim", |mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(self.node())
                    .arg("NX")
                    .arg("EX")
                    .arg(every.as_secs().max(1))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(claimed.is_some())
    }

    /// On SIGTERM, once the tasks are stopped: this node's readers leave every other node's
    /// live count now, not when its presence expires.
    pub(crate) async fn leave(&self) {
        match self.presence.leave(&self.link).await {
            Ok(()) => tracing::info!("left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the cluster we leave; our presence expires in 3 s")
            }
        }
    }

    /// Writes the outbox's queued views and the record; called last on shutdown.
    pub(crate) async fn close(&self) {
        self.outbox().shutdown().await;
        // The last readings the writer handed over reach Redis now if they can; otherwise
        // the start that follows brings them (its rebuild is of every group).
        if let Err(e) = self.record.sync_presence(&self.link).await {
            tracing::debug!(error = %e, "the last reading times wait for this node's return");
        }
        self.record.close().await;
    }

    /// Redis took `view` into the sums and this node's part: the record takes it too.
    fn record_view(&self, view: &View) {
        if let Ok(slug) = Slug::parse(&view.slug) {
            self.record.counted(&slug, 1, Some((view.day, 1)));
        }
    }

    /// A view Redis refused because this node's part of its group must be rebuilt first.
    fn refused(&self, view: &View, e: &LinkError) {
        if counter::wants_rebuild(e) {
            self.record.refused(&view.slug);
        }
    }
}

/// The posts' port to the other nodes: views counted in Redis, live readers merged. On the
/// `Arc`, so that a view's decision (a future the post awaits as an actor future, which must
/// own what it uses) holds the cluster.
impl Counting for Arc<Cluster> {
    /// One round trip to Redis, or none while it is down. Whatever Redis did not answer goes
    /// to the outbox.
    fn count(&self, slug: &Slug, reader: ReaderId, at: u64) -> Verdict {
        let view = View {
            slug: slug.as_str().to_owned(),
            reader: reader.as_str().to_owned(),
            op: self.op_id(slug),
            day: self.calendar.day_of(at).key(),
        };
        let cluster = Arc::clone(self);
        Verdict::Later(Box::pin(async move {
            // While a rebuild runs, or before the first, views wait in the outbox.
            if cluster.is_up()
                && let Some(_counting) = cluster.record.try_enter()
                && let Some(part) = cluster.part_of(&view.slug)
            {
                let call = cluster.fates.in_flight(&view.op);
                let counted =
                    counter::count(&cluster.link, &view, cluster.dedupe_window, part).await;
                let counted = match counted {
                    Ok(counted) => {
                        cluster.ops.settled(&view.op);
                        Some(counted)
                    }
                    // It may still run late: the op id makes its replay a no-op then, and its
                    // announcement confirms it (see `fate`). Heard already: it is counted.
                    Err(e) => {
                        cluster.refused(&view, &e);
                        tracing::debug!(error = %e, "view goes to the outbox unless announced");
                        let outbox = |view| cluster.outbox().add(view);
                        let announced = call.failed(view.clone(), outbox);
                        // Announced: it ran, and is not in the outbox to be sent again.
                        if announced.is_some() {
                            cluster.ops.settled(&view.op);
                        }
                        announced.map(|total| Counted {
                            counted: true,
                            total,
                        })
                    }
                };
                let Some(counted) = counted else {
                    return Decision::Deferred;
                };
                if counted.counted {
                    cluster.record_view(&view);
                }
                return Decision::Decided(counted);
            }
            cluster.outbox().add(view);
            Decision::Deferred
        }))
    }

    fn remote_live(&self, slug: &Slug) -> u64 {
        self.presence.remote_live(slug)
    }

    fn remote_posts(&self) -> Vec<(Slug, u64)> {
        self.presence.remote_posts()
    }

    /// Posts followed here from memory; the others with one read of the peers' hashes (none
    /// while Redis is down: 0 readers elsewhere, as a post woken then would have).
    fn live_elsewhere<'a>(&'a self, slugs: &'a [Slug]) -> Elsewhere<'a> {
        let followed: Vec<bool> = slugs.iter().map(|s| self.presence.follows(s)).collect();
        if followed.iter().all(|&f| f) || !self.is_up() {
            return Elsewhere::Now(slugs.iter().map(|s| self.remote_live(s)).collect());
        }
        let unfollowed: Vec<&Slug> = (slugs.iter().zip(&followed))
            .filter(|(_, followed)| !**followed)
            .map(|(slug, _)| slug)
            .collect();
        Elsewhere::Later(Box::pin(async move {
            let read = self.presence.peek(&self.link, &unfollowed).await;
            let read = read.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot read the other nodes' readers");
                vec![0; unfollowed.len()]
            });
            let mut read = read.into_iter();
            (slugs.iter().zip(followed))
                .map(|(slug, followed)| match followed {
                    true => self.presence.remote_live(slug),
                    false => read.next().unwrap_or(0),
                })
                .collect()
        }))
    }

    /// The views of the post in the outbox.
    fn unsynced(&self, slug: &Slug) -> u64 {
        self.outbox().pending_for(slug.as_str())
    }

    /// Announced by the presence task (a burst in one round trip).
    fn set_local_live(&self, slug: &Slug, live: u64) {
        self.presence.set_local(slug, live);
    }

    /// None: Redis announces the imported totals to every node (`RemoteTotal`); adding them
    /// here too would count them twice when the announcement comes first.
    fn imported(&self, _: u64) -> u64 {
        0
    }

    /// Redis down and the post not known: served from 0 plus what is counted here; Redis's
    /// total arrives with its next announcement or the reconnect.
    fn unloaded(&self, slug: &Slug, error: WriterError) -> Result<u64, WriterError> {
        tracing::debug!(%slug, %error, "waking a post without its total");
        Ok(0)
    }

    /// Redis lost the post's key group: the next beat rebuilds it (this node's part is
    /// pending from now on, whatever the loss check finds); the wake waits for that, at
    /// most two beats and a call.
    fn rebuilding<'a>(
        &'a self,
        slug: &'a Slug,
        error: &WriterError,
    ) -> Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        if !matches!(error, WriterError::Store(StoreError::Lost(_))) {
            return None;
        }
        let rebuilt = self.record.rebuilt();
        self.record.refused(slug.as_str());
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(2 * BEAT + self.timeout(), rebuilt).await;
        }))
    }

    /// Subscribes to the post's channel and reads the other nodes' readers of it (bounded
    /// by `--redis-timeout` per call; at once while Redis is down).
    fn serve<'a>(&'a self, what: Served<'a>) -> Hearing<'a> {
        // Held now, not at the first poll: the caller's guard gives back what was taken.
        let subscribed = match what {
            Served::Post(slug) => self.channels.hold(slug),
            Served::Site => self.channels.hold_site(),
        };
        // Already followed: nothing to wait for. Redis down: the keeper subscribes once it
        // is back (and reads what it missed).
        match subscribed.filter(|_| self.is_up()) {
            None => Hearing::Now,
            Some(subscribed) => Hearing::Once(Box::pin(async move {
                // Bounds the wait for a keeper stuck behind a stalled Redis.
                let _ = tokio::time::timeout(self.timeout() * 3, subscribed).await;
            })),
        }
    }

    fn stop_serving(&self, what: Served<'_>) {
        match what {
            Served::Post(slug) => self.channels.release(slug),
            Served::Site => self.channels.release_site(),
        }
    }
}

fn tell_live(registry: &Registry, moved: Moved) {
    for (slug, live) in moved {
        // An awake post broadcasts it (to the dashboards too); for one asleep here, only the
        // dashboards need to know.
        if !registry.tell(&slug, RemoteLive { live }) {
            registry.live_elsewhere(&slug, live);
        }
    }
}

/// Element `at` of a push as text: a message is `[channel, payload]`, a pattern's message
/// `[pattern, channel, payload]`, a subscribe `[channel, count]`.
fn push_text(data: &[Value], at: usize) -> Option<String> {
    match data.get(at)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::counter::tests::{Server, connected};
    use crate::storage::calendar::Clock;
    use crate::storage::store::Store;
    use crate::storage::writer::Writer;
    use std::path::Path;

    const WINDOW: Duration = Duration::from_secs(1800);

    fn policy() -> FlushPolicy {
        FlushPolicy {
            after: Duration::from_millis(10),
            max_wait: Duration::from_millis(10),
            dedupe_window: WINDOW,
        }
    }

    fn calendar() -> Calendar {
        Calendar::new(jiff::tz::TimeZone::UTC, Clock::default())
    }

    /// A node on `server` with its `--db` at `path`, started (every group rebuilt when Redis
    /// answers), its tasks not spawned; a registry of posts counting through it; a second
    /// handle of the file to read it.
    async fn node(server: &Server, path: &Path) -> (Arc<Cluster>, Arc<Registry>, RedbStore) {
        // Once redis-server answers: the node starts on it, not beside it.
        drop(connected(server).await);
        let mut db = RedbStore::open(path).unwrap();
        let mut probe = db.share().unwrap();
        let settings = Settings::new(server.url());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let metrics = Metrics::clustered;
        let cluster = Cluster::start(&settings, addr, db, calendar(), policy(), metrics())
            .await
            .unwrap();
        let writer = Writer::spawn(
            Box::new(probe.share().unwrap()),
            policy(),
            calendar(),
            metrics(),
        );
        let counting = Arc::new(Arc::clone(&cluster));
        let registry = Registry::new(
            writer.unwrap(),
            WINDOW,
            calendar(),
            metrics(),
            counting,
            None,
        );
        (cluster, registry, probe)
    }

    /// Reader ids are the clients' to choose. Picked so that they all fall in one bucket of
    /// fingerprints under the key the source shows, they still spread over the buckets: the
    /// key is salted by the group's generation, which only Redis's data holds.
    #[tokio::test]
    async fn readers_picked_to_crowd_one_bucket_of_the_public_key_spread_over_the_buckets() {
        let Some(server) = Server::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (cluster, _registry, _probe) = node(&server, &dir.path().join("node.redb")).await;
        let slug = Slug::parse("alpha").unwrap();
        // What a client reading the source computes: the fixed key, unsalted.
        let crowding: Vec<String> = (0u64..)
            .map(|n| format!("reader-{n:012}"))
            .filter(|r| counter::fingerprint("alpha", r, 0).0 == 0)
            .take(200)
            .collect();
        for reader in &crowding {
            let reader = ReaderId::parse(reader).unwrap();
            let Verdict::Later(decided) = cluster.count(&slug, reader, 1_796_000_000) else {
                panic!("a view in cluster mode is decided by Redis");
            };
            let decision = decided.await;
            assert!(
                matches!(decision, Decision::Decided(c) if c.counted),
                "{decision:?}"
            );
        }
        let mut c = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let group = Group::of("alpha");
        let buckets = (0..=255u8)
            .filter(|&b| {
                (0..2).any(|parity| {
                    redis::cmd("EXISTS")
                        .arg(group.seen(parity, b))
                        .query::<bool>(&mut c)
                        .unwrap()
                })
            })
            .count();
        assert!(buckets > 100, "200 readers in {buckets} buckets");
    }

    /// A node's call that timed out ran late in Redis, its view in the outbox, and the node
    /// died before it heard the announcement: its restart's rebuild finds the view in the
    /// part and not in the record, and the replay then gets "counted" for it. The record
    /// must hold it once (a later rebuild after Redis lost its data gives the sums what the
    /// record holds), not once from the rebuild's adoption and once from the replay.
    #[tokio::test]
    async fn a_view_that_ran_late_and_waits_in_the_outbox_over_a_restart_is_recorded_once() {
        let Some(server) = Server::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let view = View {
            slug: "alpha".into(),
            reader: "reader-1".into(),
            op: counter::OpIds::new("node-a", 7).next(Group::of("alpha")),
            day: 20261208,
        };
        // The node before it died: its part sealed, the view run in Redis, and in the outbox.
        {
            let db = RedbStore::open(&path).unwrap();
            let record = Record::open(db, policy(), calendar(), Metrics::clustered()).unwrap();
            let link = connected(&server).await;
            record.rebuild(&link, keys::ALL).await.unwrap();
            let part = counter::Part {
                record: record.id(),
                salt: record.salt(Group::of("alpha")).unwrap(),
            };
            let counted = counter::count(&link, &view, WINDOW, part).await.unwrap();
            assert!(counted.counted);
            record.outbox().add(view.clone());
            record.outbox().shutdown().await;
            record.close().await;
        }
        // Its restart: the rebuild of every group, then the replay.
        let (cluster, registry, mut probe) = node(&server, &path).await;
        cluster.replay_batch(&registry).await.unwrap();
        assert_eq!(cluster.outbox_len(), 0, "the replay took the outbox's view");
        // Acknowledged once: the loss check finds the part as Redis has it.
        let lost = cluster.record.lost(&cluster.link).await.unwrap();
        assert!(lost.is_empty(), "no loss: {lost:?}");
        cluster.record.close().await;
        assert_eq!(probe.load("alpha").unwrap(), Some(1), "the record");
        assert_eq!(
            probe.days_of("alpha", &[view.day]).unwrap(),
            [1],
            "the record's day"
        );
    }
}
