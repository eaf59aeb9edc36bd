//! One life for every stream: its first event, then its content's events with heartbeats
//! between, until the content ends, the client goes (the direct layer drops the body) or the
//! server shuts down (a `retry:` hint with a random delay, last); it holds its place in the
//! limits throughout. A kind of stream supplies only its first event and its [`Content`].

use std::future::Future;

use bytes::Bytes;
use futures_util::stream::LocalBoxStream;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use crate::http::sse::{HEARTBEAT, shutdown_event};
use crate::shutdown::Shutdown;

/// A stream's body as the direct layer writes it: one write per item.
pub(crate) type Body = LocalBoxStream<'static, Bytes>;

/// What a kind of stream sends besides what every stream sends.
pub(crate) trait Content {
    /// The next event, or `None` when the stream should end.
    ///
    /// Cancel-safe: the future is dropped whenever a heartbeat or the shutdown comes first,
    /// so whatever is under way belongs in `self`, not in the future.
    fn next(&mut self) -> impl Future<Output = Option<Bytes>>;
}

/// A stream of events is content as it is (its state lives in the stream, so it is
/// cancel-safe): shared and watch streams, the dashboard's.
impl<S: Stream<Item = Bytes> + Unpin> Content for S {
    fn next(&mut self) -> impl Future<Output = Option<Bytes>> {
        StreamExt::next(self)
    }
}

/// The signals every stream listens to besides its content.
pub(crate) struct Signals {
    /// Changes at every heartbeat interval (`--heartbeat`): a stream then sends a comment, so
    /// that proxies keep it open and a vanished client is noticed.
    pub heartbeat: watch::Receiver<()>,
    /// Fires once, when the server starts to stop.
    pub shutdown: Shutdown,
}

impl Signals {
    /// Receivers for a new stream: only heartbeats and shutdowns from now on count.
    pub(crate) fn subscribe(&self) -> Self {
        let mut heartbeat = self.heartbeat.clone();
        heartbeat.mark_unchanged();
        Self {
            heartbeat,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// One stream's state between two events.
struct Life<C, P> {
    /// Sent before anything else, with the response head.
    first: Option<Bytes>,
    /// What this kind of stream sends.
    content: C,
    /// When to send a heartbeat, and when to stop.
    signals: Signals,
    /// The stream's place in the limits (or whatever it holds while it lives), given back
    /// when the stream ends.
    _place: P,
}

/// The body of a stream: `first`, then `content`'s events and heartbeats until the content
/// ends or the server shuts down. `place` is dropped with the stream.
pub(crate) fn live<C, P>(first: Bytes, content: C, signals: Signals, place: P) -> Body
where
    C: Content + 'static,
    P: 'static,
{
    let life = Life {
        first: Some(first),
        content,
        signals,
        _place: place,
    };
    futures_util::stream::unfold(Some(life), |mut life| async move {
        // Borrowed, not moved out: a moved-out copy would take room in the future beside it.
        let now = life.as_mut()?;
        if let Some(first) = now.first.take() {
            return Some((first, life));
        }
        tokio::select! {
            biased;
            // Ends after this event: the content (a shared stream's members, say) goes with it.
            () = now.signals.shutdown.started() => Some((shutdown_event(), None)),
            event = now.content.next() => event.map(|event| (event, life)),
            Ok(()) = now.signals.heartbeat.changed() => Some((HEARTBEAT, life)),
        }
    })
    .boxed_local()
}
