//! `viewcounter import FILE`: views brought in from a file (read by `crate::import`),
//! written to the db file when no server holds it, or sent to the running server's
//! `POST /api/v1/import` when one does, so that the server's posts and the file agree; with
//! `--url`, sent to that server and nothing else. With `--redis`, written to the cluster's
//! Redis (whose nodes announce the new totals). The summary says which one it was.

use std::io::Read;
use std::time::Duration;

use crate::cli::ImportArgs;
use crate::cli::export::{Source, error_of};
use crate::import::file::{self, ParseOptions};
use crate::import::{self, IMPORT_HEADER, MAX_IMPORT_BYTES, Summary};
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
    #[error("{path} is larger than {MAX_IMPORT_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot write {db}: {reason}")]
    Store { db: String, reason: String },
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
    let text = read_file(args)?;
    let to = destination(args);
    let summary = if let Source::Server { url, held } = &to {
        send(args, url, held, text).await?
    } else {
        let path = args.file.display().to_string();
        let options = ParseOptions {
            format: args.format,
            path_prefix: args.path_prefix.as_deref(),
            timezone: &args.timezone,
        };
        let parsed = file::parse(&text, &options).map_err(|e| ImportError::Invalid {
            path,
            reason: e.to_string(),
        })?;
        let skipped = parsed.skipped;
        let report = write(args, import::plan(parsed, args.mode, args.dry_run)).await?;
        Summary { report, skipped }
    };
    Ok(summary.describe(args.dry_run, &to))
}

fn read_file(args: &ImportArgs) -> Result<String, ImportError> {
    let path = args.file.display().to_string();
    let mut bytes = Vec::new();
    let read = if args.file.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_IMPORT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(&args.file)
            .and_then(|f| f.take(MAX_IMPORT_BYTES as u64 + 1).read_to_end(&mut bytes))
    };
    read.map_err(|source| ImportError::Read {
        path: path.clone(),
        source,
    })?;
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(ImportError::TooLarge { path });
    }
    String::from_utf8(bytes).map_err(|_| ImportError::Invalid {
        path,
        reason: "not UTF-8 text".into(),
    })
}

/// Writes through the same writer a server runs, so an import means the same on the file.
async fn write(
    args: &ImportArgs,
    plan: crate::storage::writer::ImportPlan,
) -> Result<ImportReport, ImportError> {
    let db = match args.store.redis {
        Some(_) => "the cluster's Redis".to_owned(),
        None => args.store.db.display().to_string(),
    };
    let failed = |reason: String| ImportError::Store {
        db: db.clone(),
        reason,
    };
    // A dry run works on a copy: the file is not even created. Redis: a dry run writes nothing.
    let store: Result<Box<dyn Store>, _> = match args.store.redis_store() {
        Some(redis) => redis.map(|s| Box::new(s) as Box<dyn Store>),
        None if plan.dry_run => RedbStore::copy_in_memory(&args.store.db).map(|s| Box::new(s) as _),
        None => RedbStore::open(&args.store.db).map(|s| Box::new(s) as _),
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

/// Sends the file as it is to the server at `url`, which reads it with its own time zone.
async fn send(
    args: &ImportArgs,
    url: &str,
    held: &Option<String>,
    text: String,
) -> Result<Summary, ImportError> {
    let failed = |reason: String| ImportError::Server {
        held: held.clone(),
        url: url.to_owned(),
        reason,
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair(
        "mode",
        if args.mode == ImportMode::Add {
            "add"
        } else {
            "set"
        },
    );
    if args.dry_run {
        query.append_pair("dry_run", "1");
    }
    if let Some(format) = args.format {
        query.append_pair("format", &format.to_string());
    }
    if let Some(prefix) = &args.path_prefix {
        query.append_pair("path_prefix", prefix);
    }
    let client = awc::Client::builder().timeout(HTTP_TIMEOUT).finish();
    let target = format!(
        "{}/api/v1/import?{}",
        url.trim_end_matches('/'),
        query.finish()
    );
    let mut req = client
        .post(target)
        .content_type("text/plain; charset=utf-8");
    req = req.insert_header((IMPORT_HEADER, "1"));
    if let Some(token) = &args.store.admin_token {
        req = req.bearer_auth(token.expose());
    }
    let mut res = req
        .send_body(text)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let body = res.body().await.map_err(|e| failed(e.to_string()))?;
    if !res.status().is_success() {
        return Err(failed(error_of(res.status(), &body)));
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("unexpected answer: {e}")))
}
