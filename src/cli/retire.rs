//! `viewcounter retire --db FILE --url NODE`: a node taken out of the cluster for good hands its
//! record (what it counted, kept in its `--db` file) to a running node, which adds it to its own
//! record and moves the old part of Redis's sums into its own (see `cluster::record`). The file
//! is then marked retired: `serve` refuses it, so its views are never counted twice.

use crate::cli::RetireArgs;
use crate::cli::import::Server;
use crate::cluster::record::RECORD_ID;
use crate::http::owner::RetiredRecord;
use crate::storage::store::{RedbStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error(transparent)]
    File(#[from] StoreError),
    #[error(
        "{0} holds no cluster record (it never ran with --redis): bring its views in with `viewcounter export --db FILE --daily` and `viewcounter import --url NODE`"
    )]
    NoRecord(String),
    #[error("the node at {url} did not take the record of {db}: {reason} (the file is unchanged)")]
    Node {
        db: String,
        url: String,
        reason: String,
    },
}

/// Hands the record over; the summary to print.
pub async fn retire(args: &RetireArgs) -> Result<String, RetireError> {
    let name = args.db.display().to_string();
    // A file a running server holds is refused here (it is not stopped).
    let mut db = RedbStore::open(&args.db)?;
    db.refuse_retired()?;
    let Some(id) = db.meta(RECORD_ID)? else {
        return Err(RetireError::NoRecord(name));
    };
    let record = RetiredRecord {
        record: format!("{id:016x}"),
        totals: db.totals()?,
        days: db.all_days()?,
        presence: (db.all_presence()?.into_iter())
            .map(|(slug, day, presence)| (slug, day, presence.encode()))
            .collect(),
        site: (db.all_site_peaks()?.into_iter())
            .map(|(day, peak)| (day, peak.live, peak.at))
            .collect(),
    };
    let views = record
        .totals
        .iter()
        .map(|(_, n)| *n)
        .fold(0, u64::saturating_add);
    let posts = record.totals.len();
    let body = serde_json::to_string(&record).map_err(StoreError::storage)?;
    let server = Server::new(&args.url, args.admin_token.as_ref().map(|t| t.expose()));
    let answer: serde_json::Value =
        server
            .post("retire", body)
            .await
            .map_err(|reason| RetireError::Node {
                db: name.clone(),
                url: args.url.clone(),
                reason,
            })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    db.mark_retired(now)?;
    // A retire run again after its answer was lost (or cut short): the node took the record
    // the first time and adds nothing now; the file is marked here.
    let before = if answer["taken_before"].as_bool() == Some(true) {
        " (it took it before: nothing was added again)"
    } else {
        ""
    };
    Ok(format!(
        "retired {name}: its record {} ({posts} posts, {views} views) is now part of the node at {}{before}; `serve` refuses this file from now on\n",
        record.record, args.url
    ))
}
