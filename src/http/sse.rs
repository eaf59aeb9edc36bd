//! Server-Sent Events on the wire: the event encodings every stream sends (each stream's life
//! is [`crate::http::streams::lifecycle`]).

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::edge::reader_id::ReaderId;
use crate::posts::post::Counts;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The broadcast events are `posts::update`'s (tested there); these are the stream's own.
    #[test]
    fn a_streams_first_event_and_its_goodbye_are_well_formed_sse() {
        let counts = Counts {
            live: 3,
            total: 1234,
        };
        let id = ReaderId::parse("abcdefghijklmnop").unwrap();
        assert_eq!(
            &first_event(&id, counts)[..],
            b"retry: 2000\nid: abcdefghijklmnop\ndata: {\"live\":3,\"total\":1234}\n\n"
        );
        let bye = shutdown_event();
        assert!(bye.starts_with(b": server restarting\nretry: ") && bye.ends_with(b"\n\n"));
    }
}
