//! The direct layer's request-head handling (`src/http/direct.rs`): how many bytes the head
//! is, whether it asks for one of the four stream routes, the slug or shared stream id it
//! names, whether it is plain, its `Origin`, and the client its forwarding headers name.
//!
//! Input: the bytes a connection starts with, as a client sends them.
//!
//! Properties:
//! 1. never panics;
//! 2. a complete head is judged the same whatever follows it, and every shorter prefix of it
//!    is incomplete (never refused): a head that arrives in pieces is judged as a whole;
//! 3. only a `GET` is a stream request;
//! 4. the route and the name are the ones actix-web's router finds for the same target
//!    (`actix_router`, with the path decoded as actix-web decodes it): a slug means the same to
//!    the stream the direct layer opens and to `POST /leave/{slug}` that actix-web answers;
//! 5. `plain` is true exactly without a non-zero `Content-Length`, a `Transfer-Encoding` and an
//!    `Upgrade`; the `Origin` is the first `Origin` header's value;
//! 6. the client named by the head's forwarding headers, read from the direct layer's raw
//!    headers, is the one actix-web's `HeaderMap` of the same headers gives, in both
//!    `--client-ip-header` modes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use actix_router::{Path, ResourceDef, Url};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use viewcounter::edge::client_ip::{ClientIpHeader, TrustedProxies};
use viewcounter::fuzzing::{Head, StreamRoute, request_head};

/// LeakSanitizer, told before it starts: `ResourceDef::new` leaks a `Box<String>` per capture
/// name on purpose (a server makes its routes once), so the oracle's routes below, made once,
/// leak 48 bytes that are not the direct layer's. Nothing else is suppressed.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const std::ffi::c_char {
    c"leak:actix_router::resource::ResourceDef\n".as_ptr()
}

/// The routes as actix-web would declare them, made once.
static ROUTES: LazyLock<[(StreamRoute, ResourceDef); 4]> = LazyLock::new(|| {
    [
        (StreamRoute::Connect, "/api/v1/connect/{name:.*}"),
        (StreamRoute::Shared, "/api/v1/shared/{name}"),
        (StreamRoute::Watch, "/api/v1/watch"),
        (StreamRoute::Admin, "/api/v1/admin/stream"),
    ]
    .map(|(route, pattern)| (route, ResourceDef::new(pattern)))
});

/// The stream route and name actix-web's router finds for `target`.
fn route_by_actix(target: &str) -> Option<(StreamRoute, String)> {
    let uri: http::Uri = target.parse().ok()?;
    let url = Url::new(uri);
    for (route, def) in ROUTES.iter() {
        let route = *route;
        let mut path = Path::new(url.clone());
        if def.capture_match_info(&mut path) {
            let name = path.get("name").unwrap_or_default().to_owned();
            return Some((route, name));
        }
    }
    None
}

fn first_value<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn check_complete(data: &[u8], len: usize, verdict: &Head) {
    // 2: the head alone gives the same verdict, and no prefix of it is refused.
    assert!(len > 0 && len <= data.len(), "len {len} of {}", data.len());
    assert_eq!(&request_head(&data[..len]), verdict, "head alone");
    for cut in [len - 1, len / 2, len.saturating_sub(2)] {
        let partial = request_head(&data[..cut]);
        assert_eq!(
            partial,
            Head::Incomplete,
            "prefix of {cut} bytes of a {len}-byte head"
        );
    }

    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(&data[..len]) else {
        panic!("a complete head that does not parse");
    };
    let (method, target) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
    let expected = if method == "GET" && target.starts_with('/') {
        route_by_actix(target)
    } else {
        None
    };
    let Head::Stream {
        route,
        name,
        query,
        plain,
        origin,
        client_ip,
        ..
    } = verdict
    else {
        // 4: nothing actix-web would route to a stream is left to actix-web, which has no
        // such route. (A target `http::Uri` refuses is refused by actix-web too.)
        assert_eq!(expected, None, "{method} {target:?} not taken as a stream");
        return;
    };
    // 3.
    assert_eq!(method, "GET");
    // 4.
    if target.parse::<http::Uri>().is_ok() {
        assert_eq!(
            expected,
            Some((*route, name.clone())),
            "{target:?}: actix-web (left) and the direct layer (right) disagree"
        );
    }
    // The query as actix-web reads it (a fragment is part of neither).
    if let Ok(uri) = target.parse::<http::Uri>() {
        assert_eq!(query, uri.query().unwrap_or_default(), "{target:?}");
    }

    // 5.
    let headers = &*req.headers;
    let length_zero = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .all(|h| h.value.trim_ascii() == b"0");
    let want_plain = length_zero
        && first_value(headers, "transfer-encoding").is_none()
        && first_value(headers, "upgrade").is_none();
    assert_eq!(*plain, want_plain);
    assert_eq!(origin.as_deref(), first_value(headers, "origin"));

    // 6.
    let mut map = HeaderMap::new();
    for h in headers {
        // Names httparse takes are tokens; values with bytes HeaderValue refuses (controls)
        // cannot reach actix-web at all.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        map.append(name, value);
    }
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, mode) in [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded]
        .into_iter()
        .enumerate()
    {
        let by_map = TrustedProxies::loopback()
            .reading(mode)
            .client_ip(peer, &map);
        assert_eq!(
            client_ip[i], by_map,
            "{mode:?}: raw headers and HeaderMap disagree"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let verdict = request_head(data);
    match verdict {
        Head::Incomplete | Head::Unusual => {}
        Head::NotAStream { len } | Head::Stream { len, .. } => check_complete(data, len, &verdict),
    }
});
