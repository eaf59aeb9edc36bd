//! Which post channels this node is subscribed to: a post's while the node serves it (the
//! post is awake here: readers or watchers), and every post's (`PSUBSCRIBE vc:ev:*`) while
//! the node has a whole-site follower (the owner's dashboard or admin stream, a watcher of
//! `*`). A live change then reaches only the nodes that serve its post, plus those followed
//! by a whole-site view; a node serving nothing of a post hears nothing of it.
//!
//! Posts hold their channel ([`Channels::hold`]) before they take their first numbers and
//! let go of it when they sleep (a read of a post asleep here, `/counts`, reads the peers'
//! readers of it once and holds nothing); a read of every post's live (`/top?by=live`) holds
//! the whole site for the read; one task ([`crate::cluster::Cluster`]'s channel keeper)
//! turns the holds into `SUBSCRIBE`/`UNSUBSCRIBE`, a burst of wakes in one command, and reads
//! the peers' readers of the newly followed posts before the holders go on: a post never
//! waits for the next change to show the other nodes' readers.
//!
//! The trade-off for whole-site views: rather than every node hearing every change (what made
//! presence cost posts × nodes), the node where the owner watches the whole site hears every
//! change while they watch: one more message per change, to that node only. A node without
//! one knows the readers of posts it does not serve only as each peer's sum (the site's pulse
//! and peak, see [`crate::cluster::presence`]), and reads them on demand for a one-off read.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use tokio::sync::{Notify, oneshot};

use crate::edge::slug::Slug;

impl State {
    fn wants_site(&self) -> bool {
        self.whole_site || self.site_held > 0
    }
}

#[derive(Default)]
struct State {
    /// Holds per post: the awake post, and wakes under way.
    held: HashMap<Slug, u32>,
    /// Subscribed in Redis, as far as this node knows.
    subscribed: HashSet<Slug>,
    /// Holders waiting for their post's channel (and first read); `None`: for the pattern.
    waiting: Vec<(Option<Slug>, oneshot::Sender<()>)>,
    /// A whole-site follower is here.
    whole_site: bool,
    /// Holds on the whole site (reads under way).
    site_held: u32,
    /// `PSUBSCRIBE`d.
    patterned: bool,
    /// The connection dropped since [`crate::cluster::keys::EVENTS`] was last subscribed.
    events_lost: bool,
    /// Nothing changed since [`Channels::work`] last found nothing to do: the keeper's beat
    /// then costs nothing per post (it walked every held post once a second: 15,000 a node
    /// in the idle benchmark).
    settled: bool,
}

/// What the keeper is to do next.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) subscribe: Vec<Slug>,
    /// Some subscribed channel is no longer held.
    pub(crate) unsubscribe: bool,
    /// `Some(true)`: pattern-subscribe; `Some(false)`: stop.
    pub(crate) whole_site: Option<bool>,
    /// Subscribe to [`crate::cluster::keys::EVENTS`] again (first: hearing it subscribed
    /// catches up with what was missed).
    pub(crate) events: bool,
}

impl Work {
    pub(crate) fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && !self.unsubscribe && self.whole_site.is_none() && !self.events
    }
}

#[derive(Default)]
pub(crate) struct Channels {
    state: Mutex<State>,
    /// Wakes the keeper.
    pub(crate) changed: Notify,
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, to change: the keeper's next [`Channels::work`] looks at every post again.
    fn change(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.lock();
        state.settled = false;
        state
    }

    /// One more hold on `slug`'s channel; `None` when it is subscribed already, else what
    /// resolves once it is (or once the keeper gave up on it: Redis down).
    pub(crate) fn hold(&self, slug: &Slug) -> Option<oneshot::Receiver<()>> {
        let mut state = self.change();
        *state.held.entry(slug.clone()).or_default() += 1;
        if state.subscribed.contains(slug) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.push((Some(slug.clone()), tx));
        drop(state);
        self.changed.notify_one();
        Some(rx)
    }

    /// One more hold on every post's channel, as [`Channels::hold`].
    pub(crate) fn hold_site(&self) -> Option<oneshot::Receiver<()>> {
        let mut state = self.change();
        state.site_held += 1;
        if state.patterned {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.push((None, tx));
        drop(state);
        self.changed.notify_one();
        Some(rx)
    }

    pub(crate) fn release_site(&self) {
        let mut state = self.change();
        state.site_held = state.site_held.saturating_sub(1);
        if state.site_held == 0 {
            drop(state);
            self.changed.notify_one();
        }
    }

    /// One hold fewer; the last one unsubscribes.
    pub(crate) fn release(&self, slug: &Slug) {
        let mut state = self.change();
        let Some(n) = state.held.get_mut(slug) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            state.held.remove(slug);
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Whether a whole-site follower is here; the keeper is woken when that changes.
    pub(crate) fn want_whole_site(&self, on: bool) {
        let mut state = self.lock();
        if state.whole_site != on {
            state.whole_site = on;
            state.settled = false;
            drop(state);
            self.changed.notify_one();
        }
    }

    pub(crate) fn is_held(&self, slug: &Slug) -> bool {
        self.lock().held.contains_key(slug)
    }

    /// What the keeper must change now.
    pub(crate) fn work(&self) -> Work {
        let mut state = self.lock();
        if state.settled {
            return Work::default();
        }
        let work = Work {
            subscribe: (state.held.keys())
                .filter(|s| !state.subscribed.contains(*s))
                .cloned()
                .collect(),
            unsubscribe: (state.subscribed.iter()).any(|s| !state.held.contains_key(s)),
            whole_site: (state.wants_site() != state.patterned).then_some(state.wants_site()),
            events: state.events_lost,
        };
        state.settled = work.is_empty();
        work
    }

    /// The connection dropped: Redis forgot every subscription of it. The keeper subscribes
    /// again to what is still held, after [`crate::cluster::keys::EVENTS`].
    pub(crate) fn lost(&self) {
        let mut state = self.change();
        state.subscribed.clear();
        state.patterned = false;
        state.events_lost = true;
        drop(state);
        self.changed.notify_one();
    }

    /// [`crate::cluster::keys::EVENTS`] is subscribed again.
    pub(crate) fn events_back(&self) {
        self.change().events_lost = false;
    }

    /// The keeper subscribed (`subscribed`: Redis took it) to `work`'s posts and read them,
    /// and pattern-subscribed or stopped (`patterned`). Their holders go on; on a failure too,
    /// so a wake never waits for Redis to come back (the keeper tries again).
    pub(crate) fn done(&self, work: &Work, subscribed: bool, patterned: bool) {
        let mut state = self.change();
        if subscribed {
            state.subscribed.extend(work.subscribe.iter().cloned());
        }
        if let (Some(on), true) = (work.whole_site, patterned) {
            state.patterned = on;
        }
        let waiting = std::mem::take(&mut state.waiting);
        let (now, later): (Vec<_>, Vec<_>) =
            waiting.into_iter().partition(|(slug, _)| match slug {
                Some(slug) => work.subscribe.contains(slug) || !state.held.contains_key(slug),
                None => work.whole_site.is_some() || state.patterned || !state.wants_site(),
            });
        state.waiting = later;
        drop(state);
        for (_, tx) in now {
            let _ = tx.send(());
        }
    }

    /// The channels no longer held, now counted as unsubscribed: a hold from now on waits
    /// for the keeper to subscribe again, after this unsubscribe.
    pub(crate) fn take_unheld(&self) -> Vec<Slug> {
        let mut state = self.change();
        let unheld: Vec<Slug> = (state.subscribed.iter())
            .filter(|s| !state.held.contains_key(*s))
            .cloned()
            .collect();
        for slug in &unheld {
            state.subscribed.remove(slug);
        }
        unheld
    }

    /// Redis did not take the unsubscribe of `slugs`: still subscribed (tried again unless
    /// held again meanwhile).
    pub(crate) fn still_subscribed(&self, slugs: Vec<Slug>) {
        self.change().subscribed.extend(slugs);
        self.changed.notify_one();
    }

    /// Every post held here (to read again after a reconnect).
    pub(crate) fn held(&self) -> Vec<Slug> {
        self.lock().held.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    #[test]
    fn a_channel_is_subscribed_while_held_and_unsubscribed_with_its_last_hold() {
        let channels = Channels::default();
        let mut first = channels.hold(&slug("a")).expect("waits for its channel");
        let mut second = channels.hold(&slug("a")).expect("waits too");
        let work = channels.work();
        assert_eq!(work.subscribe, [slug("a")]);
        channels.done(&work, true, true);
        assert!(first.try_recv().is_ok() && second.try_recv().is_ok());
        assert!(channels.hold(&slug("a")).is_none(), "subscribed already");
        channels.release(&slug("a"));
        channels.release(&slug("a"));
        assert!(channels.work().is_empty(), "still held once");
        channels.release(&slug("a"));
        assert!(channels.work().unsubscribe);
        assert_eq!(channels.take_unheld(), [slug("a")]);
        assert!(
            channels.hold(&slug("a")).is_some(),
            "held again while unsubscribing: waits for a new subscribe"
        );
    }

    #[test]
    fn after_the_connection_dropped_every_held_channel_is_subscribed_again_after_the_events() {
        let channels = Channels::default();
        let _ = channels.hold(&slug("a"));
        let _ = channels.hold(&slug("b"));
        channels.want_whole_site(true);
        let work = channels.work();
        channels.done(&work, true, true);
        channels.release(&slug("b"));
        assert_eq!(channels.take_unheld(), [slug("b")]);
        assert!(channels.work().is_empty());
        channels.lost();
        let work = channels.work();
        assert!(work.events, "the events first");
        assert_eq!(work.subscribe, [slug("a")], "what is still held");
        assert_eq!(work.whole_site, Some(true));
        assert!(
            channels.hold(&slug("a")).is_some(),
            "waits for the new subscribe"
        );
        channels.events_back();
        channels.done(&work, true, true);
        assert!(channels.work().is_empty());
    }

    #[test]
    fn a_failed_subscribe_lets_its_holders_go_on_and_is_tried_again() {
        let channels = Channels::default();
        let mut waiting = channels.hold(&slug("a")).expect("waits");
        let work = channels.work();
        channels.done(&work, false, false);
        assert!(waiting.try_recv().is_ok(), "a wake never waits for Redis");
        assert_eq!(channels.work().subscribe, [slug("a")], "tried again");
        channels.want_whole_site(true);
        assert_eq!(channels.work().whole_site, Some(true));
    }

    /// Once the keeper found nothing to do it looks no further until something changes, and
    /// then sees everything that did.
    #[test]
    fn a_settled_keeper_finds_work_again_after_any_change() {
        let channels = Channels::default();
        let _first = channels.hold(&slug("a"));
        let work = channels.work();
        assert_eq!(work.subscribe, [slug("a")]);
        channels.done(&work, true, false);
        assert!(channels.work().is_empty());
        assert!(channels.work().is_empty(), "settled");
        channels.want_whole_site(false);
        assert!(channels.work().is_empty(), "no change: still settled");
        channels.lost();
        let work = channels.work();
        assert!(work.events && work.subscribe == [slug("a")], "{work:?}");
        channels.done(&work, true, false);
        channels.events_back();
        assert!(channels.work().is_empty());
        channels.release(&slug("a"));
        assert!(channels.work().unsubscribe, "released: its unsubscribe");
    }
}
