//! Where all-time totals live. The writer talks to a [`Store`] in deltas ("alpha +17") so that
//! a shared engine that adds atomically (Redis `INCRBY`, SQL `total = total + $1`) can replace
//! the embedded redb file without touching the rest.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::backends::InMemoryBackend;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition,
};

use crate::storage::presence::{DayPresence, Peak};
use crate::storage::{MAX_COUNT, add_counts};

/// Views per post: slug → all-time total.
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
/// Reader ids counted within the dedupe window: "slug reader-id" → unix seconds when counted.
/// Written in the same transaction as the totals, so a restart (or a crash) never counts an
/// open tab's reconnect twice, and a view lost in a crash takes its id with it.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// Views per post per calendar day (`--timezone`): (day as `YYYYMMDD`, slug) → views. Day
/// first, so one day's views of every post (`top?by=today`) are one range; a post's history is
/// a lookup per day. Written in the same transaction as the totals.
const DAYS: TableDefinition<(u32, &str), u64> = TableDefinition::new("days");
/// Reading times and the peak per post per day: (day as `YYYYMMDD`, slug) → a
/// [`DayPresence`] encoded (a few dozen bytes). Day first like `days`. Written in the same
/// transaction as the totals.
const DAY_PRESENCE: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("day_presence");
/// The whole site's peak per day: day → (readers at once, unix seconds when first reached).
const SITE_PEAKS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("site_peaks");
/// Format bookkeeping, so a later version can migrate the file.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION_KEY: &str = "schema_version";
/// `meta`: when the file was retired (`viewcounter retire`), unix seconds.
const RETIRED: &str = "retired";
/// 2 added `days`; a version-1 file gains the table (empty: those views have no days) on open.
/// 3 added `day_presence` and `site_peaks`; older files gain them empty (no reading times or
/// peaks were kept then), their totals and days untouched.
pub const SCHEMA_VERSION: u64 = 3;
const OLDEST_READABLE: u64 = 1;

/// redb's page cache, in bytes. Its default (1 GiB) keeps every page ever read or written:
/// after many posts, the whole file would stay in memory for good. The writer reads one row
/// per post it wakes, and the operating system caches the file anyway, so a small cache
/// costs a `pread` now and then, not a disk access.
pub const DB_CACHE_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is held by another process (is a server running on it?)")]
    Locked { path: String },
    #[error("{path} is not a viewcounter database: {reason}")]
    Foreign { path: String, reason: String },
    #[error(
        "{path} was retired: its views were handed to another node's record (`viewcounter retire`), so serving it would count them twice; start the node with a new --db file"
    )]
    Retired { path: String },
    #[error("storage error: {0}")]
    Storage(String),
}

impl StoreError {
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Self::Storage(e.to_string())
    }
}

/// Persistent totals. Implementations are used from one blocking thread (the writer's).
pub trait Store: Send + 'static {
    /// The stored total of one post, `None` when it has no row.
    fn load(&mut self, slug: &str) -> Result<Option<u64>, StoreError>;
    /// Adds every delta (totals and days), each count stopping at [`MAX_COUNT`], and records
    /// every counted reader id, in one atomic, durable step: all of it or, on an error, none.
    fn add(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        seen: &[Seen<'_>],
    ) -> Result<(), StoreError> {
        self.add_all(batch, days, seen, &[], &[])
    }
    /// [`Store::add`], and presence: each post's reading times added and peak raised per day,
    /// the site's peak raised per day (day, peak), all in the same atomic step.
    fn add_all(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        seen: &[Seen<'_>],
        presence: &[PresenceDelta<'_>],
        site: &[(u32, Peak)],
    ) -> Result<(), StoreError>;
    /// One post's presence on each of `days`, in that order; empty for a day without. An
    /// engine that keeps no presence (cluster mode's Redis, so far) has none.
    fn presence_of(&mut self, _slug: &str, days: &[u32]) -> Result<Vec<DayPresence>, StoreError> {
        Ok(vec![DayPresence::default(); days.len()])
    }
    /// Every post's presence on one day, sorted by slug.
    fn day_presence(&mut self, _day: u32) -> Result<Vec<(String, DayPresence)>, StoreError> {
        Ok(Vec::new())
    }
    /// The site's peak on each of `days`.
    fn site_peaks(&mut self, days: &[u32]) -> Result<Vec<Peak>, StoreError> {
        Ok(vec![Peak::default(); days.len()])
    }
    /// Every day's site peak (day, peak), by day.
    fn all_site_peaks(&mut self) -> Result<Vec<(u32, Peak)>, StoreError> {
        Ok(Vec::new())
    }
    /// Every (slug, day, presence), sorted by slug then day.
    fn all_presence(&mut self) -> Result<Vec<(String, u32, DayPresence)>, StoreError> {
        Ok(Vec::new())
    }
    /// One post's views on each of `days` (`YYYYMMDD`), in that order; 0 for a day without.
    fn days_of(&mut self, slug: &str, days: &[u32]) -> Result<Vec<u64>, StoreError>;
    /// Every post's views on one day, sorted by slug.
    fn day(&mut self, day: u32) -> Result<Vec<(String, u64)>, StoreError>;
    /// Every (slug, day, views), sorted by slug then day.
    fn all_days(&mut self) -> Result<Vec<(String, u32, u64)>, StoreError>;
    /// Reader ids of one post counted at or after `since` (unix seconds).
    fn seen(&mut self, slug: &str, since: u64) -> Result<Vec<(String, u64)>, StoreError>;
    /// Forgets reader ids counted before `cutoff` (unix seconds).
    fn forget_seen_before(&mut self, cutoff: u64) -> Result<(), StoreError>;
    /// Every stored total, sorted by slug.
    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError>;
    /// How many posts have a row.
    fn row_count(&mut self) -> Result<u64, StoreError>;
}

/// Views of a post on a day (`YYYYMMDD`).
#[derive(Debug, Clone, Copy)]
pub struct DayViews<'a> {
    pub slug: &'a str,
    pub day: u32,
    pub views: u64,
}

/// Presence of a post on a day (`YYYYMMDD`) to add: reading times add up, the peak is raised.
#[derive(Debug, Clone, Copy)]
pub struct PresenceDelta<'a> {
    pub slug: &'a str,
    pub day: u32,
    pub presence: DayPresence,
}

/// A reader id counted for a post at a time (unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub slug: &'a str,
    pub reader: &'a str,
    pub at: u64,
}

/// A count as stored, read as at most [`MAX_COUNT`]: a file written before counts were bounded
/// may hold more (adding saturated at `u64::MAX` then).
fn count(stored: u64) -> u64 {
    stored.min(MAX_COUNT)
}

/// Slugs and reader ids never hold a space, so "slug reader" is unambiguous and all ids of a
/// post sort together under the prefix "slug ".
fn seen_key(slug: &str, reader: &str) -> String {
    format!("{slug} {reader}")
}

/// The embedded store: one redb file, one write transaction (one fsync) per batch.
///
/// After a failed operation (disk full, I/O error) redb refuses further use of that handle,
/// so the handle is dropped and the file reopened by the next operation: once the disk
/// works again, writing resumes without a restart.
pub struct RedbStore {
    path: PathBuf,
    /// Shared with the handles [`RedbStore::share`] made: redb serializes their writes.
    db: Option<Arc<Database>>,
    /// A copy in memory (a dry run): never reopened from, nor written to, the file.
    in_memory: bool,
    /// The lock that tells `export` a server holds this file (see [`ServerMark`]).
    _mark: Option<ServerMark>,
}

/// `PATH.server`, locked by the server that writes `PATH` for as long as it runs: `export`
/// reads it to decide between the file and the running server's answer (which includes views
/// not yet written). A lock rather than the file's existence, so a killed server leaves no
/// stale claim; a lock file of our own rather than a probe of redb's locks, whose layout is
/// redb's business.
struct ServerMark {
    /// Locked while open; closing it (or the process dying) releases the lock.
    _file: File,
}

impl ServerMark {
    fn path(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".server");
        PathBuf::from(name)
    }

    /// Taken after the database itself, so only its one writer gets here. Blocks at most for
    /// the instant an export holds it shared to look. Best effort: where the file cannot be
    /// made (a read-only directory), exports read the file instead of asking the server.
    fn take(db: &Path) -> Option<Self> {
        let path = Self::path(db);
        // Held open read-only: a file open for writing would keep its file system from being
        // remounted read-only (flock needs no write access).
        let taken = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|created| {
                drop(created);
                File::open(&path)
            })
            .and_then(|file| file.lock().map(|()| Self { _file: file }));
        match taken {
            Ok(mark) => Some(mark),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot lock the server mark; `export` will read the file while this server runs");
                None
            }
        }
    }

    /// True when a running server holds the mark of `db`.
    fn is_held(db: &Path) -> bool {
        let Ok(file) = File::open(Self::path(db)) else {
            return false;
        };
        matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
    }
}

impl RedbStore {
    /// Opens or creates the file; refuses a file that is not ours or of a newer schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Foreign {
                path: path.display().to_string(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let db = open_checked(path)?;
        Ok(Self {
            path: path.to_owned(),
            db: Some(Arc::new(db)),
            in_memory: false,
            _mark: ServerMark::take(path),
        })
    }

    /// The file's content (or, when there is no file, an empty database) in memory, migrated
    /// like a file on open: for working out what a change would do without touching the file.
    pub fn copy_in_memory(path: &Path) -> Result<Self, StoreError> {
        let db = match Snapshot::read(path) {
            Ok(snapshot) => snapshot.db,
            Err(_) if !path.exists() => Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .map_err(|e| open_error(path, e))?,
            Err(e) => return Err(e),
        };
        check_schema(&db, path)?;
        Ok(Self {
            path: path.to_owned(),
            db: Some(Arc::new(db)),
            in_memory: true,
            _mark: None,
        })
    }

    /// The open handle, reopening the file after a failure.
    fn db(&mut self) -> Result<&Arc<Database>, StoreError> {
        if self.db.is_none() && !self.in_memory {
            self.db = Some(Arc::new(open_checked(&self.path)?));
            tracing::debug!(path = %self.path.display(), "reopened the database");
        }
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Storage("database unavailable".into()))
    }

    /// Runs `op` on the handle; a failure discards the handle so the next call reopens.
    pub(crate) fn with_db<T>(
        &mut self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db: &Database = self.db()?;
        let result = op(db);
        if result.is_err() {
            self.db = None;
        }
        result
    }

    /// A second handle on the same open file, for another thread (cluster mode: the outbox
    /// and the node's record). It does not hold the server mark; after a failure it reopens
    /// the file only once the other handles have let it go.
    pub(crate) fn share(&mut self) -> Result<Self, StoreError> {
        let db = Arc::clone(self.db()?);
        Ok(Self {
            path: self.path.clone(),
            db: Some(db),
            in_memory: self.in_memory,
            _mark: None,
        })
    }

    /// The number kept under `key` in the file's `meta` table, if any.
    pub(crate) fn meta(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let meta = txn.open_table(META).map_err(StoreError::storage)?;
            let value = meta.get(key).map_err(StoreError::storage)?;
            Ok(value.map(|v| v.value()))
        })
    }

    /// Refuses a file `viewcounter retire` handed to another node.
    pub fn refuse_retired(&mut self) -> Result<(), StoreError> {
        match self.meta(RETIRED)? {
            Some(_) => Err(StoreError::Retired {
                path: self.path.display().to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the file retired (`at`: unix seconds): `serve` refuses it from now on.
    pub(crate) fn mark_retired(&mut self, at: u64) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            {
                let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
                meta.insert(RETIRED, at).map_err(StoreError::storage)?;
            }
            txn.commit().map_err(StoreError::storage)
        })
    }

    /// The number kept under `key` in the file's `meta` table, made by `make` and kept the
    /// first time it is asked for (one write transaction: two askers get the same).
    pub(crate) fn meta_or_insert(
        &mut self,
        key: &str,
        make: impl FnOnce() -> u64,
    ) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            let value = {
                let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
                let found = meta
                    .get(key)
                    .map_err(StoreError::storage)?
                    .map(|v| v.value());
                match found {
                    Some(value) => value,
                    None => {
                        let value = make();
                        meta.insert(key, value).map_err(StoreError::storage)?;
                        value
                    }
                }
            };
            txn.commit().map_err(StoreError::storage)?;
            Ok(value)
        })
    }
}

fn open_checked(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
        .map_err(|e| open_error(path, e))?;
    check_schema(&db, path)?;
    Ok(db)
}

/// Stamps a new, empty file with the schema version; refuses a file of another program (tables
/// but no version), of another version, or whose tables have other types.
fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let foreign = |reason: String| StoreError::Foreign {
        path: path.display().to_string(),
        reason,
    };
    let txn = db.begin_write().map_err(StoreError::storage)?;
    let empty = txn
        .list_tables()
        .map_err(StoreError::storage)?
        .next()
        .is_none();
    {
        let mut meta = txn.open_table(META).map_err(|e| foreign(e.to_string()))?;
        let found = meta
            .get(SCHEMA_VERSION_KEY)
            .map_err(StoreError::storage)?
            .map(|v| v.value());
        match found {
            Some(SCHEMA_VERSION) => {}
            // Older files move forward: what they hold keeps its meaning.
            Some(old @ OLDEST_READABLE..SCHEMA_VERSION) => {
                tracing::info!(path = %path.display(), from = old, to = SCHEMA_VERSION, "migrating the database");
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                    .map_err(StoreError::storage)?;
            }
            Some(other) => {
                return Err(foreign(format!(
                    "schema version {other}, this build reads {SCHEMA_VERSION}"
                )));
            }
            None if empty => {
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                    .map_err(StoreError::storage)?;
            }
            None => {
                return Err(foreign(
                    "a redb file of another program (no schema version)".into(),
                ));
            }
        }
        txn.open_table(TOTALS).map_err(|e| foreign(e.to_string()))?;
        txn.open_table(SEEN).map_err(|e| foreign(e.to_string()))?;
        txn.open_table(DAYS).map_err(|e| foreign(e.to_string()))?;
        txn.open_table(DAY_PRESENCE)
            .map_err(|e| foreign(e.to_string()))?;
        txn.open_table(SITE_PEAKS)
            .map_err(|e| foreign(e.to_string()))?;
    }
    txn.commit().map_err(StoreError::storage)
}

/// Refuses to read a file whose schema this build does not know.
fn check_schema_read_only(txn: &redb::ReadTransaction, path: &Path) -> Result<(), StoreError> {
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let empty = txn
                .list_tables()
                .map_err(StoreError::storage)?
                .next()
                .is_none();
            return if empty {
                Ok(())
            } else {
                Err(StoreError::Foreign {
                    path: path.display().to_string(),
                    reason: "a redb file of another program (no schema version)".into(),
                })
            };
        }
        Err(e) => {
            return Err(StoreError::Foreign {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    match meta
        .get(SCHEMA_VERSION_KEY)
        .map_err(StoreError::storage)?
        .map(|v| v.value())
    {
        Some(OLDEST_READABLE..=SCHEMA_VERSION) | None => Ok(()),
        Some(other) => Err(StoreError::Foreign {
            path: path.display().to_string(),
            reason: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
        }),
    }
}

impl Store for RedbStore {
    fn load(&mut self, slug: &str) -> Result<Option<u64>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let table = txn.open_table(TOTALS).map_err(StoreError::storage)?;
            let total = table.get(slug).map_err(StoreError::storage)?;
            Ok(total.map(|v| count(v.value())))
        })
    }

    fn add_all(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        seen: &[Seen<'_>],
        presence: &[PresenceDelta<'_>],
        site: &[(u32, Peak)],
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            {
                let mut per_day = txn.open_table(DAY_PRESENCE).map_err(StoreError::storage)?;
                for p in presence {
                    let mut day = per_day
                        .get((p.day, p.slug))
                        .map_err(StoreError::storage)?
                        .and_then(|v| DayPresence::decode(v.value()))
                        .unwrap_or_default();
                    day.merge(&p.presence);
                    per_day
                        .insert((p.day, p.slug), day.encode().as_slice())
                        .map_err(StoreError::storage)?;
                }
                let mut peaks = txn.open_table(SITE_PEAKS).map_err(StoreError::storage)?;
                for &(day, peak) in site {
                    let mut stored = peaks
                        .get(day)
                        .map_err(StoreError::storage)?
                        .map_or(Peak::default(), |v| site_peak(v.value()));
                    stored.raise(peak);
                    peaks
                        .insert(day, (stored.live, stored.at))
                        .map_err(StoreError::storage)?;
                }
                let mut per_day = txn.open_table(DAYS).map_err(StoreError::storage)?;
                for d in days {
                    let old = per_day
                        .get((d.day, d.slug))
                        .map_err(StoreError::storage)?
                        .map_or(0, |v| v.value());
                    per_day
                        .insert((d.day, d.slug), add_counts(old, d.views))
                        .map_err(StoreError::storage)?;
                }
                let mut ids = txn.open_table(SEEN).map_err(StoreError::storage)?;
                for s in seen {
                    ids.insert(seen_key(s.slug, s.reader).as_str(), s.at)
                        .map_err(StoreError::storage)?;
                }
                let mut table = txn.open_table(TOTALS).map_err(StoreError::storage)?;
                for &(slug, delta) in batch {
                    let old = table
                        .get(slug)
                        .map_err(StoreError::storage)?
                        .map_or(0, |v| v.value());
                    table
                        .insert(slug, add_counts(old, delta))
                        .map_err(StoreError::storage)?;
                }
            }
            txn.commit().map_err(StoreError::storage)
        })
    }

    fn seen(&mut self, slug: &str, since: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let ids = match txn.open_table(SEEN) {
                Ok(ids) => ids,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::storage(e)),
            };
            let prefix = seen_key(slug, "");
            let mut found = Vec::new();
            for row in ids.range(prefix.as_str()..).map_err(StoreError::storage)? {
                let (key, at) = row.map_err(StoreError::storage)?;
                let Some(reader) = key.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                if at.value() >= since {
                    found.push((reader.to_owned(), at.value()));
                }
            }
            Ok(found)
        })
    }

    fn forget_seen_before(&mut self, cutoff: u64) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            txn.open_table(SEEN)
                .map_err(StoreError::storage)?
                .retain(|_, at| at >= cutoff)
                .map_err(StoreError::storage)?;
            txn.commit().map_err(StoreError::storage)
        })
    }

    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let table = txn.open_table(TOTALS).map_err(StoreError::storage)?;
            read_all(&table)
        })
    }

    fn days_of(&mut self, slug: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        self.with_db(|db| post_on_days(db, DAYS, slug, days, |v| Some(count(v))))
    }

    fn day(&mut self, day: u32) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_db(|db| posts_on_day(db, DAYS, day, |v| Some(count(v))))
    }

    fn all_days(&mut self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            read_days(&txn)
        })
    }

    fn presence_of(&mut self, slug: &str, days: &[u32]) -> Result<Vec<DayPresence>, StoreError> {
        self.with_db(|db| post_on_days(db, DAY_PRESENCE, slug, days, DayPresence::decode))
    }

    fn day_presence(&mut self, day: u32) -> Result<Vec<(String, DayPresence)>, StoreError> {
        self.with_db(|db| posts_on_day(db, DAY_PRESENCE, day, DayPresence::decode))
    }

    fn site_peaks(&mut self, days: &[u32]) -> Result<Vec<Peak>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let table = txn.open_table(SITE_PEAKS).map_err(StoreError::storage)?;
            days.iter()
                .map(|&day| {
                    let row = table.get(day).map_err(StoreError::storage)?;
                    Ok(row.map_or(Peak::default(), |v| site_peak(v.value())))
                })
                .collect()
        })
    }

    fn all_site_peaks(&mut self) -> Result<Vec<(u32, Peak)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            read_site_peaks(&txn)
        })
    }

    fn all_presence(&mut self) -> Result<Vec<(String, u32, DayPresence)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            read_presence(&txn)
        })
    }

    fn row_count(&mut self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let table = txn.open_table(TOTALS).map_err(StoreError::storage)?;
            table.len().map_err(StoreError::storage)
        })
    }
}

/// One post's rows of a (day, slug) table on each of `days`, in that order, read by `read`
/// (the default for a day without a row, or one `read` refuses).
fn post_on_days<V: redb::Value + 'static, T: Default>(
    db: &Database,
    table: TableDefinition<(u32, &'static str), V>,
    slug: &str,
    days: &[u32],
    read: impl Fn(V::SelfType<'_>) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::storage)?;
    let table = txn.open_table(table).map_err(StoreError::storage)?;
    days.iter()
        .map(|&day| {
            let row = table.get((day, slug)).map_err(StoreError::storage)?;
            Ok(row.and_then(|v| read(v.value())).unwrap_or_default())
        })
        .collect()
}

/// Every post's row of a (day, slug) table on `day`, sorted by slug, read by `read` (rows it
/// refuses are left out).
fn posts_on_day<V: redb::Value + 'static, T>(
    db: &Database,
    table: TableDefinition<(u32, &'static str), V>,
    day: u32,
    read: impl Fn(V::SelfType<'_>) -> Option<T>,
) -> Result<Vec<(String, T)>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::storage)?;
    let table = txn.open_table(table).map_err(StoreError::storage)?;
    let mut rows = Vec::new();
    for row in table
        .range((day, "")..(day + 1, ""))
        .map_err(StoreError::storage)?
    {
        let (key, value) = row.map_err(StoreError::storage)?;
        if let Some(value) = read(value.value()) {
            rows.push((key.value().1.to_owned(), value));
        }
    }
    Ok(rows)
}

/// Reads the totals of a file no server holds, read-only: it is neither created nor changed,
/// and a server may start on it meanwhile. [`StoreError::Locked`] when a server holds it.
pub fn read_totals_offline(path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    read_offline(path)?.totals()
}

/// A copy of a file no server holds ([`StoreError::Locked`] when one does).
pub fn read_offline(path: &Path) -> Result<Snapshot, StoreError> {
    let locked = || StoreError::Locked {
        path: path.display().to_string(),
    };
    if ServerMark::is_held(path) {
        return Err(locked());
    }
    let snapshot = Snapshot::read(path)?;
    // A server that started while the file was read has views the file lacks: ask it.
    if ServerMark::is_held(path) {
        return Err(locked());
    }
    Ok(snapshot)
}

/// True when a running server holds the file at `path`.
pub fn is_served(path: &Path) -> bool {
    ServerMark::is_held(path)
}

/// A copy of a database file, opened in memory: what `export` reads. Opening the file itself
/// would take redb's lock on it (read-only handles too, in redb's default mode) and make a
/// server starting meanwhile fail; a copy takes no lock, and a file left by a killed server is
/// repaired (and checked) in the copy, the file untouched.
pub struct Snapshot {
    path: PathBuf,
    db: Database,
}

impl Snapshot {
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StoreError::Storage(format!("no database at {}", path.display()))
            }
            _ => StoreError::Storage(format!("{}: {e}", path.display())),
        })?;
        if bytes.is_empty() {
            return Err(StoreError::Foreign {
                path: path.display().to_string(),
                reason: "the file is empty".into(),
            });
        }
        let copy = InMemoryBackend::new();
        copy.set_len(bytes.len() as u64)
            .and_then(|()| copy.write(0, &bytes))
            .map_err(|e| StoreError::Storage(format!("cannot copy {}: {e}", path.display())))?;
        drop(bytes);
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(DB_CACHE_BYTES)
            .create_with_backend(copy)
            .map_err(|e| open_error(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            db,
        })
    }

    pub fn totals(&self) -> Result<Vec<(String, u64)>, StoreError> {
        read_totals(&self.db, &self.path)
    }

    /// Every (slug, day, presence), sorted by slug then day.
    pub fn presence(&self) -> Result<Vec<(String, u32, DayPresence)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::storage)?;
        check_schema_read_only(&txn, &self.path)?;
        read_presence(&txn)
    }

    /// Every (slug, day, views), sorted by slug then day.
    pub fn days(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::storage)?;
        check_schema_read_only(&txn, &self.path)?;
        read_days(&txn)
    }

    /// Every day's site peak (day, peak), by day.
    pub fn site_peaks(&self) -> Result<Vec<(u32, Peak)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::storage)?;
        check_schema_read_only(&txn, &self.path)?;
        read_site_peaks(&txn)
    }
}

/// A row of `site_peaks` as a [`Peak`].
fn site_peak((live, at): (u64, u64)) -> Peak {
    Peak { live, at }
}

fn read_site_peaks(txn: &redb::ReadTransaction) -> Result<Vec<(u32, Peak)>, StoreError> {
    // A file of version 2 or older read by `export` has no site peaks.
    let Some(table) = table_if_any(txn, SITE_PEAKS)? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for row in table.iter().map_err(StoreError::storage)? {
        let (day, peak) = row.map_err(StoreError::storage)?;
        rows.push((day.value(), site_peak(peak.value())));
    }
    Ok(rows)
}

fn read_days(txn: &redb::ReadTransaction) -> Result<Vec<(String, u32, u64)>, StoreError> {
    // A version-1 file read by `export` has no days (never migrated: exports do not write).
    every_day(txn, DAYS, |v| Some(count(v)))
}

fn read_presence(
    txn: &redb::ReadTransaction,
) -> Result<Vec<(String, u32, DayPresence)>, StoreError> {
    // A file of version 2 or older read by `export` has no presence.
    every_day(txn, DAY_PRESENCE, DayPresence::decode)
}

/// A table of a file read by `export`, `None` when the file has none yet (written before it).
fn table_if_any<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::storage(e)),
    }
}

/// Every (slug, day, row) of a (day, slug) table, sorted by slug then day, read by `read`
/// (rows it refuses are left out); none when the file has no such table yet.
fn every_day<V: redb::Value + 'static, T>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<(u32, &'static str), V>,
    read: impl Fn(V::SelfType<'_>) -> Option<T>,
) -> Result<Vec<(String, u32, T)>, StoreError> {
    let Some(table) = table_if_any(txn, table)? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for row in table.iter().map_err(StoreError::storage)? {
        let (key, value) = row.map_err(StoreError::storage)?;
        let (day, slug) = key.value();
        if let Some(value) = read(value.value()) {
            rows.push((slug.to_owned(), day, value));
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(rows)
}

fn read_totals(db: &impl ReadableDatabase, path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::storage)?;
    check_schema_read_only(&txn, path)?;
    match txn.open_table(TOTALS) {
        Ok(table) => read_all(&table),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(StoreError::storage(e)),
    }
}

fn read_all(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut rows = Vec::new();
    for row in table.iter().map_err(StoreError::storage)? {
        let (slug, total) = row.map_err(StoreError::storage)?;
        rows.push((slug.value().to_owned(), count(total.value())));
    }
    Ok(rows)
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.display().to_string();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::NotFound =>
        {
            StoreError::Storage(format!("no database at {path}"))
        }
        // The disk, not the file: read-only, full, failing. (redb reports a file that is not
        // a database as invalid data.)
        DatabaseError::Storage(redb::StorageError::Io(io))
            if !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Storage(format!("{path}: {io}"))
        }
        other => StoreError::Foreign {
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_add_up_across_batches_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            store.add(&[("b", 2), ("a", 1)], &[], &[]).unwrap();
            store.add(&[("a", 3)], &[], &[]).unwrap();
            assert_eq!(store.load("a").unwrap(), Some(4));
            assert_eq!(store.load("zzz").unwrap(), None);
            assert_eq!(store.row_count().unwrap(), 2);
        }
        let rows = read_totals_offline(&path).unwrap();
        assert_eq!(rows, vec![("a".to_owned(), 4), ("b".to_owned(), 2)]);
    }

    #[test]
    fn counts_stop_at_the_largest_and_one_stored_above_it_reads_as_the_largest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("max.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            let day = |views| DayViews {
                slug: "a",
                day: 20261201,
                views,
            };
            store
                .add(&[("a", MAX_COUNT - 1)], &[day(MAX_COUNT - 1)], &[])
                .unwrap();
            store.add(&[("a", 5)], &[day(5)], &[]).unwrap();
            assert_eq!(store.load("a").unwrap(), Some(MAX_COUNT));
            assert_eq!(store.days_of("a", &[20261201]).unwrap(), [MAX_COUNT]);
        }
        // What adding left before counts were bounded: it saturated at u64::MAX.
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TOTALS)
                .unwrap()
                .insert("b", u64::MAX)
                .unwrap();
            txn.commit().unwrap();
        }
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.load("b").unwrap(), Some(MAX_COUNT));
        let want = [("a".to_owned(), MAX_COUNT), ("b".to_owned(), MAX_COUNT)];
        assert_eq!(store.totals().unwrap(), want);
        drop(store);
        assert_eq!(read_totals_offline(&path).unwrap(), want);
    }

    #[test]
    fn counted_reader_ids_are_found_per_post_and_forgotten_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(&dir.path().join("seen.redb")).unwrap();
        let seen = [
            Seen {
                slug: "a",
                reader: "reader-one-000000",
                at: 100,
            },
            Seen {
                slug: "a",
                reader: "reader-two-000000",
                at: 200,
            },
            Seen {
                slug: "a/b",
                reader: "reader-three-0000",
                at: 200,
            },
            Seen {
                slug: "ab",
                reader: "reader-four-00000",
                at: 200,
            },
        ];
        store
            .add(&[("a", 2), ("a/b", 1), ("ab", 1)], &[], &seen)
            .unwrap();
        assert_eq!(
            store.seen("a", 0).unwrap(),
            vec![
                ("reader-one-000000".to_owned(), 100),
                ("reader-two-000000".to_owned(), 200)
            ]
        );
        assert_eq!(store.seen("a", 150).unwrap().len(), 1);
        store.forget_seen_before(150).unwrap();
        assert_eq!(
            store.seen("a", 0).unwrap(),
            vec![("reader-two-000000".to_owned(), 200)]
        );
        assert_eq!(store.seen("ab", 0).unwrap().len(), 1);
    }

    #[test]
    fn views_per_day_add_up_and_read_back_per_post_and_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(&dir.path().join("days.redb")).unwrap();
        let views = |slug, day, views| DayViews { slug, day, views };
        store
            .add(
                &[("a", 3), ("b", 1)],
                &[
                    views("a", 20261130, 1),
                    views("a", 20261201, 2),
                    views("b", 20261201, 1),
                ],
                &[],
            )
            .unwrap();
        store
            .add(&[("a", 1)], &[views("a", 20261201, 1)], &[])
            .unwrap();
        assert_eq!(
            store.days_of("a", &[20261129, 20261130, 20261201]).unwrap(),
            [0, 1, 3]
        );
        assert_eq!(
            store.day(20261201).unwrap(),
            [("a".to_owned(), 3), ("b".to_owned(), 1)]
        );
        assert_eq!(store.all_days().unwrap().len(), 3);
    }

    #[test]
    fn a_file_written_by_the_first_release_opens_keeps_its_totals_and_gains_days() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.redb");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v1.redb");
        std::fs::copy(fixture, &path).unwrap();
        let expected = vec![
            ("2024/05/my_post.html".to_owned(), 1),
            ("alpha".to_owned(), 3),
            ("beta".to_owned(), 1),
        ];
        assert_eq!(
            read_totals_offline(&path).unwrap(),
            expected,
            "readable before migration"
        );
        {
            let mut store = RedbStore::open(&path).unwrap();
            assert_eq!(store.totals().unwrap(), expected);
            assert_eq!(store.all_days().unwrap(), []);
            store
                .add(
                    &[("alpha", 1)],
                    &[DayViews {
                        slug: "alpha",
                        day: 20261201,
                        views: 1,
                    }],
                    &[],
                )
                .unwrap();
        }
        let db = Database::open(&path).unwrap();
        assert_eq!(schema_version(&db), Some(SCHEMA_VERSION));
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(TOTALS)
                .unwrap()
                .get("alpha")
                .unwrap()
                .map(|v| v.value()),
            Some(4)
        );
    }

    #[test]
    fn a_file_written_by_the_second_release_opens_keeps_its_totals_and_days_and_gains_presence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.redb");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v2.redb");
        std::fs::copy(fixture, &path).unwrap();
        let totals = vec![("alpha".to_owned(), 3), ("beta".to_owned(), 4)];
        let days = vec![
            ("alpha".to_owned(), 20261201, 2),
            ("alpha".to_owned(), 20261202, 1),
            ("beta".to_owned(), 20261202, 4),
        ];
        let snapshot = Snapshot::read(&path).unwrap();
        assert_eq!(
            snapshot.totals().unwrap(),
            totals,
            "readable before migration"
        );
        assert_eq!(snapshot.presence().unwrap(), [], "no presence kept then");
        drop(snapshot);
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.totals().unwrap(), totals);
        assert_eq!(store.all_days().unwrap(), days);
        assert_eq!(store.all_presence().unwrap(), []);
        let mut presence = DayPresence::default();
        presence.reads.add(std::time::Duration::from_secs(42));
        presence.peak = Peak {
            live: 2,
            at: 1_800_000_000,
        };
        store
            .add_all(
                &[("alpha", 1)],
                &[DayViews {
                    slug: "alpha",
                    day: 20261202,
                    views: 1,
                }],
                &[],
                &[PresenceDelta {
                    slug: "alpha",
                    day: 20261202,
                    presence,
                }],
                &[(20261202, presence.peak)],
            )
            .unwrap();
        assert_eq!(
            store.presence_of("alpha", &[20261201, 20261202]).unwrap(),
            [DayPresence::default(), presence]
        );
        assert_eq!(store.site_peaks(&[20261202]).unwrap(), [presence.peak]);
        drop(store);
        assert_eq!(schema_version(&Database::open(&path).unwrap()), Some(3));
    }

    /// The version a file says it has.
    fn schema_version(db: &Database) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(SCHEMA_VERSION_KEY).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_foreign_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign.redb");
        std::fs::write(
            &path,
            b"this is not a redb file, just some text".repeat(200),
        )
        .unwrap();
        let err = RedbStore::open(&path).err().expect("must refuse");
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }

    #[test]
    fn a_held_file_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.redb");
        let server = RedbStore::open(&path).unwrap();
        let err = read_totals_offline(&path).expect_err("must refuse");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(server);
        assert_eq!(read_totals_offline(&path).unwrap(), vec![]);
    }

    #[test]
    fn a_server_starts_while_an_export_has_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.redb");
        RedbStore::open(&path)
            .unwrap()
            .add(&[("a", 2)], &[], &[])
            .unwrap();
        let export = Snapshot::read(&path).unwrap();
        let mut server = RedbStore::open(&path).expect("the server starts beside the export");
        server.add(&[("a", 1)], &[], &[]).unwrap();
        assert_eq!(export.totals().unwrap(), vec![("a".to_owned(), 2)]);
        drop(export);
        drop(server);
        let mut again = RedbStore::open(&path).unwrap();
        assert_eq!(again.load("a").unwrap(), Some(3));
        assert!(
            matches!(RedbStore::open(&path), Err(StoreError::Locked { .. })),
            "a second server is still refused"
        );
    }
}
