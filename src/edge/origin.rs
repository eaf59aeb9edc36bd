//! Which pages may count views: same-origin pages, Origin-less requests, and the origins given
//! with `--allow-origin`; and only through the script's own fetches, never an `<img>`,
//! `<iframe>` or navigation that another site points at the API. A refused request is
//! answered before anything is counted.
//!
//! The owner's changes (import, login, logout) are stricter: the server's own pages only
//! ([`same_origin_only`]), and without a token only a loopback `Host` is the owner's
//! ([`is_loopback_host`]).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::edge::headers::Headers;
use crate::refusal::Refusal;

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
    pub fn check_fetch(&self, headers: &(impl Headers + ?Sized)) -> Result<(), Refusal> {
        if headers
            .value("sec-fetch-dest")
            .is_some_and(|dest| !dest.trim_ascii().eq_ignore_ascii_case(b"empty"))
        {
            return Err(Refusal::NotAFetch("Sec-Fetch-Dest is not empty"));
        }
        let site = headers.value("sec-fetch-site").map(<[u8]>::trim_ascii);
        let foreign = site.is_some_and(|site| {
            site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site")
        });
        if foreign && !headers.value("origin").is_some_and(|o| self.is_listed(o)) {
            return Err(Refusal::NotAFetch(
                "cross-site request from a page not allowed",
            ));
        }
        Ok(())
    }

    /// No `Origin`, a listed one, or the server's own (same-origin pages).
    pub fn check(&self, headers: &(impl Headers + ?Sized)) -> Result<(), Refusal> {
        let Some(origin) = headers.value("origin") else {
            return Ok(());
        };
        if self.is_listed(origin) || own_origin(headers).as_bytes().eq_ignore_ascii_case(origin) {
            Ok(())
        } else {
            Err(Refusal::OriginNotAllowed)
        }
    }
}

/// For the owner's changes (import, login, logout): refuses what another page may have made the
/// browser send. A browser names the page behind every `POST` in `Origin` (`null` for an opaque
/// one), and says in `Sec-Fetch-Site` how it relates to the target; requests without either
/// (scripts, `viewcounter import`) are not a browser's and pass. An `--allow-origin` page is no
/// better than any other here: it may count views, never change the owner's numbers.
pub fn same_origin_only(headers: &(impl Headers + ?Sized)) -> Result<(), Refusal> {
    let site = headers.value("sec-fetch-site").map(<[u8]>::trim_ascii);
    if site.is_some_and(|site| {
        site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site")
    }) {
        return Err(Refusal::CrossSite(
            "refused: sent by a page of another site (Sec-Fetch-Site)",
        ));
    }
    match headers.value("origin") {
        Some(origin) if !own_origin(headers).as_bytes().eq_ignore_ascii_case(origin) => Err(
            Refusal::CrossSite("refused: sent by a page of another origin (Origin)"),
        ),
        _ => Ok(()),
    }
}

/// Whether a `Host` header names this machine: `localhost`, an IPv4 address of `127.0.0.0/8` or
/// `[::1]`, with or without a port. A page on a name the attacker controls that resolves to
/// `127.0.0.1` (DNS rebinding) sends its own name, never one of these.
pub fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let (name, port) = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, port)) => (v6, port),
            None => return false,
        },
        None => host.find(':').map_or((host, ""), |at| host.split_at(at)),
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok()
        });
    let loopback = if host.starts_with('[') {
        name.parse::<Ipv6Addr>() == Ok(Ipv6Addr::LOCALHOST)
    } else {
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    port_ok && loopback
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

    #[test]
    fn only_loopback_names_and_addresses_are_a_loopback_host() {
        for host in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(is_loopback_host(host.as_bytes()), "{host}");
        }
        for host in [
            "",
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost.",
            "128.0.0.1",
            "0.0.0.0:8080",
            "::1",
            "[::1",
            "[::2]:80",
            "[::ffff:127.0.0.1]",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:+80",
            "127.0.0.1:80:80",
            "localhost:80x",
        ] {
            assert!(!is_loopback_host(host.as_bytes()), "{host}");
        }
        assert!(!is_loopback_host(b"\xff"));
    }

    #[test]
    fn changes_come_only_from_the_servers_own_pages() {
        let host = h("Host", "counter.example:8080");
        let pass = |headers: &[httparse::Header<'_>]| same_origin_only(headers).is_ok();
        assert!(pass(&[host]), "no Origin, no Sec-Fetch-Site: not a browser");
        assert!(pass(&[
            host,
            h("Origin", "http://counter.example:8080"),
            h("Sec-Fetch-Site", "same-origin")
        ]));
        assert!(pass(&[host, h("Sec-Fetch-Site", "none")]));
        for origin in [
            "http://evil.example",
            "null",
            "https://counter.example:8080",
            "http://counter.example",
        ] {
            assert!(!pass(&[host, h("Origin", origin)]), "{origin}");
        }
        for site in ["cross-site", "same-site", "Cross-Site"] {
            assert!(!pass(&[host, h("Sec-Fetch-Site", site)]), "{site}");
            assert!(
                !pass(&[
                    host,
                    h("Sec-Fetch-Site", site),
                    h("Origin", "http://counter.example:8080")
                ]),
                "{site}"
            );
        }
    }
}
