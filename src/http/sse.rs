//! Server-Sent Events on the wire: the first event, heartbeat and shutdown hint, and the body
//! stream of one reader. The events a post broadcasts are encoded by the post
//! ([`crate::posts::update`]).

use std::convert::Infallible;
use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use crate::edge::limits::StreamPermit;
use crate::edge::reader_id::ReaderId;
use crate::posts::post::{Counts, Departure};
use crate::posts::update::Update;
use crate::shutdown::Shutdown;

/// Browsers wait this long before reconnecting a dropped stream.
pub const RETRY_MS: u32 = 2_000;
/// On shutdown readers are told to come back after a random delay in this range, so a
/// restart is not met by every browser at the same instant.
pub const SHUTDOWN_RETRY_MS: std::ops::Range<u32> = 1_000..5_000;

pub const HEARTBEAT: Bytes = Bytes::from_static(b":\n\n");

/// The start of a shared stream: the reconnect delay; readers' events follow as they join.
pub fn shared_start() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
}

/// The first bytes of a stream: reconnect delay, the reader id as the event id (so an
/// automatic reconnect sends it back as `Last-Event-ID`), and the current numbers.
pub fn first_event(reader: &ReaderId, counts: Counts) -> Bytes {
    let mut buf = BytesMut::with_capacity(112).writer();
    let _ = write!(
        buf,
        "retry: {RETRY_MS}\nid: {}\ndata: {{\"live\":{},\"total\":{}}}\n\n",
        reader.as_str(),
        counts.live,
        counts.total
    );
    buf.into_inner().freeze()
}

pub fn shutdown_event() -> Bytes {
    let span = SHUTDOWN_RETRY_MS.end - SHUTDOWN_RETRY_MS.start;
    let mut jitter = [0u8; 4];
    let _ = getrandom::fill(&mut jitter);
    let ms = SHUTDOWN_RETRY_MS.start + u32::from_le_bytes(jitter) % span;
    Bytes::from(format!(": server restarting\nretry: {ms}\n\n"))
}

/// The signals every stream listens to besides its post.
pub struct Signals {
    pub heartbeat: watch::Receiver<()>,
    pub shutdown: Shutdown,
}

impl Signals {
    /// Receivers for a new stream: only heartbeats and shutdowns from now on count.
    pub fn subscribe(&self) -> Self {
        let mut heartbeat = self.heartbeat.clone();
        heartbeat.mark_unchanged();
        Self {
            heartbeat,
            shutdown: self.shutdown.clone(),
        }
    }
}

struct ReaderStream {
    first: Option<Bytes>,
    updates: watch::Receiver<Update>,
    signals: Signals,
    _departure: Departure,
    /// The stream's place in the limits, given back when it ends.
    _permit: StreamPermit,
}

/// The body of one reader's response: the first event, then shared update events and
/// heartbeats, until the client goes or the server shuts down.
pub fn reader_stream(
    first: Bytes,
    updates: watch::Receiver<Update>,
    signals: Signals,
    departure: Departure,
    permit: StreamPermit,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    let state = ReaderStream {
        first: Some(first),
        updates,
        signals,
        _departure: departure,
        _permit: permit,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        if let Some(first) = st.first.take() {
            return Some((Ok(first), Some(st)));
        }
        tokio::select! {
            biased;
            () = st.signals.shutdown.started() => Some((Ok(shutdown_event()), None)),
            Ok(()) = st.updates.changed() => {
                let event = st.updates.borrow_and_update().plain.clone();
                Some((Ok(event), Some(st)))
            }
            Ok(()) = st.signals.heartbeat.changed() => Some((Ok(HEARTBEAT), Some(st))),
            else => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posts::update::counts_event;

    #[test]
    fn events_are_well_formed_sse() {
        let counts = Counts {
            live: 3,
            total: 1234,
        };
        assert_eq!(
            &counts_event(counts)[..],
            b"data: {\"live\":3,\"total\":1234}\n\n"
        );
        let id = ReaderId::parse("abcdefghijklmnop").unwrap();
        assert_eq!(
            &first_event(&id, counts)[..],
            b"retry: 2000\nid: abcdefghijklmnop\ndata: {\"live\":3,\"total\":1234}\n\n"
        );
        let bye = shutdown_event();
        assert!(bye.starts_with(b": server restarting\nretry: ") && bye.ends_with(b"\n\n"));
    }
}
