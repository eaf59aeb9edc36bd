//! `viewcounter export`: all-time totals as CSV or JSON, from the db file when no server holds
//! it, otherwise from the running server's `/api/v1/totals` (which includes unwritten views).

use std::time::Duration;

use crate::cli::{ExportArgs, Format};
use crate::store::{self, StoreError};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub slug: String,
    pub total: u64,
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
    #[error("{path} is held by a running server, but it did not answer at {url}: {server}")]
    ServerUnreachable {
        path: String,
        url: String,
        server: String,
    },
}

/// The rows in `format`, ready to print.
pub async fn export(args: &ExportArgs) -> Result<String, ExportError> {
    let rows = match store::read_totals_offline(&args.db) {
        Ok(rows) => rows
            .into_iter()
            .map(|(slug, total)| Row { slug, total })
            .collect(),
        Err(file) => {
            let url = args.url.clone().unwrap_or_else(|| default_url(args));
            let path = args.db.display().to_string();
            match fetch(&url, args.admin_token.as_deref()).await {
                Ok(rows) => rows,
                Err(server) if matches!(file, StoreError::Locked { .. }) => {
                    return Err(ExportError::ServerUnreachable { path, url, server });
                }
                Err(server) => {
                    return Err(ExportError::Neither {
                        path,
                        file,
                        url,
                        server,
                    });
                }
            }
        }
    };
    Ok(render(&rows, args.format))
}

fn default_url(args: &ExportArgs) -> String {
    let mut addr = args.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

async fn fetch(url: &str, token: Option<&str>) -> Result<Vec<Row>, String> {
    let client = awc::Client::builder().timeout(HTTP_TIMEOUT).finish();
    let mut req = client.get(format!("{}/api/v1/totals", url.trim_end_matches('/')));
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
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!("HTTP {status} {reason}").trim_end().to_owned());
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Json => {
            let mut out = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
            out.push('\n');
            out
        }
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
