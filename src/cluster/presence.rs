//! Merged presence: this node's live readers per post in `vc:node:ID`, a hash kept up to date
//! change by change, and the other nodes' counts, kept until a node leaves, stops renewing, or
//! says it is gone.
//!
//! Idle presence costs nothing per post. Each change of a node's presence has a number (its
//! version; they follow each other, one per post changed) and is written to its hash and
//! announced on `vc:events` by one script. The heartbeat renews the hash and reads each peer's
//! version (constant size, whatever the node serves); a peer's whole hash is read only when
//! its version is past the one this node has applied (an announcement lost or skipped, a new
//! or restarted node, a hash rewritten after Redis lost it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::link::{EVENTS, Link, LinkError};
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

/// Writes a burst of changes to a presence hash that exists (else 0: the caller rewrites it
/// whole, so no peer reads a hash holding only the last changes) and announces each.
/// KEYS: the hash. ARGV: the channel, expiry (ms), node, then slug, live (0: the post has no
/// reader left here) and version per change. (The channel is no key: a Redis Cluster would
/// refuse a script whose keys hash to two slots.) Versions stay strings: Lua's numbers would print
/// a 16-digit one as `1.7e+15`.
const CHANGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 4, #ARGV, 3 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('PUBLISH', ARGV[1],
    'l ' .. ARGV[3] .. ' ' .. ARGV[i] .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2])
end
redis.call('HSET', KEYS[1], '', ARGV[#ARGV])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

static CHANGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CHANGE));

fn node_key(node: &str) -> String {
    format!("vc:node:{node}")
}

/// One other node as last heard.
#[derive(Default)]
struct Peer {
    live: HashMap<Slug, u64>,
    /// The version of its presence applied here with every change up to it; `None`: its
    /// hash was never read.
    version: Option<u64>,
    /// Its last heartbeat (ms, from [`NODES`]): a node is heard when it changes.
    beat_ms: Option<u64>,
    /// Per post, the version of the last announcement applied: a hash read at an older
    /// version does not undo it. Forgotten once the peer's hash is known to be past it.
    announced: HashMap<Slug, u64>,
    heard: Option<Instant>,
}

impl Peer {
    /// Takes the whole hash at `version`, keeping announcements newer than it.
    fn take_state(&mut self, version: u64, mut live: HashMap<Slug, u64>) {
        self.announced.retain(|_, seen| *seen > version);
        for slug in self.announced.keys() {
            match self.live.get(slug) {
                Some(&n) => live.insert(slug.clone(), n),
                None => live.remove(slug),
            };
        }
        self.live = live;
        self.version = Some(version);
    }

    /// Applies an announcement; whether it was news.
    fn take_change(&mut self, slug: Slug, live: u64, version: u64) -> bool {
        let stale = self.version.is_some_and(|v| version <= v)
            || self.announced.get(&slug).is_some_and(|&v| version <= v);
        if stale {
            return false;
        }
        // The next in line: nothing missed. After a gap the version stays, and the heartbeat
        // reads the hash.
        if self.version == Some(version - 1) {
            self.version = Some(version);
        }
        self.announced.insert(slug.clone(), version);
        if live == 0 {
            self.live.remove(&slug);
        } else {
            self.live.insert(slug, live);
        }
        true
    }

    fn is_silent(&self) -> bool {
        self.heard.is_none_or(|at| at.elapsed() >= EXPIRY)
    }
}

/// A message on `vc:events`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// `op`: the op of the view that moved it, when a count script announces it (a rebuild
    /// or an import announces without one).
    Total {
        slug: Slug,
        total: u64,
        op: Option<String>,
    },
    /// `version`: the number of this change of the node's presence.
    Live {
        node: String,
        slug: Slug,
        live: u64,
        version: u64,
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

/// Another node as the heartbeat read it: its last beat (ms) and its presence's version
/// (`None`: its hash has expired or is not written yet).
type Beat = (u64, Option<u64>);

pub(crate) struct Presence {
    node: String,
    /// This node's live readers per post (posts with none are absent).
    local: Mutex<HashMap<Slug, u64>>,
    /// Posts whose local live changed, to announce.
    changes: UnboundedSender<Slug>,
    peers: Mutex<HashMap<String, Peer>>,
    /// This node's presence version: held across each write, so versions reach Redis in
    /// order. It starts at the clock (µs), so a node restarted with the same `--node-id`
    /// continues past its last version rather than repeating it.
    version: tokio::sync::Mutex<u64>,
    /// A write failed or found no hash: the next heartbeat writes it whole.
    dirty: AtomicBool,
}

impl Presence {
    pub(crate) fn new(node: String, changes: UnboundedSender<Slug>) -> Self {
        Self {
            node,
            local: Mutex::default(),
            changes,
            peers: Mutex::default(),
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

    /// A post's live readers on every other live node.
    pub(crate) fn remote_live(&self, slug: &Slug) -> u64 {
        sum(&lock(&self.peers), slug)
    }

    /// Every post with live readers on other nodes, and how many.
    pub(crate) fn remote_posts(&self) -> Vec<(Slug, u64)> {
        let peers = lock(&self.peers);
        let mut all: HashMap<Slug, u64> = HashMap::new();
        for (slug, live) in peers.values().flat_map(|p| &p.live) {
            *all.entry(slug.clone()).or_default() += live;
        }
        all.into_iter().filter(|&(_, live)| live > 0).collect()
    }

    /// Live nodes seen, this one included.
    pub(crate) fn nodes(&self) -> usize {
        1 + lock(&self.peers).len()
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
            .arg(EVENTS)
            .arg(EXPIRY.as_millis() as u64)
            .arg(&self.node);
        for slug in slugs {
            // Numbered whatever Redis answers: a peer that heard part of it sees a gap.
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

    /// Writes this node's whole presence under a new version (at start, and when a write
    /// failed or Redis lost the hash).
    async fn rewrite(&self, link: &Link) -> Result<(), LinkError> {
        let mut version = self.version.lock().await;
        *version += 1;
        let me = node_key(&self.node);
        let mut fields: Vec<(String, String)> = lock(&self.local)
            .iter()
            .map(|(slug, live)| (slug.as_str().to_owned(), live.to_string()))
            .collect();
        fields.push((VERSION_FIELD.to_owned(), version.to_string()));
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

    /// Renews this node's presence and reads the others' versions; reads the whole hash only
    /// of a peer whose version is past the one applied here. `grace`: Redis was down until
    /// now, so a peer missing from it may just not have written since; it is kept until it
    /// expires rather than dropped at once (no dip when Redis returns).
    pub(crate) async fn beat(&self, link: &Link, grace: bool) -> Result<Moved, LinkError> {
        let me = node_key(&self.node);
        let now_ms = unix_ms();
        let mut renew = redis::pipe();
        renew
            .atomic()
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
            read.hget(node_key(node), VERSION_FIELD);
        }
        let versions: Vec<Option<u64>> = if others.is_empty() {
            Vec::new()
        } else {
            link.call("presence versions", |mut conn| async move {
                read.query_async(&mut conn).await
            })
            .await?
        };
        let beats: HashMap<String, Beat> = others
            .into_iter()
            .zip(versions)
            .map(|((node, ms), version)| (node, (ms, version)))
            .collect();
        let stale = self.stale(&beats);
        let mut read = redis::pipe();
        for node in &stale {
            read.hgetall(node_key(node));
        }
        let states: Vec<HashMap<String, String>> = if stale.is_empty() {
            Vec::new()
        } else {
            link.call("presence", |mut conn| async move {
                read.query_async(&mut conn).await
            })
            .await?
        };
        Ok(self.merge(beats, stale.into_iter().zip(states).collect(), grace))
    }

    /// The peers whose hash is past the version applied here. (Announcements heard since
    /// the version was read may have taken a peer past it: no read then.)
    fn stale(&self, beats: &HashMap<String, Beat>) -> Vec<String> {
        let peers = lock(&self.peers);
        beats
            .iter()
            .filter(|(node, (_, version))| {
                version.is_some_and(|read| {
                    (peers.get(*node).and_then(|p| p.version)).is_none_or(|applied| applied < read)
                })
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Takes the peers' beats and the hashes read; drops a peer that left the node set (it
    /// was stopped).
    fn merge(
        &self,
        beats: HashMap<String, Beat>,
        mut read: HashMap<String, HashMap<String, String>>,
        grace: bool,
    ) -> Moved {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let left: Vec<String> = peers
            .keys()
            .filter(|node| !grace && !beats.contains_key(*node))
            .cloned()
            .collect();
        let mut moved = drop_peers(&mut peers, &left);
        for (node, (beat_ms, version)) in beats {
            let Some(version) = version else {
                continue; // expired: kept until it is silent for EXPIRY
            };
            let peer = peers.entry(node.clone()).or_default();
            if peer.beat_ms != Some(beat_ms) {
                peer.heard = Some(now);
                peer.beat_ms = Some(beat_ms);
            }
            // Every hash read from now on is at least this version.
            peer.announced.retain(|_, seen| *seen > version);
            let Some(mut state) = read.remove(&node) else {
                continue;
            };
            let Some(version) = state.remove(VERSION_FIELD).and_then(|v| v.parse().ok()) else {
                continue; // expired since its version was read
            };
            let live: HashMap<Slug, u64> = state
                .into_iter()
                .filter_map(|(slug, live)| Some((Slug::parse(&slug).ok()?, live.parse().ok()?)))
                .collect();
            let touched: HashSet<Slug> = peers
                .get(&node)
                .map(|p| p.live.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(live.keys().cloned())
                .collect();
            let before: Vec<u64> = touched.iter().map(|s| sum(&peers, s)).collect();
            peers.entry(node).or_default().take_state(version, live);
            for (slug, before) in touched.into_iter().zip(before) {
                let after = sum(&peers, &slug);
                if after != before {
                    moved.push((slug, after));
                }
            }
        }
        moved
    }

    /// A message from `vc:events` (other than a total).
    pub(crate) fn on_event(&self, event: Event) -> Moved {
        let mut peers = lock(&self.peers);
        match event {
            Event::Live { node, .. } | Event::Gone { node } if node == self.node => Vec::new(),
            Event::Live {
                node,
                slug,
                live,
                version,
            } => {
                let before = sum(&peers, &slug);
                let peer = peers.entry(node).or_default();
                peer.heard = Some(Instant::now());
                if !peer.take_change(slug.clone(), live, version) {
                    return Vec::new();
                }
                let after = sum(&peers, &slug);
                if before == after {
                    Vec::new()
                } else {
                    vec![(slug, after)]
                }
            }
            Event::Gone { node } => drop_peers(&mut peers, &[node]),
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
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(node_key(&self.node))
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
    peers.values().filter_map(|p| p.live.get(slug)).sum()
}

/// Removes `nodes`; the posts they had readers on, with their new sums.
fn drop_peers(peers: &mut HashMap<String, Peer>, nodes: &[String]) -> Moved {
    let mut touched = HashSet::new();
    for node in nodes {
        if let Some(peer) = peers.remove(node) {
            tracing::info!(%node, "node left the cluster");
            touched.extend(peer.live.into_keys());
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
            Event::parse("l n1 a 3 9"),
            Some(Event::Live {
                node: "n1".into(),
                slug: slug("a"),
                live: 3,
                version: 9,
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
            "l n1 a 3",
            "l n1 a 3 0",
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
        }
    }

    fn presence() -> Presence {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Presence::new("me".into(), tx)
    }

    /// `node`'s beat as the heartbeat reads it, and its hash: version and `slug:live`s.
    fn read(
        node: &str,
        version: u64,
        live: &[(&str, &str)],
    ) -> (
        HashMap<String, Beat>,
        HashMap<String, HashMap<String, String>>,
    ) {
        let mut hash: HashMap<String, String> = live
            .iter()
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect();
        hash.insert(VERSION_FIELD.to_owned(), version.to_string());
        (
            HashMap::from([(node.to_owned(), (1000 + version, Some(version)))]),
            HashMap::from([(node.to_owned(), hash)]),
        )
    }

    #[test]
    fn peers_sum_per_post_and_a_gone_node_takes_its_readers() {
        let presence = presence();
        assert_eq!(presence.on_event(live("n1", "a", 2, 7)), [(slug("a"), 2)]);
        assert_eq!(presence.on_event(live("n2", "a", 3, 7)), [(slug("a"), 5)]);
        assert_eq!(presence.on_event(live("me", "a", 9, 7)), [], "our own echo");
        assert_eq!(presence.nodes(), 3);
        assert_eq!(
            presence.on_event(Event::Gone { node: "n1".into() }),
            [(slug("a"), 3)]
        );
        assert_eq!(presence.remote_live(&slug("a")), 3);
        // Written before n2 announced a:3 (its change 7): the announcement stands.
        let (beats, hashes) = read("n2", 6, &[("b", "1")]);
        assert_eq!(presence.merge(beats, hashes, false), [(slug("b"), 1)]);
        assert_eq!(presence.remote_live(&slug("a")), 3);
        let (beats, hashes) = read("n2", 8, &[("b", "1")]);
        let moved = presence.merge(beats, hashes, false);
        assert_eq!(moved, [(slug("a"), 0)], "a later hash heals");
        let none = || (HashMap::new(), HashMap::new());
        let (beats, hashes) = none();
        assert_eq!(presence.merge(beats, hashes, true), [], "kept in grace");
        let (beats, hashes) = none();
        assert_eq!(presence.merge(beats, hashes, false), [(slug("b"), 0)]);
        assert_eq!(presence.nodes(), 1);
    }

    #[test]
    fn a_peers_hash_is_read_only_when_its_version_shows_a_change_missed_here() {
        let presence = presence();
        let beat = |version| HashMap::from([("n1".to_owned(), (1, Some(version)))]);
        let stale = |version| presence.stale(&beat(version));
        assert_eq!(presence.on_event(live("n1", "a", 1, 5)), [(slug("a"), 1)]);
        assert_eq!(stale(5), ["n1"], "never read: read once");
        let (beats, hashes) = read("n1", 5, &[("a", "1")]);
        assert_eq!(presence.merge(beats, hashes, false), []);
        assert!(stale(5).is_empty(), "idle: nothing read");
        assert_eq!(presence.on_event(live("n1", "a", 2, 6)), [(slug("a"), 2)]);
        assert!(
            stale(6).is_empty(),
            "the next change in line: nothing missed"
        );
        // Change 7 is lost: 8 is applied, and the hash is read.
        assert_eq!(presence.on_event(live("n1", "b", 1, 8)), [(slug("b"), 1)]);
        assert_eq!(stale(8), ["n1"]);
        assert_eq!(presence.on_event(live("n1", "a", 9, 6)), [], "an old one");
        let (beats, hashes) = read("n1", 8, &[("a", "2"), ("b", "1"), ("c", "4")]);
        assert_eq!(presence.merge(beats, hashes, false), [(slug("c"), 4)]);
        assert!(stale(8).is_empty());
        assert_eq!(presence.remote_live(&slug("c")), 4);
        assert_eq!(presence.on_event(live("n1", "c", 3, 9)), [(slug("c"), 3)]);
        assert!(
            stale(8).is_empty(),
            "heard past the version read: nothing to read"
        );
    }
}
