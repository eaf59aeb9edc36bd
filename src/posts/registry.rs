//! The registry: slug → the address of that post's actor, waking posts on demand.
//!
//! A post removes itself when it goes to sleep; a message that reaches it in between is
//! answered [`Asleep`](crate::posts::post::Asleep) (or its mailbox is closed), and the caller asks the
//! registry again, which wakes a fresh actor with the total the writer holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;

use crate::edge::slug::Slug;
use crate::edge::slug_list::Admission;
use crate::memory::Reclaimer;
use crate::metrics::Metrics;
use crate::posts::alert_port::Alerts;
use crate::posts::changes::Changes;
use crate::posts::cluster_port::{Counting, Served, Serving};
use crate::posts::post::{
    Asleep, Counts, GetCounts, Imported, Join, Joined, Leave, Post, PostContext, RemoteTotal,
    Watch, Watched,
};
use crate::posts::pulse::Pulse;
use crate::posts::site::{Site, Snapshot, Sums};
use crate::refusal::Refusal;
use crate::storage::calendar::Calendar;
use crate::storage::writer::{LoadFor, Loaded, Writer};

pub(crate) struct Registry {
    posts: Mutex<HashMap<Slug, Addr<Post>>>,
    /// Posts being woken: the highest total the shared store announced for each meanwhile
    /// (cluster mode), which its load may have read before. Locked after `posts`, never
    /// before.
    waking: Mutex<HashMap<Slug, Waking>>,
    /// What the posts it wakes are given.
    context: Arc<PostContext>,
    reclaimer: Reclaimer,
    /// The whole site's numbers, for watchers of `*`.
    site: Site,
}

impl Registry {
    pub(crate) fn new(
        writer: Writer,
        dedupe_window: Duration,
        calendar: Calendar,
        metrics: Arc<Metrics>,
        counting: Arc<dyn Counting>,
        alerts: Option<Arc<dyn Alerts>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|registry: &Weak<Self>| {
            let registry = registry.clone();
            let asleep = move |slug: &Slug, addr: &Addr<Post>| {
                if let Some(registry) = registry.upgrade() {
                    registry.forget(slug, addr);
                }
            };
            Self {
                posts: Mutex::new(HashMap::new()),
                waking: Mutex::default(),
                context: Arc::new(PostContext {
                    writer,
                    pulse: Arc::new(Pulse::new(calendar.clone())),
                    calendar,
                    metrics,
                    dedupe_window,
                    changes: Changes::default(),
                    alerts,
                    asleep: Box::new(asleep),
                    counting,
                }),
                reclaimer: Reclaimer::default(),
                site: Site::default(),
            }
        })
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.context.writer
    }

    /// Live readers posts asleep here have: none here, the other nodes' in cluster mode,
    /// read for the occasion (this node follows only the posts it serves).
    async fn remote_live(&self, slugs: &[Slug]) -> Vec<u64> {
        self.context.counting.live_elsewhere(slugs).get().await
    }

    /// Every post with live readers on other nodes (cluster mode), and how many: complete
    /// while this node follows the whole site ([`Served::Site`]).
    pub(crate) fn remote_posts(&self) -> Vec<(Slug, u64)> {
        self.context.counting.remote_posts()
    }

    /// Delivers `msg` to the post if it is awake (a sleeping post reads the cluster on wake);
    /// whether it was.
    pub(crate) fn tell<M>(&self, slug: &Slug, msg: M) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Post: Handler<M>,
    {
        let addr = self.lookup(slug);
        if let Some(addr) = &addr {
            addr.do_send(msg);
        }
        addr.is_some()
    }

    /// A post's total as the shared store announced it: told to the post if it is awake, kept
    /// for it if it is being woken (its load may have read the store before this view was
    /// counted); whether it was awake.
    pub(crate) fn tell_total(&self, slug: &Slug, total: u64) -> bool {
        let posts = self.lock();
        if let Some(addr) = posts.get(slug) {
            addr.do_send(RemoteTotal { total });
            return true;
        }
        if let Some(waking) = lock(&self.waking).get_mut(slug) {
            waking.heard = waking.heard.max(total);
        }
        false
    }

    pub(crate) fn is_awake(&self, slug: &Slug) -> bool {
        self.lock().contains_key(slug)
    }

    /// The posts awake right now.
    pub(crate) fn awake_slugs(&self) -> Vec<Slug> {
        self.lock().keys().cloned().collect()
    }

    /// Every post's broadcasts, for whoever watches all posts (the dashboard).
    pub(crate) fn changes(&self) -> &Changes {
        &self.context.changes
    }

    /// Readers minute by minute, the site's and each post's.
    pub(crate) fn pulse(&self) -> &Arc<Pulse> {
        &self.context.pulse
    }

    /// Cluster mode: a post asleep here has `live` readers on the other nodes.
    pub(crate) fn live_elsewhere(&self, slug: &Slug, live: u64) {
        let context = &self.context;
        let unix = context.calendar.clock().now_unix();
        if context.pulse.set(slug, live, unix) {
            self.raise_site_peak();
        }
        self.changes().live(slug, live);
    }

    /// Cluster mode: the other nodes' readers of the posts this node does not follow (it
    /// knows their sum only): they count in the site's pulse and peak.
    pub(crate) fn live_unfollowed(&self, live: u64) {
        let context = &self.context;
        let unix = context.calendar.clock().now_unix();
        if context.pulse.set_unfollowed(live, unix) {
            self.raise_site_peak();
        }
    }

    /// No post here tells the writer of the site's new high: told at once.
    fn raise_site_peak(&self) {
        let context = &self.context;
        if let Some(peak) = context.pulse.take_new_site_peak() {
            context.writer.raise_site_peak(peak);
        }
    }

    /// The numbers of many posts at once, waking none: awake posts are asked, the others'
    /// totals come from the writer in one round trip. `None` for a post with no views that
    /// is not awake.
    pub(crate) async fn counts_of(&self, slugs: &[Slug]) -> Result<Vec<Option<Counts>>, Refusal> {
        let awake: Vec<Option<Addr<Post>>> = slugs.iter().map(|s| self.lookup(s)).collect();
        let asked = futures_util::future::join_all(awake.iter().map(|addr| async move {
            match addr {
                Some(addr) => addr.send(GetCounts).await.ok()?.ok(),
                None => None,
            }
        }))
        .await;
        // Only the posts no actor answered for are asked of the writer.
        let asleep: Vec<Slug> = slugs
            .iter()
            .zip(&asked)
            .filter(|(_, counts)| counts.is_none())
            .map(|(slug, _)| slug.clone())
            .collect();
        let mut remote = self.remote_live(&asleep).await.into_iter();
        let mut totals = self
            .writer()
            .totals_of(asleep)
            .await
            .map_err(Refusal::from)?
            .into_iter();
        Ok(asked
            .into_iter()
            .map(|counts| {
                counts.or_else(|| {
                    let live = remote.next().unwrap_or(0);
                    totals.next().flatten().map(|total| Counts { live, total })
                })
            })
            .collect())
    }

    /// The numbers of every awake post (the only ones with live readers).
    pub(crate) async fn awake_counts(&self) -> Vec<(Slug, Counts)> {
        let awake: Vec<(Slug, Addr<Post>)> = self
            .lock()
            .iter()
            .map(|(slug, addr)| (slug.clone(), addr.clone()))
            .collect();
        let asked =
            futures_util::future::join_all(awake.into_iter().map(|(slug, addr)| async move {
                let counts = addr.send(GetCounts).await.ok()?.ok()?;
                Some((slug, counts))
            }))
            .await;
        asked.into_iter().flatten().collect()
    }

    /// Every post with live readers and how many: the awake ones, and in cluster mode those
    /// read only on other nodes.
    pub(crate) async fn live_counts(&self) -> Vec<(Slug, u64)> {
        let mut live: Vec<(Slug, u64)> = self
            .awake_counts()
            .await
            .into_iter()
            .filter(|(_, c)| c.live > 0)
            .map(|(slug, c)| (slug, c.live))
            .collect();
        let counting = &*self.context.counting;
        let (serving, ready) = Serving::start(counting, Served::Site);
        ready.heard().await;
        let elsewhere = counting.remote_posts();
        drop(serving);
        let awake = self.lock();
        live.extend(
            elsewhere
                .into_iter()
                .filter(|(slug, _)| !awake.contains_key(slug)),
        );
        live
    }

    /// Views imported for a post: if it is awake, its readers see the new total.
    pub(crate) fn imported(&self, slug: &Slug, views: u64) {
        self.tell(slug, Imported { views });
    }

    /// Posts awake right now.
    pub(crate) fn awake(&self) -> usize {
        self.lock().len()
    }

    /// Opens a stream on the post, waking it if needed.
    pub(crate) async fn join(
        self: &Arc<Self>,
        slug: &Slug,
        admission: Admission,
        join: Join,
    ) -> Result<Joined, Refusal> {
        let joined = self.ask_awake(slug, Some(&admission), join).await?;
        // With an admission, `wake` finds or makes the post (or says why not).
        joined.ok_or_else(|| Refusal::Internal(format!("post {slug} was not woken")))
    }

    /// Follows a post's numbers without counting anything, waking it if it exists: a listed
    /// post, or (any slug) one with views. `None` for a post that does not exist yet: watching
    /// creates no post, no row and no memory. The post stays awake while the answer's
    /// [`Watcher`](crate::posts::post::Watcher) lives.
    pub(crate) async fn watch(
        self: &Arc<Self>,
        slug: &Slug,
        admission: &Admission,
    ) -> Result<Option<Watched>, Refusal> {
        self.ask_awake(slug, admission.existing(), Watch).await
    }

    /// Follows the whole site's numbers (`*`): everyone reading any post, all views.
    pub(crate) async fn watch_site(self: &Arc<Self>) -> Result<Watched, Refusal> {
        let registry = Arc::clone(self);
        let snapshot: Snapshot = Arc::new(move || {
            let registry = Arc::clone(&registry);
            Box::pin(async move {
                let totals = registry.writer().totals().await.map_err(Refusal::from)?;
                Ok(Sums::new(totals, registry.live_counts().await))
            })
        });
        self.site.watch(self.changes(), snapshot).await
    }

    /// Sends `message` to the post, woken if needed (see [`Registry::wake`] for `admission`);
    /// a post that went to sleep meanwhile is woken again.
    async fn ask_awake<M, T>(
        self: &Arc<Self>,
        slug: &Slug,
        admission: Option<&Admission>,
        message: M,
    ) -> Result<Option<T>, Refusal>
    where
        M: Message<Result = Result<T, Asleep>> + Clone + Send + 'static,
        T: Send + 'static,
        Post: Handler<M>,
    {
        loop {
            let Some(addr) = self.wake(slug, admission).await? else {
                return Ok(None);
            };
            match addr.send(message.clone()).await {
                Ok(Ok(answer)) => return Ok(Some(answer)),
                // Went to sleep meanwhile: it has left the map, so the next turn wakes a new one.
                Ok(Err(_)) | Err(MailboxError::Closed) => self.forget(slug, &addr),
                Err(MailboxError::Timeout) => {
                    return Err(Refusal::Internal(format!("post {slug} did not answer")));
                }
            }
        }
    }

    /// The numbers of a post without waking it: a sleeping post has no live readers.
    pub(crate) async fn counts(&self, slug: &Slug) -> Result<Counts, Refusal> {
        if let Some(addr) = self.lookup(slug)
            && let Ok(Ok(counts)) = addr.send(GetCounts).await
        {
            return Ok(counts);
        }
        let live = self.remote_live(std::slice::from_ref(slug)).await;
        match self.writer().load(slug, LoadFor::Numbers).await {
            Ok(loaded) => Ok(Counts {
                live: live.first().copied().unwrap_or(0),
                total: loaded.total,
            }),
            Err(e) => Err(Refusal::from(e)),
        }
    }

    /// Delivers a beacon leave to the post if it is awake; a sleeping post has nobody to lose.
    pub(crate) fn leave(&self, slug: &Slug, leave: Leave) {
        if let Some(addr) = self.lookup(slug) {
            addr.do_send(leave);
        }
    }

    /// Called by a post going to sleep; removes it only if it is still the registered actor.
    pub(crate) fn forget(&self, slug: &Slug, addr: &Addr<Post>) {
        let mut posts = self.lock();
        if posts.get(slug) == Some(addr) {
            posts.remove(slug);
            self.context.counting.stop_serving(Served::Post(slug));
            self.reclaimer.post_slept();
            // After a spike the map would keep its peak capacity.
            if posts.capacity() > 1024 && posts.len() < posts.capacity() / 4 {
                let keep = posts.len() * 2;
                posts.shrink_to(keep);
            }
        }
    }

    /// How many times memory was given back since start.
    pub(crate) fn memory_reclaims(&self) -> u64 {
        self.reclaimer.reclaims()
    }

    /// Gives memory back once enough posts slept or streams closed (see [`crate::memory`]);
    /// `workers` are the threads posts live on.
    pub(crate) async fn reclaim_if_worthwhile(
        &self,
        streams_fallen: usize,
        workers: &[ArbiterHandle],
    ) {
        self.reclaimer
            .reclaim_if_worthwhile(streams_fallen, workers, self.writer())
            .await;
    }

    fn lookup(&self, slug: &Slug) -> Option<Addr<Post>> {
        self.lock().get(slug).cloned()
    }

    /// The awake post, woken if needed. A post the writer knows nothing of is made only with
    /// an `admission` (which may refuse it); without one it is `None`.
    async fn wake(
        self: &Arc<Self>,
        slug: &Slug,
        admission: Option<&Admission>,
    ) -> Result<Option<Addr<Post>>, Refusal> {
        if let Some(addr) = self.lookup(slug) {
            return Ok(Some(addr));
        }
        // Cluster mode: the post's channel is in place before its first numbers are taken
        // (its total below, the other nodes' readers in `Post::new`), so no live change falls
        // between them; a total announced from here to the post's start is kept for it
        // ([`Registry::tell_total`]). The hold passes to the post woken here, or is given
        // back.
        let _waking = WakingGuard::new(self, slug);
        let (serving, ready) = Serving::start(&*self.context.counting, Served::Post(slug));
        ready.heard().await;
        let woken = self.wake_served(slug, admission).await;
        // Nothing awaits between the post's start and here: a woken post always keeps it.
        if matches!(&woken, Ok(Some((_, true)))) {
            serving.keep();
        }
        woken.map(|woken| woken.map(|(addr, _)| addr))
    }

    /// [`Registry::wake`] once the post is served; with whether this call woke it.
    async fn wake_served(
        self: &Arc<Self>,
        slug: &Slug,
        admission: Option<&Admission>,
    ) -> Result<Option<(Addr<Post>, bool)>, Refusal> {
        let mut loaded = self.writer().load(slug, LoadFor::Readers).await;
        // Cluster mode, Redis lost the post's data: woken now, it would show a total that
        // dropped; it waits for the rebuild (a beat or two) and loads again.
        if let Err(e) = &loaded
            && let Some(rebuilt) = self.context.counting.rebuilding(slug, e)
        {
            rebuilt.await;
            loaded = self.writer().load(slug, LoadFor::Readers).await;
        }
        let loaded = match loaded {
            Ok(loaded) => loaded,
            // Whether a post can be served without its total is the counter's call.
            Err(e) => Loaded {
                total: self.context.counting.unloaded(slug, e)?,
                seen: Vec::new(),
                new: false,
            },
        };
        // The writer knows nothing of it: whether it may exist is the slug admission's call.
        let new_post = match (loaded.new, admission) {
            (false, _) => None,
            (true, Some(admission)) => admission.admit_new()?,
            (true, None) => return Ok(None),
        };
        let mut posts = self.lock();
        // Another request may have woken it while we loaded (its place, if any, goes back).
        if let Some(addr) = posts.get(slug) {
            return Ok(Some((addr.clone(), false)));
        }
        let post = Post::new(
            slug.clone(),
            loaded.total,
            Arc::clone(&self.context),
            new_post,
        );
        let seen = loaded.seen;
        let addr = post.remembering(seen).start();
        // Announced during the wake: the post takes the higher, as from any announcement.
        if let Some(heard) = lock(&self.waking).get(slug).map(|w| w.heard)
            && heard > 0
        {
            addr.do_send(RemoteTotal { total: heard });
        }
        posts.insert(slug.clone(), addr.clone());
        Ok(Some((addr, true)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slug, Addr<Post>>> {
        lock(&self.posts)
    }
}

/// The map stays consistent even if a holder panicked: every critical section is one call.
fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A post being woken (see [`Registry::tell_total`]).
#[derive(Default)]
struct Waking {
    /// Wakes of it under way (requests that found it asleep at once).
    wakers: usize,
    /// The highest total announced since the first began.
    heard: u64,
}

/// One wake of a post under way, from before its channel is in place until it is started or
/// given up.
struct WakingGuard<'a> {
    registry: &'a Registry,
    slug: &'a Slug,
}

impl<'a> WakingGuard<'a> {
    fn new(registry: &'a Registry, slug: &'a Slug) -> Self {
        lock(&registry.waking)
            .entry(slug.clone())
            .or_default()
            .wakers += 1;
        Self { registry, slug }
    }
}

impl Drop for WakingGuard<'_> {
    fn drop(&mut self) {
        let mut waking = lock(&self.registry.waking);
        if let Some(w) = waking.get_mut(self.slug) {
            w.wakers -= 1;
            if w.wakers == 0 {
                waking.remove(self.slug);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::edge::reader_id::ReaderId;
    use crate::posts::cluster_port::{Hearing, Verdict};
    use crate::posts::local_counting::LocalCounting;
    use crate::storage::calendar::Clock;
    use crate::storage::store::RedbStore;
    use crate::storage::writer::{FlushPolicy, WriterError};

    /// A single node's counting, except that the shared store announces a new total of the
    /// post while the post is being woken (after its channel is asked for, before it starts).
    struct AnnouncingWhileWaking {
        local: LocalCounting,
        registry: OnceLock<Weak<Registry>>,
        total: u64,
    }

    impl Counting for AnnouncingWhileWaking {
        fn count(&self, slug: &Slug, reader: ReaderId, at: u64) -> Verdict {
            self.local.count(slug, reader, at)
        }
        fn remote_live(&self, slug: &Slug) -> u64 {
            self.local.remote_live(slug)
        }
        fn remote_posts(&self) -> Vec<(Slug, u64)> {
            self.local.remote_posts()
        }
        fn unsynced(&self, slug: &Slug) -> u64 {
            self.local.unsynced(slug)
        }
        fn set_local_live(&self, slug: &Slug, live: u64) {
            self.local.set_local_live(slug, live);
        }
        fn imported(&self, views: u64) -> u64 {
            self.local.imported(views)
        }
        fn unloaded(&self, slug: &Slug, error: WriterError) -> Result<u64, WriterError> {
            self.local.unloaded(slug, error)
        }
        fn serve<'a>(&'a self, what: Served<'a>) -> Hearing<'a> {
            let Served::Post(slug) = what else {
                return Hearing::Now;
            };
            Hearing::Once(Box::pin(async move {
                let registry = self.registry.get().and_then(Weak::upgrade).unwrap();
                assert!(!registry.tell_total(slug, self.total), "not awake yet");
            }))
        }
        fn stop_serving(&self, what: Served<'_>) {
            self.local.stop_serving(what);
        }
    }

    /// The listener tells a post's new total to the registry; a post not started yet, whose
    /// load may have read the store before that view was counted, must still hear it.
    #[actix_web::test]
    async fn a_total_announced_while_a_post_is_being_woken_reaches_the_post() {
        let dir = tempfile::tempdir().unwrap();
        let calendar = Calendar::new(jiff::tz::TimeZone::UTC, Clock::default());
        let metrics = Metrics::new();
        let policy = FlushPolicy {
            after: Duration::from_millis(10),
            max_wait: Duration::from_millis(10),
            dedupe_window: Duration::from_secs(1800),
        };
        let db = RedbStore::open(&dir.path().join("views.redb")).unwrap();
        let writer =
            Writer::spawn(Box::new(db), policy, calendar.clone(), Arc::clone(&metrics)).unwrap();
        let slug = Slug::parse("a-post").unwrap();
        writer.add_counts(&slug, 3, None);
        let counting = Arc::new(AnnouncingWhileWaking {
            local: LocalCounting::new(writer.clone()),
            registry: OnceLock::new(),
            total: 50,
        });
        let registry = Registry::new(
            writer,
            policy.dedupe_window,
            calendar,
            metrics,
            Arc::clone(&counting) as Arc<dyn Counting>,
            None,
        );
        let _ = counting.registry.set(Arc::downgrade(&registry));
        assert!(registry.wake(&slug, None).await.unwrap().is_some());
        assert_eq!(registry.counts(&slug).await.unwrap().total, 50);
    }
}
