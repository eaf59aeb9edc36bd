//! Which pages may count views: same-origin pages, Origin-less requests, and the origins given
//! with `--allow-origin`; and only through the script's own fetches, never an `<img>`,
//! `<iframe>` or navigation that another site points at the API. A refused request is
//! answered before anything is counted.

use std::collections::HashSet;

use crate::edge::headers::Headers;
use crate::http::error::ApiError;

/// An `--allow-origin` that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("--allow-origin {0:?}: must start with http:// or https://")]
    Scheme(String),
    #[error("--allow-origin {0:?}: must be scheme://host[:port], no path")]
    Shape(String),
}

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: HashSet<String>,
}

impl OriginPolicy {
    /// Normalises and checks each `scheme://host[:port]`.
    pub fn new(origins: &[String]) -> Result<Self, OriginError> {
        let mut allowed = HashSet::new();
        for raw in origins {
            let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| OriginError::Scheme(raw.clone()))?;
            if rest.is_empty() || rest.contains('/') {
                return Err(OriginError::Shape(raw.clone()));
            }
            allowed.insert(origin);
        }
        Ok(Self { allowed })
    }

    /// Listed origins: these get CORS headers.
    pub fn is_listed(&self, origin: &[u8]) -> bool {
        std::str::from_utf8(origin).is_ok_and(|o| self.allowed.contains(&o.to_ascii_lowercase()))
    }

    /// For requests that count (streams, shared joins): browsers send `Sec-Fetch-Dest: empty`
    /// for `EventSource`, `fetch` and beacons, and something else for elements and navigations,
    /// which carry no `Origin` and would pass [`OriginPolicy::check`]. A cross-site request is
    /// only for pages of a listed origin. Clients without `Sec-Fetch-*` (older browsers,
    /// scripts) are judged by the origin alone.
    pub fn check_fetch(&self, headers: &(impl Headers + ?Sized)) -> Result<(), ApiError> {
        if headers
            .value("sec-fetch-dest")
            .is_some_and(|dest| !dest.trim_ascii().eq_ignore_ascii_case(b"empty"))
        {
            return Err(ApiError::NotAFetch("Sec-Fetch-Dest is not empty"));
        }
        let site = headers.value("sec-fetch-site").map(<[u8]>::trim_ascii);
        let foreign = site.is_some_and(|site| {
            site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site")
        });
        if foreign && !headers.value("origin").is_some_and(|o| self.is_listed(o)) {
            return Err(ApiError::NotAFetch(
                "cross-site request from a page not allowed",
            ));
        }
        Ok(())
    }

    /// No `Origin`, a listed one, or the server's own (same-origin pages).
    pub fn check(&self, headers: &(impl Headers + ?Sized)) -> Result<(), ApiError> {
        let Some(origin) = headers.value("origin") else {
            return Ok(());
        };
        if self.is_listed(origin) || own_origin(headers).as_bytes().eq_ignore_ascii_case(origin) {
            Ok(())
        } else {
            Err(ApiError::OriginNotAllowed)
        }
    }
}

/// `scheme://host` of the server as the request names it, read as actix-web's
/// `ConnectionInfo` reads it (so both layers agree): `Forwarded: proto=…;host=…`, else
/// `X-Forwarded-Proto` / `X-Forwarded-Host`, else `http` and the `Host` header.
fn own_origin(headers: &(impl Headers + ?Sized)) -> String {
    let (mut scheme, mut host) = (None, None);
    for pair in headers
        .values("forwarded")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split([';', ',']))
    {
        let Some((name, value)) = pair.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "proto" => scheme = scheme.or(Some(value)),
            "host" => host = host.or(Some(value)),
            _ => {}
        }
    }
    let first = |name| {
        let value = std::str::from_utf8(headers.value(name)?).ok()?;
        value.split(',').next().map(str::trim)
    };
    let scheme = scheme
        .or_else(|| first("x-forwarded-proto"))
        .unwrap_or("http");
    let host = host
        .or_else(|| first("x-forwarded-host"))
        .or_else(|| headers.text("host"))
        .unwrap_or_default();
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, value: &'static str) -> httparse::Header<'static> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn only_the_scripts_own_fetches_pass() {
        let policy = OriginPolicy::new(&["https://blog.example".into()]).unwrap();
        let pass = |headers: &[httparse::Header<'_>]| policy.check_fetch(headers).is_ok();
        assert!(pass(&[]), "no Sec-Fetch-*: judged by the origin alone");
        assert!(pass(&[
            h("Sec-Fetch-Dest", "empty"),
            h("Sec-Fetch-Site", "same-origin")
        ]));
        for dest in ["image", "iframe", "document", "script", ""] {
            assert!(!pass(&[h("Sec-Fetch-Dest", dest)]), "{dest:?}");
        }
        assert!(!pass(&[h("Sec-Fetch-Site", "cross-site")]));
        assert!(!pass(&[
            h("Sec-Fetch-Site", "same-site"),
            h("Origin", "https://other.example")
        ]));
        assert!(pass(&[
            h("Sec-Fetch-Dest", "empty"),
            h("Sec-Fetch-Site", "cross-site"),
            h("Origin", "https://blog.example")
        ]));
        assert!(pass(&[h("Sec-Fetch-Site", "none")]));
    }

    #[test]
    fn the_servers_own_origin_is_read_as_actix_web_reads_it() {
        let policy = OriginPolicy::default();
        let same = |headers: &[httparse::Header<'_>]| policy.check(headers).is_ok();
        let host = h("Host", "counter.example:8080");
        assert!(same(&[host, h("Origin", "http://counter.example:8080")]));
        assert!(same(&[host, h("Origin", "HTTP://Counter.Example:8080")]));
        assert!(!same(&[host, h("Origin", "https://counter.example:8080")]));
        assert!(same(&[
            host,
            h("X-Forwarded-Proto", "https, http"),
            h("X-Forwarded-Host", "blog.example"),
            h("Origin", "https://blog.example")
        ]));
        assert!(same(&[
            host,
            h("Forwarded", "for=1.2.3.4;proto=https;host=\"blog.example\""),
            h("X-Forwarded-Proto", "http"),
            h("Origin", "https://blog.example")
        ]));
        assert!(same(&[h("Host", "a")]), "no Origin at all");
    }
}
