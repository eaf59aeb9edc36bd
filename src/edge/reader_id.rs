//! Reader ids ("view tokens"): one per page view, chosen by the script or by the server.

use crate::refusal::Refusal;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use siphasher::sip::SipHasher24;

pub const MIN_LEN: usize = 16;
pub const MAX_LEN: usize = 64;

/// A validated reader id: 16–64 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ReaderId(String);

/// A reader id reduced to 64 keyed-hash bits: what post actors keep in memory and the `--db`
/// file keeps of a counted view, so a reader costs a few bytes whatever the length of its id.
/// The key is secret (random, kept in the file alone), so a client cannot craft colliding ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReaderKey(u64);

impl ReaderKey {
    /// The 64 bits, uniformly spread (a keyed hash): usable as their own hash.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    /// A key as [`ReaderKey::bits`] gave it, read back from where it was kept.
    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

/// The key of the reader-id hash (SipHash-2-4, 128 bits). One per process: random, unless the
/// `--db` file opened first brings the one its counted views were hashed with
/// ([`adopt_hash_key`]), so what the file remembers still matches after a restart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey(pub [u64; 2]);

impl HashKey {
    fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // std's own random keys: still unknown to clients.
            let std = std::hash::RandomState::new();
            return Self([std.hash_one(0u8), std.hash_one(1u8)]);
        }
        let (a, b) = bytes.split_at(8);
        Self([le_u64(a), le_u64(b)])
    }

    /// SipHash-2-4 of `bytes` under this key: a specified function (not std's `RandomState`,
    /// whose algorithm may change between Rust releases), because its results outlive the
    /// process in the `--db` file.
    fn hash(self, bytes: &[u8]) -> u64 {
        self.hash_all(&[bytes])
    }

    /// [`HashKey::hash`] of `parts` one after the other (as of their concatenation, without
    /// making it).
    pub(crate) fn hash_all(self, parts: &[&[u8]]) -> u64 {
        let mut hasher = SipHasher24::new_with_keys(self.0[0], self.0[1]);
        for part in parts {
            hasher.write(part);
        }
        hasher.finish()
    }
}

/// Never shows the key: with it, colliding ids could be made.
impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(***)")
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(bytes);
    u64::from_le_bytes(le)
}

static HASH_KEY: OnceLock<HashKey> = OnceLock::new();

/// The process's reader-id hash key (random if nothing adopted one before).
pub(crate) fn hash_key() -> HashKey {
    *HASH_KEY.get_or_init(HashKey::random)
}

/// Makes `key` the process's reader-id hash key unless one is in use already (a server opens
/// its file before it hashes any id); returns the key in use.
pub(crate) fn adopt_hash_key(key: HashKey) -> HashKey {
    *HASH_KEY.get_or_init(|| key)
}

/// One showing of a page by one reader: live readers are kept per presence, views per reader
/// id. A back/forward-cache restore shows the page again under the same id (no new view) with
/// the next show number, so a beacon sent for the earlier showing, arriving late, leaves the
/// current one alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Presence {
    pub reader: ReaderKey,
    /// The page-show number the client gave (`?show=`, or after the id in a beacon); 0 if none.
    pub show: u32,
}

/// A reader id and the page showing it stands for, as a stream or beacon names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Showing {
    pub id: ReaderId,
    pub show: u32,
}

impl Showing {
    /// A beacon body: `ID` or `ID SHOW` (one space), surrounding white space ignored.
    pub fn from_beacon(body: &[u8]) -> Result<Self, ReaderIdError> {
        let text = std::str::from_utf8(body).map_err(|_| ReaderIdError::Id)?;
        Self::from_text(text.trim())
    }

    fn from_text(text: &str) -> Result<Self, ReaderIdError> {
        let (id, show) = match text.split_once(' ') {
            Some((id, show)) => (id, parse_show(show)?),
            None => (text, 0),
        };
        Ok(Self {
            id: ReaderId::parse(id)?,
            show,
        })
    }

    /// A leave's body: a beacon's, or `ID SHOW VISIBLE_MS` with the milliseconds the page was
    /// visible while counted (a `u32`).
    pub fn from_leave(body: &[u8]) -> Result<(Self, Option<u32>), ReaderIdError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ReaderIdError::Id)?
            .trim();
        let Some((showing, visible)) = text.rsplit_once(' ').filter(|(head, _)| head.contains(' '))
        else {
            return Ok((Self::from_text(text)?, None));
        };
        let visible = parse_show(visible).map_err(|_| ReaderIdError::Visible)?;
        Ok((Self::from_text(showing)?, Some(visible)))
    }

    pub fn presence(&self) -> Presence {
        Presence {
            reader: self.id.key(),
            show: self.show,
        }
    }
}

/// A page-show number: decimal digits only, within `u32`.
pub fn parse_show(raw: &str) -> Result<u32, ReaderIdError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReaderIdError::Show);
    }
    raw.parse().map_err(|_| ReaderIdError::Show)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReaderIdError {
    #[error("reader id must be {MIN_LEN}-{MAX_LEN} characters of A-Z, a-z, 0-9, '_' and '-'")]
    Id,
    #[error("page-show number must be a decimal number of at most 4294967295")]
    Show,
    #[error("visible milliseconds must be a decimal number of at most 4294967295")]
    Visible,
}

impl ReaderId {
    pub fn parse(raw: &str) -> Result<Self, ReaderIdError> {
        let ok_len = (MIN_LEN..=MAX_LEN).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ReaderIdError::Id)
        }
    }

    /// A fresh random id (128 bits, URL-safe base64) for clients that sent none.
    pub fn generate() -> Self {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bytes = [0u8; 16];
        // The OS RNG failing is not recoverable in any useful way; fall back to a hashed
        // counter so the id is still unique within this process.
        if getrandom::fill(&mut bytes).is_err() {
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes[..8].copy_from_slice(&hash_key().hash(&n.to_le_bytes()).to_le_bytes());
            bytes[8..].copy_from_slice(&n.to_le_bytes());
        }
        let id = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(b & 63)] as char)
            .chain(
                bytes
                    .iter()
                    .take(6)
                    .map(|b| ALPHABET[usize::from(b >> 2)] as char),
            )
            .collect();
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> ReaderKey {
        ReaderKey(hash_key().hash(self.0.as_bytes()))
    }
}

impl fmt::Debug for ReaderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<ReaderIdError> for Refusal {
    fn from(e: ReaderIdError) -> Self {
        Self::BadReaderId(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = ReaderId::generate();
        let b = ReaderId::generate();
        assert!(ReaderId::parse(a.as_str()).is_ok(), "{a:?}");
        assert_ne!(a, b);
        assert_ne!(a.key(), b.key());
    }

    /// The file keeps these hashes across restarts and upgrades: the function must stay the
    /// one specified. The example of the SipHash paper (Aumasson and Bernstein, appendix A):
    /// key 00 01 … 0f, message 00 01 … 0e.
    #[test]
    fn the_reader_id_hash_is_siphash_2_4_as_specified() {
        let key: Vec<u8> = (0..16).collect();
        let key = HashKey([le_u64(&key[..8]), le_u64(&key[8..])]);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(key.hash(&message), 0xa129_ca61_49be_45e5);
        assert_eq!(key.hash(b""), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn refuses_short_long_and_foreign_characters() {
        for bad in [
            "",
            "short",
            &"a".repeat(65),
            "abcdefghijklmnop!",
            "abcdefgh ijklmnop",
        ] {
            assert!(ReaderId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ReaderId::parse("abcdefghijklmnop").is_ok());
        assert!(ReaderId::parse(&"Z_-9".repeat(16)).is_ok());
    }

    #[test]
    fn a_beacon_names_a_reader_id_and_optionally_its_page_show() {
        let plain = Showing::from_beacon(b" abcdefghijklmnop\n").unwrap();
        assert_eq!((plain.id.as_str(), plain.show), ("abcdefghijklmnop", 0));
        let shown = Showing::from_beacon(b"abcdefghijklmnop 7").unwrap();
        assert_eq!(shown.show, 7);
        assert_eq!(shown.presence().reader, plain.presence().reader);
        assert_ne!(shown.presence(), plain.presence());
        for bad in [
            &b"abcdefghijklmnop x"[..],
            b"abcdefghijklmnop 1 2",
            b"abcdefghijklmnop -1",
            b"abcdefghijklmnop 4294967296",
            b"abcdefghijklmnop  1",
            b"short 1",
        ] {
            assert!(Showing::from_beacon(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_leave_may_add_the_visible_milliseconds_after_its_page_show() {
        let (plain, none) = Showing::from_leave(b"abcdefghijklmnop\n").unwrap();
        assert_eq!((plain.show, none), (0, None));
        let (shown, none) = Showing::from_leave(b"abcdefghijklmnop 3").unwrap();
        assert_eq!((shown.show, none), (3, None));
        let (timed, visible) = Showing::from_leave(b" abcdefghijklmnop 3 12345\n").unwrap();
        assert_eq!((timed.id.as_str(), timed.show), ("abcdefghijklmnop", 3));
        assert_eq!(visible, Some(12345));
        for bad in [
            &b"abcdefghijklmnop 1 x"[..],
            b"abcdefghijklmnop 1 2 3",
            b"abcdefghijklmnop 1 4294967296",
            b"abcdefghijklmnop 1  2",
            b"short 1 2",
        ] {
            assert!(Showing::from_leave(bad).is_err(), "{bad:?}");
        }
    }
}
