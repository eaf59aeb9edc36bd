//! `Slug::parse` against an independent reference of the documented rules:
//! 1..=200 bytes, only `[A-Za-z0-9._/-]`, no empty, `.` or `..` segment between `/`.
//!
//! Each input is tried three ways: as UTF-8 (when it is), lossily decoded (so U+FFFD and
//! other multi-byte text is exercised), and mapped byte by byte onto the slug alphabet (so
//! the fuzzer spends most of its time near the accept/refuse border instead of on
//! obviously bad characters).
#![no_main]

use std::cmp::Ordering;
use std::hash::BuildHasher;

use libfuzzer_sys::fuzz_target;
use viewcounter::edge::slug::{MAX_SLUG_LEN, Slug, SlugError};

/// Which of the rules a string breaks, computed without `split` or the library's code.
#[derive(Debug, Default)]
struct Broken {
    empty: bool,
    too_long: bool,
    bad_character: bool,
    bad_segment: bool,
}

impl Broken {
    fn any(&self) -> bool {
        self.empty || self.too_long || self.bad_character || self.bad_segment
    }
}

fn reference(raw: &str) -> Broken {
    let bytes = raw.as_bytes();
    let mut broken = Broken {
        empty: bytes.is_empty(),
        too_long: bytes.len() > 200,
        ..Broken::default()
    };
    // Walk the bytes once, tracking the current segment's length and whether it is all dots.
    let mut seg_len = 0usize;
    let mut seg_dots = 0usize;
    let close_segment = |len: usize, dots: usize, broken: &mut Broken| {
        if len == 0 || (len == dots && len <= 2) {
            broken.bad_segment = true;
        }
    };
    for &b in bytes {
        let ok = matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/');
        if !ok {
            broken.bad_character = true;
        }
        if b == b'/' {
            close_segment(seg_len, seg_dots, &mut broken);
            seg_len = 0;
            seg_dots = 0;
        } else {
            seg_len += 1;
            if b == b'.' {
                seg_dots += 1;
            }
        }
    }
    if !bytes.is_empty() {
        close_segment(seg_len, seg_dots, &mut broken);
    }
    broken
}

fn check(raw: &str) -> Option<Slug> {
    assert_eq!(MAX_SLUG_LEN, 200);
    let want = reference(raw);
    match Slug::parse(raw) {
        Ok(slug) => {
            assert!(!want.any(), "accepted {raw:?} although it breaks {want:?}");
            assert!((1..=200).contains(&slug.as_str().len()));
            assert_eq!(slug.as_str(), raw, "as_str() does not round-trip");
            assert_eq!(slug.to_string(), raw, "Display does not round-trip");
            assert_eq!(format!("{slug:?}"), format!("{raw:?}"));
            let again = Slug::parse(slug.as_str()).expect("re-parse of an accepted slug");
            assert!(again == slug && again.clone() == slug);
            // `Borrow<str>` promises Hash/Eq agree with `str`: a HashMap<Slug, _> looked up
            // by `&str` depends on it.
            let s = std::hash::RandomState::new();
            assert_eq!(s.hash_one(&slug), s.hash_one(raw));
            Some(slug)
        }
        Err(err) => {
            assert!(
                want.any(),
                "refused {raw:?} ({err:?}) although it breaks no rule"
            );
            // The reason given must be one of the rules actually broken.
            let named = match err {
                SlugError::Empty => want.empty,
                SlugError::TooLong => want.too_long,
                SlugError::BadCharacter => want.bad_character,
                SlugError::BadSegment => want.bad_segment,
            };
            assert!(named, "refused {raw:?} as {err:?}, but it breaks {want:?}");
            assert!(!err.to_string().is_empty());
            None
        }
    }
}

const ALPHABET: &[u8; 66] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./";

fuzz_target!(|data: &[u8]| {
    let direct = std::str::from_utf8(data).ok().and_then(check);
    check(&String::from_utf8_lossy(data));

    // Mapped onto the alphabet, with '.' and '/' over-represented (they make the segments).
    let mapped: String = data
        .iter()
        .map(|&b| match b % 8 {
            0 => '/',
            1 => '.',
            _ => ALPHABET[usize::from(b) % ALPHABET.len()] as char,
        })
        .collect();
    let mapped_slug = check(&mapped);

    // Ord must agree with the strings' order (the slug list and exports are sorted by it).
    if let (Some(a), Some(b)) = (direct, mapped_slug) {
        assert_eq!(a.cmp(&b), a.as_str().cmp(b.as_str()));
        assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
    }
});
