//! The SSE encodings (`counts_event`, `first_event`) read back by an independent parser
//! that follows the WHATWG "interpreting an event stream" rules: what a browser's
//! `EventSource` sees must be exactly the numbers and the reader id that went in.
//!
//! Input layout: bytes 0..8 `live` (LE), 8..16 `total` (LE), 16..32 a second pair of counts,
//! the rest the reader id: used as is when `ReaderId::parse` accepts it, otherwise mapped onto
//! the id alphabet and clamped to 16..=64 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use viewcounter::edge::reader_id::ReaderId;
use viewcounter::http::sse::{RETRY_MS, first_event};
use viewcounter::posts::post::Counts;
use viewcounter::posts::update::counts_event;

#[derive(Debug, Default, Clone, PartialEq)]
struct Event {
    kind: String,
    data: String,
    last_event_id: String,
}

#[derive(Debug, Default)]
struct Parsed {
    events: Vec<Event>,
    /// Every `retry` value that was applied, in order.
    retries: Vec<u64>,
    last_event_id: String,
    comments: usize,
    /// Bytes after the last dispatched event (an incomplete event is dropped by browsers).
    pending: bool,
}

/// WHATWG HTML § 9.2.6: UTF-8 decode, strip one leading BOM, split lines on CRLF, LF or CR,
/// dispatch on a blank line; fields `event`, `data`, `id`, `retry`; `:` starts a comment.
fn parse_stream(bytes: &[u8]) -> Parsed {
    let text = std::str::from_utf8(bytes).expect("an SSE stream must be UTF-8");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Parsed::default();
    let mut data = String::new();
    let mut kind = String::new();
    let mut id_buf = String::new();
    let mut seen_field = false;

    let mut rest = text;
    loop {
        let Some(end) = rest.find(['\r', '\n']) else {
            // No terminator: an incomplete line, discarded at end of stream.
            out.pending |= !rest.is_empty() || seen_field;
            break;
        };
        let line = &rest[..end];
        let term = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + term..];

        if line.is_empty() {
            // Dispatch.
            out.last_event_id = id_buf.clone();
            if !data.is_empty() {
                data.pop(); // the trailing LF
                out.events.push(Event {
                    kind: if kind.is_empty() {
                        "message".into()
                    } else {
                        kind.clone()
                    },
                    data: std::mem::take(&mut data),
                    last_event_id: id_buf.clone(),
                });
            }
            data.clear();
            kind.clear();
            seen_field = false;
            continue;
        }
        seen_field = true;
        if line.starts_with(':') {
            out.comments += 1;
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => kind = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            // An id with a NUL, or a retry that is not all digits, is ignored like an unknown
            // field.
            "id" if !value.contains('\0') => id_buf = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.retries.push(value.parse().expect("digits"));
            }
            _ => {} // ignored
        }
    }
    out
}

/// Structural checks a strict reader would also make: one event per block, no CR at all (so
/// CR/CRLF/LF readers agree), only known fields, each with the conventional `": "` separator.
fn check_well_formed(bytes: &[u8], allowed: &[&str]) {
    assert!(!bytes.is_empty());
    assert!(
        bytes.ends_with(b"\n\n"),
        "must end with a blank line: {bytes:?}"
    );
    assert!(!bytes.contains(&b'\r'), "stray CR: {bytes:?}");
    assert!(!bytes.contains(&0), "NUL: {bytes:?}");
    assert!(!bytes.starts_with("\u{feff}".as_bytes()));
    let body = &bytes[..bytes.len() - 2];
    assert!(
        !body.windows(2).any(|w| w == b"\n\n"),
        "more than one event: {bytes:?}"
    );
    for line in body.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line).unwrap();
        let (field, value) = line.split_once(": ").expect("field: value");
        assert!(allowed.contains(&field), "unexpected field {field:?}");
        assert!(!value.is_empty());
    }
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Wire {
    live: u64,
    total: u64,
}

fn decode_counts(data: &str) -> Counts {
    // Numbers must be plain JSON integers, not floats a browser would round past 2^53.
    let values = data.replace("\"live\"", "").replace("\"total\"", "");
    assert!(
        !values.contains(['.', 'e', 'E', '-', ' ', '\n']),
        "data {data:?}"
    );
    let wire: Wire = serde_json::from_str(data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
    Counts {
        live: wire.live,
        total: wire.total,
    }
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn reader_from(raw: &[u8]) -> ReaderId {
    if let Some(id) = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| ReaderId::parse(s).ok())
    {
        return id;
    }
    let mut s: String = raw
        .iter()
        .take(64)
        .map(|&b| ALPHABET[usize::from(b & 63)] as char)
        .collect();
    while s.len() < 16 {
        s.push(ALPHABET[s.len() * 7 % 64] as char);
    }
    ReaderId::parse(&s).expect("mapped id is valid")
}

fuzz_target!(|data: &[u8]| {
    let a = Counts {
        live: u64_at(data, 0),
        total: u64_at(data, 8),
    };
    let b = Counts {
        live: u64_at(data, 16),
        total: u64_at(data, 24),
    };
    let reader = reader_from(data.get(32..).unwrap_or(&[]));

    // counts_event alone: one unnamed event carrying exactly the numbers, nothing else.
    let update = counts_event(a);
    check_well_formed(&update, &["data"]);
    let p = parse_stream(&update);
    assert_eq!(p.events.len(), 1);
    assert!(p.retries.is_empty() && p.last_event_id.is_empty() && !p.pending);
    assert_eq!(p.events[0].kind, "message");
    assert_eq!(decode_counts(&p.events[0].data), a);

    // first_event alone: retry, the id, the numbers.
    let first = first_event(&reader, a);
    check_well_formed(&first, &["retry", "id", "data"]);
    let p = parse_stream(&first);
    assert_eq!(p.events.len(), 1, "{first:?}");
    assert_eq!(p.retries, [u64::from(RETRY_MS)]);
    assert_eq!(p.last_event_id, reader.as_str());
    assert_eq!(p.events[0].last_event_id, reader.as_str());
    assert_eq!(decode_counts(&p.events[0].data), a);
    assert!(!p.pending);

    // A whole stream as a reader gets it: first event, then shared updates. The id persists
    // (it is what a reconnect sends back as Last-Event-ID), and each update decodes to its
    // own numbers.
    let mut stream = first.to_vec();
    stream.extend_from_slice(&counts_event(b));
    stream.extend_from_slice(&update);
    let p = parse_stream(&stream);
    let got: Vec<Counts> = p.events.iter().map(|e| decode_counts(&e.data)).collect();
    assert_eq!(got, [a, b, a]);
    assert!(
        p.events
            .iter()
            .all(|e| e.last_event_id == reader.as_str() && e.kind == "message")
    );
    assert_eq!(p.retries, [u64::from(RETRY_MS)]);
    assert!(!p.pending && p.comments == 0);

    // The encodings are pure: same input, same bytes.
    assert_eq!(counts_event(a), update);
    assert_eq!(first_event(&reader, a), first);
});
