//! Merged presence: this node's live readers per post, written in full to `vc:node:ID` each
//! heartbeat (expiring unless renewed) and announced on `vc:events` as they change; the other
//! nodes' counts, read back each heartbeat (which heals a lost message) and kept until a node
//! leaves, stops renewing, or says it is gone.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::link::{EVENTS, Link, LinkError};
use crate::edge::slug::Slug;

/// How often a node writes its presence and reads the others'.
pub(crate) const BEAT: Duration = Duration::from_secs(1);
/// A node not heard of for this long is gone: its key expires, and peers drop it.
pub(crate) const EXPIRY: Duration = Duration::from_secs(3);
/// Every node, scored by its last heartbeat (ms): how nodes find each other.
const NODES: &str = "vc:nodes";
/// Entries of nodes silent this long are swept from [`NODES`].
const FORGET_AFTER_MS: u64 = 60_000;
/// The field of a presence hash holding its heartbeat number (no slug is empty).
const BEAT_FIELD: &str = "";

fn node_key(node: &str) -> String {
    format!("vc:node:{node}")
}

/// One other node as last heard.
#[derive(Default)]
struct Peer {
    live: HashMap<Slug, u64>,
    /// Its heartbeat number: a node is heard when it changes.
    beat: Option<u64>,
    /// Per post, the beat number its last announcement was sent after: a full state read
    /// from an older beat does not undo a newer announcement.
    announced: HashMap<Slug, u64>,
    heard: Option<Instant>,
}

impl Peer {
    /// Takes the full state of heartbeat `beat`, keeping announcements sent after it.
    fn take_state(&mut self, beat: u64, mut live: HashMap<Slug, u64>) {
        self.announced.retain(|_, sent_after| *sent_after > beat);
        for slug in self.announced.keys() {
            match self.live.get(slug) {
                Some(&n) => live.insert(slug.clone(), n),
                None => live.remove(slug),
            };
        }
        self.live = live;
    }

    fn is_silent(&self) -> bool {
        self.heard.is_none_or(|at| at.elapsed() >= EXPIRY)
    }
}

/// A message on `vc:events`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Total {
        slug: Slug,
        total: u64,
    },
    /// `after`: how many heartbeats the node had written when it sent this.
    Live {
        node: String,
        slug: Slug,
        live: u64,
        after: u64,
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
            },
            "l" => Self::Live {
                node: parts.next()?.to_owned(),
                slug: Slug::parse(parts.next()?).ok()?,
                live: parts.next()?.parse().ok()?,
                after: parts.next()?.parse().ok()?,
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

pub(crate) struct Presence {
    node: String,
    /// This node's live readers per post (posts with none are absent).
    local: Mutex<HashMap<Slug, u64>>,
    /// Posts whose local live changed, to announce.
    changes: UnboundedSender<Slug>,
    peers: Mutex<HashMap<String, Peer>>,
    beats: AtomicU64,
}

impl Presence {
    pub(crate) fn new(node: String, changes: UnboundedSender<Slug>) -> Self {
        Self {
            node,
            local: Mutex::default(),
            changes,
            peers: Mutex::default(),
            beats: AtomicU64::new(0),
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

    /// Announces the local live of `slugs` in one round trip.
    pub(crate) async fn announce(
        &self,
        link: &Link,
        slugs: &HashSet<Slug>,
    ) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        let after = self.beats.load(Ordering::Relaxed);
        for slug in slugs {
            let live = self.local_of(slug);
            let text = format!("l {} {} {live} {after}", self.node, slug.as_str());
            pipe.publish(EVENTS, text).ignore();
        }
        link.call("announce", |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
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
                after,
            } => {
                let before = sum(&peers, &slug);
                let peer = peers.entry(node).or_default();
                peer.heard = Some(Instant::now());
                peer.announced.insert(slug.clone(), after);
                if live == 0 {
                    peer.live.remove(&slug);
                } else {
                    peer.live.insert(slug.clone(), live);
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

    /// Writes this node's full state and reads every other node's. `grace`: Redis was down
    /// until now, so a peer missing from it may just not have written since; it is kept until
    /// it expires rather than dropped at once (no dip when Redis returns).
    pub(crate) async fn beat(&self, link: &Link, grace: bool) -> Result<Moved, LinkError> {
        let me = node_key(&self.node);
        let mut fields: Vec<(String, String)> = lock(&self.local)
            .iter()
            .map(|(slug, live)| (slug.as_str().to_owned(), live.to_string()))
            .collect();
        let beat = self.beats.fetch_add(1, Ordering::Relaxed);
        fields.push((BEAT_FIELD.to_owned(), beat.to_string()));
        let now_ms = unix_ms();
        let mut write = redis::pipe();
        write
            .atomic()
            .del(&me)
            .ignore()
            .hset_multiple(&me, &fields)
            .ignore()
            .pexpire(&me, EXPIRY.as_millis() as i64)
            .ignore()
            .zadd(NODES, &self.node, now_ms)
            .ignore()
            .zrembyscore(NODES, "-inf", now_ms.saturating_sub(FORGET_AFTER_MS))
            .ignore()
            .zrange(NODES, 0, -1);
        let (members,): (Vec<String>,) = link
            .call("heartbeat", |mut conn| async move {
                write.query_async(&mut conn).await
            })
            .await?;
        let others: Vec<String> = members.into_iter().filter(|n| *n != self.node).collect();
        let mut read = redis::pipe();
        for node in &others {
            read.hgetall(node_key(node));
        }
        let states: Vec<HashMap<String, String>> = if others.is_empty() {
            Vec::new()
        } else {
            link.call("presence", |mut conn| async move {
                read.query_async(&mut conn).await
            })
            .await?
        };
        Ok(self.merge(others.into_iter().zip(states).collect(), grace))
    }

    /// Takes the peers' states as read; drops a peer that left the node set (it was stopped).
    fn merge(&self, read: HashMap<String, HashMap<String, String>>, grace: bool) -> Moved {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let left: Vec<String> = peers
            .keys()
            .filter(|node| !grace && !read.contains_key(*node))
            .cloned()
            .collect();
        let mut moved = drop_peers(&mut peers, &left);
        for (node, mut state) in read {
            let Some(beat) = state.remove(BEAT_FIELD).and_then(|b| b.parse().ok()) else {
                continue; // expired: kept until it is silent for EXPIRY
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
            let peer = peers.entry(node).or_default();
            if peer.beat != Some(beat) {
                peer.heard = Some(now);
                peer.beat = Some(beat);
            }
            peer.take_state(beat, live);
            for (slug, before) in touched.into_iter().zip(before) {
                let after = sum(&peers, &slug);
                if after != before {
                    moved.push((slug, after));
                }
            }
        }
        moved
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
                total: 12
            })
        );
        assert_eq!(
            Event::parse("l n1 a 3 9"),
            Some(Event::Live {
                node: "n1".into(),
                slug: slug("a"),
                live: 3,
                after: 9,
            })
        );
        assert_eq!(
            Event::parse("g n1"),
            Some(Event::Gone { node: "n1".into() })
        );
        for bad in ["", "t a", "t a x", "l n1 a 3", "g", "g n1 extra", "x a 1"] {
            assert_eq!(Event::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peers_sum_per_post_and_a_gone_node_takes_its_readers() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let presence = Presence::new("me".into(), tx);
        let live = |node: &str, s: &str, live| Event::Live {
            node: node.into(),
            slug: slug(s),
            live,
            after: 7,
        };
        assert_eq!(presence.on_event(live("n1", "a", 2)), [(slug("a"), 2)]);
        assert_eq!(presence.on_event(live("n2", "a", 3)), [(slug("a"), 5)]);
        assert_eq!(presence.on_event(live("me", "a", 9)), [], "our own echo");
        assert_eq!(presence.nodes(), 3);
        assert_eq!(
            presence.on_event(Event::Gone { node: "n1".into() }),
            [(slug("a"), 3)]
        );
        assert_eq!(presence.remote_live(&slug("a")), 3);
        let state = |beat: &str| {
            HashMap::from([(
                "n2".to_owned(),
                HashMap::from([
                    (BEAT_FIELD.to_owned(), beat.to_owned()),
                    ("b".to_owned(), "1".to_owned()),
                ]),
            )])
        };
        // Written before n2 announced a:3 (sent after 7 beats): the announcement stands.
        assert_eq!(presence.merge(state("6"), false), [(slug("b"), 1)]);
        assert_eq!(presence.remote_live(&slug("a")), 3);
        let moved = presence.merge(state("7"), false);
        assert_eq!(moved, [(slug("a"), 0)], "a later full state heals");
        assert_eq!(presence.merge(HashMap::new(), true), [], "kept in grace");
        assert_eq!(presence.merge(HashMap::new(), false), [(slug("b"), 0)]);
        assert_eq!(presence.nodes(), 1);
    }
}
