//! The node's record: what this node counted, per post and per day, in its `--db` file (the
//! tables `totals` and `days`, written by the same debounced [`Writer`] as a single node).
//! The record is the durable copy; Redis's sums are a cache the nodes rebuild from their
//! records when Redis loses data.
//!
//! In Redis each record has its part, `vc:part:{id}`: per post (`slug`) and per day
//! (`YYYYMMDD slug`) the views this record added to the sums, `#n` all of them (a constant-size
//! loss check) and `#gen` the generation (`vc:gen`) it was built in. The count script moves the
//! sums and the part together, and refuses while the part is not of the current generation.
//!
//! A rebuild makes the sums hold the record again, exactly and idempotently: under the fence
//! (no count of this node in flight), each field's target is max(record, part); the sums move
//! by target − part and the part becomes the target. Part above record (the node died before
//! its writer flushed what Redis had taken) is adopted into the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::Script;
use std::sync::LazyLock;

use crate::cluster::counter::{day_field, day_key, gen_key, part_key, totals_key};
use crate::cluster::link::{EVENTS, Link, LinkError};
use crate::edge::slug::Slug;
use crate::metrics::Metrics;
use crate::storage::MAX_COUNT;
use crate::storage::calendar::Calendar;
use crate::storage::store::{RedbStore, StoreError};
use crate::storage::writer::{FlushPolicy, Writer, WriterError};

/// The `meta` key of the record id in the `--db` file.
pub(crate) const RECORD_ID: &str = "record_id";

/// Fields of the part moved per script: a rebuild of a large record never holds Redis long.
const REBUILD_CHUNK: usize = 500;

/// KEYS: the part, the sums' hash (`vc:totals` or a day's), `vc:gen`. ARGV: the generation,
/// the channel to announce new totals on (`""`: none), then per field (part field, sum field,
/// the part's value as read, target, target − read).
///
/// A field whose part is no longer what was read is left alone, so a script run twice (a lost
/// reply) adds nothing the second time; a generation changed since the read (Redis lost its
/// data again) refuses all of it.
const REBUILD: &str = r#"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('VCREBUILD the generation changed during the rebuild')
end
local moved = 0
for i = 3, #ARGV, 5 do
  local part, sum, was, target, delta = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if (redis.call('HGET', KEYS[1], part) or '0') == was then
    -- A sum past the largest count stays at it, as every count does (HINCRBY refuses, and
    -- writes nothing, rather than wrap).
    local added = redis.pcall('HINCRBY', KEYS[2], sum, delta)
    if type(added) == 'table' and added.err then
      if not string.find(added.err, 'overflow') then return added end
      redis.call('HSET', KEYS[2], sum, '9223372036854775807')
    end
    redis.call('HSET', KEYS[1], part, target)
    if ARGV[2] ~= '' then
      redis.call('PUBLISH', ARGV[2], 't ' .. sum .. ' ' .. redis.call('HGET', KEYS[2], sum))
    end
    moved = moved + 1
  end
end
return moved
"#;

/// KEYS: the part, `vc:gen`. ARGV: the generation, `#n`. The part is of this generation once
/// every field is: the count script takes views into it again.
const SEAL: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], '#n', ARGV[2], '#gen', ARGV[1])
return 1
"#;

/// KEYS: the taking part, the retired part. Adds every field of the retired part (its `#n`
/// too) to the taking part and deletes it: the sums hold both already, so they stay. Its
/// `#gen` goes with it: the taking part's is kept.
const MOVE_PART: &str = r#"
local old = redis.call('HGETALL', KEYS[2])
for i = 1, #old, 2 do
  if old[i] ~= '#gen' then redis.call('HINCRBY', KEYS[1], old[i], old[i + 1]) end
end
redis.call('DEL', KEYS[2])
return #old / 2
"#;

static MOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MOVE_PART));

static REBUILD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REBUILD));
static SEAL_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SEAL));

#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildError {
    #[error(transparent)]
    Redis(#[from] LinkError),
    #[error("the record: {0}")]
    Record(#[from] WriterError),
    #[error("Redis lost its data again during the rebuild")]
    Again,
    #[error("the record {0} was retired into this node already")]
    AlreadyTaken(String),
    #[error("{0} is not a record id")]
    NotARecord(String),
    #[error("this node's --db file: {0}")]
    File(#[from] StoreError),
}

/// What one rebuild did, for the log.
#[derive(Debug, Default)]
pub(crate) struct Rebuilt {
    /// Fields of the part moved to the record (sums moved with them).
    pub moved: usize,
    /// Fields the record took from the part (views Redis had that the file had not yet).
    pub adopted: usize,
    /// All views in the part once rebuilt.
    pub views: u64,
}

pub(crate) struct Record {
    id: String,
    writer: Writer,
    /// The file's `meta` table: which retired records this one took.
    meta: Arc<std::sync::Mutex<RedbStore>>,
    /// Counts of this node hold it shared; a rebuild holds it alone.
    fence: tokio::sync::RwLock<()>,
    /// The views of the part Redis acknowledged, as far as this node knows: `#n` below it
    /// means Redis lost some.
    acked: AtomicU64,
    /// No rebuild has run since start: the first check rebuilds (a node that was down adds
    /// its part, or adopts what Redis took before it died).
    fresh: AtomicBool,
    /// The count script refused: the part is not of this generation.
    refused: AtomicBool,
    rebuilds: AtomicU64,
}

impl Record {
    /// The record of the `--db` file (its id made on the first cluster start), with a writer
    /// of its own on a second handle of the file.
    pub(crate) fn open(
        db: &mut RedbStore,
        policy: FlushPolicy,
        calendar: Calendar,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let id = db.meta_or_insert(RECORD_ID, random)?;
        let writer = Writer::spawn(Box::new(db.share()?), policy, calendar, metrics)
            .map_err(StoreError::storage)?;
        Ok(Self {
            id: format!("{id:016x}"),
            meta: Arc::new(std::sync::Mutex::new(db.share()?)),
            writer,
            fence: tokio::sync::RwLock::new(()),
            acked: AtomicU64::new(0),
            fresh: AtomicBool::new(true),
            refused: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
        })
    }

    pub(crate) fn part(&self) -> String {
        part_key(&self.id)
    }

    /// Held while counting: `None` while a rebuild runs (the view goes to the outbox).
    pub(crate) fn try_enter(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        self.fence.try_read().ok()
    }

    /// Waits for a rebuild to end.
    pub(crate) async fn enter(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.fence.read().await
    }

    /// As [`Record::enter`], from a thread outside the async runtime (the writer's).
    pub(crate) fn enter_blocking(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.fence.blocking_read()
    }

    /// Redis took `views` more of `slug` on `day` alone into the part (an import of days):
    /// the record takes them; they are not in `#n`, which counts totals.
    pub(crate) fn recorded_day(&self, slug: &Slug, day: u32, views: u64) {
        self.writer.add_counts(slug, 0, Some((day, views)));
    }

    /// Redis took `views` more of `slug` into the part (on `day` when given): the record
    /// takes them too. Called with the fence held.
    pub(crate) fn counted(&self, slug: &Slug, views: u64, day: Option<(u32, u64)>) {
        self.writer.add_counts(slug, views, day);
        self.acked.fetch_add(views, Ordering::Relaxed);
    }

    /// The count script refused: rebuild at the next heartbeat.
    pub(crate) fn refused(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }

    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Views Redis took that the file does not hold yet (`None`: the writer stopped).
    pub(crate) async fn unwritten(&self) -> Option<u64> {
        self.writer.unwritten().await.ok()
    }

    /// Writes what the record holds unwritten and stops its writer.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.writer.shutdown().await {
            tracing::error!(error = %e, "cannot write the node's record");
        }
    }

    /// Whether Redis lost this record's part (O(1): `vc:gen` and two fields of the part).
    pub(crate) async fn lost(&self, link: &Link) -> Result<bool, LinkError> {
        if self.fresh.load(Ordering::Relaxed) || self.refused.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let part = self.part();
        let (generation, (n, part_gen)): (Option<String>, (Option<u64>, Option<String>)) = link
            .call("loss check", |mut c| async move {
                redis::pipe()
                    .get(gen_key())
                    .hget(&part, &["#n", "#gen"])
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // `#n` is a count: it stops at the largest.
        let acked = self.acked.load(Ordering::Relaxed).min(MAX_COUNT);
        Ok(generation.is_none() || part_gen != generation || n.unwrap_or(0) < acked)
    }

    /// Takes a stopped node's record (`viewcounter retire`): its part in Redis is moved into
    /// this one (the sums unchanged), its counts into this record, and a rebuild then applies
    /// the max rule (a part Redis lost comes back from the record). Each record is taken once.
    pub(crate) async fn take_retired(
        &self,
        link: &Link,
        old: &str,
        totals: Vec<(Slug, u64)>,
        days: Vec<(Slug, u32, u64)>,
    ) -> Result<Rebuilt, RebuildError> {
        if old.len() != 16 || !old.bytes().all(|b| b.is_ascii_hexdigit()) || old == self.id {
            return Err(RebuildError::NotARecord(old.to_owned()));
        }
        let key = format!("took:{old}");
        {
            let _alone = self.fence.write().await;
            let taken = self.taken(&key, false).await?;
            if taken {
                return Err(RebuildError::AlreadyTaken(old.to_owned()));
            }
            let (part, retired) = (self.part(), part_key(old));
            let _: u64 = link
                .call("retire", |mut c| async move {
                    MOVE_SCRIPT
                        .key(&part)
                        .key(&retired)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            for (slug, views) in &totals {
                self.writer.add_counts(slug, *views, None);
            }
            for (slug, day, views) in &days {
                self.writer.add_counts(slug, 0, Some((*day, *views)));
            }
            self.taken(&key, true).await?;
        }
        self.rebuild(link).await
    }

    /// Whether `key` is in this file's `meta` table; `mark`: puts it there. Off the async
    /// threads: a redb write waits for the disk.
    async fn taken(&self, key: &str, mark: bool) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let meta = Arc::clone(&self.meta);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        tokio::task::spawn_blocking(move || {
            let mut meta = meta
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if mark {
                meta.meta_or_insert(&key, || now).map(|_| true)
            } else {
                meta.meta(&key).map(|v| v.is_some())
            }
        })
        .await
        .map_err(StoreError::storage)?
    }

    /// Makes the sums hold this record again (see the module's doc).
    pub(crate) async fn rebuild(&self, link: &Link) -> Result<Rebuilt, RebuildError> {
        let _alone = self.fence.write().await;
        // Cleared first: a refusal during the rebuild asks for the next one.
        self.refused.store(false, Ordering::Relaxed);
        let part = self.part();
        let generation = format!("{:016x}", random());
        let (generation, fields): (String, HashMap<String, String>) = link
            .call("rebuild read", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(gen_key())
                    .arg(&generation)
                    .arg("NX")
                    .ignore()
                    .get(gen_key())
                    .hgetall(&part)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let (totals, days) = self.writer.snapshot().await?;
        let mut rebuilt = Rebuilt::default();

        // Per sums' hash: (part field, sum field, part as read, target, delta).
        let mut moves: BTreeMap<String, Vec<[String; 5]>> = BTreeMap::new();
        let mut consider = |rebuilt: &mut Rebuilt,
                            key: String,
                            field: String,
                            sum: &str,
                            record: u64,
                            adopt: &dyn Fn(u64)| {
            let read = fields.get(&field).cloned().unwrap_or_else(|| "0".into());
            let in_part = read.parse::<u64>().unwrap_or(0);
            if in_part > record {
                adopt(in_part - record);
                rebuilt.adopted += 1;
            }
            let target = record.max(in_part);
            if target > in_part {
                let delta = (target - in_part).to_string();
                moves.entry(key).or_default().push([
                    field,
                    sum.to_owned(),
                    read,
                    target.to_string(),
                    delta,
                ]);
            }
            target
        };
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let totals: Vec<(String, u64)> = totals;
        for (slug, record) in &totals {
            seen.insert(slug.clone());
            let Ok(parsed) = Slug::parse(slug) else {
                continue;
            };
            let target = consider(
                &mut rebuilt,
                totals_key().to_owned(),
                slug.clone(),
                slug,
                *record,
                &|more| self.writer.add_counts(&parsed, more, None),
            );
            rebuilt.views = rebuilt.views.saturating_add(target);
        }
        for (slug, day, record) in &days {
            let field = day_field(day.key(), slug);
            seen.insert(field.clone());
            let Ok(parsed) = Slug::parse(slug) else {
                continue;
            };
            let key = day.key();
            consider(&mut rebuilt, day_key(key), field, slug, *record, &|more| {
                self.writer.add_counts(&parsed, 0, Some((key, more)))
            });
        }
        // Fields the part has and the record not at all: the node died before its first flush.
        for field in fields
            .keys()
            .filter(|f| !f.starts_with('#') && !seen.contains(*f))
        {
            let (key, sum, day) = match field.split_once(' ') {
                Some((day, slug)) => match day.parse::<u32>() {
                    Ok(day) => (day_key(day), slug, Some(day)),
                    Err(_) => continue,
                },
                None => (totals_key().to_owned(), field.as_str(), None),
            };
            let Ok(parsed) = Slug::parse(sum) else {
                continue;
            };
            let target = consider(
                &mut rebuilt,
                key,
                field.clone(),
                sum,
                0,
                &|more| match day {
                    Some(day) => self.writer.add_counts(&parsed, 0, Some((day, more))),
                    None => self.writer.add_counts(&parsed, more, None),
                },
            );
            if day.is_none() {
                rebuilt.views = rebuilt.views.saturating_add(target);
            }
        }

        let part = self.part();
        for (key, rows) in &moves {
            let channel = if key == totals_key() { EVENTS } else { "" };
            for chunk in rows.chunks(REBUILD_CHUNK) {
                let mut script = REBUILD_SCRIPT.prepare_invoke();
                script
                    .key(&part)
                    .key(key)
                    .key(gen_key())
                    .arg(&generation)
                    .arg(channel);
                for row in chunk {
                    script.arg(&row[..]);
                }
                let moved: usize = link
                    .call("rebuild", |mut c| async move {
                        script.invoke_async(&mut c).await
                    })
                    .await?;
                rebuilt.moved += moved;
            }
        }
        let views = rebuilt.views;
        let sealed: u8 = link
            .call("rebuild seal", |mut c| async move {
                SEAL_SCRIPT
                    .key(&part)
                    .key(gen_key())
                    .arg(&generation)
                    .arg(views.min(MAX_COUNT))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if sealed == 0 {
            return Err(RebuildError::Again);
        }
        self.acked.store(views, Ordering::Relaxed);
        self.fresh.store(false, Ordering::Relaxed);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        Ok(rebuilt)
    }
}

/// A random non-zero number (ids of records and generations); the clock's nanoseconds
/// without the OS's randomness.
fn random() -> u64 {
    let mut bytes = [0u8; 8];
    let n = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    n.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::Commands;

    use super::*;
    use crate::cluster::counter::tests::{Server, conn, connected};
    use crate::storage::calendar::Clock;

    const DAY: u32 = 20261202;

    fn hget(c: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
        c.hget(key, field).unwrap()
    }

    /// A real Redis, a connection of the test's own, and a record in a real redb file whose
    /// writer flushes within 10 ms: what every rebuild test starts from.
    struct Rebuilding {
        server: Server,
        link: Link,
        c: redis::Connection,
        dir: tempfile::TempDir,
        db: RedbStore,
        record: Record,
    }

    impl Rebuilding {
        /// `None` (the test skipped) without `redis-server`, as [`Server::start`].
        async fn start() -> Option<Self> {
            let server = Server::start()?;
            let (link, c) = (connected(&server).await, conn(&server));
            let dir = tempfile::tempdir().unwrap();
            let mut db = RedbStore::open(&dir.path().join("record.redb")).unwrap();
            let policy = FlushPolicy {
                after: Duration::from_millis(10),
                max_wait: Duration::from_millis(10),
                dedupe_window: Duration::from_secs(1800),
            };
            let calendar = Calendar::new(jiff::tz::TimeZone::UTC, Clock::default());
            let record = Record::open(&mut db, policy, calendar, Metrics::clustered()).unwrap();
            Some(Self {
                server,
                link,
                c,
                dir,
                db,
                record,
            })
        }
    }

    #[tokio::test]
    async fn a_rebuild_onto_a_sum_at_the_largest_count_leaves_it_there_and_seals_the_part() {
        let Some(Rebuilding {
            server: _server,
            link,
            mut c,
            dir: _dir,
            db: _db,
            record,
        }) = Rebuilding::start().await
        else {
            return;
        };
        record.counted(&Slug::parse("gamma").unwrap(), 5, None);
        // Another node's import took gamma to the largest count; this record's part is gone.
        let _: () = c.hset(totals_key(), "gamma", MAX_COUNT).unwrap();

        let rebuilt = record
            .rebuild(&link)
            .await
            .expect("the rebuild saturates, never fails");
        assert_eq!(rebuilt.views, 5);
        let total: u64 = c.hget(totals_key(), "gamma").unwrap();
        assert_eq!(total, MAX_COUNT);
        assert!(
            !record.lost(&link).await.unwrap(),
            "sealed: views count again"
        );
    }

    /// The max rule, on a real Redis and a real redb file: the sums move by what the record
    /// has beyond the part (another node's views stay), the record takes what only the part
    /// had (a node killed before its writer flushed), a second rebuild moves nothing, and a
    /// part left short by an older snapshot (same generation, `#n` below what Redis
    /// acknowledged) is found by the O(1) check and made whole again.
    #[tokio::test]
    async fn a_rebuild_brings_the_sums_to_the_record_once_and_the_record_takes_what_only_redis_had()
    {
        let Some(Rebuilding {
            server: _server,
            link,
            mut c,
            dir: _dir,
            db: _db,
            record,
        }) = Rebuilding::start().await
        else {
            return;
        };
        let alpha = Slug::parse("alpha").unwrap();
        record.counted(&alpha, 3, Some((DAY, 3)));
        // Another node's 10 views of alpha; 2 of beta Redis took for this record, unwritten.
        let part = record.part();
        let _: () = c
            .hset_multiple(totals_key(), &[("alpha", 10), ("beta", 2)])
            .unwrap();
        let _: () = c.hset(day_key(DAY), "beta", 2).unwrap();
        let beta_day = day_field(DAY, "beta");
        let _: () = c
            .hset_multiple(&part, &[("beta", 2), (beta_day.as_str(), 2)])
            .unwrap();

        assert!(record.lost(&link).await.unwrap(), "a fresh record rebuilds");
        let rebuilt = record.rebuild(&link).await.unwrap();
        assert_eq!((rebuilt.views, rebuilt.adopted), (5, 2));
        let sums = |c: &mut redis::Connection| {
            let totals: Vec<Option<u64>> = c.hget(totals_key(), &["alpha", "beta"]).unwrap();
            let days: Vec<Option<u64>> = c.hget(day_key(DAY), &["alpha", "beta"]).unwrap();
            (totals, days)
        };
        let whole = (vec![Some(13), Some(2)], vec![Some(3), Some(2)]);
        assert_eq!(sums(&mut c), whole);
        let generation: String = c.get(gen_key()).unwrap();
        assert_eq!(hget(&mut c, &part, "#gen"), Some(generation));
        assert_eq!(hget(&mut c, &part, "#n").as_deref(), Some("5"));
        assert!(
            !record.lost(&link).await.unwrap(),
            "whole after the rebuild"
        );

        let again = record.rebuild(&link).await.unwrap();
        assert_eq!((again.moved, again.adopted), (0, 0));
        assert_eq!(sums(&mut c), whole, "a second rebuild moves nothing");
        let (totals, days) = record.writer.snapshot().await.unwrap();
        assert_eq!(totals, [("alpha".to_owned(), 3), ("beta".to_owned(), 2)]);
        let days: Vec<u64> = days.into_iter().map(|(_, _, views)| views).collect();
        assert_eq!(days, [3, 2], "the record took beta's day from the part");

        // An older snapshot: this record's last 2 views of alpha are gone from Redis.
        let alpha_day = day_field(DAY, "alpha");
        let older = [("alpha", 1), (alpha_day.as_str(), 1), ("#n", 3)];
        let _: () = c.hset_multiple(&part, &older).unwrap();
        let _: () = c.hset(totals_key(), "alpha", 11).unwrap();
        let _: () = c.hset(day_key(DAY), "alpha", 1).unwrap();
        assert!(
            record.lost(&link).await.unwrap(),
            "#n below what Redis acknowledged"
        );
        record.rebuild(&link).await.unwrap();
        assert_eq!(sums(&mut c), whole);
        record.close().await;
    }
}
