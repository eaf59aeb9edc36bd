//! Importing views from a file, one way for both doors: `viewcounter import` (written to the
//! file or Redis itself) and the server's `POST /api/v1/import` (which the command uses when a
//! server holds the file).
//!
//! [`file`] reads a file's text into validated rows; [`plan`] makes them what the writer applies
//! ([`ImportPlan`]); [`Summary`] is what an import answers, and [`Summary::describe`] how the
//! command prints it.

pub(crate) mod file;
pub(crate) mod session;

use std::collections::BTreeMap;
use std::fmt;

use crate::edge::slug::Slug;
use crate::storage::add_counts;
use crate::storage::calendar::Day;
use crate::storage::writer::{ImportMode, ImportPlan, ImportReport};

/// Largest import file accepted, read from disk or as a request body.
pub(crate) const MAX_IMPORT_BYTES: usize = 10 * 1024 * 1024;

/// The header every import carries (`X-Viewcounter-Import: 1`). No page can make a browser send
/// it to another origin without a CORS preflight, which is never approved for it: so an import
/// is never a "simple" request another site's page could fire (`fetch` with `no-cors`, a form).
pub(crate) const IMPORT_HEADER: &str = "x-viewcounter-import";

/// A file's parsed numbers as the writer applies them.
pub(crate) fn plan(parsed: file::Parsed, mode: ImportMode, dry_run: bool) -> ImportPlan {
    let days: BTreeMap<(Slug, Day), u64> = parsed
        .days
        .into_iter()
        .map(|((slug, date), views)| ((slug, Day::from_date(date)), views))
        .collect();
    ImportPlan {
        totals: parsed.totals,
        days,
        mode,
        dry_run,
    }
}

/// What an import answers: the report and the rows left out on purpose.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Summary {
    /// What the writer changed (or would change).
    #[serde(flatten)]
    pub report: ImportReport,
    /// Rows the file holds that were left out on purpose (see [`file::Parsed::skipped`]).
    pub skipped: usize,
}

impl Summary {
    /// `import into the file data/viewcounter.redb: 3 posts changed (+120 views), 2 unchanged,
    /// 5 rows skipped, 40 views added to days`; for a dry run, every change first. `to` names
    /// where the import went.
    pub(crate) fn describe(&self, dry_run: bool, to: &impl fmt::Display) -> String {
        let report = &self.report;
        let mut out = String::new();
        if dry_run {
            for (slug, before, after) in &report.changed {
                out.push_str(&format!("{slug}: {before} -> {after}\n"));
            }
        }
        let added = report.changed.iter().fold(0, |all, (_, before, after)| {
            add_counts(all, after.saturating_sub(*before))
        });
        let verb = if dry_run { "would change" } else { "changed" };
        out.push_str(&format!(
            "import into {to}{}: {} posts {verb} (+{added} views), {} unchanged, {} rows skipped, {} views added to days\n",
            if dry_run { " (dry run, nothing written)" } else { "" },
            report.changed.len(),
            report.unchanged,
            self.skipped,
            report.day_views,
        ));
        out
    }
}
