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

use crate::edge::slug::{SITE, Slug};
use crate::storage::add_counts;
use crate::storage::calendar::Day;
use crate::storage::presence::{DayPresence, Peak, READ_BUCKETS, READ_CAP, Reads};
use crate::storage::writer::{ImportMode, ImportPlan, ImportReport};

/// Largest import file accepted, read from disk or as a request body.
pub(crate) const MAX_IMPORT_BYTES: usize = 10 * 1024 * 1024;

/// The header every import carries (`X-Viewcounter-Import: 1`). No page can make a browser send
/// it to another origin without a CORS preflight, which is never approved for it: so an import
/// is never a "simple" request another site's page could fire (`fetch` with `no-cors`, a form).
pub(crate) const IMPORT_HEADER: &str = "x-viewcounter-import";

/// One row of `export --daily` (and of `GET /api/v1/daily`): a post's views on a day, with
/// what presence left of it, enough for `import` to restore it exactly: the reading-time
/// histogram's bucket counts, their sum in ms, and the peak with when it was reached (RFC 3339,
/// UTC; `null` without a reader). Read back from JSON, the presence fields may be missing
/// (files written before they were), all together.
///
/// The whole site's peak of a day is a row of its own, named [`SITE`] (`*`, which no post can
/// be): it carries only `peak` and `peak_at`, since the site's views and reading times are its
/// posts' sums and its peak is not (posts peak at different times).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayRow {
    pub slug: String,
    pub day: String,
    /// `None` in the site's row only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_buckets: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ms: Option<u64>,
    #[serde(default)]
    pub peak: Option<u64>,
    #[serde(default)]
    pub peak_at: Option<String>,
}

/// The CSV header of [`DayRow`]s.
pub(crate) const DAY_ROW_HEADER: &str = "slug,day,views,read_buckets,read_ms,peak,peak_at";

impl DayRow {
    pub fn new(slug: String, day: String, views: u64, presence: &DayPresence) -> Self {
        let peak = presence.peak;
        Self {
            slug,
            day,
            views: Some(views),
            read_buckets: Some(presence.reads.buckets.to_vec()),
            read_ms: Some(presence.reads.sum_ms),
            peak: Some(peak.live),
            peak_at: (peak.live > 0).then(|| peak_at(peak.at)),
        }
    }

    /// The whole site's row of a day: its peak alone.
    pub fn site(day: String, peak: Peak) -> Self {
        Self {
            slug: SITE.to_owned(),
            day,
            views: None,
            read_buckets: None,
            read_ms: None,
            peak: Some(peak.live),
            peak_at: (peak.live > 0).then(|| peak_at(peak.at)),
        }
    }

    /// The row as one CSV line (no newline): slugs never hold commas, quotes or newlines, and
    /// the buckets are separated by spaces, so no quoting is needed. The site's row leaves
    /// views, read_buckets and read_ms empty.
    pub fn csv_line(&self) -> String {
        let site = self.slug == SITE;
        let count = |n: Option<u64>| match (site, n) {
            (true, None) => String::new(),
            (_, n) => n.unwrap_or(0).to_string(),
        };
        let buckets = match (site, self.read_buckets.as_deref()) {
            (true, None) => String::new(),
            (_, buckets) => {
                let buckets = buckets.unwrap_or(&[0; READ_BUCKETS]);
                let buckets: Vec<String> = buckets.iter().map(u32::to_string).collect();
                buckets.join(" ")
            }
        };
        format!(
            "{},{},{},{},{},{},{}",
            self.slug,
            self.day,
            count(self.views),
            buckets,
            count(self.read_ms),
            self.peak.unwrap_or(0),
            self.peak_at.as_deref().unwrap_or_default(),
        )
    }
}

/// When a peak was reached, as a [`DayRow`] carries it.
fn peak_at(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| unix.to_string(), |t| t.to_string())
}

/// The site's peak per day, then every post's views and presence per day, as [`DayRow`]s
/// sorted by slug (`*` before any post) then day: a day with presence but no views (a reading
/// that ended after midnight) has a row too; a day without a site peak has no site row.
pub(crate) fn day_rows(
    days: impl IntoIterator<Item = (String, Day, u64)>,
    presence: impl IntoIterator<Item = (String, Day, DayPresence)>,
    site: impl IntoIterator<Item = (Day, Peak)>,
) -> Vec<DayRow> {
    let mut site: Vec<(Day, Peak)> = site.into_iter().filter(|(_, p)| p.live > 0).collect();
    site.sort_by_key(|&(day, _)| day);
    let site = site
        .into_iter()
        .map(|(day, peak)| DayRow::site(day.to_string(), peak));
    let mut all: BTreeMap<(String, Day), (u64, DayPresence)> = days
        .into_iter()
        .map(|(slug, day, views)| ((slug, day), (views, DayPresence::default())))
        .collect();
    for (slug, day, p) in presence {
        all.entry((slug, day)).or_default().1 = p;
    }
    let posts = all
        .into_iter()
        .map(|((slug, day), (views, p))| DayRow::new(slug, day.to_string(), views, &p));
    site.chain(posts).collect()
}

/// The presence columns of a row checked: none at all (an older file), or all of them
/// consistent. `None` when there are none.
pub(crate) fn row_presence(
    buckets: Option<&[u32]>,
    read_ms: Option<u64>,
    peak: Option<u64>,
    at: Option<&str>,
) -> Result<Option<DayPresence>, String> {
    if buckets.is_none() && read_ms.is_none() && peak.is_none() && at.is_none() {
        return Ok(None);
    }
    let (Some(buckets), Some(sum_ms), Some(live)) = (buckets, read_ms, peak) else {
        return Err("read_buckets, read_ms and peak go together: all or none".into());
    };
    let buckets: [u32; READ_BUCKETS] = buckets.try_into().map_err(|_| {
        format!(
            "read_buckets has {} counts, expected {READ_BUCKETS}",
            buckets.len()
        )
    })?;
    let reads = Reads { buckets, sum_ms };
    let most = reads.count().saturating_mul(READ_CAP.as_millis() as u64);
    if sum_ms > most {
        return Err(format!(
            "read_ms {sum_ms} is more than {} reads of at most {} s each",
            reads.count(),
            READ_CAP.as_secs()
        ));
    }
    let peak = row_peak(live, at)?;
    Ok(Some(DayPresence { reads, peak }))
}

/// A row's `peak` and `peak_at` checked: a peak has a time, no peak has none.
pub(crate) fn row_peak(live: u64, at: Option<&str>) -> Result<Peak, String> {
    let at = match (live, at) {
        (0, None) => 0,
        (0, Some(at)) => return Err(format!("peak_at {at:?} without a peak")),
        (_, None) => return Err(format!("peak {live} without a peak_at")),
        (_, Some(raw)) => {
            let at: jiff::Timestamp = raw
                .parse()
                .map_err(|_| format!("peak_at {raw:?} is not an RFC 3339 time"))?;
            u64::try_from(at.as_second()).map_err(|_| format!("peak_at {raw:?} is before 1970"))?
        }
    };
    Ok(Peak { live, at })
}

/// A file's parsed numbers as the writer applies them.
pub(crate) fn plan(parsed: file::Parsed, mode: ImportMode, dry_run: bool) -> ImportPlan {
    let days: BTreeMap<(Slug, Day), u64> = parsed
        .days
        .into_iter()
        .map(|((slug, date), views)| ((slug, Day::from_date(date)), views))
        .collect();
    let presence = parsed
        .presence
        .into_iter()
        .map(|((slug, date), p)| ((slug, Day::from_date(date)), p))
        .collect();
    let site_peaks = parsed
        .site_peaks
        .into_iter()
        .map(|(date, peak)| (Day::from_date(date), peak))
        .collect();
    ImportPlan {
        totals: parsed.totals,
        days,
        presence,
        site_peaks,
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
        if report.day_presence > 0 {
            out.pop();
            out.push_str(&format!(
                ", {} days' reading times or peaks {verb}\n",
                report.day_presence
            ));
        }
        if report.site_peaks > 0 {
            out.pop();
            out.push_str(&format!(
                ", {} days' site peaks {verb}\n",
                report.site_peaks
            ));
        }
        out
    }
}
