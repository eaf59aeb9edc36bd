//! `ReaderId::parse` and `Showing::from_beacon` against an independent reference:
//! an id is 16–64 characters of `[A-Za-z0-9_-]`; a beacon body is accepted exactly when it
//! is UTF-8 and its text, with surrounding white space removed, is an id, optionally followed
//! by one space and a page-show number (ASCII digits, at most `u32::MAX`).
//!
//! Besides the raw input, a second id is built by mapping the bytes onto the id alphabet and
//! wrapping it in fuzzer-chosen white space, so the accepting paths are exercised as often
//! as the refusing ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viewcounter::edge::reader_id::{MAX_LEN, MIN_LEN, ReaderId, Showing};

fn is_id(raw: &str) -> bool {
    let mut n = 0usize;
    for c in raw.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return false;
        }
        n += 1;
    }
    (16..=64).contains(&n)
}

/// `str::trim` written out: strip Unicode `White_Space` at both ends.
fn trim_ws(text: &str) -> &str {
    let start = text
        .char_indices()
        .find(|&(_, c)| !c.is_whitespace())
        .map_or(text.len(), |(i, _)| i);
    let end = text
        .char_indices()
        .rev()
        .find(|&(_, c)| !c.is_whitespace())
        .map_or(start, |(i, c)| i + c.len_utf8());
    &text[start..end.max(start)]
}

fn check_parse(raw: &str) -> Option<ReaderId> {
    let got = ReaderId::parse(raw);
    assert_eq!(got.is_ok(), is_id(raw), "parse({raw:?}) = {got:?}");
    let id = got.ok()?;
    assert_eq!(id.as_str(), raw);
    assert_eq!(format!("{id:?}"), format!("{raw:?}"));
    let again = ReaderId::parse(id.as_str()).unwrap();
    assert!(again == id);
    assert_eq!(again.key(), id.key(), "equal ids, different keys");
    assert_eq!(id.clone().key(), id.key());
    Some(id)
}

/// The id and show number a trimmed beacon text stands for, if any.
fn beacon_parts(text: &str) -> Option<(&str, u32)> {
    let (id, show) = match text.find(' ') {
        Some(at) => {
            let show = &text[at + 1..];
            let digits = !show.is_empty() && show.bytes().all(|b| b.is_ascii_digit());
            (
                &text[..at],
                if digits {
                    show.parse().ok()?
                } else {
                    return None;
                },
            )
        }
        None => (text, 0),
    };
    is_id(id).then_some((id, show))
}

fn check_beacon(body: &[u8]) -> Option<ReaderId> {
    let want = std::str::from_utf8(body)
        .ok()
        .map(trim_ws)
        .and_then(beacon_parts);
    let got = Showing::from_beacon(body);
    match (&got, want) {
        (Ok(showing), Some((text, show))) => {
            let id = &showing.id;
            assert_eq!(showing.show, show);
            assert_eq!(id.as_str(), text);
            let parsed = ReaderId::parse(text).unwrap();
            assert!(parsed == *id);
            assert_eq!(
                parsed.key(),
                id.key(),
                "beacon and stream ids must meet in one key"
            );
        }
        (Err(_), None) => {}
        _ => panic!("from_beacon({body:?}) = {got:?}, expected {want:?}"),
    }
    got.ok().map(|showing| showing.id)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const SPACES: [&str; 8] = [
    " ", "\t", "\n", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{feff}",
];

fuzz_target!(|data: &[u8]| {
    assert_eq!((MIN_LEN, MAX_LEN), (16, 64));

    // Raw: as text when it is, and always as a beacon body.
    let direct = std::str::from_utf8(data).ok().and_then(check_parse);
    let beacon = check_beacon(data);
    if let (Some(a), Some(b)) = (&direct, &beacon) {
        assert_eq!(a == b, a.key() == b.key());
    }

    // Mapped: first byte picks the padding, the rest the id characters (length from the input,
    // so 15, 16, 64 and 65 all come up).
    let Some((&pad, rest)) = data.split_first() else {
        return;
    };
    let id: String = rest
        .iter()
        .map(|&b| ALPHABET[usize::from(b & 63)] as char)
        .collect();
    let mapped = check_parse(&id);
    let before = SPACES[usize::from(pad & 7)].repeat(usize::from((pad >> 3) & 3));
    let after = SPACES[usize::from((pad >> 5) & 7)];
    let body = format!("{before}{id}{after}");
    let from_body = check_beacon(body.as_bytes());
    // U+FEFF is not white space: a BOM-prefixed body must be refused.
    assert_eq!(
        from_body.is_some(),
        mapped.is_some() && !(body.starts_with('\u{feff}') || body.ends_with('\u{feff}'))
    );
    if let (Some(m), Some(f)) = (&mapped, &from_body) {
        assert!(m == f);
        assert_eq!(m.key(), f.key());
    }
    // Distinct ids should get distinct keys (64-bit keyed hash: a collision here would be a
    // 2^-64 event, so treat one as a bug).
    if let (Some(a), Some(m)) = (&direct, &mapped) {
        assert_eq!(a == m, a.key() == m.key(), "{a:?} vs {m:?}");
    }
});
