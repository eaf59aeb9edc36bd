//! Who the client is: the socket peer, or what a trusted proxy says in the one header it is
//! configured to set (`--client-ip-header`: `X-Forwarded-For`, or RFC 7239 `Forwarded`).
//! Headers from untrusted peers are ignored, so clients cannot spoof their IP; so is the other
//! forwarding header, which a proxy that does not set it passes on as the client wrote it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::edge::headers::Headers;

/// The header a trusted proxy names the client (and the scheme it was reached by) in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`, with `X-Forwarded-Proto`: nginx, Caddy, HAProxy `option forwardfor`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` and `proto=`: HAProxy `option forwarded`.
    Forwarded,
}

/// The networks of the default `--trusted-proxy`, as written on the command line.
pub const LOOPBACK_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Proxies at `nets`, naming the client in `X-Forwarded-For` ([`Self::reading`] to change).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            header: ClientIpHeader::default(),
        }
    }

    /// The same proxies, naming the client in `header` (and only there).
    pub fn reading(self, header: ClientIpHeader) -> Self {
        Self { header, ..self }
    }

    /// The default: loopback, where a proxy on the same machine connects from.
    pub fn loopback() -> Self {
        let nets = LOOPBACK_PROXIES.iter().filter_map(|n| n.parse().ok());
        Self::new(nets.collect())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: walking the forwarding chain from the nearest hop, the first
    /// address that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &(impl Headers + ?Sized)) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let mut chain = forwarded_for(headers, self.header);
        // Nearest hop last: walk backwards.
        while let Some(hop) = chain.pop() {
            if !self.trusts(hop) || chain.is_empty() {
                return canonical(hop);
            }
        }
        canonical(peer)
    }
}

impl TrustedProxies {
    /// Whether the client spoke HTTPS to the nearest proxy, as that proxy says: the last
    /// `X-Forwarded-Proto` entry, or with `--client-ip-header forwarded` the last `Forwarded`
    /// element's `proto=`. Only a trusted peer is believed; anyone else reached us directly, in
    /// plain HTTP.
    pub fn forwarded_https(&self, peer: IpAddr, headers: &(impl Headers + ?Sized)) -> bool {
        if !self.trusts(peer) {
            return false;
        }
        let last = |name| {
            let value = headers.values(name).last()?;
            let entry = value.rsplit(|&b| b == b',').next()?;
            std::str::from_utf8(entry).ok().map(str::trim)
        };
        let proto = match self.header {
            ClientIpHeader::XForwardedFor => last("x-forwarded-proto"),
            ClientIpHeader::Forwarded => last("forwarded").and_then(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("proto").then(|| v.trim_matches('"'))
                })
            }),
        };
        proto.is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses a request passed through, farthest first, as `header` lists them (the other
/// forwarding header is never read). Entries are split on bytes, so one unreadable entry
/// (non-ASCII) is an unknown hop that hides what lies before it, never the hops a trusted
/// proxy appended after it.
fn forwarded_for(headers: &(impl Headers + ?Sized), header: ClientIpHeader) -> Vec<IpAddr> {
    let entries: Vec<&[u8]> = if header == ClientIpHeader::XForwardedFor {
        headers
            .values("x-forwarded-for")
            .flat_map(|v| v.split(|&b| b == b','))
            .collect()
    } else {
        headers
            .values("forwarded")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|element| {
                element
                    .split(|&b| b == b';')
                    .find_map(|pair| {
                        let text = std::str::from_utf8(pair).ok()?;
                        let (k, v) = text.trim().split_once('=')?;
                        k.eq_ignore_ascii_case("for").then_some(v.as_bytes())
                    })
                    // An element without `for=` is a hop we cannot name.
                    .unwrap_or(b"unknown")
            })
            .collect()
    };
    let mut chain = Vec::with_capacity(entries.len());
    for entry in entries {
        let node = std::str::from_utf8(entry)
            .ok()
            .and_then(|e| parse_node(e.trim()));
        match node {
            Some(ip) => chain.push(ip),
            // An unknown hop hides everything before it.
            None => chain.clear(),
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim_matches('"');
    if let Ok(ip) = raw.parse() {
        return Some(ip);
    }
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    raw.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ])
    }

    /// The same proxies, setting RFC 7239 `Forwarded` (`--client-ip-header forwarded`).
    fn rfc7239() -> TrustedProxies {
        proxies().reading(ClientIpHeader::Forwarded)
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(proxies().client_ip(peer, &h), peer);
    }

    #[test]
    fn an_unreadable_entry_hides_only_what_lies_before_it() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes(b"caf\xc3\xa9, 203.0.113.7").unwrap(),
        );
        h.append(
            HeaderName::from_static("forwarded"),
            HeaderValue::from_static("for=192.0.2.66"),
        );
        assert_eq!(
            proxies().client_ip(peer, &h),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn https_is_believed_from_a_trusted_proxy_only() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(proxies().forwarded_https(proxy, &https));
        assert!(!proxies().forwarded_https(stranger, &https));
        let chain = headers(&[("x-forwarded-proto", "https, http")]);
        assert!(
            !proxies().forwarded_https(proxy, &chain),
            "the nearest hop says http"
        );
        let fwd = headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=http, for=5.6.7.8;Proto=\"https\"",
        )]);
        assert!(rfc7239().forwarded_https(proxy, &fwd));
        assert!(!rfc7239().forwarded_https(stranger, &fwd));
        assert!(!proxies().forwarded_https(proxy, &HeaderMap::new()));
        assert!(!rfc7239().forwarded_https(proxy, &HeaderMap::new()));
    }

    #[test]
    fn the_scheme_is_read_only_from_the_header_the_proxy_sets() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        // The proxy speaks plain HTTP to the client and says so in its own header; the
        // client's copy of the other one passed through untouched.
        let xff_proxy = headers(&[("forwarded", "proto=https"), ("x-forwarded-proto", "http")]);
        assert!(!proxies().forwarded_https(proxy, &xff_proxy));
        let only_forged = headers(&[("forwarded", "proto=https")]);
        assert!(!proxies().forwarded_https(proxy, &only_forged));
        let rfc_proxy = headers(&[
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.7;proto=http"),
        ]);
        assert!(!rfc7239().forwarded_https(proxy, &rfc_proxy));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_nearest_hop() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(
            proxies().client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:443\";proto=https")]);
        assert_eq!(
            rfc7239().client_ip(peer, &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=198.51.100.7;proto=https, for=10.1.2.3",
        )]);
        assert_eq!(
            rfc7239().client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(proxies().client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(rfc7239().client_ip(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn reading_x_forwarded_for_a_client_s_own_forwarded_header_means_nothing() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[
            ("forwarded", "for=203.0.113.1"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            proxies().client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A proxy that forgot to set X-Forwarded-For: the client is the proxy, never the
        // address the client chose.
        let h = headers(&[("forwarded", "for=203.0.113.1")]);
        assert_eq!(proxies().client_ip(peer, &h), peer);
    }

    #[test]
    fn reading_forwarded_a_client_s_own_x_forwarded_for_means_nothing() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        // HAProxy `option forwarded` sets Forwarded and passes the client's X-Forwarded-For on.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("forwarded", "for=198.51.100.7;proto=http"),
        ]);
        assert_eq!(
            rfc7239().client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "203.0.113.1")]);
        assert_eq!(rfc7239().client_ip(peer, &h), peer);
    }
}
