//! Cluster mode (`--redis`): several nodes share one Redis, so every reader sees the same
//! numbers whichever node serves them.
//!
//! - `link`: the connection (TLS with `rediss://`, a private CA with `--redis-ca`), its
//!   timeouts and health, and what it learnt of the server (version, mode, persistence);
//! - `counter`: one counted view as one Lua script (dedupe marker, total, day, announcement);
//! - `presence`: each node's live readers in Redis, merged into every post's live count;
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

pub(crate) mod counter;
pub(crate) mod fate;
pub(crate) mod link;
pub(crate) mod outbox;
pub(crate) mod presence;
pub(crate) mod record;
pub(crate) mod store;

pub(crate) use link::client;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::cluster::counter::View;
use crate::cluster::fate::{Fates, Heard, Replay};
use crate::cluster::link::{Link, LinkError};
use crate::cluster::outbox::{Outbox, REPLAY_BATCH};
use crate::cluster::presence::{BEAT, Event, Moved, Presence};
use crate::cluster::record::Record;
use crate::edge::reader_id::ReaderId;
use crate::edge::slug::Slug;
use crate::metrics::Metrics;
use crate::posts::cluster_port::{Counted, Counting, Decision};
use crate::posts::post::{Counts, RemoteLive, RemoteTotal, Replayed};
use crate::posts::registry::Registry;
use crate::secret::RedisUrl;
use crate::shutdown::{Shutdown, Tasks};
use crate::storage::calendar::Calendar;
use crate::storage::store::{RedbStore, StoreError};
use crate::storage::writer::FlushPolicy;

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
    outbox: Outbox,
    fates: Fates,
    record: Record,
    calendar: Calendar,
    dedupe_window: Duration,
    receivers: std::sync::Mutex<Option<Receivers>>,
}

impl Cluster {
    /// Joins the cluster: the redb file at `db` holds the node's record and its outbox;
    /// Redis is tried once (a node starts without it, `redis: down`, and keeps trying).
    pub(crate) async fn start(
        settings: &Settings,
        addr: SocketAddr,
        mut db: RedbStore,
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
        let cluster = Self {
            link,
            presence: Presence::new(node, change_tx),
            record: Record::open(&mut db, policy, calendar.clone(), metrics)?,
            outbox: Outbox::start(db)?,
            fates: Fates::default(),
            calendar,
            dedupe_window: policy.dedupe_window,
            receivers: std::sync::Mutex::new(Some(Receivers { pushes, changes })),
        };
        if cluster.link.connect().await.is_ok() {
            // Seen by the others at once, not only after the first heartbeat.
            let _ = cluster.presence.beat(&cluster.link, true).await;
            let _ = cluster.link.learn_server().await;
            // Before the first view: this node's part is of this generation from the start.
            cluster.rebuild_record(None).await;
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

    /// What the node learnt of Redis on its last (re)connect.
    pub(crate) fn server(&self) -> Option<link::ServerInfo> {
        self.link.server()
    }

    pub(crate) fn outbox_len(&self) -> u64 {
        self.outbox.len()
    }

    pub(crate) fn health(&self) -> &link::Health {
        &self.link.health
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.link.timeout()
    }

    fn op_id(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut bytes = [0u8; 8];
        // Without the OS's randomness, the time and a counter are unique enough per node.
        let random = match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        };
        format!("{}-{random:016x}", self.node())
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
                tell_live(&registry, moved);
                self.keep_record(&registry).await;
            }
        }
    }

    /// Rebuilds this node's part of the sums when Redis lost it (or, first after start, adds
    /// it); O(1) Redis work otherwise.
    async fn keep_record(&self, registry: &Registry) {
        if matches!(self.record.lost(&self.link).await, Ok(true)) {
            self.rebuild_record(Some(registry)).await;
        }
    }

    /// Rebuilds this node's part; the awake posts of `registry` then hear their totals.
    async fn rebuild_record(&self, registry: Option<&Registry>) {
        match self.record.rebuild(&self.link).await {
            Ok(rebuilt) => {
                tracing::info!(
                    record = %self.record.part(),
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
        totals: Vec<(Slug, u64)>,
        days: Vec<(Slug, u32, u64)>,
    ) -> Result<record::Rebuilt, record::RebuildError> {
        let rebuilt = self
            .record
            .take_retired(&self.link, old, totals, days)
            .await?;
        tracing::info!(
            retired = old,
            record = %self.record.part(),
            moved = rebuilt.moved,
            views = rebuilt.views,
            "took a retired node's record into this node's"
        );
        self.refresh_totals(registry).await;
        Ok(rebuilt)
    }

    /// The Redis key of this node's part of the sums.
    pub(crate) fn record_part(&self) -> String {
        self.record.part()
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

    /// Views counted here that the `--db` file does not hold yet.
    pub(crate) async fn unwritten(&self) -> Option<u64> {
        self.record.unwritten().await
    }

    /// Drops the nodes gone silent (killed, or cut off with Redis), Redis or not.
    async fn expire(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(EXPIRE_EVERY);
        while stop.unless_started(tick.tick()).await.is_some() {
            tell_live(&registry, self.presence.expire());
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

    /// `vc:events`: other nodes' live changes and every new total.
    async fn listen(
        self: Arc<Self>,
        mut pushes: UnboundedReceiver<PushInfo>,
        registry: Arc<Registry>,
        mut stop: Shutdown,
    ) {
        while let Some(Some(push)) = stop.unless_started(pushes.recv()).await {
            match push.kind {
                PushKind::Message => {
                    let Some(event) = message_text(&push.data).and_then(|t| Event::parse(&t))
                    else {
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
                // (Re)subscribed after a (re)connect: totals announced meanwhile were missed.
                PushKind::Subscribe => {
                    self.refresh_totals(&registry).await;
                    registry.changes().resync();
                }
                _ => {}
            }
        }
    }

    /// A post's new total, counted on another node: its readers here hear it from the post;
    /// a post asleep here has none, but the dashboards show every post of the cluster.
    fn tell_total(&self, registry: &Registry, slug: &Slug, total: u64) {
        let told = registry.tell(slug, RemoteTotal { total });
        self.unless_told(registry, slug, total, told);
    }

    /// A post asleep here (`told` false): only the dashboards need to hear its total.
    fn unless_told(&self, registry: &Registry, slug: &Slug, total: u64, told: bool) {
        if !told {
            let live = self.presence.remote_live(slug);
            registry.changes().post(slug, Counts { live, total });
        }
    }

    /// An op id of this node ([`Cluster::op_id`]): the node's id, `-` and 16 hex digits, so
    /// a node whose id starts with this one's and a `-` is not taken for it.
    fn is_own(&self, op: &str) -> bool {
        op.strip_prefix(self.node())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|random| {
                random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit())
            })
    }

    /// This node's `op` announced at `total`. A call still in flight: the post hears it now.
    /// A view that timed out into the outbox ran late in Redis: confirmed now (recorded, no
    /// longer pending, its post told with one [`Replayed`], which moves the total and takes
    /// the unconfirmed view back together). Any other (a call answered already, a view the
    /// replay is running): its post hears the total from there, not twice from here.
    ///
    /// Never waits for a rebuild (the listener serves every node's events): while one holds
    /// the fence nothing is confirmed here; the replay, which waits for it, confirms the view.
    fn own_total(&self, registry: &Registry, slug: &Slug, total: u64, op: &str) {
        let counting = self.record.try_enter();
        let confirm = || self.outbox.confirmed(slug.as_str());
        match self.fates.announced(op, total, counting.is_some(), confirm) {
            Heard::InFlight => self.tell_total(registry, slug, total),
            Heard::Confirmed(view) => {
                self.record_view(&view);
                let told = registry.tell(slug, Replayed { total });
                self.unless_told(registry, slug, total, told);
            }
            Heard::Told => {}
        }
    }

    /// The totals of every awake post, from Redis.
    async fn refresh_totals(&self, registry: &Registry) {
        let slugs = registry.awake_slugs();
        for chunk in slugs.chunks(REFRESH_CHUNK) {
            let fields: Vec<&str> = chunk.iter().map(Slug::as_str).collect();
            let got: Result<Vec<Option<u64>>, _> = self
                .link
                .call("totals", |mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(counter::totals_key())
                        .arg(&fields)
                        .query_async(&mut conn)
                        .await
                })
                .await;
            let Ok(totals) = got else { return };
            for (slug, total) in chunk.iter().zip(totals) {
                if let Some(total) = total {
                    registry.tell(slug, RemoteTotal { total });
                }
            }
        }
    }

    /// While the outbox holds views and Redis answers: replay them, oldest first, each with
    /// the script it missed; delete them once Redis has them.
    async fn replay(self: Arc<Self>, registry: Arc<Registry>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(REPLAY_EVERY);
        while stop.unless_started(tick.tick()).await.is_some() {
            if self.outbox.len() == 0 || !self.is_up() {
                continue;
            }
            if let Err(e) = self.replay_batch(&registry).await {
                tracing::warn!(error = %e, "cannot read the outbox");
            }
        }
    }

    async fn replay_batch(&self, registry: &Registry) -> Result<(), StoreError> {
        let views = self.outbox.oldest(REPLAY_BATCH).await?;
        let mut done = Vec::with_capacity(views.len());
        let mut results = Vec::with_capacity(views.len());
        // After a rebuild, never during one.
        let _counting = self.record.enter().await;
        let part = self.record.part();
        for (id, view) in views {
            let counted = match counter::count(&self.link, &view, self.dedupe_window, &part).await {
                Ok(counted) => counted,
                Err(e) => {
                    self.refused(&e);
                    break;
                }
            };
            // Its announcement may have confirmed it already: its row is all that is left.
            if self.fates.replayed(&view.op) == Replay::AlreadyConfirmed {
                done.push((id, None));
                continue;
            }
            if counted.counted {
                self.record_view(&view);
            }
            results.push((view.slug.clone(), counted));
            done.push((id, Some(view.slug)));
        }
        let replayed = done.len();
        self.outbox.delete(done).await?;
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
                left = self.outbox.len(),
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
        self.outbox.shutdown().await;
        self.record.close().await;
    }

    /// Redis took `view` into the sums and this node's part: the record takes it too.
    fn record_view(&self, view: &View) {
        if let Ok(slug) = Slug::parse(&view.slug) {
            self.record.counted(&slug, 1, Some((view.day, 1)));
        }
    }

    /// A view Redis refused because this node's part must be rebuilt first.
    fn refused(&self, e: &LinkError) {
        if counter::wants_rebuild(e) {
            self.record.refused();
        }
    }
}

/// The posts' port to the other nodes: views counted in Redis, live readers merged.
impl Counting for Cluster {
    /// One round trip to Redis, or none while it is down. Whatever Redis did not answer goes
    /// to the outbox.
    fn count<'a>(
        &'a self,
        slug: &'a Slug,
        reader: &'a ReaderId,
        at: u64,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>> {
        Box::pin(async move {
            let view = View {
                slug: slug.as_str().to_owned(),
                reader: reader.as_str().to_owned(),
                op: self.op_id(),
                day: self.calendar.day_of(at).key(),
            };
            // While a rebuild runs, views wait in the outbox.
            if self.is_up()
                && let Some(_counting) = self.record.try_enter()
            {
                let part = self.record.part();
                let call = self.fates.in_flight(&view.op);
                let counted = counter::count(&self.link, &view, self.dedupe_window, &part).await;
                let counted = match counted {
                    Ok(counted) => Some(counted),
                    // It may still run late: the op id makes its replay a no-op then, and its
                    // announcement confirms it (see `fate`). Heard already: it is counted.
                    Err(e) => {
                        self.refused(&e);
                        tracing::debug!(error = %e, "view goes to the outbox unless announced");
                        let outbox = |view| self.outbox.add(view);
                        call.failed(view.clone(), outbox).map(|total| Counted {
                            counted: true,
                            total,
                        })
                    }
                };
                let Some(counted) = counted else {
                    return Decision::Deferred;
                };
                if counted.counted {
                    self.record_view(&view);
                }
                return Decision::Decided(counted);
            }
            self.outbox.add(view);
            Decision::Deferred
        })
    }

    fn remote_live(&self, slug: &Slug) -> u64 {
        self.presence.remote_live(slug)
    }

    fn remote_posts(&self) -> Vec<(Slug, u64)> {
        self.presence.remote_posts()
    }

    /// The views of the post in the outbox.
    fn unsynced(&self, slug: &Slug) -> u64 {
        self.outbox.pending_for(slug.as_str())
    }

    /// Announced by the presence task (a burst in one round trip).
    fn set_local_live(&self, slug: &Slug, live: u64) {
        self.presence.set_local(slug, live);
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

/// A pub/sub message's payload: `[channel, payload]`.
fn message_text(data: &[Value]) -> Option<String> {
    match data.get(1)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}
