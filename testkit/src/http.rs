//! A small HTTP/1.1 and Server-Sent Events client over raw sockets: a request is sent exactly
//! as written (so tests can send what a browser, a proxy or an attacker would), and a stream's
//! events are read as they arrive, each read with a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A browser's User-Agent: counted. (curl's, or none at all, is served but not counted.)
pub const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) viewcounter-tests";
pub const BOT_UA: &str = "curl/8.5.0";
/// How long any single read may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `{"live":L,"total":T}`, exactly those two fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub live: u64,
    pub total: u64,
}

pub const fn counts(live: u64, total: u64) -> Counts {
    Counts { live, total }
}

/// A local port with nothing listening on it (free for a server the test starts next).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// An HTTP/1.1 request as bytes on the wire: the target is sent exactly as given.
#[derive(Debug, Clone)]
pub struct Req {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    chunked: bool,
}

impl Req {
    /// A GET with a browser User-Agent.
    pub fn get(target: impl Into<String>) -> Self {
        Self {
            method: "GET",
            target: target.into(),
            headers: vec![("User-Agent".into(), BROWSER_UA.into())],
            body: None,
            chunked: false,
        }
    }

    /// A POST as `navigator.sendBeacon` sends a string: `text/plain;charset=UTF-8`.
    pub fn post(target: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST",
            body: Some(body.into()),
            ..Self::get(target)
        }
        .header("Content-Type", "text/plain;charset=UTF-8")
    }

    /// `POST {target}` with `file` as `viewcounter import` sends it: with its
    /// `X-Viewcounter-Import: 1` (no bearer token: add one where the server has a token).
    pub fn import(target: impl Into<String>, file: impl Into<Vec<u8>>) -> Self {
        Self::post(target, file).header("X-Viewcounter-Import", "1")
    }

    pub fn options(target: impl Into<String>) -> Self {
        Self {
            method: "OPTIONS",
            ..Self::get(target)
        }
    }

    /// `GET /api/v1/connect/{slug}?view={token}` as the script opens it.
    pub fn connect(slug: &str, token: &str) -> Self {
        Self::get(format!("/api/v1/connect/{slug}?view={token}"))
            .header("Accept", "text/event-stream")
    }

    /// Sets a header, replacing one of the same name.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// The client address a trusted proxy reports.
    pub fn client_ip(self, ip: &str) -> Self {
        self.header("X-Forwarded-For", ip)
    }

    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    /// Sends the body with `Transfer-Encoding: chunked`, no `Content-Length`.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// The request's bytes as [`send`] would write them, without `Connection: close`: for
    /// tests that write it on a socket of their own (to half-close it, stall it, …).
    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        self.encode(addr, false)
    }

    fn encode(&self, addr: SocketAddr, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        // `Host: ADDR` unless the test names another (a rebinding page's, say).
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        let mut out = Vec::new();
        match &self.body {
            None => {
                head.push_str("\r\n");
                out.extend_from_slice(head.as_bytes());
            }
            Some(body) if self.chunked => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(head.as_bytes());
                for chunk in body.chunks(256) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Some(body) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(body);
            }
        }
        out
    }
}

#[derive(Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    pub fn json_as<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("unexpected JSON ({e}): {self:?}"))
    }

    /// Asserts the contract's error shape: this status, JSON `{"error": "<non-empty>"}`.
    pub fn assert_json_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?}: {self:?}"
        );
        let value = self.json();
        let obj = value.as_object().unwrap_or_else(|| panic!("{self:?}"));
        assert_eq!(obj.len(), 1, "only an error field: {self:?}");
        let message = obj["error"].as_str().unwrap_or_else(|| panic!("{self:?}"));
        assert!(!message.trim().is_empty(), "{self:?}");
        message.to_owned()
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {:?} {:?}",
            self.status,
            self.headers,
            self.text()
        )
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One request on its own connection (`Connection: close`); the whole answer.
pub async fn send(addr: SocketAddr, req: Req) -> Response {
    let what = format!("{} {}", req.method, req.target);
    let fut = async {
        let mut conn = Conn::open(addr, &req.encode(addr, true)).await?;
        let (status, headers) = conn.head().await?;
        let mut body = Vec::new();
        while let Some(more) = conn.body_bytes().await? {
            body.extend_from_slice(&more);
        }
        Ok::<_, String>(Response {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(READ_TIMEOUT, fut).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no complete answer within {READ_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 connection: status line, headers, then the body decoded as it arrives.

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    ChunkSize,
    ChunkData(usize),
    ChunkEnd,
    UntilClose,
    Done,
}

struct Conn {
    /// The socket, written once with the request and read from then on.
    stream: TcpStream,
    /// Bytes read but not yet decoded.
    raw: Vec<u8>,
    /// Where the body decoder is.
    framing: Framing,
    /// The server closed (or reset) the connection.
    closed: bool,
}

impl Conn {
    async fn open(addr: SocketAddr, request: &[u8]) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Self::on(stream, request).await
    }

    /// Like [`Conn::open`], from the local address `from`: on loopback any of 127.0.0.0/8,
    /// so a test has clients of different addresses on one machine.
    async fn open_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        request: &[u8],
    ) -> Result<Self, String> {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(from, 0))
            .map_err(|e| format!("bind {from}: {e}"))?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr} from {from}: {e}"))?;
        Self::on(stream, request).await
    }

    async fn on(mut stream: TcpStream, request: &[u8]) -> Result<Self, String> {
        stream.set_nodelay(true).ok();
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write request: {e}"))?;
        Ok(Self {
            stream,
            raw: Vec::new(),
            framing: Framing::UntilClose,
            closed: false,
        })
    }

    /// Reads more bytes; false at end of stream. A reset after the answer counts as the end.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.closed {
            return Ok(false);
        }
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf).await {
            Ok(0) => {
                self.closed = true;
                Ok(false)
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    async fn head(&mut self) -> Result<(u16, Vec<(String, String)>), String> {
        let end = loop {
            if let Some(i) = find(&self.raw, b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await? {
                return Err(format!(
                    "connection closed before the response head: {:?}",
                    String::from_utf8_lossy(&self.raw)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = header(&headers, "transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let length = header(&headers, "content-length").and_then(|l| l.parse::<usize>().ok());
        self.framing = if status == 204 || status == 304 {
            Framing::Done
        } else if chunked {
            Framing::ChunkSize
        } else if let Some(len) = length {
            Framing::Length(len)
        } else {
            Framing::UntilClose
        };
        Ok((status, headers))
    }

    /// The next decoded body bytes; `None` when the body is complete.
    async fn body_bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let mut out = Vec::new();
            self.decode(&mut out)?;
            if !out.is_empty() {
                return Ok(Some(out));
            }
            if matches!(self.framing, Framing::Done) {
                return Ok(None);
            }
            if !self.fill().await? {
                return match self.framing {
                    Framing::UntilClose => {
                        self.framing = Framing::Done;
                        Ok(None)
                    }
                    f => Err(format!("connection closed inside the body ({f:?})")),
                };
            }
        }
    }

    /// Moves whatever complete body bytes `raw` holds into `out`.
    fn decode(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        loop {
            match self.framing {
                Framing::Done => return Ok(()),
                Framing::UntilClose => {
                    out.append(&mut self.raw);
                    return Ok(());
                }
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(_) | Framing::ChunkData(_) if self.raw.is_empty() => {
                    return Ok(());
                }
                Framing::Length(n) => {
                    let take = n.min(self.raw.len());
                    out.extend(self.raw.drain(..take));
                    self.framing = Framing::Length(n - take);
                }
                Framing::ChunkData(n) => {
                    let take = n.min(self.raw.len());
                    out.extend(self.raw.drain(..take));
                    self.framing = if n == take {
                        Framing::ChunkEnd
                    } else {
                        Framing::ChunkData(n - take)
                    };
                }
                Framing::ChunkEnd => {
                    if self.raw.len() < 2 {
                        return Ok(());
                    }
                    if &self.raw[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    self.raw.drain(..2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::ChunkSize => {
                    let Some(i) = find(&self.raw, b"\r\n") else {
                        return Ok(());
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| format!("bad chunk size line {line:?}"))?;
                    self.raw.drain(..i + 2);
                    if size == 0 {
                        // The last chunk; trailers (none expected) end with an empty line.
                        self.framing = Framing::Done;
                        return Ok(());
                    }
                    self.framing = Framing::ChunkData(size);
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events.

/// One event block as received, with its fields parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: String,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// Comment lines, without the leading `:` and one space.
    pub comments: Vec<String>,
}

impl SseEvent {
    fn parse(raw: &str) -> Self {
        let mut ev = SseEvent {
            raw: raw.to_owned(),
            ..Default::default()
        };
        for line in raw.split('\n') {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                ev.comments
                    .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_owned()),
                "retry" => ev.retry = value.parse().ok(),
                "data" => {
                    ev.data = Some(match ev.data.take() {
                        Some(prev) => format!("{prev}\n{value}"),
                        None => value.to_owned(),
                    })
                }
                _ => {}
            }
        }
        ev
    }

    /// The numbers this event carries, if it is a message event.
    pub fn counts(&self) -> Option<Counts> {
        let data = self.data.as_deref()?;
        Some(
            serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("event data is not {{live,total}} ({e}): {data:?}")),
        )
    }

    pub fn is_heartbeat(&self) -> bool {
        self.data.is_none() && self.id.is_none() && self.comments == [""]
    }
}

/// A reader's stream: the response head, then events as they arrive.
pub struct SseClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The connection the events arrive on.
    conn: Conn,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
    /// The body is complete: no event will follow.
    ended: bool,
}

impl SseClient {
    pub async fn open(addr: SocketAddr, req: Req) -> Self {
        let what = format!("{} {}", req.method, req.target);
        Self::try_open(addr, req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The rest of the body as a [`Response`] (for refusals, which are plain JSON answers).
    pub async fn into_response(mut self) -> Response {
        let mut body = std::mem::take(&mut self.body);
        let fut = async {
            while let Some(more) = self.conn.body_bytes().await? {
                body.extend_from_slice(&more);
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(READ_TIMEOUT, fut).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("reading the body: {e}"),
            Err(_) => panic!("body not complete within {READ_TIMEOUT:?}"),
        }
        Response {
            status: self.status,
            headers: self.headers,
            body,
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream; `Err` at the deadline.
    pub async fn next_event_within(
        &mut self,
        within: Duration,
    ) -> Result<Option<SseEvent>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = find(&self.body, b"\n\n") {
                let block: Vec<u8> = self.body.drain(..i + 2).collect();
                let text = String::from_utf8(block).map_err(|e| format!("not UTF-8: {e}"))?;
                return Ok(Some(SseEvent::parse(&text)));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.conn.body_bytes()).await {
                Err(_) => return Err(format!("no event within {within:?}")),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(bytes))) => self.body.extend_from_slice(&bytes),
                Ok(Ok(None)) => {
                    self.ended = true;
                    if !self.body.is_empty() {
                        return Err(format!(
                            "stream ended inside an event: {:?}",
                            String::from_utf8_lossy(&self.body)
                        ));
                    }
                }
            }
        }
    }

    /// The next event within [`READ_TIMEOUT`]; panics if the stream ends or times out.
    pub async fn next_event(&mut self) -> SseEvent {
        match self.next_event_within(READ_TIMEOUT).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("the stream ended"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads events until one carries `want`; returns every number seen on the way (`want`
    /// last). Panics at the deadline, listing what was seen.
    pub async fn await_counts(&mut self, want: Counts, within: Duration) -> Vec<Counts> {
        let what = format!("{want:?}");
        self.await_counts_that(&what, |c| *c == want, within).await
    }

    /// Reads events until one's numbers satisfy `done` (`what`, for the failure); returns
    /// every number seen on the way (that one last). Panics at the deadline, listing them.
    pub async fn await_counts_that(
        &mut self,
        what: &str,
        done: impl Fn(&Counts) -> bool,
        within: Duration,
    ) -> Vec<Counts> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Ok(Some(ev)) => {
                    if let Some(c) = ev.counts() {
                        seen.push(c);
                        if done(&c) {
                            return seen;
                        }
                    }
                }
                Ok(None) => panic!("stream ended waiting for {what}; seen {seen:?}"),
                Err(e) => panic!("{e}: waiting for {what}; seen {seen:?}"),
            }
        }
    }

    /// Every event that arrives within `window` (for "nothing else happens" checks).
    pub async fn events_within(&mut self, window: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + window;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) | Err(_) => return events,
            }
        }
    }

    /// Reads until the server ends the stream; returns the events before the end.
    pub async fn read_to_end(&mut self, within: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => return events,
                Err(e) => panic!("{e}: stream did not end; events so far {events:?}"),
            }
        }
    }

    /// A clean close, as a browser closing the tab: FIN, then the socket goes.
    pub fn close(self) {
        let mut stream = self.conn.stream;
        actix_web::rt::spawn(async move {
            let _ = stream.shutdown().await;
            // Drain until the server closes too, so the close stays a FIN and not a reset.
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(READ_TIMEOUT, async {
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }

    /// An abortive close: SO_LINGER 0, so the kernel sends RST.
    pub fn reset(self) {
        let stream = self.conn.stream;
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(stream);
    }
}

/// A counted browser reader: its id, its first numbers and its open stream.
pub struct Reader {
    pub id: String,
    pub first: Counts,
    pub stream: SseClient,
}

pub async fn join(addr: SocketAddr, slug: &str, req: Req) -> Reader {
    let mut stream = SseClient::open(addr, req).await;
    assert_eq!(stream.status, 200, "connect {slug}: {:?}", stream.headers);
    let first = stream.next_event().await;
    let id = first
        .id
        .clone()
        .unwrap_or_else(|| panic!("first event has no id: {first:?}"));
    let counts = first
        .counts()
        .unwrap_or_else(|| panic!("first event has no data: {first:?}"));
    Reader {
        id,
        first: counts,
        stream,
    }
}

// ---------------------------------------------------------------------------------------------
// Fault tests: joins against a server that may be stopping or gone, as values, never panics.

impl SseClient {
    /// Like [`SseClient::open`], but a refused, reset or silent connection is an `Err`.
    /// Opens a stream whose request head is written in `pieces` parts, `gap` apart, as a slow
    /// network delivers a long head.
    pub async fn open_in_pieces(addr: SocketAddr, req: Req, pieces: usize, gap: Duration) -> Self {
        let bytes = req.encode(addr, false);
        let size = bytes.len().div_ceil(pieces);
        let mut parts = bytes.chunks(size);
        let mut conn = Conn::open(addr, parts.next().unwrap_or_default())
            .await
            .expect("connect");
        for part in parts {
            tokio::time::sleep(gap).await;
            conn.stream.write_all(part).await.expect("write a piece");
        }
        Self::answered(conn).await.expect("a response head")
    }

    /// Opens a stream with a request written exactly as given.
    pub async fn open_raw(addr: SocketAddr, request: String) -> Self {
        let conn = Conn::open(addr, request.as_bytes()).await.expect("connect");
        Self::answered(conn).await.expect("a response head")
    }

    async fn answered(mut conn: Conn) -> Result<Self, String> {
        let (status, headers) = tokio::time::timeout(READ_TIMEOUT, conn.head())
            .await
            .map_err(|_| format!("no response head within {READ_TIMEOUT:?}"))??;
        Ok(Self {
            status,
            headers,
            conn,
            body: Vec::new(),
            ended: false,
        })
    }

    /// Reads and drops the rest of the answer; true once the server closed the connection.
    pub async fn closes_within(mut self, within: Duration) -> bool {
        let drain = async {
            while let Ok(true) = self.conn.fill().await {
                self.conn.raw.clear();
            }
        };
        tokio::time::timeout(within, drain).await.is_ok()
    }

    /// Sends bytes on the stream's connection, as a client that pipelines or misbehaves.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.stream.write_all(bytes).await.expect("write");
    }

    pub async fn try_open(addr: SocketAddr, req: Req) -> Result<Self, String> {
        let conn = tokio::time::timeout(READ_TIMEOUT, Conn::open(addr, &req.encode(addr, false)))
            .await
            .map_err(|_| format!("not connected within {READ_TIMEOUT:?}"))??;
        Self::answered(conn).await
    }

    /// Like [`SseClient::open`], from the local address `from` (another client, as far as
    /// the server or a proxy in front of it can tell).
    pub async fn open_from(from: std::net::IpAddr, addr: SocketAddr, req: Req) -> Self {
        let what = format!("{} {} from {from}", req.method, req.target);
        let opened = async {
            let conn = Conn::open_from(from, addr, &req.encode(addr, false)).await?;
            Self::answered(conn).await
        };
        match tokio::time::timeout(READ_TIMEOUT, opened).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: no answer within {READ_TIMEOUT:?}"),
        }
    }
}

/// Like [`join`], but anything short of `200` and a first event with numbers (a refusal, a
/// closed port, a stream that ends first) is an `Err` naming what happened.
pub async fn try_join(addr: SocketAddr, slug: &str, req: Req) -> Result<Reader, String> {
    let mut stream = SseClient::try_open(addr, req).await?;
    if stream.status != 200 {
        return Err(format!("connect {slug}: HTTP {}", stream.status));
    }
    let first = match stream.next_event_within(READ_TIMEOUT).await {
        Ok(Some(ev)) => ev,
        Ok(None) => {
            return Err(format!(
                "connect {slug}: stream ended before its first event"
            ));
        }
        Err(e) => return Err(format!("connect {slug}: {e}")),
    };
    let (Some(id), Some(_)) = (first.id.clone(), first.data.as_ref()) else {
        return Err(format!(
            "connect {slug}: first event without id or data: {first:?}"
        ));
    };
    Ok(Reader {
        id,
        first: first.counts().expect("data checked above"),
        stream,
    })
}

/// Reads until the server closes the connection (FIN or reset): what it sent, or
/// `Err` if it is still open after `within`.
pub async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Result<String, String> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Err(format!(
                    "connection still open after {within:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
        }
    }
}
