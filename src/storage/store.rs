//! Where all-time totals live. The writer talks to a [`Store`] in deltas ("alpha +17") so that
//! a shared engine that adds atomically (Redis `INCRBY`, SQL `total = total + $1`) can replace
//! the embedded redb file without touching the rest.

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::backends::InMemoryBackend;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition, TableHandle,
};

use crate::edge::reader_id::{self, HashKey, ReaderId, ReaderKey};
use crate::storage::presence::{DayPresence, Peak};
use crate::storage::{MAX_COUNT, add_counts};

/// Views per post: slug → all-time total.
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
/// Reader ids counted within the dedupe window, compact: (slug, slice start in unix seconds,
/// part) → the views counted in that slice, each a [`Counted`] (10 bytes), packed, in parts of
/// at most [`PART_BYTES`]. Written in the same transaction as the totals, so a restart (or a
/// crash) never counts an open tab's reconnect twice, and a view lost in a crash takes its id
/// with it; a row goes whole once its newest view is out of the window.
const SEEN: TableDefinition<(&str, u64, u32), &[u8]> = TableDefinition::new("seen_slices");
/// Schema 3 and older: "slug reader-id" → unix seconds, one row (~280 B) per view. Moved into
/// [`SEEN`] on open.
const SEEN_V3: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// A part of a [`SEEN`] row holds at most this many bytes: a flush rewrites at most one part
/// per post and slice (the one it appends to), and a full part fits one 4 KiB page of redb's
/// with its key (a slug of up to ~80 bytes; a longer one takes a larger page).
const PART_BYTES: usize = 400 * Counted::BYTES;
/// Slices of views moved from [`SEEN_V3`] are this long (the file does not know the window).
const MIGRATED_SLICE_SECS: u64 = 60;
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
/// `meta`: the two halves of the key the reader ids in [`SEEN`] are hashed with
/// ([`reader_id::HashKey`]).
const READER_KEY: [&str; 2] = ["reader_key_0", "reader_key_1"];
/// 2 added `days`; a version-1 file gains the table (empty: those views have no days) on open.
/// 3 added `day_presence` and `site_peaks`; older files gain them empty (no reading times or
/// peaks were kept then), their totals and days untouched.
/// 4 keeps counted reader ids as 64-bit keyed hashes packed per post and time slice
/// (`seen_slices`, and the key in `meta`); the rows of `seen` move there on open.
pub const SCHEMA_VERSION: u64 = 4;
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
    /// Cluster mode: Redis lost the data this read needs (its key group has no generation),
    /// which the nodes are rebuilding from their records: read again once they have.
    #[error("Redis lost {0}; the nodes are rebuilding it from their records")]
    Lost(String),
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
    /// The presence of each (post, day `YYYYMMDD`) of `rows`, in that order; empty for a row
    /// without. One read for them all: cluster mode's Redis answers them in one round trip.
    fn presence_of(&mut self, rows: &[(&str, u32)]) -> Result<Vec<DayPresence>, StoreError> {
        Ok(vec![DayPresence::default(); rows.len()])
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
    /// The reader ids (as keys) of one post counted at or after `since`, with when (unix
    /// seconds).
    fn seen(&mut self, slug: &str, since: u64) -> Result<Vec<(ReaderKey, u64)>, StoreError>;
    /// Forgets reader ids counted before `cutoff` (unix seconds).
    fn forget_seen_before(&mut self, cutoff: u64) -> Result<(), StoreError>;
    /// Every stored total, sorted by slug.
    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError>;
    /// How many posts have a row.
    fn row_count(&mut self) -> Result<u64, StoreError>;
}

/// Views to add, as [`RedbStore::add_after`] takes them: totals by slug, and (slug, day
/// `YYYYMMDD`, views).
pub(crate) type AddedViews = (Vec<(String, u64)>, Vec<(String, u32, u64)>);

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

/// Views of one post counted within one time slice, to remember.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub slug: &'a str,
    /// When the slice starts, unix seconds; each view is at most [`SLICE_MAX_SECS`] after.
    pub start: u64,
    pub readers: &'a [Counted],
}

/// The longest a slice of [`Seen`] may be: a view keeps its time as seconds after its slice's
/// start in 16 bits.
pub const SLICE_MAX_SECS: u64 = u16::MAX as u64;

/// One counted view as the file keeps it: its reader id's [`ReaderKey`] (8 bytes) and its time
/// in seconds after its slice's start (2 bytes), little-endian. Bytes, so a list of them is
/// 10 bytes a view in the writer's memory too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Counted([u8; Counted::BYTES]);

impl Counted {
    const BYTES: usize = 10;

    /// `after`: seconds after the slice's start, at most [`SLICE_MAX_SECS`].
    pub fn new(reader: ReaderKey, after: u16) -> Self {
        let mut bytes = [0u8; Self::BYTES];
        bytes[..8].copy_from_slice(&reader.bits().to_le_bytes());
        bytes[8..].copy_from_slice(&after.to_le_bytes());
        Self(bytes)
    }

    pub fn reader(&self) -> ReaderKey {
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&self.0[..8]);
        ReaderKey::from_bits(u64::from_le_bytes(bits))
    }

    pub fn after(&self) -> u16 {
        u16::from_le_bytes([self.0[8], self.0[9]])
    }

    /// The views packed in a row; a torn tail (never written so) is left out.
    fn all_in(row: &[u8]) -> impl Iterator<Item = Self> + '_ {
        row.chunks_exact(Self::BYTES).map(|c| {
            let mut bytes = [0u8; Self::BYTES];
            bytes.copy_from_slice(c);
            Self(bytes)
        })
    }
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({:?}, +{}s)", self.reader(), self.after())
    }
}

/// When the newest view of a [`SEEN`] row was counted (unix seconds).
fn newest_in(start: u64, row: &[u8]) -> u64 {
    start
        + Counted::all_in(row)
            .map(|c| u64::from(c.after()))
            .max()
            .unwrap_or(0)
}

/// A count as stored, read as at most [`MAX_COUNT`]: a file written before counts were bounded
/// may hold more (adding saturated at `u64::MAX` then).
fn count(stored: u64) -> u64 {
    stored.min(MAX_COUNT)
}

/// Adds `readers` to the row of (`slug`, `start`): into its last part while it has room, then
/// into new parts.
fn remember(
    table: &mut redb::Table<(&str, u64, u32), &[u8]>,
    slug: &str,
    start: u64,
    mut readers: &[Counted],
) -> Result<(), StoreError> {
    let last = table
        .range((slug, start, 0)..=(slug, start, u32::MAX))
        .map_err(StoreError::storage)?
        .next_back()
        .transpose()
        .map_err(StoreError::storage)?
        .map(|(key, row)| (key.value().2, row.value().to_vec()));
    let (mut part, mut row) = match last {
        Some((part, row)) if row.len() + Counted::BYTES <= PART_BYTES => (part, row),
        Some((part, _)) => (part.saturating_add(1), Vec::new()),
        None => (0, Vec::new()),
    };
    while !readers.is_empty() {
        let room = (PART_BYTES - row.len()) / Counted::BYTES;
        let (now, later) = readers.split_at(room.min(readers.len()));
        row.extend(now.iter().flat_map(|c| c.0));
        table
            .insert((slug, start, part), row.as_slice())
            .map_err(StoreError::storage)?;
        readers = later;
        part = part.saturating_add(1);
        row.clear();
    }
    Ok(())
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
    file: File,
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
            .and_then(|file| file.lock().map(|()| Self { file }));
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

/// Unlocked before it closes: a `flock` lasts while any copy of its descriptor is open, and a
/// child process being spawned holds a copy of every descriptor from its fork until its exec
/// closes the `O_CLOEXEC` ones. Closing alone left the mark held for that moment (an export
/// right after a stop found the file "held" while a test beside it started a process); an
/// unlock releases it through every copy.
impl Drop for ServerMark {
    fn drop(&mut self) {
        let _ = self.file.unlock();
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

    /// Runs `first` in a write transaction, then adds the views it returns (totals by slug,
    /// and (slug, day `YYYYMMDD`, views)) in the same one, and commits: the file holds both
    /// or neither, whatever a crash cuts short (cluster mode: an outbox row goes exactly when
    /// the record takes its view).
    pub(crate) fn add_after(
        &mut self,
        first: impl FnOnce(&redb::WriteTransaction) -> Result<AddedViews, StoreError>,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            let (totals, days) = first(&txn)?;
            let batch: Vec<(&str, u64)> = totals.iter().map(|(s, v)| (s.as_str(), *v)).collect();
            let days: Vec<DayViews<'_>> = (days.iter())
                .map(|(slug, day, views)| DayViews {
                    slug,
                    day: *day,
                    views: *views,
                })
                .collect();
            add_in(&txn, &batch, &days, &[], &[], &[])?;
            txn.commit().map_err(StoreError::storage)
        })
    }

    /// Adds what a retired record held (as [`Store::add_all`], no reader ids) and puts `key`
    /// (unix seconds `at`) in the `meta` table, in one transaction: the file holds the counts
    /// exactly when it holds the mark, whatever a crash cuts short.
    pub(crate) fn add_marked(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        presence: &[PresenceDelta<'_>],
        site: &[(u32, Peak)],
        key: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            add_in(&txn, batch, days, &[], presence, site)?;
            {
                let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
                meta.insert(key, at).map_err(StoreError::storage)?;
            }
            txn.commit().map_err(StoreError::storage)
        })
    }

    /// Takes `key` out of the `meta` table: what a crash before it was written leaves.
    #[cfg(test)]
    pub(crate) fn forget_meta(&mut self, key: &str) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(StoreError::storage)?;
            {
                let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
                meta.remove(key).map_err(StoreError::storage)?;
            }
            txn.commit().map_err(StoreError::storage)
        })
    }

    /// The `meta` keys that start with `prefix`, without it.
    pub(crate) fn meta_keys(&mut self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let meta = txn.open_table(META).map_err(StoreError::storage)?;
            let mut keys = Vec::new();
            for row in meta.range(prefix..).map_err(StoreError::storage)? {
                let (key, _) = row.map_err(StoreError::storage)?;
                match key.value().strip_prefix(prefix) {
                    Some(rest) => keys.push(rest.to_owned()),
                    None => break,
                }
            }
            Ok(keys)
        })
    }
}

/// [`Store::add_all`]'s writes, in `txn`.
fn add_in(
    txn: &redb::WriteTransaction,
    batch: &[(&str, u64)],
    days: &[DayViews<'_>],
    seen: &[Seen<'_>],
    presence: &[PresenceDelta<'_>],
    site: &[(u32, Peak)],
) -> Result<(), StoreError> {
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
        remember(&mut ids, s.slug, s.start, s.readers)?;
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
    Ok(())
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
        if !share_reader_key(&mut meta)? {
            tracing::warn!(path = %path.display(), "this file's reader ids were hashed with another key than this process's (a second database opened in one process): its dedupe memory is forgotten");
            txn.delete_table(SEEN).map_err(StoreError::storage)?;
        }
        migrate_seen_v3(&txn)?;
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

/// Makes the file's reader-id hash key the process's; a file without one (new, or of schema 3
/// or older) is given the process's. False when the process already hashes with another key
/// than the file's: the file's remembered views then match no reader id.
fn share_reader_key(meta: &mut redb::Table<&str, u64>) -> Result<bool, StoreError> {
    let half = |name| {
        meta.get(name)
            .map(|v| v.map(|v| v.value()))
            .map_err(StoreError::storage)
    };
    let file = match (half(READER_KEY[0])?, half(READER_KEY[1])?) {
        (Some(a), Some(b)) => Some(HashKey([a, b])),
        _ => None,
    };
    let in_use = match file {
        Some(key) => reader_id::adopt_hash_key(key),
        None => reader_id::hash_key(),
    };
    if file != Some(in_use) {
        for (name, half) in READER_KEY.into_iter().zip(in_use.0) {
            meta.insert(name, half).map_err(StoreError::storage)?;
        }
    }
    Ok(file.is_none_or(|key| key == in_use))
}

/// Moves the reader ids of a schema-3 file (a row each) into [`SEEN`], hashed with the key
/// just given to the file, and drops the old table.
fn migrate_seen_v3(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let old = txn
        .list_tables()
        .map_err(StoreError::storage)?
        .any(|table| table.name() == SEEN_V3.name());
    if !old {
        return Ok(());
    }
    let mut slices: BTreeMap<(String, u64), Vec<Counted>> = BTreeMap::new();
    {
        let table = txn.open_table(SEEN_V3).map_err(StoreError::storage)?;
        for row in table.iter().map_err(StoreError::storage)? {
            let (key, at) = row.map_err(StoreError::storage)?;
            // Slugs and reader ids hold no space: the key was "slug reader-id".
            let Some((slug, reader)) = key.value().rsplit_once(' ') else {
                continue;
            };
            let Ok(reader) = ReaderId::parse(reader) else {
                continue;
            };
            let at = at.value();
            let start = at - at % MIGRATED_SLICE_SECS;
            // Below MIGRATED_SLICE_SECS, so within u16.
            let after = (at - start) as u16;
            slices
                .entry((slug.to_owned(), start))
                .or_default()
                .push(Counted::new(reader.key(), after));
        }
    }
    txn.delete_table(SEEN_V3).map_err(StoreError::storage)?;
    let mut table = txn.open_table(SEEN).map_err(StoreError::storage)?;
    for ((slug, start), readers) in &slices {
        remember(&mut table, slug, *start, readers)?;
    }
    Ok(())
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
            add_in(&txn, batch, days, seen, presence, site)?;
            txn.commit().map_err(StoreError::storage)
        })
    }

    fn seen(&mut self, slug: &str, since: u64) -> Result<Vec<(ReaderKey, u64)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(StoreError::storage)?;
            let ids = match txn.open_table(SEEN) {
                Ok(ids) => ids,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::storage(e)),
            };
            let mut found = Vec::new();
            let rows = ids
                .range((slug, 0, 0)..=(slug, u64::MAX, u32::MAX))
                .map_err(StoreError::storage)?;
            for row in rows {
                let (key, row) = row.map_err(StoreError::storage)?;
                let (_, start, _) = key.value();
                if start.saturating_add(SLICE_MAX_SECS) < since {
                    continue;
                }
                for counted in Counted::all_in(row.value()) {
                    let at = start + u64::from(counted.after());
                    if at >= since {
                        found.push((counted.reader(), at));
                    }
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
                .retain(|(_, start, _), row| newest_in(start, row) >= cutoff)
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
        let rows: Vec<(u32, &str)> = days.iter().map(|&day| (day, slug)).collect();
        self.with_db(|db| rows_of(db, DAYS, &rows, |v| Some(count(v))))
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

    fn presence_of(&mut self, rows: &[(&str, u32)]) -> Result<Vec<DayPresence>, StoreError> {
        let rows: Vec<(u32, &str)> = rows.iter().map(|&(slug, day)| (day, slug)).collect();
        self.with_db(|db| rows_of(db, DAY_PRESENCE, &rows, DayPresence::decode))
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

/// The rows of a (day, slug) table at each of `rows`, in that order, read by `read` (the
/// default for a key without a row, or one `read` refuses).
fn rows_of<V: redb::Value + 'static, T: Default>(
    db: &Database,
    table: TableDefinition<(u32, &'static str), V>,
    rows: &[(u32, &str)],
    read: impl Fn(V::SelfType<'_>) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::storage)?;
    let table = txn.open_table(table).map_err(StoreError::storage)?;
    rows.iter()
        .map(|&row| {
            let row = table.get(row).map_err(StoreError::storage)?;
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

    /// The server's mark is free once its store closes, even while a child process the server
    /// (or anything in it) is starting holds a copy of the mark's descriptor.
    #[test]
    fn a_closed_store_frees_its_mark_though_a_child_being_spawned_holds_a_copy() {
        use std::io::{Read, Write};
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marked.redb");
        let store = RedbStore::open(&path).unwrap();
        let (mut forked, mut tell) = std::io::pipe().unwrap();
        let spawning = std::thread::spawn(move || {
            let mut command = std::process::Command::new("true");
            // SAFETY: the closure writes one byte to a pipe and sleeps, both async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    tell.write_all(b"x")?;
                    libc::usleep(500_000);
                    Ok(())
                });
            }
            command.status()
        });
        // The child is between its fork and its exec, with a copy of every descriptor.
        let mut byte = [0u8];
        forked.read_exact(&mut byte).unwrap();
        drop(store);
        let read = read_totals_offline(&path);
        assert!(spawning.join().unwrap().unwrap().success());
        assert!(read.is_ok(), "{read:?}");
    }

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

    fn key(id: &str) -> ReaderKey {
        ReaderId::parse(id).unwrap().key()
    }

    /// Views counted `after` seconds after a slice's start.
    fn counted(views: &[(&str, u16)]) -> Vec<Counted> {
        views
            .iter()
            .map(|&(id, after)| Counted::new(key(id), after))
            .collect()
    }

    #[test]
    fn counted_reader_ids_are_found_per_post_and_forgotten_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(&dir.path().join("seen.redb")).unwrap();
        let a_early = counted(&[("reader-one-000000", 0)]);
        let a_late = counted(&[("reader-two-000000", 100)]);
        let others = counted(&[("reader-three-0000", 100)]);
        let seen = |slug, start, readers| Seen {
            slug,
            start,
            readers,
        };
        store
            .add(
                &[("a", 2), ("a/b", 1), ("ab", 1)],
                &[],
                &[
                    seen("a", 100, &a_early),
                    seen("a", 100, &a_late),
                    seen("a/b", 100, &others),
                    seen("ab", 100, &others),
                ],
            )
            .unwrap();
        assert_eq!(
            store.seen("a", 0).unwrap(),
            vec![
                (key("reader-one-000000"), 100),
                (key("reader-two-000000"), 200)
            ]
        );
        assert_eq!(store.seen("a", 150).unwrap().len(), 1);
        // A row goes once its newest view is out of the window.
        store.forget_seen_before(200).unwrap();
        assert_eq!(store.seen("a", 0).unwrap().len(), 2);
        store.forget_seen_before(201).unwrap();
        assert_eq!(store.seen("a", 0).unwrap(), []);
        assert_eq!(store.seen("ab", 0).unwrap(), []);
        // Other slices are untouched.
        store.add(&[], &[], &[seen("ab", 300, &others)]).unwrap();
        store.forget_seen_before(201).unwrap();
        assert_eq!(
            store.seen("ab", 0).unwrap(),
            vec![(key("reader-three-0000"), 400)]
        );
    }

    #[test]
    fn a_slice_of_many_views_is_kept_in_parts_of_bounded_size_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parts.redb");
        let mut store = RedbStore::open(&path).unwrap();
        let views = |from: u64, n: u64| -> Vec<Counted> {
            (from..from + n)
                .map(|i| Counted::new(ReaderKey::from_bits(i), (i % 60) as u16))
                .collect()
        };
        // Flushes of several sizes into one slice: the last part fills up before a new one.
        let mut all = Vec::new();
        for (from, n) in [(0, 3), (3, 1000), (1003, 7), (1010, 400)] {
            let batch = views(from, n);
            store
                .add(
                    &[],
                    &[],
                    &[Seen {
                        slug: "hot",
                        start: 1_800_000_000,
                        readers: &batch,
                    }],
                )
                .unwrap();
            all.extend(batch);
        }
        let want: Vec<(ReaderKey, u64)> = all
            .iter()
            .map(|c| (c.reader(), 1_800_000_000 + u64::from(c.after())))
            .collect();
        assert_eq!(store.seen("hot", 0).unwrap(), want);
        drop(store);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let rows: Vec<usize> = txn
            .open_table(SEEN)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| row.unwrap().1.value().len())
            .collect();
        assert_eq!(rows.len(), 1410_usize.div_ceil(400), "{rows:?}");
        assert!(rows.iter().all(|&len| len <= PART_BYTES), "{rows:?}");
    }

    #[test]
    fn a_file_hashed_with_another_key_than_the_processs_forgets_its_ids_rather_than_misread_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.redb");
        let readers = counted(&[("reader-one-000000", 0)]);
        let mut store = RedbStore::open(&path).unwrap();
        let seen = Seen {
            slug: "a",
            start: 100,
            readers: &readers,
        };
        store.add(&[("a", 1)], &[], &[seen]).unwrap();
        drop(store);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let other = reader_id::hash_key().0[0].wrapping_add(1);
        txn.open_table(META)
            .unwrap()
            .insert(READER_KEY[0], other)
            .unwrap();
        txn.commit().unwrap();
        drop(db);

        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.seen("a", 0).unwrap(), []);
        assert_eq!(store.load("a").unwrap(), Some(1), "the rest is kept");
        assert_eq!(
            store.meta(READER_KEY[0]).unwrap(),
            Some(reader_id::hash_key().0[0]),
            "the file now holds the key its new rows are hashed with"
        );
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
        let path = fixture_copy(&dir, "schema-v1.redb");
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
        let path = fixture_copy(&dir, "schema-v2.redb");
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
            store
                .presence_of(&[("alpha", 20261201), ("alpha", 20261202)])
                .unwrap(),
            [DayPresence::default(), presence]
        );
        assert_eq!(store.site_peaks(&[20261202]).unwrap(), [presence.peak]);
        drop(store);
        assert_eq!(
            schema_version(&Database::open(&path).unwrap()),
            Some(SCHEMA_VERSION)
        );
    }

    #[test]
    fn a_file_written_by_the_third_release_keeps_its_counted_reader_ids_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture_copy(&dir, "schema-v3.redb");
        let totals = vec![
            ("2024/05/my_post.html".to_owned(), 1),
            ("alpha".to_owned(), 2),
        ];
        assert_eq!(
            Snapshot::read(&path).unwrap().totals().unwrap(),
            totals,
            "readable before migration"
        );
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.totals().unwrap(), totals);
        assert_eq!(
            store.seen("alpha", 0).unwrap(),
            [
                (key("reader-one-000000"), 1_800_000_000),
                (key("reader-two-000000"), 1_800_000_100)
            ]
        );
        assert_eq!(
            store.seen("2024/05/my_post.html", 1_800_000_050).unwrap(),
            [(key("reader-one-000000"), 1_800_000_050)]
        );
        assert_eq!(
            store.seen("2024/05/my_post.html", 1_800_000_051).unwrap(),
            []
        );
        drop(store);
        let db = Database::open(&path).unwrap();
        assert_eq!(schema_version(&db), Some(SCHEMA_VERSION));
        let txn = db.begin_read().unwrap();
        assert!(
            txn.list_tables()
                .unwrap()
                .all(|t| t.name() != SEEN_V3.name()),
            "the row per id is gone"
        );
        drop(txn);
        drop(db);
        // Opened again (the migration done), the same: the key came with the file.
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.seen("alpha", 0).unwrap().len(), 2);
    }

    /// A copy in `dir` of the file `name` of `tests/fixtures/` (written by an earlier release).
    fn fixture_copy(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let path = dir.path().join(name);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::copy(fixture, &path).unwrap();
        path
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
