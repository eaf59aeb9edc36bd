//! What a post broadcasts: its numbers encoded once as the Server-Sent Events both kinds of
//! stream send, so that every reader's stream shares the same bytes (no copy per reader).
//!
//! It lives with the posts because a post builds it on every broadcast; the rest of the SSE
//! wire format (first event, heartbeat, shutdown hint) is [`crate::http::sse`]'s.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};

use crate::edge::slug::Slug;
use crate::posts::post_state::Counts;

/// `data: {"live":L,"total":T}` as one event; built once per broadcast, shared by all readers.
pub fn counts_event(counts: Counts) -> Bytes {
    let mut buf = BytesMut::with_capacity(48).writer();
    // Writing into memory cannot fail.
    let _ = write!(
        buf,
        "data: {{\"live\":{},\"total\":{}}}\n\n",
        counts.live, counts.total
    );
    buf.into_inner().freeze()
}

/// `data: {"slug":S,"live":L,"total":T}`: the same numbers for shared streams, which carry
/// several posts. Slugs hold no character that JSON escapes.
pub fn tagged_event(slug: &Slug, counts: Counts) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + slug.as_str().len()).writer();
    let _ = write!(
        buf,
        "data: {{\"slug\":\"{slug}\",\"live\":{},\"total\":{}}}\n\n",
        counts.live, counts.total
    );
    buf.into_inner().freeze()
}

/// One broadcast of a post, encoded once for both kinds of stream.
#[derive(Clone)]
pub struct Update {
    /// The event a stream of this post alone sends ([`counts_event`]).
    pub plain: Bytes,
    /// The event a shared stream sends, which names the post ([`tagged_event`]).
    pub tagged: Bytes,
}

impl Update {
    pub fn new(slug: &Slug, counts: Counts) -> Self {
        Self {
            plain: counts_event(counts),
            tagged: tagged_event(slug, counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_is_one_well_formed_event_per_kind_of_stream() {
        let counts = Counts {
            live: 3,
            total: 1234,
        };
        assert_eq!(
            &counts_event(counts)[..],
            b"data: {\"live\":3,\"total\":1234}\n\n"
        );
        let slug = Slug::parse("hello-world").unwrap();
        let update = Update::new(&slug, counts);
        assert_eq!(update.plain, counts_event(counts));
        assert_eq!(
            &update.tagged[..],
            b"data: {\"slug\":\"hello-world\",\"live\":3,\"total\":1234}\n\n"
        );
    }
}
