//! The one shutdown signal. Fired once (SIGTERM or SIGINT, or a test's stop) by
//! [`crate::Application::run_until`]; every part that must react holds a [`Shutdown`]: the
//! accept loops stop accepting, streams end with a `retry:` hint, actix-web closes its idle
//! connections, and admission refuses new streams.

use tokio::sync::watch;

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
}
