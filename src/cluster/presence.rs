//! Merged presence: this node's live readers per post in `vc:node:ID`, a hash kept up to date
//! change by change, and the other nodes' readers of the posts this node follows, kept until a
//! node leaves, stops renewing, or says it is gone.
//!
//! Presence costs follow change, not size. Each change of a node's presence has a number (its
//! version; they follow each other, one per post changed) and is written to its hash and
//! published on the post's own channel (`vc:ev:SLUG`, see [`crate::cluster::channels`]) by one
//! script: O(1) Redis work, heard only by the nodes that serve that post. The hash also holds
//! the node's readers over all posts (`#s`, written with every change) and the version of its
//! last rewrite (`#r`). The heartbeat renews the hash and reads each peer's version, sum and
//! rewrite mark (three fields, whatever the node serves).
//!
//! Versions order what this node hears of one peer's post: an announcement and a read of the
//! hash (whose `""` field is the version of the last change in it) each carry one, and the
//! newer wins, whichever reaches this node first. Pub/sub loses a message only when this
//! node's subscription drops (then every followed post is read again, see
//! [`crate::cluster::Cluster`]) or when a peer rewrites its hash without announcing (a failed
//! write, Redis lost it): its `#r` moves, and the next heartbeat reads the followed posts of
//! that peer. Either way a lost change is healed within a heartbeat or two.
//!
//! The readers of posts not followed here count only in the site's sum (the pulse, the site's
//! peak): each peer's `#s` minus its readers of the posts followed here ([`Presence::elsewhere`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::link::{EVENTS, Link, LinkError, POST_CHANNELS};
use crate::edge::slug::Slug;

/// How often a node renews its presence and reads the others' versions.
pub(crate) const BEAT: Duration = Duration::from_secs(1);
/// A node not heard of for this long is gone: its key expires, and peers drop it.
pub(crate) const EXPIRY: Duration = Duration::from_secs(3);
/// Every node, scored by its last heartbeat (ms): how nodes find each other and hear each
/// other beat.
const NODES: &str = "vc:nodes";
/// Entries of nodes silent this long are swept from [`NODES`].
const FORGET_AFTER_MS: u64 = 60_000;
/// The field of a presence hash holding its version (no slug is empty).
const VERSION_FIELD: &str = "";
/// The field holding the node's readers over all its posts (no slug holds a `#`).
const SUM_FIELD: &str = "#s";
/// The field holding the version of the node's last whole rewrite.
const REWRITE_FIELD: &str = "#r";
/// The field holding the node's `--dedupe-window` (ms): every node must count with the same
/// one, and each reads the others' at every heartbeat.
const WINDOW_FIELD: &str = "#w";
/// Posts asked of a peer per `HMGET`.
const READ_CHUNK: usize = 500;

/// Writes a burst of changes to a presence hash that exists (else 0: the caller rewrites it
/// whole, so no peer reads a hash holding only the last changes) and publishes each on its
/// post's channel.
/// KEYS: the hash. ARGV: the channels' prefix, expiry (ms), node, the node's readers over all
/// posts, then slug, live (0: the post has no reader left here) and version per change. (The
/// channels are no keys: a Redis Cluster would refuse a script whose keys hash to two slots;
/// its `PUBLISH` reaches every node of the cluster.) Versions stay strings: Lua's numbers would
/// print a 16-digit one as `1.7e+15`.
const CHANGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 5, #ARGV, 3 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('PUBLISH', ARGV[1] .. ARGV[i], 'l ' .. ARGV[3] .. ' ' .. ARGV[i] .. ' ' ..
    ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[4])
end
redis.call('HSET', KEYS[1], '', ARGV[#ARGV], '#s', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

static CHANGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CHANGE));

fn node_key(node: &str) -> String {
    format!("vc:node:{node}")
}

/// A peer's readers of one post, as of its change `version`. Kept at 0 readers too while the
/// post is followed, so an older read cannot undo a newer change.
#[derive(Debug, Clone, Copy)]
struct Known {
    live: u64,
    version: u64,
}

/// One other node as last heard.
#[derive(Default)]
struct Peer {
    /// Its readers of the posts followed here (of every post while the whole site is).
    /// Changed only by [`Peer::take`], [`Peer::forget`] and [`Peer::keep_only`], which keep
    /// `followed` its sum.
    live: HashMap<Slug, Known>,
    /// The sum of `live`: what [`Presence::elsewhere`] takes off `sum`, several times a
    /// second, without walking every followed post (15,000 a node in the idle benchmark).
    followed: u64,
    /// Its readers over all posts, as of version `sum_version`.
    sum: u64,
    sum_version: u64,
    /// Its rewrite mark (`#r`) when its followed posts were last read: another one means
    /// it rewrote its hash since, without announcing.
    read_at: Option<u64>,
    /// Its last heartbeat (ms, from [`NODES`]): a node is heard when it changes.
    beat_ms: Option<u64>,
    /// Its `--dedupe-window` (ms), once its hash says (a node of an older version's does not).
    window_ms: Option<u64>,
    heard: Option<Instant>,
}

impl Peer {
    /// Applies what it had for `slug` at `version`; whether it was news.
    fn take(&mut self, slug: &Slug, live: u64, version: u64) -> bool {
        match self.live.get_mut(slug) {
            Some(known) if known.version >= version => false,
            Some(known) => {
                let moved = known.live != live;
                self.followed = self
                    .followed
                    .saturating_sub(known.live)
                    .saturating_add(live);
                *known = Known { live, version };
                moved
            }
            None => {
                self.live.insert(slug.clone(), Known { live, version });
                self.followed = self.followed.saturating_add(live);
                live > 0
            }
        }
    }

    /// `slug` is no longer followed here.
    fn forget(&mut self, slug: &Slug) {
        if let Some(known) = self.live.remove(slug) {
            self.followed = self.followed.saturating_sub(known.live);
        }
    }

    /// Keeps the posts `keep` says; the others are no longer followed here.
    fn keep_only(&mut self, mut keep: impl FnMut(&Slug) -> bool) {
        let mut dropped = 0u64;
        self.live.retain(|slug, known| {
            let kept = keep(slug);
            if !kept {
                dropped = dropped.saturating_add(known.live);
            }
            kept
        });
        self.followed = self.followed.saturating_sub(dropped);
    }

    fn take_sum(&mut self, sum: u64, version: u64) {
        if version > self.sum_version {
            self.sum = sum;
            self.sum_version = version;
        }
    }

    fn is_silent(&self) -> bool {
        self.heard.is_none_or(|at| at.elapsed() >= EXPIRY)
    }
}

/// A message on a post's channel or on [`EVENTS`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// `op`: the op of the view that moved it, when a count script announces it (a rebuild
    /// or an import announces without one).
    Total {
        slug: Slug,
        total: u64,
        op: Option<String>,
    },
    /// `version`: the number of this change of the node's presence; `sum`: the node's
    /// readers over all posts after it.
    Live {
        node: String,
        slug: Slug,
        live: u64,
        version: u64,
        sum: u64,
    },
    Gone {
        node: String,
    },
}

impl Event {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let event = match parts.next()? {
            "t" => Self::Total {
                slug: Slug::parse(parts.next()?).ok()?,
                total: parts.next()?.parse().ok()?,
                op: parts.next().map(str::to_owned),
            },
            "l" => Self::Live {
                node: parts.next()?.to_owned(),
                slug: Slug::parse(parts.next()?).ok()?,
                live: parts.next()?.parse().ok()?,
                version: parts.next()?.parse().ok().filter(|&v| v > 0)?,
                sum: parts.next()?.parse().ok()?,
            },
            "g" => Self::Gone {
                node: parts.next()?.to_owned(),
            },
            _ => return None,
        };
        parts.next().is_none().then_some(event)
    }
}

/// Posts whose live readers on other nodes changed, with the new sum.
pub(crate) type Moved = Vec<(Slug, u64)>;

/// Another node as the heartbeat read it: its last beat (ms), and from its hash its version,
/// sum, rewrite mark and `--dedupe-window` (`None`: its hash has expired or is not written
/// yet).
type Beat = (u64, Option<u64>, Option<u64>, Option<u64>, Option<u64>);

/// What a read of one peer's hash gave: its version, then the readers of the posts read.
type Read = (String, u64, Vec<(Slug, u64)>);

/// The posts this node keeps its peers' readers of.
#[derive(Default)]
struct Following {
    posts: HashSet<Slug>,
    /// Every post (the node pattern-subscribes: see [`crate::cluster::channels`]).
    whole_site: bool,
}

impl Following {
    fn follows(&self, slug: &Slug) -> bool {
        self.whole_site || self.posts.contains(slug)
    }
}

pub(crate) struct Presence {
    node: String,
    /// This node's live readers per post (posts with none are absent).
    local: Mutex<HashMap<Slug, u64>>,
    /// Posts whose local live changed, to announce.
    changes: UnboundedSender<Slug>,
    peers: Mutex<HashMap<String, Peer>>,
    following: Mutex<Following>,
    /// This node's presence version: held across each write, so versions reach Redis in
    /// order. It starts at the clock (µs), so a node restarted with the same `--node-id`
    /// continues past its last version rather than repeating it.
    version: tokio::sync::Mutex<u64>,
    /// A write failed or found no hash: the next heartbeat writes it whole.
    dirty: AtomicBool,
    /// This node's `--dedupe-window` (ms), written in its hash for the others to compare.
    window_ms: u64,
}

impl Presence {
    pub(crate) fn new(node: String, changes: UnboundedSender<Slug>, window: Duration) -> Self {
        Self {
            window_ms: window.as_millis().try_into().unwrap_or(u64::MAX),
            node,
            local: Mutex::default(),
            changes,
            peers: Mutex::default(),
            following: Mutex::default(),
            version: tokio::sync::Mutex::new(unix_ms() * 1000),
            dirty: AtomicBool::new(true),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// A post's live readers on this node moved (reported once per coalesced broadcast).
    pub(crate) fn set_local(&self, slug: &Slug, live: u64) {
        let mut local = lock(&self.local);
        let before = if live == 0 {
            local.remove(slug)
        } else {
            local.insert(slug.clone(), live)
        };
        drop(local);
        if before.unwrap_or(0) != live {
            let _ = self.changes.send(slug.clone());
        }
    }

    fn local_of(&self, slug: &Slug) -> u64 {
        lock(&self.local).get(slug).copied().unwrap_or(0)
    }

    fn local_sum(&self) -> u64 {
        lock(&self.local).values().sum()
    }

    /// A post's live readers on every other live node (0 for a post not followed here).
    pub(crate) fn remote_live(&self, slug: &Slug) -> u64 {
        sum(&lock(&self.peers), slug)
    }

    /// Every followed post with live readers on other nodes, and how many: every post of the
    /// cluster while the whole site is followed.
    pub(crate) fn remote_posts(&self) -> Vec<(Slug, u64)> {
        let peers = lock(&self.peers);
        let mut all: HashMap<Slug, u64> = HashMap::new();
        for (slug, known) in peers.values().flat_map(|p| &p.live) {
            *all.entry(slug.clone()).or_default() += known.live;
        }
        all.into_iter().filter(|&(_, live)| live > 0).collect()
    }

    /// The other nodes' readers of the posts not followed here: each peer's sum less its
    /// readers of the posts followed here (which a heartbeat may lag by a beat).
    pub(crate) fn elsewhere(&self) -> u64 {
        let peers = lock(&self.peers);
        peers
            .values()
            .map(|p| p.sum.saturating_sub(p.followed))
            .sum()
    }

    /// The other nodes counting with another `--dedupe-window` than this one: (node, its
    /// window in ms), by node.
    pub(crate) fn window_conflicts(&self) -> Vec<(String, u64)> {
        let peers = lock(&self.peers);
        let mut conflicts: Vec<(String, u64)> = (peers.iter())
            .filter_map(|(node, p)| Some((node.clone(), p.window_ms?)))
            .filter(|(_, w)| *w != self.window_ms)
            .collect();
        conflicts.sort();
        conflicts
    }

    /// Live nodes seen, this one included.
    pub(crate) fn nodes(&self) -> usize {
        1 + lock(&self.peers).len()
    }

    /// The known peers, to read the followed posts of.
    pub(crate) fn peer_nodes(&self) -> Vec<String> {
        lock(&self.peers).keys().cloned().collect()
    }

    /// From now on the peers' readers of `slugs` are kept (heard and read).
    pub(crate) fn follow(&self, slugs: &[Slug]) {
        lock(&self.following).posts.extend(slugs.iter().cloned());
    }

    /// `slugs` are no longer followed: their peers' readers are forgotten (unless the whole
    /// site is followed). Returns those no longer known, for the pulse to set to 0.
    pub(crate) fn unfollow(&self, slugs: &[Slug]) -> Vec<Slug> {
        let mut following = lock(&self.following);
        for slug in slugs {
            following.posts.remove(slug);
        }
        if following.whole_site {
            return Vec::new();
        }
        drop(following);
        let mut peers = lock(&self.peers);
        for peer in peers.values_mut() {
            for slug in slugs {
                peer.forget(slug);
            }
        }
        slugs.to_vec()
    }

    /// Follows every post (`true`) or only those followed one by one. Returns the posts
    /// forgotten when the whole site stops being followed.
    pub(crate) fn whole_site(&self, on: bool) -> Vec<Slug> {
        let mut following = lock(&self.following);
        following.whole_site = on;
        if on {
            return Vec::new();
        }
        let mut peers = lock(&self.peers);
        let mut forgotten = HashSet::new();
        for peer in peers.values_mut() {
            peer.keep_only(|slug| {
                let keep = following.posts.contains(slug);
                if !keep {
                    forgotten.insert(slug.clone());
                }
                keep
            });
        }
        forgotten.into_iter().collect()
    }

    pub(crate) fn follows_whole_site(&self) -> bool {
        lock(&self.following).whole_site
    }

    /// Writes and announces the local live of `slugs`: one script, O(1) per post. A failed
    /// write (or one that found the hash gone) leaves the hash to the next heartbeat.
    pub(crate) async fn announce(
        &self,
        link: &Link,
        slugs: &HashSet<Slug>,
    ) -> Result<(), LinkError> {
        if !link.health.is_up() {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(LinkError::NotConnected);
        }
        let mut version = self.version.lock().await;
        let mut invocation = CHANGE_SCRIPT.key(node_key(&self.node));
        invocation
            .arg(POST_CHANNELS)
            .arg(EXPIRY.as_millis() as u64)
            .arg(&self.node)
            .arg(self.local_sum());
        for slug in slugs {
            // Numbered whatever Redis answers.
            *version += 1;
            invocation
                .arg(slug.as_str())
                .arg(self.local_of(slug))
                .arg(*version);
        }
        let written = link
            .call("announce", |mut conn| async move {
                invocation.invoke_async::<bool>(&mut conn).await
            })
            .await;
        if !matches!(written, Ok(true)) {
            self.dirty.store(true, Ordering::Relaxed);
        }
        written.map(drop)
    }

    /// Writes this node's whole presence under a new version, marked as a rewrite (at
    /// start, and when a write failed or Redis lost the hash): peers read it again.
    async fn rewrite(&self, link: &Link) -> Result<(), LinkError> {
        let mut version = self.version.lock().await;
        *version += 1;
        let me = node_key(&self.node);
        let mut fields: Vec<(String, String)> = lock(&self.local)
            .iter()
            .map(|(slug, live)| (slug.as_str().to_owned(), live.to_string()))
            .collect();
        let sum = self.local_sum().to_string();
        fields.push((VERSION_FIELD.to_owned(), version.to_string()));
        fields.push((SUM_FIELD.to_owned(), sum));
        fields.push((REWRITE_FIELD.to_owned(), version.to_string()));
        fields.push((WINDOW_FIELD.to_owned(), self.window_ms.to_string()));
        let mut write = redis::pipe();
        write
            .atomic()
            .del(&me)
            .ignore()
            .hset_multiple(&me, &fields)
            .ignore()
            .pexpire(&me, EXPIRY.as_millis() as i64)
            .ignore();
        self.dirty.store(false, Ordering::Relaxed);
        let written = link
            .call("presence", |mut conn| async move {
                write.query_async::<()>(&mut conn).await
            })
            .await;
        if written.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// Renews this node's presence and reads the others' versions, sums and rewrite marks;
    /// reads the followed posts only of a peer that is new here or rewrote its hash.
    /// `grace`: Redis was down until now, so a peer missing from it may just not have written
    /// since; it is kept until it expires rather than dropped at once (no dip when Redis
    /// returns).
    pub(crate) async fn beat(&self, link: &Link, grace: bool) -> Result<Moved, LinkError> {
        let me = node_key(&self.node);
        let now_ms = unix_ms();
        // Not a transaction: this node's hash and `vc:nodes` are in two hash slots of a Redis
        // Cluster (a MULTI there must be of one); nothing here needs them changed at once.
        let mut renew = redis::pipe();
        renew
            .pexpire(&me, EXPIRY.as_millis() as i64)
            .zadd(NODES, &self.node, now_ms)
            .ignore()
            .zrembyscore(NODES, "-inf", now_ms.saturating_sub(FORGET_AFTER_MS))
            .ignore()
            .zrange_withscores(NODES, 0, -1);
        let (renewed, members): (bool, Vec<(String, f64)>) = link
            .call("heartbeat", |mut conn| async move {
                renew.query_async(&mut conn).await
            })
            .await?;
        // No hash to renew: Redis lost it (restarted, flushed), or it is our first beat.
        if !renewed || self.dirty.load(Ordering::Relaxed) {
            self.rewrite(link).await?;
        }
        let others: Vec<(String, u64)> = members
            .into_iter()
            .filter(|(n, _)| *n != self.node)
            .map(|(n, ms)| (n, ms as u64))
            .collect();
        let mut read = redis::pipe();
        for (node, _) in &others {
            read.cmd("HMGET").arg(node_key(node)).arg(&[
                VERSION_FIELD,
                SUM_FIELD,
                REWRITE_FIELD,
                WINDOW_FIELD,
            ]);
        }
        type Marks = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);
        let marks: Vec<Marks> = if others.is_empty() {
            Vec::new()
        } else {
            link.call("presence versions", |mut conn| async move {
                read.query_async(&mut conn).await
            })
            .await?
        };
        let beats: HashMap<String, Beat> = others
            .into_iter()
            .zip(marks)
            .map(|((node, ms), (version, sum, rewrite, window))| {
                (node, (ms, version, sum, rewrite, window))
            })
            .collect();
        let (mut moved, stale) = self.merge(beats, grace);
        if !stale.is_empty() {
            moved.extend(self.read(link, &stale).await?);
        }
        Ok(moved)
    }

    /// Takes the peers' beats; drops a peer that left the node set (it was stopped). Returns
    /// what moved and the peers (with their rewrite marks) whose followed posts must be read.
    fn merge(&self, beats: HashMap<String, Beat>, grace: bool) -> (Moved, Vec<(String, u64)>) {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let left: Vec<String> = peers
            .keys()
            .filter(|node| !grace && !beats.contains_key(*node))
            .cloned()
            .collect();
        let moved = drop_peers(&mut peers, &left);
        let mut stale = Vec::new();
        for (node, (beat_ms, version, sum, rewrite, window_ms)) in beats {
            let Some(version) = version else {
                continue; // expired: kept until it is silent for EXPIRY
            };
            // A hash never rewritten by a node of this version: read once.
            let rewrite = rewrite.unwrap_or(0);
            let peer = peers.entry(node.clone()).or_default();
            if peer.beat_ms != Some(beat_ms) {
                peer.heard = Some(now);
                peer.beat_ms = Some(beat_ms);
            }
            peer.take_sum(sum.unwrap_or(0), version);
            if window_ms.is_some() && window_ms != peer.window_ms {
                peer.window_ms = window_ms;
                if window_ms != Some(self.window_ms) {
                    tracing::error!(
                        %node,
                        node_window_ms = window_ms,
                        window_ms = self.window_ms,
                        "another node counts with another --dedupe-window: a reader may be counted again through one of them; give every node the same"
                    );
                }
            }
            if peer.read_at != Some(rewrite) {
                stale.push((node, rewrite));
            }
        }
        (moved, stale)
    }

    /// Reads the followed posts (every post while the whole site is followed) of `stale`
    /// peers, each with the rewrite mark it is read at.
    async fn read(&self, link: &Link, stale: &[(String, u64)]) -> Result<Moved, LinkError> {
        let nodes: Vec<String> = stale.iter().map(|(node, _)| node.clone()).collect();
        let moved = if self.follows_whole_site() {
            self.read_all(link, &nodes).await?
        } else {
            let slugs: Vec<Slug> = lock(&self.following).posts.iter().cloned().collect();
            self.read_posts(link, &nodes, &slugs).await?
        };
        let mut peers = lock(&self.peers);
        for (node, rewrite) in stale {
            if let Some(peer) = peers.get_mut(node) {
                peer.read_at = Some(*rewrite);
            }
        }
        Ok(moved)
    }

    /// Whether the other nodes' readers of `slug` are kept here (heard and read).
    pub(crate) fn follows(&self, slug: &Slug) -> bool {
        lock(&self.following).follows(slug)
    }

    /// The readers on every known peer of each of `slugs`, in order, read once and kept
    /// nowhere (`HMGET` per peer per chunk, in one round trip a chunk): for a read of posts
    /// not followed here.
    pub(crate) async fn peek(&self, link: &Link, slugs: &[&Slug]) -> Result<Vec<u64>, LinkError> {
        let nodes = self.peer_nodes();
        let mut live = Vec::with_capacity(slugs.len());
        for chunk in slugs.chunks(READ_CHUNK) {
            if nodes.is_empty() {
                live.extend(chunk.iter().map(|_| 0));
                continue;
            }
            let mut read = redis::pipe();
            for node in &nodes {
                read.cmd("HMGET")
                    .arg(node_key(node))
                    .arg(chunk.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            }
            let got: Vec<Vec<Option<u64>>> = link
                .call("presence of posts", |mut conn| async move {
                    read.query_async(&mut conn).await
                })
                .await?;
            let mut sums = vec![0u64; chunk.len()];
            for values in got {
                for (sum, v) in sums.iter_mut().zip(values) {
                    *sum = sum.saturating_add(v.unwrap_or(0));
                }
            }
            live.extend(sums);
        }
        Ok(live)
    }

    /// Reads `slugs` of each of `nodes` (`HMGET`: O(nodes) per post), after this node
    /// subscribed to their channels or missed their messages.
    pub(crate) async fn read_posts(
        &self,
        link: &Link,
        nodes: &[String],
        slugs: &[Slug],
    ) -> Result<Moved, LinkError> {
        let mut moved = Vec::new();
        for chunk in slugs.chunks(READ_CHUNK) {
            let mut read = redis::pipe();
            for node in nodes {
                read.hget(node_key(node), VERSION_FIELD)
                    .cmd("HMGET")
                    .arg(node_key(node))
                    .arg(chunk.iter().map(Slug::as_str).collect::<Vec<_>>());
            }
            let got: Vec<redis::Value> = link
                .call("presence of posts", |mut conn| async move {
                    read.query_async(&mut conn).await
                })
                .await?;
            let mut reads = Vec::new();
            for (node, pair) in nodes.iter().zip(got.chunks(2)) {
                let [version, values] = pair else { continue };
                let Ok(Some(version)) = redis::from_redis_value::<Option<u64>>(version) else {
                    continue; // expired: nothing to read
                };
                let Ok(values) = redis::from_redis_value::<Vec<Option<u64>>>(values) else {
                    continue;
                };
                let live = chunk
                    .iter()
                    .cloned()
                    .zip(values.into_iter().map(|v| v.unwrap_or(0)))
                    .collect();
                reads.push((node.clone(), version, live));
            }
            moved.extend(self.take_reads(reads, false));
        }
        Ok(moved)
    }

    /// Reads the whole hash of each of `nodes`: every post, as the whole site is followed.
    pub(crate) async fn read_all(&self, link: &Link, nodes: &[String]) -> Result<Moved, LinkError> {
        let mut read = redis::pipe();
        for node in nodes {
            read.hgetall(node_key(node));
        }
        let states: Vec<HashMap<String, String>> = if nodes.is_empty() {
            Vec::new()
        } else {
            link.call("presence", |mut conn| async move {
                read.query_async(&mut conn).await
            })
            .await?
        };
        let mut reads = Vec::new();
        for (node, mut state) in nodes.iter().zip(states) {
            let Some(version) = state.remove(VERSION_FIELD).and_then(|v| v.parse().ok()) else {
                continue; // expired since
            };
            let live = state
                .into_iter()
                .filter_map(|(slug, live)| Some((Slug::parse(&slug).ok()?, live.parse().ok()?)))
                .collect();
            reads.push((node.clone(), version, live));
        }
        Ok(self.take_reads(reads, true))
    }

    /// Applies reads of peers' hashes. `whole`: each read holds every post of its peer, so
    /// a post it does not hold has no reader there.
    fn take_reads(&self, reads: Vec<Read>, whole: bool) -> Moved {
        let following = lock(&self.following);
        let mut peers = lock(&self.peers);
        let mut moved = Vec::new();
        for (node, version, live) in reads {
            let mut posts: HashMap<Slug, u64> = live
                .into_iter()
                .filter(|(slug, _)| following.follows(slug))
                .collect();
            if whole && let Some(peer) = peers.get(&node) {
                for slug in peer.live.keys() {
                    posts.entry(slug.clone()).or_insert(0);
                }
            }
            for (slug, live) in posts {
                let news = peers
                    .entry(node.clone())
                    .or_default()
                    .take(&slug, live, version);
                if news {
                    moved.push((slug.clone(), sum(&peers, &slug)));
                }
            }
        }
        moved
    }

    /// A message from a post's channel or [`EVENTS`] (other than a total).
    pub(crate) fn on_event(&self, event: Event) -> Moved {
        match event {
            Event::Live { node, .. } | Event::Gone { node } if node == self.node => Vec::new(),
            Event::Live {
                node,
                slug,
                live,
                version,
                sum: node_sum,
            } => {
                let follows = lock(&self.following).follows(&slug);
                let mut peers = lock(&self.peers);
                let peer = peers.entry(node).or_default();
                peer.heard = Some(Instant::now());
                peer.take_sum(node_sum, version);
                // Heard after it was unfollowed, before the unsubscribe took effect.
                if !follows || !peer.take(&slug, live, version) {
                    return Vec::new();
                }
                let after = sum(&peers, &slug);
                vec![(slug, after)]
            }
            Event::Gone { node } => drop_peers(&mut lock(&self.peers), &[node]),
            Event::Total { .. } => Vec::new(),
        }
    }

    /// Drops the nodes not heard of for [`EXPIRY`] (killed, or unreachable with Redis down).
    pub(crate) fn expire(&self) -> Moved {
        let mut peers = lock(&self.peers);
        let silent: Vec<String> = peers
            .iter()
            .filter(|(_, p)| p.is_silent())
            .map(|(node, _)| node.clone())
            .collect();
        drop_peers(&mut peers, &silent)
    }

    /// Deletes this node's presence and says it is gone, before the process exits.
    pub(crate) async fn leave(&self, link: &Link) -> Result<(), LinkError> {
        // Not a transaction, as the heartbeat's (two hash slots of a Redis Cluster).
        let mut pipe = redis::pipe();
        pipe.del(node_key(&self.node))
            .ignore()
            .zrem(NODES, &self.node)
            .ignore()
            .publish(EVENTS, format!("g {}", self.node))
            .ignore();
        link.call("leave", |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sum(peers: &HashMap<String, Peer>, slug: &Slug) -> u64 {
    peers
        .values()
        .filter_map(|p| p.live.get(slug))
        .map(|k| k.live)
        .sum()
}

/// Removes `nodes`; the posts they had readers on, with their new sums.
fn drop_peers(peers: &mut HashMap<String, Peer>, nodes: &[String]) -> Moved {
    let mut touched = HashSet::new();
    for node in nodes {
        if let Some(peer) = peers.remove(node) {
            tracing::info!(%node, "node left the cluster");
            touched.extend(
                peer.live
                    .into_iter()
                    .filter(|(_, k)| k.live > 0)
                    .map(|(slug, _)| slug),
            );
        }
    }
    touched
        .into_iter()
        .map(|slug| {
            let after = sum(peers, &slug);
            (slug, after)
        })
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    #[test]
    fn events_read_back_and_nonsense_is_ignored() {
        assert_eq!(
            Event::parse("t a/b 12"),
            Some(Event::Total {
                slug: slug("a/b"),
                total: 12,
                op: None,
            })
        );
        assert_eq!(
            Event::parse("t a/b 13 n1-00000000000000ff"),
            Some(Event::Total {
                slug: slug("a/b"),
                total: 13,
                op: Some("n1-00000000000000ff".into()),
            })
        );
        assert_eq!(
            Event::parse("l n1 a 3 9 4"),
            Some(Event::Live {
                node: "n1".into(),
                slug: slug("a"),
                live: 3,
                version: 9,
                sum: 4,
            })
        );
        assert_eq!(
            Event::parse("g n1"),
            Some(Event::Gone { node: "n1".into() })
        );
        for bad in [
            "",
            "t a",
            "t a x",
            "l n1 a 3 9",
            "l n1 a 3 0 3",
            "l n1 a 3 9 4 5",
            "g",
            "g n1 extra",
            "x a 1",
        ] {
            assert_eq!(Event::parse(bad), None, "{bad:?}");
        }
    }

    fn live(node: &str, s: &str, live: u64, version: u64) -> Event {
        Event::Live {
            node: node.into(),
            slug: slug(s),
            live,
            version,
            sum: live,
        }
    }

    fn presence() -> Presence {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Presence::new("me".into(), tx, Duration::from_secs(1800))
    }

    /// `node`'s hash read at `version` with `slug:live`s.
    fn read(node: &str, version: u64, live: &[(&str, u64)]) -> Vec<Read> {
        let live = live.iter().map(|(s, n)| (slug(s), *n)).collect();
        vec![(node.to_owned(), version, live)]
    }

    #[test]
    fn peers_sum_per_followed_post_and_a_gone_node_takes_its_readers() {
        let presence = presence();
        presence.follow(&[slug("a")]);
        assert_eq!(presence.on_event(live("n1", "a", 2, 7)), [(slug("a"), 2)]);
        assert_eq!(presence.on_event(live("n2", "a", 3, 7)), [(slug("a"), 5)]);
        assert_eq!(presence.on_event(live("me", "a", 9, 7)), [], "our own echo");
        assert_eq!(
            presence.on_event(live("n2", "b", 1, 8)),
            [],
            "b is not followed"
        );
        assert_eq!(presence.remote_live(&slug("b")), 0);
        assert_eq!(presence.nodes(), 3);
        assert_eq!(
            presence.on_event(Event::Gone { node: "n1".into() }),
            [(slug("a"), 3)]
        );
        assert_eq!(presence.remote_live(&slug("a")), 3);
        assert_eq!(presence.unfollow(&[slug("a")]), [slug("a")]);
        assert_eq!(
            presence.remote_live(&slug("a")),
            0,
            "forgotten once unfollowed"
        );
    }

    #[test]
    fn the_newer_of_an_announcement_and_a_read_wins_whichever_comes_first() {
        let presence = presence();
        presence.follow(&[slug("a")]);
        assert_eq!(presence.on_event(live("n1", "a", 3, 7)), [(slug("a"), 3)]);
        // Read before change 7 reached the hash: the announcement stands.
        assert_eq!(presence.take_reads(read("n1", 6, &[("a", 1)]), false), []);
        assert_eq!(presence.remote_live(&slug("a")), 3);
        // A read after a change whose announcement was lost (0 readers now): it heals.
        let moved = presence.take_reads(read("n1", 9, &[("a", 0)]), false);
        assert_eq!(moved, [(slug("a"), 0)]);
        assert_eq!(
            presence.on_event(live("n1", "a", 5, 8)),
            [],
            "older than the read"
        );
        assert_eq!(presence.remote_live(&slug("a")), 0);
    }

    #[test]
    fn the_readers_of_posts_not_followed_count_once_in_the_sites_sum() {
        let presence = presence();
        presence.follow(&[slug("a")]);
        // n1: 2 readers on a (followed), 5 on others; the heartbeat reads its sum of 7.
        assert_eq!(presence.on_event(live("n1", "a", 2, 7)), [(slug("a"), 2)]);
        let beats = HashMap::from([("n1".to_owned(), (1, Some(9), Some(7), Some(1), None))]);
        let (moved, stale) = presence.merge(beats, false);
        assert_eq!(moved, []);
        assert_eq!(
            stale,
            [("n1".to_owned(), 1)],
            "a new peer's followed posts are read"
        );
        assert_eq!(presence.elsewhere(), 5);
        // The whole site followed: every post read, nothing elsewhere.
        presence.whole_site(true);
        presence.take_reads(read("n1", 9, &[("a", 2), ("b", 5)]), true);
        assert_eq!(presence.elsewhere(), 0);
        assert_eq!(presence.remote_live(&slug("b")), 5);
        assert_eq!(presence.whole_site(false), [slug("b")]);
        assert_eq!(presence.elsewhere(), 5);
    }

    #[test]
    fn a_peer_is_read_again_only_when_it_rewrote_its_hash() {
        let presence = presence();
        presence.follow(&[slug("a")]);
        let beat = |rewrite| {
            HashMap::from([("n1".to_owned(), (1, Some(5), Some(0), Some(rewrite), None))])
        };
        let (_, stale) = presence.merge(beat(3), false);
        assert_eq!(stale.len(), 1, "never read: read once");
        lock(&presence.peers).get_mut("n1").unwrap().read_at = Some(3);
        assert!(
            presence.merge(beat(3), false).1.is_empty(),
            "idle: nothing read"
        );
        assert_eq!(
            presence.merge(beat(8), false).1.len(),
            1,
            "rewritten: read again"
        );
    }

    /// `elsewhere` takes each peer's followed sum, kept as the posts change rather than
    /// walked: it must stay the sum of the peer's followed posts whatever changes them.
    #[test]
    fn a_peers_followed_sum_stays_the_sum_of_its_followed_posts() {
        let mut peer = Peer::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for version in 1..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let post = slug(&format!("p{}", x % 40));
            match x % 9 {
                0..=5 => {
                    peer.take(&post, (x >> 8) % 6, version.saturating_sub((x >> 16) % 3));
                }
                6 | 7 => peer.forget(&post),
                _ => peer.keep_only(|s| s.as_str().len() % 2 == (x as usize >> 20) % 2),
            }
            let walked: u64 = peer.live.values().map(|k| k.live).sum();
            assert_eq!(peer.followed, walked, "after step {version}");
        }
    }
}
