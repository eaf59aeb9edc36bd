//! Event streams served straight on the socket.
//!
//! Every connection a worker of [`crate::server`] accepts has its request head read here
//! first. A plain `GET` of a reader's stream or a shared stream that is admitted is answered
//! directly: from then on the connection holds only its socket and the stream's state.
//! Everything else (other requests, refusals, preflights, anything unusual) goes to actix-web
//! together with the bytes already read, so every answer but the stream itself still comes
//! from one place.
//!
//! Why: actix-http keeps, for the whole life of a connection, two 8 KiB buffers, the parsed
//! request and its dispatcher. A stream lives for minutes and sends a few dozen bytes now and
//! then; those were most of its memory.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_service::Service;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::LocalBoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::api::{AppState, StreamRequest};
use crate::headers::Headers;

/// Heads longer than this are unusual for a stream request: actix-web reads them.
const MAX_HEAD: usize = 4096;
/// Headers beyond this many: actix-web again.
const MAX_HEADERS: usize = 48;
/// A client sends nothing after a request without a body; this much more from it (a flood on
/// a held stream) closes the connection.
pub const MAX_CLIENT_BYTES_AFTER_HEAD: usize = 1024;

/// A connection as this module hands it to actix-web, with the peer's address.
pub type Handed = (Replay, Option<SocketAddr>);

type Body = LocalBoxStream<'static, Result<Bytes, Infallible>>;

/// One connection, from its first byte to its close.
pub async fn serve<S>(
    io: TcpStream,
    peer: SocketAddr,
    state: &AppState,
    head_timeout: Duration,
    fallback: &S,
) where
    S: Service<Handed>,
{
    let mut head = BytesMut::with_capacity(MAX_HEAD);
    // A peer that never finishes its head is dropped, as actix-web would.
    let Ok(read) = tokio::time::timeout(head_timeout, read_head(&io, &mut head)).await else {
        return;
    };
    let mut allowance = None;
    match read {
        Read::Gone => return,
        Read::Unusual => {}
        Read::Complete(len) => {
            // Boxed: the admission's futures are large and short-lived; the stream that
            // follows should not carry their size for its whole life.
            let admitted = Box::pin(admit(state, peer, &head[..len])).await;
            if let Some((response, body)) = admitted {
                drop(head);
                let _gauge = Gauge::count(&state.direct_streams);
                stream(io, response, body).await;
                return;
            }
            allowance = is_bodyless(&head[..len])
                .then(|| MAX_CLIENT_BYTES_AFTER_HEAD.saturating_sub(head.len() - len));
        }
    }
    let replay = Replay::new(head.freeze(), io, allowance);
    let _ = Box::pin(fallback.call((replay, Some(peer)))).await;
}

enum Read {
    /// A whole head of this many bytes (body bytes may follow in the buffer).
    Complete(usize),
    /// Too long to be a stream request, or not HTTP at all.
    Unusual,
    /// Closed or failed before a head arrived.
    Gone,
}

async fn read_head(io: &TcpStream, buf: &mut BytesMut) -> Read {
    loop {
        if io.readable().await.is_err() {
            return Read::Gone;
        }
        let scanned = buf.len().saturating_sub(3);
        match io.try_read_buf(buf) {
            Ok(0) => return Read::Gone,
            Ok(_) => {
                if let Some(at) = find_end(&buf[scanned..]) {
                    return Read::Complete(scanned + at);
                }
                if buf.len() >= MAX_HEAD {
                    return Read::Unusual;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Read::Gone,
        }
    }
}

/// Where the blank line ending a head ends.
fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The response head and body for a stream request this module should answer, or `None`
/// when actix-web should (including every refusal, so errors are answered in one place).
async fn admit(state: &AppState, peer: SocketAddr, head: &[u8]) -> Option<(BytesMut, Body)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) || req.method != Some("GET") {
        return None;
    }
    let target = req.path?;
    let headers = &*req.headers;
    if !is_plain(headers) {
        return None;
    }
    // Only listed origins here; a same-origin check needs what actix-web knows of the host.
    let origin = headers.value("origin");
    if origin.is_some_and(|o| !state.origins.is_listed(o)) {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // Percent-escapes are decoded by actix-web's router; leave such paths to it.
    if path.contains('%') {
        return None;
    }
    let request = |name| StreamRequest {
        peer: Some(peer.ip()),
        name,
        query,
        headers,
    };
    let body: Body = if let Some(slug) = path.strip_prefix("/api/v1/connect/") {
        state.open_reader(request(slug)).await.ok()?.boxed_local()
    } else if let Some(sid) = path.strip_prefix("/api/v1/shared/") {
        state.open_shared(request(sid)).ok()?.boxed_local()
    } else {
        return None;
    };
    Some((response_head(origin), body))
}

/// A head whose request has no body (and no protocol switch): nothing may follow it.
fn is_bodyless(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(head), Ok(httparse::Status::Complete(_))) && is_plain(req.headers)
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

/// What actix-web with the CORS middleware would send, except that the body is delimited by
/// the connection's close rather than chunked: one write of the shared bytes per event.
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
    if let Some(Ok(first)) = body.next().await {
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
                Some(Ok(bytes)) => {
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
pub struct Replay {
    read: Bytes,
    io: TcpStream,
    /// After a request without a body, how much more the client may send: actix-web would
    /// keep reading (and buffering) whatever a client sends while its stream is held. `None`:
    /// a body follows, or the head was not understood here.
    allowance: Option<usize>,
}

impl Replay {
    fn new(read: Bytes, io: TcpStream, allowance: Option<usize>) -> Self {
        Self {
            read,
            io,
            allowance,
        }
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
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.io).poll_read(cx, buf);
            let read = buf.filled().len() - before;
            if let Some(left) = &mut this.allowance {
                *left = left.checked_sub(read).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "client sent data after its request",
                    )
                })?;
            }
            return polled;
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
    fn the_end_of_a_head_is_found_wherever_it_falls() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r"), None);
        assert_eq!(find_end(b"\r\n\r\nrest"), Some(4));
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
