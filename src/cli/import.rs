//! `viewcounter import FILE`: views brought in from a file (read by `crate::import` as it
//! streams by, any size), written to the db file when no server holds it, or sent to the
//! running server in pieces of an import session (`POST /api/v1/import/sessions`) when one
//! does, so that the server's posts and the file agree; with `--url`, sent to that server and
//! nothing else. With `--redis`, written to the cluster's
//! Redis (whose nodes announce the new totals). The summary says which one it was.

use std::io::{BufReader, IsTerminal, Read};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;

use crate::cli::export::{DayRow, Row, Source, error_of, render, render_days};
use crate::cli::{Format, ImportArgs};
use crate::cluster::store::IMPORT_THROUGH_A_NODE;
use crate::http::owner::ImportSession;
use crate::import::file::{self, ParseOptions, Parsed};
use crate::import::{self, IMPORT_HEADER, Summary};
use crate::metrics::Metrics;
use crate::storage::calendar::{Calendar, Clock};
use crate::storage::store::{self, RedbStore, Store};
use crate::storage::writer::{FlushPolicy, ImportMode, ImportReport, Writer};

const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot write {db}: {reason}")]
    Store { db: String, reason: String },
    /// `--redis`: Redis is a cache of the nodes' records (see [`IMPORT_THROUGH_A_NODE`]).
    #[error("import --redis \"{0}\" is refused: {IMPORT_THROUGH_A_NODE}")]
    IntoRedis(String),
    /// `held`: the db file, when the server was asked because it holds it (no `--url`).
    #[error("{}", server_failed(held.as_deref(), url, reason))]
    Server {
        held: Option<String>,
        url: String,
        reason: String,
    },
}

fn server_failed(held: Option<&str>, url: &str, reason: &str) -> String {
    match held {
        Some(db) => format!(
            "{db} is held by a running server, but it did not take the import at {url}: {reason}"
        ),
        None => format!("the server at {url} (--url) did not take the import: {reason}"),
    }
}

/// Where the import goes: `--redis`, else `--url`'s server (never a local file then), else
/// the file, or the server that holds it.
fn destination(args: &ImportArgs) -> Source {
    let store = &args.store;
    let db = store.db.display().to_string();
    if store.redis.is_some() {
        Source::Redis
    } else if let Some(url) = &store.url {
        let url = url.clone();
        Source::Server { url, held: None }
    } else if store::is_served(&store.db) {
        let url = store.url();
        Source::Server {
            url,
            held: Some(db),
        }
    } else {
        Source::File(db)
    }
}

/// Imports `args.file`; the summary (and, for a dry run, every change) to print.
pub async fn import(args: &ImportArgs) -> Result<String, ImportError> {
    if let Some(url) = &args.store.redis {
        // The URL prints with its password masked.
        return Err(ImportError::IntoRedis(url.to_string()));
    }
    let to = destination(args);
    let summary = if let Source::Server { url, held } = &to {
        send(args, url, held).await?
    } else {
        let parsed = read_file(args, &args.timezone)?;
        let skipped = parsed.skipped;
        let report = write(args, import::plan(parsed, args.mode, args.dry_run)).await?;
        Summary { report, skipped }
    };
    Ok(summary.describe(args.dry_run, &to))
}

/// The file read as it streams by, its views added up per post and day in `timezone`.
fn read_file(args: &ImportArgs, timezone: &TimeZone) -> Result<Parsed, ImportError> {
    let path = args.file.display().to_string();
    let input: (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let opened = std::fs::File::open(&args.file).and_then(|f| {
            let size = f.metadata()?.len();
            Ok((Box::new(f) as Box<dyn Read>, Some(size)))
        });
        opened.map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?
    };
    let options = ParseOptions {
        format: args.format,
        path_prefix: args.path_prefix.as_deref(),
        timezone,
    };
    let progress = Progress::new(input.0, input.1, std::io::stderr().is_terminal());
    let read = file::read(BufReader::with_capacity(256 * 1024, progress), &options);
    read.map_err(|e| ImportError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// Rows (lines) read, their rate and the time left, redrawn on one line of stderr while a
/// long file is read; nothing at all when stderr is not a terminal (a log, a pipe). Written
/// out rather than a progress crate: one line of counts needs none of its machinery.
struct Progress<R> {
    inner: R,
    size: Option<u64>,
    bytes: u64,
    rows: u64,
    shown: bool,
    on_terminal: bool,
    started: Instant,
    drawn: Instant,
}

/// A file read within this long shows no progress at all; after it, redrawn this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

impl<R> Progress<R> {
    fn new(inner: R, size: Option<u64>, on_terminal: bool) -> Self {
        let now = Instant::now();
        Self {
            inner,
            size,
            bytes: 0,
            rows: 0,
            shown: false,
            on_terminal,
            started: now,
            drawn: now,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.rows += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        if self.on_terminal && (n == 0 || self.drawn.elapsed() >= PROGRESS_EVERY) {
            self.drawn = Instant::now();
            let elapsed = self.started.elapsed();
            if n == 0 && self.shown {
                // The last line stays; the reader may ask again at the end, it is said once.
                self.shown = false;
                eprintln!(
                    "\r{}, read; applying\x1b[K",
                    progress_line(self.rows, self.bytes, self.size, elapsed)
                );
            } else if n > 0 && elapsed >= PROGRESS_EVERY {
                self.shown = true;
                eprint!(
                    "\r{}\x1b[K",
                    progress_line(self.rows, self.bytes, self.size, elapsed)
                );
            }
        }
        Ok(n)
    }
}

/// `412000 rows, 205000 rows/s, 31%, 4 s left`; without the file's size (standard input),
/// rows and rate alone.
fn progress_line(rows: u64, bytes: u64, size: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut line = format!("{rows} rows, {:.0} rows/s", rows as f64 / secs);
    if let Some(size) = size.filter(|&size| size > 0) {
        let done = (bytes as f64 / size as f64).min(1.0);
        let left = if done > 0.0 { secs / done - secs } else { 0.0 };
        line.push_str(&format!(", {:.0}%, {:.0} s left", done * 100.0, left));
    }
    line
}

/// Writes through the same writer a server runs, so an import means the same on the file.
async fn write(
    args: &ImportArgs,
    plan: crate::storage::writer::ImportPlan,
) -> Result<ImportReport, ImportError> {
    let db = args.store.db.display().to_string();
    let failed = |reason: String| ImportError::Store {
        db: db.clone(),
        reason,
    };
    // A dry run works on a copy: the file is not even created.
    let store: Result<Box<dyn Store>, _> = if plan.dry_run {
        RedbStore::copy_in_memory(&args.store.db).map(|s| Box::new(s) as _)
    } else {
        RedbStore::open(&args.store.db).map(|s| Box::new(s) as _)
    };
    let store = store.map_err(|e| failed(e.to_string()))?;
    let policy = FlushPolicy {
        after: Duration::from_secs(1),
        max_wait: Duration::from_secs(1),
        // The counted reader ids a server restarts with stay: an import sweeps none.
        dedupe_window: Duration::MAX,
    };
    let calendar = Calendar::new(args.timezone.clone(), Clock::default());
    let writer = Writer::spawn(store, policy, calendar, Metrics::new())
        .map_err(|e| failed(e.to_string()))?;
    let report = writer.import(plan).await.map_err(|e| failed(e.to_string()));
    writer.shutdown().await.map_err(|e| failed(e.to_string()))?;
    report
}

/// The server's end of an import: a session opened on it, the file read here in the
/// server's time zone, its rows sent in pieces no larger than the server takes, then
/// committed, all applied at once. Any failure before the commit leaves nothing applied: a
/// refused piece ends the session on the server, and one left behind goes idle and is dropped.
async fn send(args: &ImportArgs, url: &str, held: &Option<String>) -> Result<Summary, ImportError> {
    let failed = |reason: String| ImportError::Server {
        held: held.clone(),
        url: url.to_owned(),
        reason,
    };
    let server = Server::new(url, args.store.admin_token.as_ref().map(|t| t.expose()));
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("mode", mode_name(args.mode));
    if args.dry_run {
        query.append_pair("dry_run", "1");
    }
    let session: ImportSession = server
        .post(
            &format!("import/sessions?{}", query.finish()),
            String::new(),
        )
        .await
        .map_err(failed)?;
    let sessions = format!("import/sessions/{}", session.id);
    let sent = async {
        let timezone = crate::cli::time_zone(&session.timezone).map_err(failed)?;
        let parsed = read_file(args, &timezone)?;
        for piece in pieces(&parsed, session.piece_bytes) {
            server
                .post::<serde_json::Value>(&sessions, piece)
                .await
                .map_err(failed)?;
        }
        let mut summary: Summary = server
            .post(&format!("{sessions}/commit"), String::new())
            .await
            .map_err(failed)?;
        // The pieces hold the rows that count; those left out were left out here.
        summary.skipped = parsed.skipped;
        Ok(summary)
    };
    let summary = sent.await;
    if summary.is_err() {
        // Frees what the server staged now rather than when the session goes idle; it
        // applies nothing either way.
        server.delete(&sessions).await;
    }
    summary
}

fn mode_name(mode: ImportMode) -> &'static str {
    match mode {
        ImportMode::Add => "add",
        ImportMode::Set => "set",
    }
}

/// The file's rows as `export` writes them (the site's peaks, then views, reading times and
/// peaks per post and day, or `slug,total` for a file of totals), in pieces of at most `limit`
/// bytes.
fn pieces(parsed: &Parsed, limit: usize) -> Vec<String> {
    if parsed.days.is_empty() && parsed.site_peaks.is_empty() {
        let rows = parsed.totals.iter().map(|(slug, &total)| Row {
            slug: slug.as_str().to_owned(),
            total,
        });
        in_pieces(rows, limit)
    } else {
        let site =
            (parsed.site_peaks.iter()).map(|(day, &peak)| DayRow::site(day.to_string(), peak));
        let rows = parsed.days.iter().map(|(key, &views)| {
            let presence = parsed.presence.get(key).copied().unwrap_or_default();
            let (slug, day) = key;
            DayRow::new(slug.as_str().to_owned(), day.to_string(), views, &presence)
        });
        in_pieces(site.chain(rows), limit)
    }
}

/// A row `export` writes, as a piece carries it.
trait PieceRow: Sized {
    /// The longest its CSV line can be.
    fn longest(&self) -> usize;
    fn render(rows: &[Self]) -> String;
}

impl PieceRow for Row {
    fn longest(&self) -> usize {
        // The slug and a count of up to 19 digits, with separators.
        self.slug.len() + 32
    }

    fn render(rows: &[Self]) -> String {
        render(rows, Format::Csv)
    }
}

impl PieceRow for DayRow {
    fn longest(&self) -> usize {
        self.csv_line().len() + 1
    }

    fn render(rows: &[Self]) -> String {
        render_days(rows, Format::Csv)
    }
}

fn in_pieces<T: PieceRow>(rows: impl Iterator<Item = T>, limit: usize) -> Vec<String> {
    // Room for the header.
    let longest = T::longest;
    let room = limit.saturating_sub(128);
    let mut out = Vec::new();
    let mut piece = Vec::new();
    let mut bytes = 0;
    for row in rows {
        if bytes + longest(&row) > room && !piece.is_empty() {
            out.push(T::render(&piece));
            piece.clear();
            bytes = 0;
        }
        bytes += longest(&row);
        piece.push(row);
    }
    if !piece.is_empty() {
        out.push(T::render(&piece));
    }
    out
}

/// The server's import endpoints, as the admin (`--admin-token`) with [`IMPORT_HEADER`].
/// A server's admin API as `import` (and `retire`) speak to it.
pub(crate) struct Server<'a> {
    client: awc::Client,
    base: String,
    token: Option<&'a str>,
}

impl<'a> Server<'a> {
    pub(crate) fn new(url: &str, token: Option<&'a str>) -> Self {
        Self {
            client: awc::Client::builder().timeout(HTTP_TIMEOUT).finish(),
            base: format!("{}/api/v1", url.trim_end_matches('/')),
            token,
        }
    }

    fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let mut req = self
            .client
            .request(method, format!("{}/{path}", self.base))
            .insert_header((IMPORT_HEADER, "1"));
        if let Some(token) = self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    pub(crate) async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: String,
    ) -> Result<T, String> {
        let mut res = self
            .request(awc::http::Method::POST, path)
            .content_type("text/plain; charset=utf-8")
            .send_body(body)
            .await
            .map_err(|e| e.to_string())?;
        let body = res.body().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(error_of(res.status(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
    }

    /// Best effort: the session may be gone already.
    async fn delete(&self, path: &str) {
        let _ = self.request(awc::http::Method::DELETE, path).send().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::file::ImportFormat;

    fn parse(text: &str) -> Parsed {
        let options = ParseOptions {
            format: Some(ImportFormat::Csv),
            path_prefix: None,
            timezone: &TimeZone::UTC,
        };
        file::parse(text, &options).expect("a good file")
    }

    #[test]
    fn rows_go_in_pieces_no_larger_than_the_limit_that_read_back_as_the_whole() {
        let mut text = String::from("slug,day,views\n");
        for post in 0..40 {
            for day in 1..=28 {
                text.push_str(&format!("post-{post},2026-02-{day:02},{post}\n"));
            }
        }
        let whole = parse(&text);
        let limit = 4096;

        let split = pieces(&whole, limit);

        assert!(split.len() > 5, "{}", split.len());
        let mut days = std::collections::BTreeMap::new();
        for piece in &split {
            assert!(piece.len() <= limit, "{}", piece.len());
            assert!(
                piece.starts_with("slug,day,views,read_buckets,read_ms,peak,peak_at\n"),
                "{piece}"
            );
            days.extend(parse(piece).days);
        }
        assert_eq!(days, whole.days);

        let totals = parse("slug,total\na,1\nb,2\n");
        assert_eq!(pieces(&totals, limit), ["slug,total\na,1\nb,2\n"]);
        assert!(pieces(&parse("slug,total\n"), limit).is_empty());
    }

    #[test]
    fn progress_says_rows_rate_share_and_time_left() {
        let second = Duration::from_secs(1);
        assert_eq!(
            progress_line(200_000, 25, Some(100), 2 * second),
            "200000 rows, 100000 rows/s, 25%, 6 s left"
        );
        // Standard input has no size to go by.
        assert_eq!(
            progress_line(5000, 25, None, second),
            "5000 rows, 5000 rows/s"
        );
    }
}
