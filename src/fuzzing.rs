//! Entry points for the cargo-fuzz targets in `fuzz/` into code that stays `pub(crate)`: each
//! runs exactly what the server or the command runs and hands back plain owned data. Not an
//! API: nothing else should call these.

use std::net::{IpAddr, Ipv4Addr};

use jiff::tz::TimeZone;

use crate::edge::client_ip::{ClientIpHeader, TrustedProxies};
use crate::http::direct::{self, Inspected};
use crate::http::streams::Kind;
use crate::import::file::{self as import_file, ParseOptions};

pub use crate::import::file::ImportFormat;

/// The stream routes the direct layer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRoute {
    Connect,
    Shared,
    Watch,
    Admin,
}

/// What the direct layer makes of the bytes a connection starts with
/// (`crate::http::direct::inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// More bytes needed.
    Incomplete,
    /// Not a request head actix-web would take: handed to it, which refuses it.
    Unusual,
    /// A whole head of `len` bytes asking for no stream: handed to actix-web.
    NotAStream { len: usize },
    /// A stream request, not yet admitted.
    Stream {
        len: usize,
        route: StreamRoute,
        /// The slug or shared stream id, percent-decoded.
        name: String,
        query: String,
        /// No body and no protocol switch (else refused).
        plain: bool,
        origin: Option<Vec<u8>>,
        /// The client, for a peer on 127.0.0.1 trusted as a proxy, read from the head's
        /// headers as the admission reads them: with `--client-ip-header x-forwarded-for`,
        /// then `forwarded`.
        client_ip: [IpAddr; 2],
    },
}

pub fn request_head(bytes: &[u8]) -> Head {
    match direct::inspect(bytes) {
        Inspected::Incomplete => Head::Incomplete,
        Inspected::Unusual => Head::Unusual,
        Inspected::NotAStream { len } => Head::NotAStream { len },
        Inspected::Stream {
            len,
            target,
            plain,
            origin,
        } => Head::Stream {
            len,
            route: match target.kind {
                Kind::Reader => StreamRoute::Connect,
                Kind::Shared => StreamRoute::Shared,
                Kind::Watch => StreamRoute::Watch,
                Kind::Admin => StreamRoute::Admin,
            },
            name: target.name.into_owned(),
            query: target.query.to_owned(),
            plain,
            origin,
            client_ip: client_ips(&bytes[..len]),
        },
    }
}

/// The client of `head` (a complete head) in both `--client-ip-header` modes, with the
/// headers as the direct layer parses them.
fn client_ips(head: &[u8]) -> [IpAddr; 2] {
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut headers = [httparse::EMPTY_HEADER; direct::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(head).is_err() {
        return [peer; 2];
    }
    [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded]
        .map(|mode| TrustedProxies::loopback().reading(mode))
        .map(|proxies| proxies.client_ip(peer, req.headers))
}

/// An import file's rows, as `viewcounter import` reads them (`import::file::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRows {
    pub format: Option<ImportFormat>,
    /// `(slug, total)`, sorted by slug.
    pub totals: Vec<(String, u64)>,
    /// `(slug, YYYY-MM-DD, views)`, sorted by slug, then day.
    pub days: Vec<(String, String, u64)>,
    pub skipped: usize,
}

/// Parses `text`; `Err` holds the message the command would print.
pub fn import_file(
    text: &str,
    format: Option<ImportFormat>,
    path_prefix: Option<&str>,
    timezone: &TimeZone,
) -> Result<ImportRows, String> {
    let options = ParseOptions {
        format,
        path_prefix,
        timezone,
    };
    let parsed = import_file::parse(text, &options).map_err(|e| e.to_string())?;
    Ok(ImportRows {
        format: parsed.format,
        totals: parsed
            .totals
            .into_iter()
            .map(|(slug, total)| (slug.as_str().to_owned(), total))
            .collect(),
        days: parsed
            .days
            .into_iter()
            .map(|((slug, day), views)| (slug.as_str().to_owned(), day.to_string(), views))
            .collect(),
        skipped: parsed.skipped,
    })
}
