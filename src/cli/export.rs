//! `viewcounter export`: all-time totals (or, `--daily`, views per day) as CSV or JSON, from the
//! db file when no server holds it, otherwise from the running server's `/api/v1/totals` or
//! `/api/v1/daily` (which include unwritten views); with `--url`, from that server and nothing
//! else; with `--redis`, from the cluster's Redis. Which one it was is said on stderr.

use std::time::Duration;

use crate::cli::{ExportArgs, Format};
use crate::import::{DAY_ROW_HEADER, day_rows};
use crate::storage::calendar::Day;
use crate::storage::presence::Peak;
use crate::storage::store::{self, Store, StoreError};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub slug: String,
    pub total: u64,
}

pub use crate::import::DayRow;

/// Where an export's or an import's numbers were read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The db file, no server holding it.
    File(String),
    /// A running server: the one `--url` named, or the one holding the file (`held`).
    Server { url: String, held: Option<String> },
    /// The cluster's Redis (`--redis`).
    Redis,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "the file {path}"),
            Self::Server { url, held: None } => write!(f, "the server at {url}"),
            Self::Server {
                url,
                held: Some(path),
            } => write!(f, "the server at {url}, which holds {path}"),
            Self::Redis => f.write_str("the cluster's Redis"),
        }
    }
}

/// What `export` prints: `text` on stdout, where it came from on stderr.
#[derive(Debug)]
pub struct Exported {
    pub text: String,
    pub from: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read {path}: {file}; and the server at {url} did not answer: {server}")]
    Neither {
        path: String,
        file: StoreError,
        url: String,
        server: String,
    },
    #[error("cannot read the cluster's Redis: {0}")]
    Redis(StoreError),
    #[error("cannot export from the server at {url} (--url): {server}")]
    Server { url: String, server: String },
    #[error("{path} is held by a running server, but it did not answer at {url}: {server}")]
    ServerUnreachable {
        path: String,
        url: String,
        server: String,
    },
}

/// The rows in `format`, ready to print, and where they came from.
pub async fn export(args: &ExportArgs) -> Result<Exported, ExportError> {
    if let Some(store) = args.store.redis_store() {
        let text = from_redis(store, args).map_err(ExportError::Redis)?;
        return Ok(Exported {
            text,
            from: Source::Redis,
        });
    }
    if let Some(url) = &args.store.url {
        // `--url` means that server: no local file is looked at, let alone read.
        let text = from_server(url, args)
            .await
            .map_err(|server| ExportError::Server {
                url: url.clone(),
                server,
            })?;
        let from = Source::Server {
            url: url.clone(),
            held: None,
        };
        return Ok(Exported { text, from });
    }
    let path = args.store.db.display().to_string();
    let offline = store::read_offline(&args.store.db).and_then(|snapshot| {
        if args.daily {
            let days = with_days(snapshot.days()?);
            let presence = with_days(snapshot.presence()?);
            let site = site_days(snapshot.site_peaks()?);
            Ok(render_days(&day_rows(days, presence, site), args.format))
        } else {
            Ok(render(&total_rows(snapshot.totals()?), args.format))
        }
    });
    let file = match offline {
        Ok(text) => {
            let from = Source::File(path);
            return Ok(Exported { text, from });
        }
        Err(file) => file,
    };
    let url = args.store.url();
    match from_server(&url, args).await {
        Ok(text) => {
            let from = Source::Server {
                url,
                held: Some(path),
            };
            Ok(Exported { text, from })
        }
        Err(server) if matches!(file, StoreError::Locked { .. }) => {
            Err(ExportError::ServerUnreachable { path, url, server })
        }
        Err(server) => Err(ExportError::Neither {
            path,
            file,
            url,
            server,
        }),
    }
}

/// The server's `/api/v1/totals` (or `/daily`) in `args.format`.
async fn from_server(url: &str, args: &ExportArgs) -> Result<String, String> {
    let token = args.store.admin_token.as_deref();
    if args.daily {
        fetch::<Vec<DayRow>>(url, "daily", token)
            .await
            .map(|rows| render_days(&rows, args.format))
    } else {
        fetch::<Vec<Row>>(url, "totals", token)
            .await
            .map(|rows| render(&rows, args.format))
    }
}

/// The whole cluster's numbers, read from Redis (blocking: the command does nothing else).
fn from_redis(
    store: Result<crate::cluster::store::RedisStore, StoreError>,
    args: &ExportArgs,
) -> Result<String, StoreError> {
    let mut store = store?;
    if args.daily {
        let days = with_days(store.all_days()?);
        let presence = with_days(store.all_presence()?);
        let site = site_days(store.all_site_peaks()?);
        Ok(render_days(&day_rows(days, presence, site), args.format))
    } else {
        Ok(render(&total_rows(store.totals()?), args.format))
    }
}

/// Stored rows with their day (`YYYYMMDD`) as a [`Day`].
fn with_days<T>(rows: Vec<(String, u32, T)>) -> impl Iterator<Item = (String, Day, T)> {
    rows.into_iter()
        .filter_map(|(slug, day, value)| Some((slug, Day::from_key(day)?, value)))
}

/// Stored site peaks with their day (`YYYYMMDD`) as a [`Day`].
fn site_days(rows: Vec<(u32, Peak)>) -> impl Iterator<Item = (Day, Peak)> {
    rows.into_iter()
        .filter_map(|(day, peak)| Some((Day::from_key(day)?, peak)))
}

fn total_rows(totals: Vec<(String, u64)>) -> Vec<Row> {
    totals
        .into_iter()
        .map(|(slug, total)| Row { slug, total })
        .collect()
}

async fn fetch<T: serde::de::DeserializeOwned>(
    url: &str,
    what: &str,
    token: Option<&str>,
) -> Result<T, String> {
    let client = awc::Client::builder().timeout(HTTP_TIMEOUT).finish();
    let mut req = client.get(format!("{}/api/v1/{what}", url.trim_end_matches('/')));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let mut res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res
        .body()
        .limit(256 * 1024 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(error_of(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

/// `HTTP 401 admin token required`, from a JSON error answer.
pub fn error_of(status: awc::http::StatusCode, body: &[u8]) -> String {
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {status} {reason}").trim_end().to_owned()
}

pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Json => json_lines(rows),
        Format::Csv => {
            // Slugs never hold commas, quotes or newlines, so no quoting is needed.
            let mut out = String::from("slug,total\n");
            for row in rows {
                out.push_str(&format!("{},{}\n", row.slug, row.total));
            }
            out
        }
    }
}

pub fn render_days(rows: &[DayRow], format: Format) -> String {
    match format {
        Format::Json => json_lines(rows),
        Format::Csv => {
            let mut out = format!("{DAY_ROW_HEADER}\n");
            for row in rows {
                out.push_str(&row.csv_line());
                out.push('\n');
            }
            out
        }
    }
}

fn json_lines(rows: &(impl serde::Serialize + ?Sized)) -> String {
    let mut out = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
    out.push('\n');
    out
}
