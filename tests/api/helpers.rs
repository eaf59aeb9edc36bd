//! What every test needs: a server on port 0 in its own temp dir (the library, or the real
//! binary where process behaviour matters), a small SSE client over a raw socket, and plain
//! HTTP/1.1 requests.
//!
//! Nothing here sleeps to synchronise: every read has a deadline, and waiting for a state is
//! reading events (or polling an endpoint) until it shows up or the deadline passes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use viewcounter::Application;
pub use viewcounter::config::{Config, Posts};
use viewcounter::edge::client_ip::TrustedProxies;
use viewcounter::edge::origin::OriginPolicy;
use viewcounter::startup::StartError;
pub use viewcounter::storage::calendar::Clock;

/// A browser's User-Agent: counted. (curl's, or none at all, is served but not counted.)
pub const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) viewcounter-tests";
pub const BOT_UA: &str = "curl/8.5.0";
/// The allow-list every server starts with, unless a test writes its own.
pub const DEFAULT_SLUGS: &[&str] = &["alpha", "beta", "gamma", "2024/05/my_post.html"];
/// No per-IP limit may refuse a stream or skip a view: every join of a load is a counted view.
pub const UNLIMITED: [&str; 6] = [
    "--ip-stream-limit",
    "0",
    "--ip-view-rate",
    "0",
    "--ip-new-post-rate",
    "0",
];
/// How long any single read may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The contract: every change reaches every reader within 500 ms.
pub const PROPAGATION: Duration = Duration::from_millis(500);
/// The contract: once clients close their connections, live drops within 2 s.
pub const LIVE_DROP: Duration = Duration::from_secs(2);
/// How long a server gets to stop gracefully (the contract: exit within 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A fresh, valid reader id (16–64 of `[A-Za-z0-9_-]`), unique within the test run.
pub fn token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tok-{:08x}-{n:08}", std::process::id())
}

/// A client address for `X-Forwarded-For` (the loopback peer is a trusted proxy by default).
pub fn ip(n: u32) -> String {
    let [a, b, c, d] = (0x0a00_0000 + n).to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

pub fn write_slugs(path: &Path, slugs: &[&str]) {
    let mut text = String::from("# allow-list written by the tests\n\n");
    for slug in slugs {
        text.push_str(slug);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the allow-list");
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("viewcounter.redb")
}

fn slugs_path(dir: &Path) -> PathBuf {
    dir.join("slugs.txt")
}

// ---------------------------------------------------------------------------------------------
// The server, as a library inside the test's actix System.

pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: TempDir,
    stop: StopOnDrop,
    served: Option<JoinHandle<Result<(), StartError>>>,
}

/// Tells the server to stop when the test is done with it, whether or not it awaited the stop.
struct StopOnDrop(Option<oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// A server with the defaults, the default allow-list and an empty db.
pub async fn spawn_app() -> TestApp {
    spawn_app_configured(|_| {}).await
}

/// A server built from a [`Config`] with the defaults (no flags, no `VIEWCOUNTER_*`
/// variables read), on port 0, in its own temp dir, changed by `configure`.
pub async fn spawn_app_configured(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_configured_with_slugs(DEFAULT_SLUGS, configure).await
}

/// Like [`spawn_app_configured`], with its own allow-list.
pub async fn spawn_app_configured_with_slugs(
    slugs: &[&str],
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    write_slugs(&slugs_path(dir.path()), slugs);
    spawn_app_configured_in(dir, configure).await
}

/// A server on the db and allow-list of `dir` (a restart when a server used it before),
/// configured as [`spawn_app_configured`]. A test that sets the time sets `c.clock`.
pub async fn spawn_app_configured_in(dir: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::new(db_path(dir.path()), slugs_path(dir.path()));
    config.listen = "127.0.0.1:0".parse().expect("address");
    configure(&mut config);
    serve_in(dir, config).await
}

/// `--flush-after 1h --flush-max-wait 1h`: nothing is written before the stop.
pub fn never_flush(c: &mut Config) {
    c.flush.after = Duration::from_secs(3600);
    c.flush.max_wait = Duration::from_secs(3600);
}

/// What `--allow-origin` (repeated) sets.
pub fn origins(list: &[&str]) -> OriginPolicy {
    let list: Vec<String> = list.iter().map(|&o| o.to_owned()).collect();
    OriginPolicy::new(&list).expect("valid origins")
}

/// What `--trusted-proxy` (repeated) sets.
pub fn trusted_proxies(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::new(nets.iter().map(|n| n.parse().expect("a network")).collect())
}

async fn serve_in(dir: TempDir, config: Config) -> TestApp {
    let app = Application::build(config).await.expect("server builds");
    let addr = app.address();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let served = actix_web::rt::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    TestApp {
        addr,
        dir,
        stop: StopOnDrop(Some(stop)),
        served: Some(served),
    }
}

impl TestApp {
    pub fn db(&self) -> PathBuf {
        db_path(self.dir.path())
    }

    pub fn slugs_file(&self) -> PathBuf {
        slugs_path(self.dir.path())
    }

    /// `http://127.0.0.1:PORT`: what a same-origin page sends as `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: streams end, pending totals are written; waits for all of it.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.0.take() {
            let _ = stop.send(());
        }
        let Some(served) = self.served.take() else {
            return Ok(());
        };
        match tokio::time::timeout(STOP_TIMEOUT, served).await {
            Err(_) => Err(format!("server did not stop within {STOP_TIMEOUT:?}")),
            Ok(Err(join)) => Err(format!("server task failed: {join}")),
            Ok(Ok(Err(e))) => Err(format!("server stopped with an error: {e}")),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Stops the server and hands back its directory, for a restart on the same db.
    pub async fn stop_and_keep_dir(mut self) -> TempDir {
        self.stop().await.expect("graceful stop");
        self.dir
    }

    pub async fn send(&self, req: Req) -> Response {
        send(self.addr, req).await
    }

    pub async fn open(&self, req: Req) -> SseClient {
        SseClient::open(self.addr, req).await
    }

    /// A browser reader with a fresh view token; asserts the stream and its first event.
    pub async fn join(&self, slug: &str) -> Reader {
        self.join_as(slug, Req::connect(slug, &token())).await
    }

    /// Opens `req` (a connect request), asserts 200 and reads the first event.
    pub async fn join_as(&self, slug: &str, req: Req) -> Reader {
        join(self.addr, slug, req).await
    }

    /// `GET /api/v1/count/{slug}`, asserting 200.
    pub async fn counts(&self, slug: &str) -> Counts {
        counts_of(self.addr, slug).await
    }

    /// `POST /api/v1/leave/{slug}` with `id` as the body.
    pub async fn leave(&self, slug: &str, id: &str) -> Response {
        self.send(Req::post(format!("/api/v1/leave/{slug}"), id))
            .await
    }

    /// `GET /api/v1/totals` from loopback, asserting 200: `(slug, total)` in answer order.
    pub async fn totals(&self) -> Vec<(String, u64)> {
        let res = self.send(Req::get("/api/v1/totals")).await;
        assert_eq!(res.status, 200, "totals: {res:?}");
        parse_rows(&res.text())
    }

    /// `GET /api/v1/stats` from loopback, asserting 200: one field of it.
    pub async fn stat(&self, field: &str) -> u64 {
        let res = self.send(Req::get("/api/v1/stats")).await;
        assert_eq!(res.status, 200, "stats: {res:?}");
        res.json()[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in stats"))
    }

    /// How many post actors are awake.
    pub async fn posts_awake(&self) -> u64 {
        self.stat("posts_awake").await
    }

    /// Polls `GET /api/v1/stats` until `want` post actors are awake, or the deadline.
    pub async fn await_posts_awake(&self, want: u64, within: Duration) {
        await_value("posts awake", want, within, || self.posts_awake()).await;
    }

    /// Polls `GET /api/v1/count/{slug}` until `want` or the deadline.
    pub async fn await_counts(&self, slug: &str, want: Counts, within: Duration) {
        await_counts(self.addr, slug, want, within).await;
    }
}

pub async fn counts_of(addr: SocketAddr, slug: &str) -> Counts {
    let res = send(addr, Req::get(format!("/api/v1/count/{slug}"))).await;
    assert_eq!(res.status, 200, "count {slug}: {res:?}");
    res.json_as()
}

pub async fn await_counts(addr: SocketAddr, slug: &str, want: Counts, within: Duration) {
    let what = format!("count of {slug}");
    await_value(&what, want, within, || counts_of(addr, slug)).await;
}

/// Polls `read` every 25 ms until it gives `want`; fails naming `what` after `within`.
/// Waiting for a state with a deadline, never sleeping in place of it.
pub async fn await_value<T, F, Fut>(what: &str, want: T, within: Duration, mut read: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = read().await;
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still {seen:?} after {within:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `[{"slug":…,"total":…},…]`, exactly those fields, in the order given.
pub fn parse_rows(json: &str) -> Vec<(String, u64)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        slug: String,
        total: u64,
    }
    let rows: Vec<Row> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not a totals array ({e}): {json}"));
    rows.into_iter().map(|r| (r.slug, r.total)).collect()
}

pub fn rows(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(s, t)| (s.to_owned(), t)).collect()
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
    stream: TcpStream,
    /// Bytes read but not yet decoded.
    raw: Vec<u8>,
    framing: Framing,
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
    conn: Conn,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
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
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Ok(Some(ev)) => {
                    if let Some(c) = ev.counts() {
                        seen.push(c);
                        if c == want {
                            return seen;
                        }
                    }
                }
                Ok(None) => panic!("stream ended waiting for {want:?}; seen {seen:?}"),
                Err(e) => panic!("{e}: waiting for {want:?}; seen {seen:?}"),
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
// The real binary.

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_viewcounter")
}

/// A command for the binary in `dir`, with no `VIEWCOUNTER_*` setting from outside the test.
pub fn bin_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIEWCOUNTER_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .env("VIEWCOUNTER_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `viewcounter serve` as a child process, on port 0 in its own directory.
pub struct BinServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl BinServer {
    /// Starts a server on a fresh directory with the default allow-list.
    pub async fn start(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        write_slugs(&slugs_path(dir.path()), DEFAULT_SLUGS);
        Self::start_in(dir, flags).await
    }

    /// Starts a server on `dir`'s db and allow-list; waits for `listening on http://…`.
    pub async fn start_in(dir: TempDir, flags: &[&str]) -> Self {
        Self::start_with_env(dir, &["serve"], flags, &[]).await
    }

    /// `viewcounter <sub…> --listen 127.0.0.1:0 --db … --slugs … <flags…>` with `env` set.
    pub async fn start_with_env(
        dir: TempDir,
        sub: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(dir, sub, flags, env, None).await
    }

    /// `serve` in a process whose open-files limit (soft and hard) is `files`.
    pub async fn start_with_open_files(files: u64, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        write_slugs(&slugs_path(dir.path()), DEFAULT_SLUGS);
        Self::launch(dir, &["serve"], flags, &[], Some(files)).await
    }

    async fn launch(
        dir: TempDir,
        sub: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log file");
        let mut cmd = bin_command(dir.path());
        cmd.args(sub)
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(db_path(dir.path()))
            .arg("--slugs")
            .arg(slugs_path(dir.path()))
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(files) = open_files {
            // SAFETY: only setrlimit runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, files, files));
            }
        }
        let mut child = cmd.spawn().expect("spawn viewcounter serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line)).await;
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            other => panic!("no `listening on` line ({other:?}); log:\n{log}"),
        }
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{log}"));
        Self {
            addr,
            dir,
            child,
            _stdout: stdout,
        }
    }

    pub fn db(&self) -> PathBuf {
        db_path(self.dir.path())
    }

    pub fn slugs_file(&self) -> PathBuf {
        slugs_path(self.dir.path())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("server still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => panic!(
                "server still running after {within:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.wait(STOP_TIMEOUT).await;
    }

    pub async fn join(&self, slug: &str) -> Reader {
        join(self.addr, slug, Req::connect(slug, &token())).await
    }

    pub async fn send(&self, req: Req) -> Response {
        send(self.addr, req).await
    }

    pub async fn counts(&self, slug: &str) -> Counts {
        counts_of(self.addr, slug).await
    }

    /// Hands back the directory of a server that has exited.
    pub fn into_dir(self) -> TempDir {
        self.dir
    }
}

/// What `viewcounter export ...` printed, and how it exited.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub async fn export(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mut cmd = bin_command(dir);
    cmd.arg("export")
        .args(args)
        .envs(env.iter().copied())
        .env("VIEWCOUNTER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("export finishes within 30 s")
        .expect("run viewcounter export");
    RunOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A local port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
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

/// A command that failed as a command should: exit status 1, a `viewcounter: ` message on
/// stderr, no panic, and no partial output.
pub fn assert_clean_failure(out: &RunOutput) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failure exit, not a panic (101) or a signal: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.starts_with("viewcounter: "), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no partial output: {}", out.stdout);
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

// ---------------------------------------------------------------------------------------------
// Shared streams and watches: events tagged with their slug.

/// `{"slug":…,"live":…,"total":…}` of a shared stream's event.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Tagged {
    pub slug: String,
    pub live: u64,
    pub total: u64,
}

pub fn tagged(ev: &SseEvent) -> Tagged {
    let data = ev
        .data
        .as_deref()
        .unwrap_or_else(|| panic!("no data in {ev:?}"));
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not a tagged event ({e}): {data:?}"))
}

pub fn t(slug: &str, live: u64, total: u64) -> Tagged {
    Tagged {
        slug: slug.to_owned(),
        live,
        total,
    }
}

/// Opens a shared stream and reads past its `retry:` preamble.
pub async fn open_shared(app: &TestApp, sid: &str) -> SseClient {
    open_tagged(app, Req::get(format!("/api/v1/shared/{sid}"))).await
}

/// Opens a stream of tagged events (shared or watch) and reads past its `retry:` preamble.
pub async fn open_tagged(app: &TestApp, req: Req) -> SseClient {
    let mut stream = app.open(req).await;
    assert_eq!(stream.status, 200, "{:?}", stream.headers);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let preamble = stream.next_event().await;
    assert!(
        preamble.retry.is_some() && preamble.data.is_none(),
        "{preamble:?}"
    );
    stream
}

/// Reads events until `want` arrives.
pub async fn await_tagged(stream: &mut SseClient, want: Tagged) {
    loop {
        let ev = stream.next_event().await;
        if ev.data.is_some() && tagged(&ev) == want {
            return;
        }
    }
}

/// The next `n` tagged events (heartbeats skipped), sorted by slug: events of several posts
/// sent at once come in no particular order.
pub async fn next_tagged(stream: &mut SseClient, n: usize) -> Vec<Tagged> {
    let mut events = Vec::new();
    while events.len() < n {
        let ev = stream.next_event().await;
        if ev.data.is_some() {
            events.push(tagged(&ev));
        }
    }
    events.sort_by(|a, b| a.slug.cmp(&b.slug));
    events
}
