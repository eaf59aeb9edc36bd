//! `TrustedProxies::client_ip` with arbitrary `X-Forwarded-For` / `Forwarded` headers, reading
//! either one (`--client-ip-header x-forwarded-for`, the default, or `forwarded`).
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
//! 2. the answer is the peer or an address written in a value of the header read, never one
//!    only in the other forwarding header (which the proxy passes on as the client wrote it);
//! 3. an untrusted peer is always the answer (no spoofing from outside);
//! 4. without the header read, the peer is the answer;
//! 5. the nearest hop, which the trusted proxy appended itself to the last
//!    `X-Forwarded-For` value, is the answer when it is an untrusted address, whatever the
//!    client put before it (the documented "first address from the nearest hop that is not
//!    a trusted proxy");
//! 6. when every `X-Forwarded-For` entry is a plain address, the answer is the one the
//!    documented walk gives;
//! 7. reading `Forwarded`: the `for=` of its nearest element, when it is an untrusted plain
//!    address, is the answer; and 6 for a chain of plain `for=` addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use viewcounter::edge::client_ip::{ClientIpHeader, TrustedProxies};

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
    let rfc7239 = TrustedProxies::new(nets.clone()).reading(ClientIpHeader::Forwarded);
    let got_fwd = rfc7239.client_ip(peer, &headers);

    // 2: the peer or an address present in the header read. (X-Real-IP is never read, and
    // each mode ignores the other header: an address only there must never come out.)
    for (answer, read) in [(got, "x-forwarded-for"), (got_fwd, "forwarded")] {
        let mut present = vec![canonical(peer)];
        for value in headers.get_all(read) {
            addresses_in(&String::from_utf8_lossy(value.as_bytes()), &mut present);
        }
        assert!(
            present.contains(&answer),
            "{answer} is neither the peer nor in {read}"
        );
    }

    // 3: an untrusted peer cannot be overridden by what it sends.
    if !trusts(peer) {
        assert_eq!(
            got,
            canonical(peer),
            "untrusted peer {peer} spoofed as {got}"
        );
        assert_eq!(
            got_fwd,
            canonical(peer),
            "untrusted peer {peer} spoofed as {got_fwd}"
        );
        return;
    }

    // 4: nothing forwarded in the header read, nothing to believe.
    let xff: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").collect();
    if xff.is_empty() {
        assert_eq!(got, canonical(peer));
    }
    let fwd: Vec<&HeaderValue> = headers.get_all("forwarded").collect();
    if fwd.is_empty() {
        assert_eq!(got_fwd, canonical(peer));
    }

    // 7: the `for=` of the nearest element (the proxy's own) when untrusted; a chain of plain
    // `for=` addresses walked as the documented walk.
    // The element's first `for=`, when it is a plain address.
    let for_of = |element: &str| -> Option<IpAddr> {
        let value = element.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.eq_ignore_ascii_case("for").then_some(v)
        })?;
        value.trim().trim_matches('"').parse().ok()
    };
    if let Some(hop) = fwd
        .last()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(for_of)
        .filter(|&hop| !trusts(hop))
    {
        assert_eq!(
            got_fwd,
            canonical(hop),
            "nearest for={hop}; headers {headers:?}"
        );
    }
    let fwd_chain: Option<Vec<IpAddr>> = fwd
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()
        .and_then(|vs| vs.iter().flat_map(|v| v.split(',')).map(for_of).collect());
    if let Some(chain) = fwd_chain.filter(|c| !c.is_empty()) {
        let want = chain
            .iter()
            .rev()
            .copied()
            .find(|&hop| !trusts(hop))
            .unwrap_or(chain[0]);
        assert_eq!(
            got_fwd,
            canonical(want),
            "for= chain {chain:?}, trusted {nets:?}"
        );
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
