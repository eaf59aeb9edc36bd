//! Post identifiers as they appear in URLs: validated once at the edge, cheap to clone after.

use crate::refusal::Refusal;
use std::fmt;
use std::sync::Arc;

/// Longest slug accepted, in bytes.
pub const MAX_SLUG_LEN: usize = 200;

/// A validated post slug: 1–200 bytes of ASCII letters, digits, `-`, `_`, `.`, with `/`
/// between non-empty segments, and no `.` or `..` segment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(Arc<str>);

/// Why a slug was refused; the message is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("slug is empty")]
    Empty,
    #[error("slug is longer than {MAX_SLUG_LEN} bytes")]
    TooLong,
    #[error("slug may only hold ASCII letters, digits, '-', '_', '.' and '/'")]
    BadCharacter,
    #[error("slug has an empty, '.' or '..' segment")]
    BadSegment,
}

/// What a watch names the whole site by (every post together): `*`, which no slug can be.
pub const SITE: &str = "*";

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, SlugError> {
        validate(raw)?;
        Ok(Self(Arc::from(raw)))
    }

    /// How many copies of this slug share its bytes (tests of what keeps a post's memory).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// A slug, or [`SITE`] (only where a watch is asked for: no post is named `*`).
    pub fn parse_watched(raw: &str) -> Result<Self, SlugError> {
        if raw == SITE {
            Ok(Self::site())
        } else {
            Self::parse(raw)
        }
    }

    /// The whole site, [`SITE`].
    pub fn site() -> Self {
        Self(Arc::from(SITE))
    }

    /// Whether this names the whole site ([`SITE`]) rather than a post.
    pub fn is_site(&self) -> bool {
        &*self.0 == SITE
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(raw: &str) -> Result<(), SlugError> {
    if raw.is_empty() {
        return Err(SlugError::Empty);
    }
    if raw.len() > MAX_SLUG_LEN {
        return Err(SlugError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/');
    if !raw.bytes().all(allowed) {
        return Err(SlugError::BadCharacter);
    }
    if raw
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(SlugError::BadSegment);
    }
    Ok(())
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for Slug {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<SlugError> for Refusal {
    fn from(e: SlugError) -> Self {
        Self::BadSlug(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_slugs_with_dots() {
        for ok in [
            "a",
            "hello-world",
            "2024/05/my_post.html",
            "a.b/c-d",
            &"x".repeat(200),
        ] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_every_malformed_kind() {
        let cases = [
            ("", SlugError::Empty),
            (&"x".repeat(201) as &str, SlugError::TooLong),
            ("a b", SlugError::BadCharacter),
            ("é", SlugError::BadCharacter),
            ("a%2fb", SlugError::BadCharacter),
            ("/a", SlugError::BadSegment),
            ("a/", SlugError::BadSegment),
            ("a//b", SlugError::BadSegment),
            ("a/./b", SlugError::BadSegment),
            ("..", SlugError::BadSegment),
            ("a/..", SlugError::BadSegment),
        ];
        for (raw, want) in cases {
            assert_eq!(Slug::parse(raw).err(), Some(want), "{raw:?}");
        }
    }
}
