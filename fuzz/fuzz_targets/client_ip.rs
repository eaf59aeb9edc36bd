//! `TrustedProxies::client_ip` with arbitrary `X-Forwarded-For` / `Forwarded` headers.
//!
//! Input is text-like, one item per line (so the corpus stays readable):
//!   line 1: the socket peer (an IP; anything else means 127.0.0.1)
//!   line 2: the trusted proxies, comma-separated CIDRs or bare IPs (may be empty)
//!   then:   `name: value` header lines: `X-Forwarded-For` and `Forwarded` (any case), any
//!           other name becomes `X-Real-IP` (which must be ignored); the value is raw bytes
//!           (obs-text included), and lines `HeaderValue::from_bytes` refuses are skipped.
//!
//! Properties:
//! 1. never panics;
//! 2. the answer is the peer or an address written in an `X-Forwarded-For` or `Forwarded`
//!    value;
//! 3. an untrusted peer is always the answer (no spoofing from outside);
//! 4. without forwarding headers, the peer is the answer;
//! 5. the nearest hop, which the trusted proxy appended itself to the last
//!    `X-Forwarded-For` value, is the answer when it is an untrusted address, whatever the
//!    client put before it (the documented "first address from the nearest hop that is not
//!    a trusted proxy");
//! 6. when every `X-Forwarded-For` entry is a plain address, the answer is the one the
//!    documented walk gives.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use viewcounter::edge::client_ip::TrustedProxies;

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_net(raw: &str) -> Option<IpNet> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Every address that can be read out of `text`: split on anything that cannot be part of
/// an address, then each token and each of its prefixes that stop before a ':' (a port).
fn addresses_in(text: &str, out: &mut Vec<IpAddr>) {
    for token in text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')) {
        if let Ok(ip) = token.parse() {
            out.push(canonical(ip));
        }
        for (i, _) in token.match_indices(':') {
            if let Ok(ip) = token[..i].parse() {
                out.push(canonical(ip));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let peer: IpAddr = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let nets: Vec<IpNet> = lines
        .next()
        .map(String::from_utf8_lossy)
        .map(|s| s.split(',').filter_map(parse_net).take(8).collect())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines.take(16) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        // Only the two names the code reads, and one it must ignore: fuzzing `http`'s table
        // of standard header names would only add noise to the coverage.
        let name = match name.to_ascii_lowercase().as_slice() {
            b"x-forwarded-for" => HeaderName::from_static("x-forwarded-for"),
            b"forwarded" => HeaderName::from_static("forwarded"),
            _ => HeaderName::from_static("x-real-ip"),
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(name, value);
    }

    let trusts = |ip: IpAddr| {
        let ip = canonical(ip);
        nets.iter().any(|n| n.contains(&ip))
    };
    let proxies = TrustedProxies::new(nets.clone());
    let got = proxies.client_ip(peer, &headers);

    // 2: the peer or an address present in the headers.
    let mut present = vec![canonical(peer)];
    // (X-Real-IP is not read: an address only there must never come out.)
    for (_, value) in headers.iter().filter(|(name, _)| *name != "x-real-ip") {
        addresses_in(&String::from_utf8_lossy(value.as_bytes()), &mut present);
    }
    assert!(
        present.contains(&got),
        "{got} is neither the peer nor in the headers"
    );

    // 3: an untrusted peer cannot be overridden by what it sends.
    if !trusts(peer) {
        assert_eq!(
            got,
            canonical(peer),
            "untrusted peer {peer} spoofed as {got}"
        );
        return;
    }

    // 4: nothing forwarded, nothing to believe.
    let xff: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").collect();
    if xff.is_empty() && !headers.contains_key("forwarded") {
        assert_eq!(got, canonical(peer));
    }

    // 5: the hop the trusted proxy appended (the last entry of the last X-Forwarded-For
    // value) is the client whenever it is an untrusted address.
    if let Some(last) = xff.last() {
        let nearest = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default();
        let nearest = std::str::from_utf8(nearest)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        if let Some(hop) = nearest.filter(|&hop| !trusts(hop)) {
            assert_eq!(
                got,
                canonical(hop),
                "trusted peer {peer} appended {hop} as the nearest hop, but the client IP came out as {got}; headers {headers:?}"
            );
        }
    }

    // 6: a chain of plain addresses is walked from the nearest hop to the first untrusted one
    // (or, if every hop is trusted, the farthest).
    let plain: Option<Vec<IpAddr>> = xff
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()
        .and_then(|vs| {
            vs.iter()
                .flat_map(|v| v.split(','))
                .map(|e| e.trim().parse::<IpAddr>().ok())
                .collect()
        });
    if let Some(chain) = plain.filter(|c| !c.is_empty()) {
        let want = chain
            .iter()
            .rev()
            .copied()
            .find(|&hop| !trusts(hop))
            .unwrap_or(chain[0]);
        assert_eq!(got, canonical(want), "chain {chain:?}, trusted {nets:?}");
    }
});
