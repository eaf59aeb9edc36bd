//! The secrets the command line takes: the admin token and the password in `--redis`. Their
//! `Display` and `Debug` never show them, so no log line, error message or `{:?}` of a
//! configuration can; the code that needs the value asks for it by name (`expose`).

use std::fmt;
use std::ops::Deref;

/// What a secret shows instead of itself.
const MASK: &str = "***";

/// A value that prints as `***`: the admin token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// For comparisons and length checks (`token.as_deref()`); formatting a `Secret` itself never
/// shows it.
impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A `--redis` URL, shown with its password masked: `redis://user:***@host:6379/0`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given, password included: for the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&masked(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", masked(&self.0))
    }
}

impl From<String> for RedisUrl {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for RedisUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// `url` with whatever could be a password masked. Written on the text, not on a parsed URL:
/// it must be safe for the URLs that do not parse too (a `#`, `/` or `@` left unescaped in the
/// password, a typo in the port), where a parser cannot say where the password ends.
/// - Everything between `://` and the *last* `@` is the user information: only a user name
///   before its first `:` is kept (`user:***@`), the rest is masked (`***@`).
/// - Without an `@`, an authority whose "port" is not a number may be a password written
///   without its `@` (`redis://:hunter2`): it is masked whole.
/// - The values of `pass=` and `password=` in the query (`unix://` URLs) are masked.
fn masked(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let at = rest.rfind('@');
    let host = match at {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => {
                    out.push_str(user);
                    out.push(':');
                }
                _ => {}
            }
            out.push_str(MASK);
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let end = host.find(['/', '?', '#']).unwrap_or(host.len());
    let (authority, tail) = host.split_at(end);
    if at.is_none() && has_odd_port(authority) {
        out.push_str(MASK);
    } else {
        out.push_str(authority);
    }
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&masked_query(query));
        }
        None => out.push_str(tail),
    }
    out
}

/// `host:port` whose port is not all digits (`[v6]:port` read past the brackets).
fn has_odd_port(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, after)| after),
        None => authority,
    };
    after_host
        .split_once(':')
        .is_some_and(|(_, port)| !port.bytes().all(|b| b.is_ascii_digit()))
}

fn masked_query(query: &str) -> String {
    let pairs = query.split('&').map(|pair| match pair.split_once('=') {
        Some((key, _))
            if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
        {
            format!("{key}={MASK}")
        }
        _ => pair.to_owned(),
    });
    pairs.collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        RedisUrl::from(url).to_string()
    }

    #[test]
    fn a_redis_url_shows_its_password_as_stars_and_keeps_the_rest() {
        assert_eq!(
            shown("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            shown("rediss://app:hunter2@redis.example:6380/2"),
            "rediss://app:***@redis.example:6380/2"
        );
        assert_eq!(
            shown("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(shown("redis://[::1]:6379"), "redis://[::1]:6379");
        assert_eq!(
            shown("unix:///run/redis.sock?db=1&pass=hunter2"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            format!("{:?}", RedisUrl::from("redis://:hunter2@h:1/0")),
            "RedisUrl(\"redis://:***@h:1/0\")"
        );
    }

    #[test]
    fn a_redis_url_that_does_not_parse_shows_no_part_of_its_password() {
        for (url, want) in [
            // Unescaped `#`, `/`, `@` and `?` in the password: no parser finds its end.
            (
                "redis://:hun#ter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "redis://:hun/ter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "redis://:hun@ter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("redis://u:hun?ter2@127.0.0.1", "redis://u:***@127.0.0.1"),
            (
                "redis://:hunter2@127.0.0.1:notaport/0",
                "redis://:***@127.0.0.1:notaport/0",
            ),
            // The password without its `@`, or no scheme at all.
            ("redis://:hunter2", "redis://***"),
            ("redis://app:hunter2", "redis://***"),
            ("hunter2@127.0.0.1", "***@127.0.0.1"),
        ] {
            let got = shown(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("hun") && !got.contains("ter2"), "{got}");
        }
    }

    #[test]
    fn a_secret_never_formats_as_itself() {
        let token = Secret::from("s3cret-admin-token");
        assert_eq!(format!("{token:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(token.clone())), "Some(Secret(***))");
        assert_eq!(token.expose(), "s3cret-admin-token");
        assert_eq!(Some(token).as_deref().map(str::len), Some(18));
    }
}
