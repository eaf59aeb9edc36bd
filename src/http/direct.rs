//! Event streams, served straight on the socket: the one front door of the stream routes.
//!
//! Every connection a worker of [`crate::http::server`] accepts has its request head read here
//! first. A `GET` of `/api/v1/connect/{slug}`, `/api/v1/shared/{sid}`, `/api/v1/watch` or
//! `/api/v1/admin/stream` is this module's, end to end: it is admitted once
//! ([`crate::http::streams::open`]) and answered here, the stream with the one response head
//! all streams share on success and the JSON refusal ([`crate::http::error::http1_answer`])
//! otherwise. From then on the connection holds only its socket and the stream's state.
//! Everything else (beacons, counts, preflights, anything that is not HTTP) goes to actix-web
//! with the bytes already read.
//!
//! Why: actix-http keeps, for the whole life of a connection, two 8 KiB buffers, the parsed
//! request and its dispatcher. A stream lives for minutes and sends a few dozen bytes now and
//! then; those were most of its memory.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_service::Service;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::edge::headers::Headers;
use crate::http::state::AppState;
use crate::http::streams::lifecycle::Body;
use crate::http::streams::{self, Kind, StreamRequest};
use crate::refusal::Refusal;

/// What a head's buffer starts with; a browser's stream request fits.
const HEAD_BUFFER: usize = 4096;
/// Heads longer than this are refused, as actix-web refuses them.
const MAX_HEAD: usize = 128 * 1024;
/// Headers at most (actix-web's limit too).
pub(crate) const MAX_HEADERS: usize = 96;
/// The routes this module serves.
const CONNECT: &str = "/api/v1/connect/";
const SHARED: &str = "/api/v1/shared/";
const WATCH: &str = "/api/v1/watch";
const ADMIN_STREAM: &str = "/api/v1/admin/stream";
/// A stream's client sends nothing after its request; this much more from it (a flood on a
/// held stream) closes the connection.
pub(crate) const MAX_CLIENT_BYTES_AFTER_HEAD: usize = 1024;

/// A connection as this module hands it to actix-web, with the peer's address.
pub(crate) type Handed = (Replay, Option<SocketAddr>);

/// One connection, from its first byte to its close.
pub(crate) async fn serve<S>(
    io: TcpStream,
    peer: SocketAddr,
    state: &Arc<AppState>,
    head_timeout: Duration,
    fallback: &S,
) where
    S: Service<Handed>,
{
    let mut head = BytesMut::with_capacity(HEAD_BUFFER);
    // A peer that never finishes its head is dropped, as actix-web would.
    let Ok(read) = tokio::time::timeout(head_timeout, read_head(&io, &mut head)).await else {
        return;
    };
    match read {
        Read::Gone => return,
        Read::Unusual => {}
        Read::Complete(len) => {
            // Boxed: the admission's futures are large and short-lived; the stream that
            // follows should not carry their size for its whole life.
            match Box::pin(answer(state, peer, &head[..len])).await {
                Answer::Stream(response, body, kind) => {
                    drop(head);
                    let _gauge = kind
                        .holds_a_place()
                        .then(|| Gauge::count(&state.direct_streams));
                    stream(io, response, body).await;
                    return;
                }
                Answer::Refused(answer) => {
                    drop(head);
                    refuse(io, &answer).await;
                    return;
                }
                Answer::NotAStream => {}
            }
        }
    }
    let replay = Replay::new(head.freeze(), io);
    let _ = Box::pin(fallback.call((replay, Some(peer)))).await;
}

enum Read {
    /// A whole head of this many bytes (body bytes may follow in the buffer).
    Complete(usize),
    /// Longer than any head actix-web takes, or not HTTP at all: actix-web refuses it.
    Unusual,
    /// Closed or failed before a head arrived.
    Gone,
}

async fn read_head(io: &TcpStream, buf: &mut BytesMut) -> Read {
    loop {
        if io.readable().await.is_err() {
            return Read::Gone;
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match io.try_read_buf(buf) {
            Ok(0) => return Read::Gone,
            Ok(_) => match head_length(buf) {
                Some(Ok(len)) => return Read::Complete(len),
                Some(Err(())) => return Read::Unusual,
                None if buf.len() >= MAX_HEAD => return Read::Unusual,
                None => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Read::Gone,
        }
    }
}

/// The length of the request head at the start of `bytes`: `None` while it is incomplete,
/// `Err` when it is not a request head httparse (and so actix-web) would take.
fn head_length(bytes: &[u8]) -> Option<Result<usize, ()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(bytes) {
        Ok(httparse::Status::Complete(len)) => Some(Ok(len)),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Err(())),
    }
}

/// What the head asks of this module.
enum Answer {
    /// An admitted stream: its response head, body and kind.
    Stream(BytesMut, Body, Kind),
    /// A stream request refused: the whole answer.
    Refused(Bytes),
    /// Not a stream request: actix-web's.
    NotAStream,
}

/// Parses the head and answers it if it asks for one of the stream routes. (Boxed by the
/// caller, so the header array is not part of a held stream's future.)
async fn answer(state: &Arc<AppState>, peer: SocketAddr, head: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => admit(state, peer, &req).await,
        _ => Answer::NotAStream,
    }
}

/// Admits a stream request, or answers why not; [`Answer::NotAStream`] for other routes.
async fn admit(state: &Arc<AppState>, peer: SocketAddr, req: &httparse::Request<'_, '_>) -> Answer {
    let Some(target) = stream_target(req) else {
        return Answer::NotAStream;
    };
    let headers = &*req.headers;
    let origin = headers.value("origin");
    let allowed = origin.filter(|o| state.origins.is_listed(o));
    let request = StreamRequest {
        peer: peer.ip(),
        name: &target.name,
        query: target.query,
        headers,
    };
    match open(state, target.kind, request).await {
        Ok(body) => Answer::Stream(response_head(allowed), body, target.kind),
        Err(refusal) => {
            state.count_refusal(&refusal);
            Answer::Refused(crate::http::error::http1_answer(&refusal, allowed))
        }
    }
}

/// A stream request, as its head names it.
#[derive(Debug)]
pub(crate) struct StreamTarget<'b> {
    /// Which kind of stream the route opens.
    pub(crate) kind: Kind,
    /// The slug (`Reader`) or the shared stream's id (`Shared`); empty for the others.
    pub(crate) name: Cow<'b, str>,
    /// What follows the `?`, as sent.
    pub(crate) query: &'b str,
}

/// Which stream `req` asks for, if any: a `GET` of one of the four routes, its path
/// percent-decoded as actix-web's router decodes a path (`%2F`, `%25`, `%2B` stay), so a slug
/// means here what it means to the actix-web routes (`/leave/{slug}`) beside these.
pub(crate) fn stream_target<'b>(req: &httparse::Request<'_, 'b>) -> Option<StreamTarget<'b>> {
    let (Some("GET"), Some(target)) = (req.method, req.path) else {
        return None;
    };
    // A fragment is no part of the path or the query, to actix-web (`http::Uri`) either.
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    let path: Cow<'b, str> = match raw_path
        .contains('%')
        .then(|| actix_router::Quoter::new(b"", b"%/+").requote(raw_path.as_bytes()))
        .flatten()
    {
        Some(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        None => Cow::Borrowed(raw_path),
    };
    let after = |prefix: &str| -> Option<Cow<'b, str>> {
        match &path {
            Cow::Borrowed(p) => p.strip_prefix(prefix).map(Cow::Borrowed),
            Cow::Owned(p) => p.strip_prefix(prefix).map(|n| Cow::Owned(n.to_owned())),
        }
    };
    let (kind, name) = if let Some(slug) = after(CONNECT) {
        (Kind::Reader, slug)
    } else if let Some(sid) = after(SHARED).filter(|sid| !sid.is_empty() && !sid.contains('/')) {
        (Kind::Shared, sid)
    } else if path == WATCH {
        (Kind::Watch, Cow::Borrowed(""))
    } else if path == ADMIN_STREAM {
        (Kind::Admin, Cow::Borrowed(""))
    } else {
        return None;
    };
    Some(StreamTarget { kind, name, query })
}

/// What this module makes of the bytes a connection starts with, up to where the server's
/// state is asked (for the fuzz target, through [`crate::fuzzing`]): the same steps `serve`
/// and `answer` take.
#[derive(Debug)]
pub(crate) enum Inspected<'b> {
    /// More bytes needed.
    Incomplete,
    /// Not a head actix-web takes either: handed to it, which refuses it.
    Unusual,
    /// A whole head of `len` bytes that asks for no stream: handed to actix-web.
    NotAStream { len: usize },
    /// A stream request: `plain` when it has no body and no protocol switch (else refused),
    /// with the `Origin` the admission checks.
    Stream {
        len: usize,
        target: StreamTarget<'b>,
        plain: bool,
        origin: Option<Vec<u8>>,
    },
}

pub(crate) fn inspect(bytes: &[u8]) -> Inspected<'_> {
    let len = match head_length(bytes) {
        None => return Inspected::Incomplete,
        Some(Err(())) => return Inspected::Unusual,
        Some(Ok(len)) => len,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(&bytes[..len]) else {
        return Inspected::NotAStream { len };
    };
    match stream_target(&req) {
        None => Inspected::NotAStream { len },
        Some(target) => {
            let headers = &*req.headers;
            Inspected::Stream {
                len,
                target,
                plain: is_plain(headers),
                origin: headers.value("origin").map(<[u8]>::to_vec),
            }
        }
    }
}

/// A stream request without a body or protocol switch, admitted by its kind's rules.
async fn open(
    state: &Arc<AppState>,
    kind: Kind,
    request: StreamRequest<'_>,
) -> Result<Body, Refusal> {
    if !is_plain(request.headers) {
        return Err(Refusal::BadRequest(
            "a stream request has no body and no protocol switch".into(),
        ));
    }
    streams::open(state, kind, request).await
}

/// Writes a refusal and closes the connection.
async fn refuse(io: TcpStream, answer: &[u8]) {
    if write_all(&io, answer).await.is_ok() {
        let _ = socket2::SockRef::from(&io).shutdown(std::net::Shutdown::Write);
    }
}

/// Counts a stream in [`AppState::direct_streams`] while it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn count(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request without a body and without a protocol switch.
fn is_plain(headers: &[httparse::Header<'_>]) -> bool {
    let no_length = headers
        .values("content-length")
        .all(|v| v.trim_ascii() == b"0");
    no_length && headers.value("transfer-encoding").is_none() && headers.value("upgrade").is_none()
}

/// The head of every stream's response: what actix-web with the CORS middleware would send,
/// except that the body is delimited by the connection's close rather than chunked: one write
/// of the shared bytes per event.
fn response_head(origin: Option<&[u8]>) -> BytesMut {
    let mut head = BytesMut::with_capacity(384);
    head.put_slice(
        b"HTTP/1.1 200 OK\r\n\
          content-type: text/event-stream\r\n\
          cache-control: no-store\r\n\
          x-accel-buffering: no\r\n\
          vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n\
          connection: close\r\n",
    );
    if let Some(origin) = origin {
        head.put_slice(b"access-control-allow-origin: ");
        head.put_slice(origin);
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"date: ");
    head.put_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.put_slice(b"\r\n\r\n");
    head
}

/// Sends the head and then the body's events until the body ends (server shutdown) or the
/// client goes. Anything the client sends meanwhile is read and dropped (reading is how a
/// close is noticed), up to `MAX_CLIENT_BYTES_AFTER_HEAD`: a client that floods its stream
/// is cut off.
async fn stream(io: TcpStream, mut head: BytesMut, mut body: Body) {
    // The first event is ready at once: send it with the head.
    if let Some(first) = body.next().await {
        head.put_slice(&first);
    }
    if write_all(&io, &head).await.is_err() {
        return;
    }
    drop(head);
    let mut scratch = [0u8; 64];
    let mut allowance = MAX_CLIENT_BYTES_AFTER_HEAD;
    loop {
        tokio::select! {
            biased;
            ready = io.readable() => {
                if ready.is_err() || client_closed(&io, &mut scratch, &mut allowance) {
                    return;
                }
            }
            event = body.next() => match event {
                Some(bytes) => {
                    if write_all(&io, &bytes).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    // The body ended with a retry hint: close our side so the reader reconnects.
    let _ = socket2::SockRef::from(&io).shutdown(std::net::Shutdown::Write);
}

/// Reads what is there; true when the peer closed, the connection failed, or the peer sent
/// more than its `allowance`.
fn client_closed(io: &TcpStream, scratch: &mut [u8], allowance: &mut usize) -> bool {
    match io.try_read(scratch) {
        Ok(0) => true,
        Ok(n) => match allowance.checked_sub(n) {
            Some(left) => {
                *allowance = left;
                false
            }
            None => true,
        },
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

async fn write_all(io: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        io.writable().await?;
        match io.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection handed to actix-web: the bytes already read come first, then the socket.
pub(crate) struct Replay {
    read: Bytes,
    io: TcpStream,
}

impl Replay {
    fn new(read: Bytes, io: TcpStream) -> Self {
        Self { read, io }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        if this.read.is_empty() {
            // Free the head buffer now, not when the connection ends.
            this.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_of_a_head_is_known_once_it_is_complete() {
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n\r\n"), Some(Ok(18)));
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n\r"), None);
        assert_eq!(
            head_length(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"),
            Some(Ok(24))
        );
        assert_eq!(head_length(b"\x16\x03\x01 a TLS hello"), Some(Err(())));
    }

    /// The route and name of a head, as `inspect` sees them.
    fn target_of(head: &str) -> Option<(Kind, String)> {
        match inspect(head.as_bytes()) {
            Inspected::Stream { target, .. } => Some((target.kind, target.name.into_owned())),
            _ => None,
        }
    }

    #[test]
    fn stream_routes_are_the_ones_actix_web_s_router_would_find() {
        let get = |target: &str| target_of(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(
            get("/api/v1/conn%65ct/2024%2F05/a%5Fb?view=x"),
            Some((Kind::Reader, "2024%2F05/a_b".into()))
        );
        assert_eq!(
            get("/api/v1/watch?slug=a"),
            Some((Kind::Watch, String::new()))
        );
        assert_eq!(get("/api/v1/shared/a/b"), None);
        // Found by the direct_head fuzz target: `{sid}` is never empty to actix-web, so an
        // empty one is no stream request (actix-web answers it 404, as any unknown route).
        assert_eq!(get("/api/v1/shared/"), None);
        assert_eq!(get("/api/v1/shared/?x=1"), None);
        // Also found by it: a fragment (no browser sends one) is not part of the slug, nor of
        // the query.
        assert_eq!(
            get("/api/v1/connect/alpha#x?y"),
            Some((Kind::Reader, "alpha".into()))
        );
        let query = |head: &str| match inspect(head.as_bytes()) {
            Inspected::Stream { target, .. } => Some(target.query.to_owned()),
            _ => None,
        };
        assert_eq!(
            query("GET /api/v1/watch?slug=a#b HTTP/1.1\r\n\r\n").as_deref(),
            Some("slug=a")
        );
        assert_eq!(target_of("POST /api/v1/watch HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn bodies_and_protocol_switches_are_not_plain() {
        let h = |name, value| httparse::Header { name, value };
        assert!(is_plain(&[h("Content-Length", b"0")]));
        assert!(!is_plain(&[h("Content-Length", b"5")]));
        assert!(!is_plain(&[h("Transfer-Encoding", b"chunked")]));
        assert!(!is_plain(&[h("Upgrade", b"websocket")]));
    }
}
