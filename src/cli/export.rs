//! `viewcounter export`: all-time totals (or, `--daily`, views per day) as CSV or JSON, from the
//! db file when no server holds it, otherwise from the running server's `/api/v1/totals` or
//! `/api/v1/daily` (which include unwritten views); with `--redis`, from the cluster's Redis.

use std::time::Duration;

use crate::cli::{ExportArgs, Format};
use crate::storage::calendar::Day;
use crate::storage::store::{self, Store, StoreError};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub slug: String,
    pub total: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DayRow {
    pub slug: String,
    pub day: String,
    pub views: u64,
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
    #[error("{path} is held by a running server, but it did not answer at {url}: {server}")]
    ServerUnreachable {
        path: String,
        url: String,
        server: String,
    },
}

/// The rows in `format`, ready to print.
pub async fn export(args: &ExportArgs) -> Result<String, ExportError> {
    if let Some(store) = args.store.redis_store() {
        return from_redis(store, args).map_err(ExportError::Redis);
    }
    let offline = store::read_offline(&args.store.db).and_then(|snapshot| {
        if args.daily {
            Ok(render_days(&day_rows(snapshot.days()?), args.format))
        } else {
            Ok(render(&total_rows(snapshot.totals()?), args.format))
        }
    });
    let file = match offline {
        Ok(out) => return Ok(out),
        Err(file) => file,
    };
    let url = args.store.url();
    let token = args.store.admin_token.as_deref();
    let fetched = if args.daily {
        fetch::<Vec<DayRow>>(&url, "daily", token)
            .await
            .map(|rows| render_days(&rows, args.format))
    } else {
        fetch::<Vec<Row>>(&url, "totals", token)
            .await
            .map(|rows| render(&rows, args.format))
    };
    let path = args.store.db.display().to_string();
    match fetched {
        Ok(out) => Ok(out),
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

/// The whole cluster's numbers, read from Redis (blocking: the command does nothing else).
fn from_redis(
    store: Result<crate::cluster::store::RedisStore, StoreError>,
    args: &ExportArgs,
) -> Result<String, StoreError> {
    let mut store = store?;
    if args.daily {
        Ok(render_days(&day_rows(store.all_days()?), args.format))
    } else {
        Ok(render(&total_rows(store.totals()?), args.format))
    }
}

fn day_rows(days: Vec<(String, u32, u64)>) -> Vec<DayRow> {
    days.into_iter()
        .filter_map(|(slug, day, views)| {
            Some(DayRow {
                slug,
                day: Day::from_key(day)?.to_string(),
                views,
            })
        })
        .collect()
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
            let mut out = String::from("slug,day,views\n");
            for row in rows {
                out.push_str(&format!("{},{},{}\n", row.slug, row.day, row.views));
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
