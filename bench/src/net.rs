//! Raw HTTP/1.1 over TCP: bind-before-connect from a spread of 127.0.0.x source
//! addresses, `SO_LINGER 0` on every socket, an incremental chunked decoder and an
//! SSE parser that extracts `"live"`/`"total"` from each `data:` event.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head we accept.
const MAX_HEAD: usize = 16 * 1024;
/// Read buffer per connection; SSE events are tiny.
const READ_BUF: usize = 4096;
/// A browser's User-Agent, so that viewcounter's bot filter lets the views count
/// and does the work it does for real readers.
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Where the load goes: one server address, the paths to use, and the source
/// addresses connections are spread over.
pub struct Target {
    pub addr: SocketAddr,
    host: String,
    sources: Vec<Ipv4Addr>,
    next_source: AtomicUsize,
    run_id: u64,
    next_token: AtomicU64,
}

impl Target {
    /// `base` is `http://HOST:PORT` (a trailing `/` is allowed); `sources` is the
    /// number of 127.0.0.x addresses to spread connections over, starting at .2.
    pub fn new(base: &str, sources: usize) -> io::Result<Target> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| invalid(format!("only http:// URLs are supported: {base}")))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let addr = authority
            .to_socket_addrs()?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| invalid(format!("{authority} has no IPv4 address")))?;
        let sources = if addr.ip().is_loopback() {
            (0..sources.clamp(1, 250))
                .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
                .collect()
        } else {
            vec![Ipv4Addr::UNSPECIFIED]
        };
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 40);
        Ok(Target {
            addr,
            host: authority.to_string(),
            sources,
            next_source: AtomicUsize::new(0),
            run_id,
            next_token: AtomicU64::new(0),
        })
    }

    /// The next source address, round robin.
    pub fn source(&self) -> Ipv4Addr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.sources[i % self.sources.len()]
    }

    /// A reader id unique to this run and connection: 29 characters of `[a-z0-9]`.
    pub fn token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("bench{:016x}{:08x}", self.run_id, n & 0xffff_ffff)
    }

    /// Expands `{token}` (a fresh reader id) and `{i}` in a path template.
    pub fn path(&self, template: &str, i: u64) -> String {
        let mut p = template.to_string();
        if p.contains("{token}") {
            p = p.replace("{token}", &self.token());
        }
        if p.contains("{i}") {
            p = p.replace("{i}", &i.to_string());
        }
        p
    }

    /// Connects from the next source address with `SO_LINGER 0` (close sends RST,
    /// leaving no TIME_WAIT) and `IP_BIND_ADDRESS_NO_PORT` (the port is picked at
    /// connect time per 4-tuple, so each source address has the whole port range).
    pub async fn connect(&self) -> Result<TcpStream, ConnError> {
        let src = self.source();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .map_err(ConnError::Connect)?;
        sock.set_nonblocking(true).map_err(ConnError::Connect)?;
        sock.set_linger(Some(Duration::ZERO))
            .map_err(ConnError::Connect)?;
        sock.set_tcp_nodelay(true).map_err(ConnError::Connect)?;
        if !src.is_unspecified() {
            set_bind_address_no_port(&sock).map_err(ConnError::Connect)?;
            sock.bind(&SocketAddrV4::new(src, 0).into())
                .map_err(ConnError::Connect)?;
        }
        let socket = TcpSocket::from_std_stream(sock.into());
        socket.connect(self.addr).await.map_err(ConnError::Connect)
    }

    /// Opens an SSE stream: connect, send the GET, read the response head.
    pub async fn open_sse(&self, path: &str) -> Result<SseConn, ConnError> {
        let mut stream = self.connect().await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nUser-Agent: {UA}\r\n\r\n",
            self.host
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(ConnError::Io)?;
        let mut conn = SseConn::new(stream);
        let head = conn.read_head().await?;
        if head.status != 200 {
            return Err(ConnError::Status {
                code: head.status,
                retry_after: head.retry_after,
            });
        }
        conn.body = if head.chunked {
            Body::Chunked(ChunkState::Size {
                value: 0,
                ext: false,
            })
        } else {
            Body::Identity
        };
        // Whatever followed the head in the first read is body.
        let rest = std::mem::take(&mut conn.head_rest);
        conn.feed(&rest)?;
        Ok(conn)
    }

    /// A whole request/response on a fresh connection (closed with RST after the
    /// response has been read). Returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), ConnError> {
        let mut stream = self.connect().await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {UA}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await.map_err(ConnError::Io)?;
        let mut conn = SseConn::new(stream);
        let head = conn.read_head().await?;
        let mut out = std::mem::take(&mut conn.head_rest);
        if head.chunked {
            let mut state = ChunkState::Size {
                value: 0,
                ext: false,
            };
            let mut decoded = Vec::new();
            let mut pending = out;
            loop {
                let done = state.feed(&pending, &mut |b| decoded.extend_from_slice(b))?;
                if done {
                    break;
                }
                pending = conn.read_raw().await?;
            }
            out = decoded;
        } else if let Some(len) = head.content_length {
            while out.len() < len {
                out.extend_from_slice(&conn.read_raw().await?);
            }
            out.truncate(len);
        }
        Ok((head.status, out))
    }
}

fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Why a connection did not deliver what was expected.
#[derive(Debug)]
pub enum ConnError {
    Connect(io::Error),
    Io(io::Error),
    Status { code: u16, retry_after: Option<u64> },
    Eof,
    Timeout,
    Protocol(&'static str),
}

impl ConnError {
    /// A short stable name, used as a key in error counts.
    pub fn kind(&self) -> String {
        match self {
            ConnError::Connect(e) => format!("connect:{}", short_io(e)),
            ConnError::Io(e) => format!("io:{}", short_io(e)),
            ConnError::Status { code, .. } => format!("status:{code}"),
            ConnError::Eof => "eof".into(),
            ConnError::Timeout => "timeout".into(),
            ConnError::Protocol(p) => format!("protocol:{p}"),
        }
    }

    /// How long to wait before trying again, when the server said so or when
    /// the failure looks like overload.
    pub fn backoff(&self) -> Option<Duration> {
        match self {
            ConnError::Status {
                code: 503 | 429,
                retry_after,
            } => Some(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 10))),
            _ => None,
        }
    }
}

fn short_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}/{code}", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Connect(e) => write!(f, "connect: {e}"),
            ConnError::Io(e) => write!(f, "i/o: {e}"),
            ConnError::Status { code, retry_after } => {
                write!(f, "HTTP {code}")?;
                if let Some(s) = retry_after {
                    write!(f, " (Retry-After {s})")?;
                }
                Ok(())
            }
            ConnError::Eof => write!(f, "connection closed"),
            ConnError::Timeout => write!(f, "timed out"),
            ConnError::Protocol(p) => write!(f, "protocol error: {p}"),
        }
    }
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    retry_after: Option<u64>,
}

enum Body {
    Identity,
    Chunked(ChunkState),
    Done,
}

#[derive(Clone, Copy)]
enum ChunkState {
    Size { value: u64, ext: bool },
    Data(u64),
    DataEnd,
    Done,
}

impl ChunkState {
    /// Decodes `input`, passing body bytes to `out`. Returns true at the last chunk.
    fn feed(&mut self, mut input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<bool, ConnError> {
        while !input.is_empty() {
            match *self {
                ChunkState::Size { value, ext } => {
                    let b = input[0];
                    input = &input[1..];
                    *self = match b {
                        b'\n' if value == 0 => ChunkState::Done,
                        b'\n' => ChunkState::Data(value),
                        b'\r' | b' ' | b'\t' => ChunkState::Size { value, ext },
                        b';' => ChunkState::Size { value, ext: true },
                        _ if ext => ChunkState::Size { value, ext },
                        _ => {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or(ConnError::Protocol("bad chunk size"))?;
                            if value > (u64::MAX >> 8) {
                                return Err(ConnError::Protocol("chunk too large"));
                            }
                            ChunkState::Size {
                                value: value * 16 + d as u64,
                                ext,
                            }
                        }
                    };
                }
                ChunkState::Data(left) => {
                    let n = (left as usize).min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    *self = if n as u64 == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n as u64)
                    };
                }
                ChunkState::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        *self = ChunkState::Size {
                            value: 0,
                            ext: false,
                        };
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(matches!(self, ChunkState::Done))
    }
}

/// What an SSE stream delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A `data:` event; `total`/`live` are the numbers found in its JSON (0 if absent).
    Event { live: u64, total: u64 },
    /// A heartbeat: a `:` comment line, or an event without data (nchan's
    /// `event: ping`).
    Comment,
}

/// SSE line parser state.
#[derive(Default)]
struct Sse {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_event: bool,
}

impl Sse {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<Item>) {
        while let Some(pos) = input.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.line_done(&input[..pos], out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..pos]);
                self.line_done(&line, out);
                line.clear();
                self.line = line;
            }
            input = &input[pos + 1..];
        }
        self.line.extend_from_slice(input);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Item>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                out.push(Item::Event {
                    live: json_number(&self.data, b"\"live\"").unwrap_or(0),
                    total: json_number(&self.data, b"\"total\"").unwrap_or(0),
                });
                self.data.clear();
                self.has_data = false;
            } else if self.has_event {
                out.push(Item::Comment);
            }
            self.has_event = false;
        } else if line[0] == b':' {
            out.push(Item::Comment);
        } else if let Some(v) = line.strip_prefix(b"data") {
            let v = v.strip_prefix(b":").unwrap_or(v);
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(v);
            self.has_data = true;
        } else if line.starts_with(b"event") {
            self.has_event = true;
        }
    }
}

/// The unsigned integer after `key:` in a flat JSON object, if any.
pub fn json_number(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = data.windows(key.len()).position(|w| w == key)?;
    let mut rest = &data[at + key.len()..];
    while let [b' ' | b':', tail @ ..] = rest {
        rest = tail;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// One open HTTP connection carrying an SSE body.
pub struct SseConn {
    stream: TcpStream,
    buf: Box<[u8]>,
    head_rest: Vec<u8>,
    body: Body,
    sse: Sse,
    items: Vec<Item>,
    next_item: usize,
    /// When the read that produced the pending items returned.
    read_at: Instant,
}

impl SseConn {
    fn new(stream: TcpStream) -> SseConn {
        SseConn {
            stream,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            head_rest: Vec::new(),
            body: Body::Identity,
            sse: Sse::default(),
            items: Vec::new(),
            next_item: 0,
            read_at: Instant::now(),
        }
    }

    /// Reads into `buf`; the number of bytes read, never 0 (end of stream is an error).
    async fn fill(&mut self) -> Result<usize, ConnError> {
        let n = self
            .stream
            .read(&mut self.buf)
            .await
            .map_err(ConnError::Io)?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        Ok(n)
    }

    async fn read_raw(&mut self) -> Result<Vec<u8>, ConnError> {
        let n = self.fill().await?;
        Ok(self.buf[..n].to_vec())
    }

    async fn read_head(&mut self) -> Result<Head, ConnError> {
        let mut acc: Vec<u8> = Vec::new();
        let end = loop {
            let n = self.fill().await?;
            let from = acc.len().saturating_sub(3);
            acc.extend_from_slice(&self.buf[..n]);
            if let Some(p) = acc[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + p + 4;
            }
            if acc.len() > MAX_HEAD {
                return Err(ConnError::Protocol("response head too large"));
            }
        };
        self.read_at = Instant::now();
        let head =
            std::str::from_utf8(&acc[..end]).map_err(|_| ConnError::Protocol("head not utf-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(ConnError::Protocol("bad status line"))?;
        let mut h = Head {
            status,
            chunked: false,
            content_length: None,
            retry_after: None,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                h.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                h.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("retry-after") {
                h.retry_after = value.parse().ok();
            }
        }
        self.head_rest = acc[end..].to_vec();
        Ok(h)
    }

    fn feed(&mut self, raw: &[u8]) -> Result<(), ConnError> {
        let Self {
            body, sse, items, ..
        } = self;
        match body {
            Body::Identity => sse.feed(raw, items),
            Body::Chunked(state) => {
                if state.feed(raw, &mut |b| sse.feed(b, items))? {
                    *body = Body::Done;
                }
            }
            Body::Done => {}
        }
        Ok(())
    }

    /// The next event or comment, with the instant the read that carried it returned.
    pub async fn next(&mut self) -> Result<(Instant, Item), ConnError> {
        loop {
            if self.next_item < self.items.len() {
                let item = self.items[self.next_item];
                self.next_item += 1;
                return Ok((self.read_at, item));
            }
            self.items.clear();
            self.next_item = 0;
            if matches!(self.body, Body::Done) {
                return Err(ConnError::Eof);
            }
            let n = self.fill().await?;
            self.read_at = Instant::now();
            let raw = std::mem::take(&mut self.buf);
            let r = self.feed(&raw[..n]);
            self.buf = raw;
            r?;
        }
    }

    /// The next `data:` event, skipping comments, within `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Result<(Instant, u64, u64), ConnError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return Err(ConnError::Timeout),
                Ok(Err(e)) => return Err(e),
                Ok(Ok((at, Item::Event { live, total }))) => return Ok((at, live, total)),
                Ok(Ok((_, Item::Comment))) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], chunked: bool) -> Vec<Item> {
        let mut sse = Sse::default();
        let mut out = Vec::new();
        let mut state = ChunkState::Size {
            value: 0,
            ext: false,
        };
        for c in chunks {
            if chunked {
                state.feed(c, &mut |b| sse.feed(b, &mut out)).unwrap();
            } else {
                sse.feed(c, &mut out);
            }
        }
        out
    }

    #[test]
    fn parses_events_and_comments_across_reads() {
        let items = parse(
            &[
                b"retry: 2000\nid: abc\ndata: {\"live\":3,",
                b"\"total\":17}\n\n: ping\n\ndata: {\"live\":4,\"total\":18}\r\n\r\n",
                b"event: ping\n\n",
            ],
            false,
        );
        assert_eq!(
            items,
            vec![
                Item::Event { live: 3, total: 17 },
                Item::Comment,
                Item::Event { live: 4, total: 18 },
                Item::Comment,
            ]
        );
    }

    #[test]
    fn decodes_chunked_bodies_split_anywhere() {
        let body = b"1a\r\ndata: {\"live\":1,\"total\":2}\r\n2\r\n\n\n\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let items = parse(&[&body[..split], &body[split..]], true);
            assert_eq!(
                items,
                vec![Item::Event { live: 1, total: 2 }],
                "split {split}"
            );
        }
    }

    #[test]
    fn finds_numbers_in_json() {
        assert_eq!(
            json_number(br#"{"live":12,"total":345}"#, b"\"total\""),
            Some(345)
        );
        assert_eq!(json_number(br#"{"live": 12}"#, b"\"live\""), Some(12));
        assert_eq!(json_number(br#"hello"#, b"\"live\""), None);
    }
}
