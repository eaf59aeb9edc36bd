//! Who the client is: the socket peer, or what a trusted proxy says in `X-Forwarded-For` /
//! `Forwarded`. Headers from untrusted peers are ignored, so clients cannot spoof their IP.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::edge::headers::Headers;

#[derive(Debug, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// The default: loopback, where a proxy on the same machine connects from.
    pub fn loopback() -> Self {
        let nets = ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|n| n.parse().ok());
        Self(nets.collect())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: walking the forwarding chain from the nearest hop, the first
    /// address that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &(impl Headers + ?Sized)) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let mut chain = forwarded_for(headers);
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
    /// `X-Forwarded-Proto` entry, else the last `Forwarded` element's `proto=`. Only a trusted
    /// peer is believed; anyone else reached us directly, in plain HTTP.
    pub fn forwarded_https(&self, peer: IpAddr, headers: &(impl Headers + ?Sized)) -> bool {
        if !self.trusts(peer) {
            return false;
        }
        let last = |name| {
            let value = headers.values(name).last()?;
            let entry = value.rsplit(|&b| b == b',').next()?;
            std::str::from_utf8(entry).ok().map(str::trim)
        };
        let proto = match last("x-forwarded-proto") {
            Some(proto) => Some(proto),
            None => last("forwarded").and_then(|element| {
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

/// The addresses a request passed through, farthest first. `X-Forwarded-For` wins when
/// present at all (it is what nginx and HAProxy append to); `Forwarded` is read only without
/// it. Entries are split on bytes, so one unreadable entry (non-ASCII) is an unknown hop that
/// hides what lies before it, never the hops a trusted proxy appended after it.
fn forwarded_for(headers: &(impl Headers + ?Sized)) -> Vec<IpAddr> {
    let entries: Vec<&[u8]> = if headers.value("x-forwarded-for").is_some() {
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
        assert!(proxies().forwarded_https(proxy, &fwd));
        assert!(!proxies().forwarded_https(proxy, &HeaderMap::new()));
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
            proxies().client_ip(peer, &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(proxies().client_ip(peer, &HeaderMap::new()), peer);
    }
}
