//! The one shutdown signal. Fired once (SIGTERM or SIGINT, or a test's stop) by
//! [`crate::Application::run_until`]; every part that must react holds a [`Shutdown`]: the
//! accept loops stop accepting, streams end with a `retry:` hint, actix-web closes its idle
//! connections, and admission refuses new streams.
//!
//! Background tasks (tickers, watchers, the cluster's heartbeat) run in a [`Tasks`] group:
//! each loop waits on its own signal beside its work, and stopping the group fires that signal
//! and awaits them all, so none is cut off halfway through what it was doing.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Fires the signal; dropping it fires it too (whoever could stop the server is gone).
pub(crate) struct Trigger(watch::Sender<bool>);

/// A view of the signal; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Trigger {
    pub(crate) fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Self(tx), Shutdown(rx))
    }

    pub(crate) fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once the signal fired.
    pub(crate) fn is_started(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the signal fired (at once if it already has).
    pub(crate) async fn started(&mut self) {
        // An error means the trigger is gone: nobody is left to keep the server up.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// `work`, unless the signal fires first (then `None`, and `work` is dropped where it
    /// stands): what a background loop waits on between two rounds of its work.
    pub(crate) async fn unless_started<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.started() => None,
            done = work => Some(done),
        }
    }
}

/// A group of background tasks on this thread, all ended by one signal of their own and
/// awaited by [`Tasks::stop`].
pub(crate) struct Tasks {
    /// Fired by [`Tasks::stop`]; each task holds a [`Shutdown`] of it.
    trigger: Trigger,
    /// The view of it each task is handed.
    shutdown: Shutdown,
    /// Knows when every task has returned.
    tracker: TaskTracker,
    /// The names of the tasks still running, to say which one did not end.
    running: Arc<Mutex<Vec<&'static str>>>,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        let (trigger, shutdown) = Trigger::new();
        Self {
            trigger,
            shutdown,
            tracker: TaskTracker::new(),
            running: Arc::default(),
        }
    }

    /// Runs `task` on this thread (the actix System's or a worker's) with the group's signal;
    /// it must return soon after the signal fires.
    pub(crate) fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        let running = Arc::clone(&self.running);
        lock(&running).push(name);
        let work = task(self.shutdown.clone());
        self.tracker.spawn_local(async move {
            work.await;
            let mut names = lock(&running);
            if let Some(at) = names.iter().position(|n| *n == name) {
                names.swap_remove(at);
            }
        });
    }

    /// Fires the group's signal and waits up to `bound` for every task to return; a task
    /// still running then is named in the log and left to the runtime's end.
    pub(crate) async fn stop(&self, bound: Duration) {
        self.trigger.fire();
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            for name in lock(&self.running).iter() {
                tracing::warn!(
                    task = name,
                    ?bound,
                    "a background task did not end on shutdown"
                );
            }
        }
    }

    /// What a test watches: closed and empty once every task of the group has returned.
    #[cfg(test)]
    pub(crate) fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }
}

fn lock<T>(names: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    names.lock().unwrap_or_else(PoisonError::into_inner)
}
