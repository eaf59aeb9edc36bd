//! This node's ops whose fate Redis has not told it yet. A count call that times out may still
//! run in Redis, late; its announcement (`t slug total op`) then tells this node that the view
//! is counted. Without that, the post would show it twice (the announced total plus the
//! unconfirmed view) and take one back when the outbox replays it: a total readers see go
//! down. Each op is confirmed exactly once, by its call, by its announcement or by its replay,
//! whichever comes first, under one lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cluster::counter::View;

#[derive(Default)]
pub(crate) struct Fates {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Sent to Redis, not answered yet: the total announced for it meanwhile, if any.
    in_flight: HashMap<String, Option<u64>>,
    /// Timed out and in the outbox: not known to be in Redis.
    outboxed: HashSet<String>,
    /// Timed out, then announced (so in Redis), still a row of the outbox until replayed.
    confirmed: HashSet<String>,
}

/// An op sent to Redis; dropped once its call has ended (or was given up): at most the calls
/// in flight are remembered.
pub(crate) struct InFlight<'a> {
    fates: &'a Fates,
    op: String,
}

/// What an announcement of this node's own op means for its post.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Its call has not answered yet: the post may hear the total now (the view is not
    /// among its unconfirmed ones).
    InFlight,
    /// It timed out into the outbox and is confirmed by this announcement: tell its post
    /// with one `Replayed` (the record takes it when the replay deletes its row).
    Confirmed,
    /// Its post hears this total from elsewhere, never from the announcement: from its call's
    /// answer (already given), or from the replay that runs its script (a view from the
    /// outbox, or one the replay confirms after a rebuild). Told now, the total would count
    /// it twice with the post's unconfirmed view, until the replay took one back.
    Told,
}

/// What the replay of an outboxed op must do once Redis answered it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Confirm it now: tell its post, settle the outbox's count.
    Confirm,
    /// Its announcement confirmed it already: only its row is left to delete (and the record
    /// takes it as the row goes).
    AlreadyConfirmed,
}

impl Fates {
    /// Before the call: an announcement heard while it runs is kept for it.
    pub(crate) fn in_flight(&self, op: &str) -> InFlight<'_> {
        self.lock().in_flight.insert(op.to_owned(), None);
        InFlight {
            fates: self,
            op: op.to_owned(),
        }
    }

    /// This node's `op` was announced with `total`. Kept if it is in flight; if it timed out
    /// into the outbox and `may_confirm` (no rebuild holds the fence), it is confirmed now:
    /// `confirm` runs (under the lock, so the replay cannot confirm it too).
    pub(crate) fn announced(
        &self,
        op: &str,
        total: u64,
        may_confirm: bool,
        confirm: impl FnOnce(),
    ) -> Heard {
        let mut inner = self.lock();
        if let Some(heard) = inner.in_flight.get_mut(op) {
            *heard = Some(total);
            return Heard::InFlight;
        }
        if !may_confirm {
            return Heard::Told;
        }
        if !inner.outboxed.remove(op) {
            return Heard::Told;
        }
        inner.confirmed.insert(op.to_owned());
        confirm();
        Heard::Confirmed
    }

    /// The replay of `op` was answered by Redis: whether it confirms it, or its announcement
    /// did already (a view from before a restart is not known here: the replay confirms it).
    pub(crate) fn replayed(&self, op: &str) -> Replay {
        let mut inner = self.lock();
        if inner.outboxed.remove(op) || !inner.confirmed.remove(op) {
            Replay::Confirm
        } else {
            Replay::AlreadyConfirmed
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InFlight<'_> {
    /// The call failed (timed out, perhaps to run late): the total its announcement gave if
    /// it was heard meanwhile (the view is counted), else the view goes to the outbox by
    /// `outbox` (under the lock, so its announcement, from now on, confirms it).
    pub(crate) fn failed(self, view: View, outbox: impl FnOnce(View)) -> Option<u64> {
        let mut inner = self.fates.lock();
        if let Some(Some(total)) = inner.in_flight.remove(&self.op) {
            return Some(total);
        }
        inner.outboxed.insert(view.op.clone());
        outbox(view);
        None
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.fates.lock().in_flight.remove(&self.op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(op: &str) -> View {
        View {
            slug: "alpha".into(),
            reader: "reader".into(),
            op: op.into(),
            day: 20261207,
        }
    }

    #[test]
    fn an_announcement_heard_while_the_call_runs_decides_a_call_that_then_fails() {
        let fates = Fates::default();
        let call = fates.in_flight("n-1");
        assert_eq!(
            fates.announced("n-1", 7, true, || panic!("not outboxed")),
            Heard::InFlight
        );
        let outboxed = call.failed(view("n-1"), |_| panic!("decided, not outboxed"));
        assert_eq!(outboxed, Some(7));
        assert!(fates.lock().in_flight.is_empty());
    }

    #[test]
    fn an_outboxed_op_is_confirmed_once_by_its_announcement_or_else_by_its_replay() {
        let fates = Fates::default();
        let mut queued = Vec::new();
        assert_eq!(
            fates
                .in_flight("n-1")
                .failed(view("n-1"), |v| queued.push(v)),
            None
        );
        assert_eq!(queued, [view("n-1")]);
        let mut confirmed = 0;
        // While a rebuild holds the fence, an announcement confirms nothing.
        assert_eq!(
            fates.announced("n-1", 7, false, || panic!("during a rebuild")),
            Heard::Told
        );
        assert_eq!(
            fates.announced("n-1", 7, true, || confirmed += 1),
            Heard::Confirmed
        );
        assert_eq!(
            fates.announced("n-1", 7, true, || confirmed += 1),
            Heard::Told
        );
        assert_eq!(confirmed, 1);
        assert_eq!(fates.replayed("n-1"), Replay::AlreadyConfirmed);

        // Replayed before its announcement is heard: the replay confirms it, the announcement
        // then changes nothing.
        let _ = fates.in_flight("n-2").failed(view("n-2"), drop);
        assert_eq!(fates.replayed("n-2"), Replay::Confirm);
        assert_eq!(
            fates.announced("n-2", 8, true, || panic!("confirmed twice")),
            Heard::Told
        );
        // Unknown here (from before a restart): the replay confirms it.
        assert_eq!(fates.replayed("n-3"), Replay::Confirm);
        let inner = fates.lock();
        assert!(inner.outboxed.is_empty() && inner.confirmed.is_empty());
    }
}
