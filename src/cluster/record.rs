//! The node's record: what this node counted, per post and per day, in its `--db` file (the
//! tables `totals` and `days`, and the reading times and peaks its readers left in
//! `day_presence` and `site_peaks`, written by the same debounced [`Writer`] as a single node).
//! The record is the durable copy; Redis's sums are a cache the nodes rebuild from their
//! records when Redis loses data.
//!
//! In Redis each record has a part in each key group (see [`crate::cluster::keys`]),
//! `vc:{gN}:part:{id}`: per post (`slug`) and per day (`YYYYMMDD slug`) of the group the views
//! this record added to the group's sums, `#n` all of them (a constant-size loss check) and
//! `#gen` the group's generation (`vc:{gN}:gen`) it was built in. The count script moves the
//! sums and the part together, and refuses while the part is not of the current generation.
//!
//! A rebuild makes the sums of each group that lost data hold the record again, exactly and
//! idempotently: under the fence (no count of this node in flight), each field's target is
//! max(record, part); the sums move by target − part and the part becomes the target. Part
//! above record (the node died before its writer flushed what Redis had taken) is adopted
//! into the record. Every script touches one group, so one hash slot of a Redis Cluster.
//!
//! The outbox's rows are the record's too: a view whose call timed out may have run late in
//! Redis, so its row is in the part and not yet in the tables. The replay deletes the row
//! and adds the view to the tables in one transaction; a rebuild counts the rows whose ops
//! Redis decided "counted" with the record, so it adopts only what a crash lost, never a view
//! the replay will add again.
//!
//! Reading times are counts that only grow, so they ride the same part: per post, day and
//! measure (the 16 buckets `0`–`15` and `ms`, see [`crate::cluster::keys::read_field`]) the
//! part's field `YYYYMMDD slug M` holds what this record added to the field `slug M` of the
//! group's `vc:{gN}:reads:YYYYMMDD`. The record takes them first (the node's writer hands it
//! what its readers left, [`Record::presence`]); [`Record::sync_presence`] then moves each
//! field it touched by the max rule, as a rebuild does, so a sync run twice, or after a
//! rebuild, adds nothing. Peaks are a max, not a sum: the record keeps the highest this node
//! saw (of the post's readers across the cluster, as its readers see them) and Redis the
//! highest of any node, `vc:{gN}:peaks:YYYYMMDD` per post and `vc:{g0}:site` for the site,
//! raised by a compare in Lua (higher, or as high and earlier); a rebuild raises them again
//! from the record, so after a loss Redis holds the max of the records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use redis::{Script, Value, from_redis_value};
use std::sync::{LazyLock, PoisonError};

use crate::cluster::counter::lua_counts;
use crate::cluster::counter::{View, counted_before, salt_of};
use crate::cluster::keys::{
    ALL, Group, Groups, MEASURES, PartField, day_field, measures, read_field, set_measure,
};
use crate::cluster::link::{EVENTS, Link, LinkError};
use crate::cluster::outbox::Outbox;
use crate::edge::slug::Slug;
use crate::metrics::Metrics;
use crate::storage::MAX_COUNT;
use crate::storage::calendar::{Calendar, Day};
use crate::storage::presence::{DayPresence, Peak, Reads};
use crate::storage::store::{DayViews, PresenceDelta, RedbStore, StoreError};
use crate::storage::writer::{FlushPolicy, Writer, WriterError};

/// The `meta` key of the record id in the `--db` file.
pub(crate) const RECORD_ID: &str = "record_id";

/// Fields of the part moved per script, and read per `HSCAN`: a rebuild of a large record
/// never holds Redis long.
const REBUILD_CHUNK: usize = 500;

/// Rounds of a rebuild: a chunk that found a field of the part other than read (a count that
/// ran late) is read and moved again, and the group sealed only once none was skipped.
const REBUILD_ROUNDS: usize = 3;

/// KEYS: the part, the sums' hash (the group's totals or a day's), the group's generation,
/// the group's set of days. ARGV: the generation, the channel to announce new totals on
/// (`""`: none), then per field (part field, sum field, the part's value as read, target,
/// target − read).
///
/// A field whose part is no longer what was read is left alone (and not counted as moved:
/// the rebuild reads it again), so a script run twice (a lost reply) adds nothing the second
/// time; a generation changed since the read (Redis lost its data again) refuses all of it.
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
local day = string.match(KEYS[2], ':day:(%d+)$') or string.match(KEYS[2], ':reads:(%d+)$')
if day and moved > 0 then redis.call('SADD', KEYS[4], day) end
return moved
"#;

/// KEYS: the group's set of days, then the hash of each row (a day's peaks, or the site's).
/// ARGV: per row (field, live, when first reached). Each field becomes the row's peak if that
/// is higher, or as high and reached earlier (as [`Peak::raise`]); a day's peaks name their
/// day in the group's days. Raising twice changes nothing. Returns the fields raised.
const RAISE_PEAKS: &str = r#"
local function above(a, b) return #a > #b or (#a == #b and a > b) end
local raised, days = 0, {}
for i = 2, #KEYS do
  local at = 3 * (i - 2)
  local field, live, when = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local now = redis.call('HGET', KEYS[i], field)
  local l, w
  if now then l, w = string.match(now, '^(%d+) (%d+)$') end
  if not l or above(live, l) or (live == l and above(w, when)) then
    redis.call('HSET', KEYS[i], field, live .. ' ' .. when)
    raised = raised + 1
  end
  local day = string.match(KEYS[i], ':peaks:(%d+)$')
  if day and not days[day] then
    redis.call('SADD', KEYS[1], day)
    days[day] = true
  end
end
return raised
"#;

/// KEYS: the part, the group's generation. ARGV: the generation, `#n`. The part is of this
/// generation once every field is: the count script takes views into it again.
const SEAL: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], '#n', ARGV[2], '#gen', ARGV[1])
return 1
"#;

/// KEYS: the taking part, the retired part (of one group). ARGV: the `HSCAN` cursor, the
/// chunk. Adds a chunk of the retired part's fields (its `#n` too) to the taking part,
/// stopping each at the largest count as every count does, and deletes them from the retired
/// part: a run twice moves nothing twice. The sums hold both parts already, so they stay. Its
/// `#gen` goes: the taking part's is kept. Returns the next cursor and the fields left.
const MOVE_PART: &str = concat!(
    lua_counts!(),
    r#"
local scan = redis.call('HSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[2])
local fields = scan[2]
for i = 1, #fields, 2 do
  local field, views = fields[i], fields[i + 1]
  if field ~= '#gen' then
    local added = redis.pcall('HINCRBY', KEYS[1], field, views)
    if type(added) == 'table' and added.err then
      if not string.find(added.err, 'overflow') then return added end
      redis.call('HSET', KEYS[1], field, MAX)
    end
  end
  redis.call('HDEL', KEYS[2], field)
end
return {scan[1], redis.call('HLEN', KEYS[2])}
"#
);

static MOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MOVE_PART));

static REBUILD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REBUILD));
static SEAL_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SEAL));
static PEAKS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RAISE_PEAKS));

/// Per sums' hash, the fields a rebuild or a sync moves: (part field, sum field, the part's
/// value as read, target, target − read), as [`REBUILD`] takes them.
#[derive(Default)]
struct Moves(BTreeMap<String, Vec<[String; 5]>>);

impl Moves {
    /// The max rule for one field of the part (`read`: its value, absent when none) whose
    /// record holds `record`: the target, and what the record lacks of it (to adopt).
    fn field(
        &mut self,
        key: String,
        field: String,
        sum: &str,
        read: Option<&String>,
        record: u64,
    ) -> (u64, u64) {
        let read = read.cloned().unwrap_or_else(|| "0".into());
        let in_part = read.parse::<u64>().unwrap_or(0);
        let target = record.max(in_part);
        if target > in_part {
            let delta = (target - in_part).to_string();
            self.0.entry(key).or_default().push([
                field,
                sum.to_owned(),
                read,
                target.to_string(),
                delta,
            ]);
        }
        (target, in_part.saturating_sub(record))
    }
}

/// Presence of one measure alone: what the record adopts of a part's reading-time field.
fn one_measure(measure: usize, count: u64) -> DayPresence {
    let mut presence = DayPresence::default();
    set_measure(&mut presence.reads, measure, count);
    presence
}

/// What presence left that Redis does not have yet (see [`Record::sync_presence`]).
#[derive(Default)]
struct Dirty {
    posts: BTreeSet<(Slug, u32)>,
    /// Days of the site's peaks.
    site: BTreeSet<u32>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildError {
    #[error(transparent)]
    Redis(#[from] LinkError),
    #[error("the record: {0}")]
    Record(#[from] WriterError),
    #[error("Redis lost its data again during the rebuild")]
    Again,
    #[error("fields of the part kept changing during the rebuild")]
    Skipped,
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
    /// All views in the rebuilt groups' parts once rebuilt.
    pub views: u64,
    /// The groups rebuilt.
    pub groups: u32,
}

pub(crate) struct Record {
    id: String,
    writer: Writer,
    /// The file's `meta` table: which retired records this one took.
    meta: Arc<std::sync::Mutex<RedbStore>>,
    /// The views counted here that wait for Redis, in the same file: the rows of those
    /// Redis counted already are the record's too, until their replay moves them into it.
    outbox: Outbox,
    /// Counts of this node hold it shared; a rebuild holds it alone.
    fence: tokio::sync::RwLock<()>,
    /// Per group, the views of the part Redis acknowledged, as far as this node knows: `#n`
    /// below it means Redis lost some.
    acked: [AtomicU64; crate::cluster::keys::GROUPS as usize],
    /// Per group, the generation this node last sealed its part in, as its fingerprints'
    /// salt ([`salt_of`]; 0: none yet, every group is pending).
    sealed: [AtomicU64; crate::cluster::keys::GROUPS as usize],
    /// Groups ([`Groups`]) to rebuild whatever the loss check finds: all of them after start
    /// (a node that was down adds its part, or adopts what Redis took before it died), and
    /// the group of a view the count script refused (its part not of this generation).
    pending: AtomicU32,
    rebuilds: AtomicU64,
    /// Presence the record took that Redis may not have yet.
    dirty: std::sync::Mutex<Dirty>,
    /// Told when `dirty` gains some: the sync runs at once, not at the next beat.
    dirtied: tokio::sync::Notify,
    /// Told each time a rebuild ends: wakes of posts whose data Redis lost wait for it.
    rebuilt: tokio::sync::Notify,
}

impl Record {
    /// The record of the `--db` file (its id made on the first cluster start), with a writer
    /// of its own on a second handle of the file, and the file's outbox (on `db` itself,
    /// which holds the server's mark for as long as the node runs).
    pub(crate) fn open(
        mut db: RedbStore,
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
            outbox: Outbox::start(db)?,
            writer,
            fence: tokio::sync::RwLock::new(()),
            acked: std::array::from_fn(|_| AtomicU64::new(0)),
            sealed: std::array::from_fn(|_| AtomicU64::new(0)),
            pending: AtomicU32::new(ALL.0),
            rebuilds: AtomicU64::new(0),
            dirty: std::sync::Mutex::default(),
            dirtied: tokio::sync::Notify::new(),
            rebuilt: tokio::sync::Notify::new(),
        })
    }

    /// The fingerprints' salt of `group`'s generation, as this node last sealed its part in
    /// it; `None` before its first rebuild.
    pub(crate) fn salt(&self, group: Group) -> Option<u64> {
        Some(self.sealed[group.index()].load(Ordering::Relaxed)).filter(|&s| s != 0)
    }

    /// The views counted here that wait for Redis.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// This record's id: its parts are `vc:{gN}:part:{id}`.
    pub(crate) fn id(&self) -> &str {
        &self.id
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
        self.acknowledged(slug, views);
    }

    /// Redis took `views` more of `slug` into the part, and the record took them by another
    /// way than its writer (the outbox's delete of their rows). Called with the fence held.
    pub(crate) fn acknowledged(&self, slug: &Slug, views: u64) {
        self.acked[Group::of(slug.as_str()).index()].fetch_add(views, Ordering::Relaxed);
    }

    /// The node's readers left `presence` (reading times added, peaks raised per post and
    /// day) and the site's peaks `site` (day, peak): the record takes them, and Redis with
    /// the next [`Record::sync_presence`]. Never blocks (the node's writer thread calls it).
    pub(crate) fn presence(&self, presence: &[PresenceDelta<'_>], site: &[(u32, Peak)]) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        for p in presence {
            if let Ok(slug) = Slug::parse(p.slug) {
                self.writer.add_presence(&slug, p.day, p.presence);
                dirty.posts.insert((slug, p.day));
            }
        }
        for &(day, peak) in site {
            self.writer.raise_site_peak_on(day, peak);
            dirty.site.insert(day);
        }
        drop(dirty);
        self.dirtied.notify_one();
    }

    /// Resolves once a rebuild ends after this call (made now, not at its first poll: tokio's
    /// `notify_waiters` wakes a `Notified` from its creation on).
    pub(crate) fn rebuilt(&self) -> tokio::sync::futures::Notified<'_> {
        self.rebuilt.notified()
    }

    /// Resolves once [`Record::presence`] took some (at once if it did since the last call).
    pub(crate) async fn dirtied(&self) {
        self.dirtied.notified().await;
    }

    /// Brings Redis to what the record holds of the presence it took since the last sync:
    /// each reading-time field it touched moved by the max rule (as a rebuild does, so Redis
    /// never counts a reading twice), each peak raised. What does not get there (Redis down,
    /// a part not of this generation, whose group is rebuilt at the next beat) is tried again.
    pub(crate) async fn sync_presence(&self, link: &Link) -> Result<(), RebuildError> {
        let taken = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        if taken.posts.is_empty() && taken.site.is_empty() {
            return Ok(());
        }
        let _counting = self.fence.read().await;
        let left = match self.sync(link, &taken).await {
            Ok(left) => left,
            Err(e) => {
                self.dirty_again(taken);
                return Err(e);
            }
        };
        if !left.is_empty() {
            let posts = taken.posts.into_iter();
            self.dirty_again(Dirty {
                posts: posts
                    .filter(|(s, _)| left.has(Group::of(s.as_str())))
                    .collect(),
                site: if left.has(Group::SITE) {
                    taken.site
                } else {
                    BTreeSet::new()
                },
            });
        }
        Ok(())
    }

    fn dirty_again(&self, taken: Dirty) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        dirty.posts.extend(taken.posts);
        dirty.site.extend(taken.site);
    }

    /// [`Record::sync_presence`] of `taken`, group by group: the groups left to try again.
    async fn sync(&self, link: &Link, taken: &Dirty) -> Result<Groups, RebuildError> {
        let rows: Vec<(Slug, u32)> = taken.posts.iter().cloned().collect();
        let recorded = self.writer.presence_of(rows.clone()).await?;
        let site_days: Vec<u32> = taken.site.iter().copied().collect();
        let site = self.writer.site_peaks(site_days.clone()).await?;
        let mut by_group: BTreeMap<Group, Vec<(&Slug, u32, &DayPresence)>> = BTreeMap::new();
        for ((slug, day), presence) in rows.iter().zip(&recorded) {
            let group = Group::of(slug.as_str());
            by_group
                .entry(group)
                .or_default()
                .push((slug, *day, presence));
        }
        if !site_days.is_empty() {
            by_group.entry(Group::SITE).or_default();
        }
        let site: Vec<(u32, Peak)> = site_days.into_iter().zip(site).collect();
        let mut left = Groups::default();
        for (group, rows) in by_group {
            let site = if group == Group::SITE { &site[..] } else { &[] };
            if !self.sync_group(link, group, &rows, site).await? {
                left = left.with(group);
            }
        }
        Ok(left)
    }

    /// Syncs one group's `rows` (post, day, as the record holds it) and, of [`Group::SITE`],
    /// the site's peaks `site`: false when the group is to be tried again.
    async fn sync_group(
        &self,
        link: &Link,
        group: Group,
        rows: &[(&Slug, u32, &DayPresence)],
        site: &[(u32, Peak)],
    ) -> Result<bool, RebuildError> {
        let part = group.part(&self.id);
        // A row with a new peak alone moves no reading time (a part above the record, which
        // the record would adopt, is a rebuild's: at start, or after a loss).
        let read_rows: Vec<_> = rows
            .iter()
            .filter(|(_, _, p)| p.reads != Reads::default())
            .collect();
        let fields: Vec<String> = read_rows
            .iter()
            .flat_map(|(slug, day, _)| {
                (0..MEASURES).map(move |m| day_field(*day, &read_field(slug.as_str(), m)))
            })
            .collect();
        let mut read = redis::pipe();
        read.get(group.generation()).hget(&part, "#gen");
        if !fields.is_empty() {
            read.cmd("HMGET").arg(&part).arg(&fields);
        }
        let read = &read;
        let replies: Vec<Value> = link
            .call("presence read", |mut c| async move {
                read.query_async(&mut c).await
            })
            .await?;
        let parsed = || -> redis::RedisResult<_> {
            let generation: Option<String> = replies.first().map_or(Ok(None), from_redis_value)?;
            let part_gen: Option<String> = replies.get(1).map_or(Ok(None), from_redis_value)?;
            let values: Vec<Option<String>> =
                replies.get(2).map_or(Ok(Vec::new()), from_redis_value)?;
            Ok((generation, part_gen, values))
        };
        let (generation, part_gen, values) = parsed().map_err(LinkError::from)?;
        let Some(generation) = generation.filter(|g| part_gen.as_ref() == Some(g)) else {
            // Redis lost the group: its rebuild brings this presence too.
            self.pending
                .fetch_or(Groups::default().with(group).0, Ordering::Relaxed);
            return Ok(false);
        };
        let mut moves = Moves::default();
        let mut peaks = Vec::new();
        for ((slug, day, presence), values) in read_rows.iter().zip(values.chunks(MEASURES)) {
            let record = measures(&presence.reads);
            for (m, (record, read)) in record.into_iter().zip(values).enumerate() {
                let sum = read_field(slug.as_str(), m);
                let field = day_field(*day, &sum);
                let (_, lacks) = moves.field(group.reads(*day), field, &sum, read.as_ref(), record);
                if lacks > 0 {
                    self.writer.add_presence(slug, *day, one_measure(m, lacks));
                }
            }
        }
        for (slug, day, presence) in rows.iter().filter(|(_, _, p)| p.peak.live > 0) {
            peaks.push((group.peaks(*day), slug.as_str().to_owned(), presence.peak));
        }
        for &(day, peak) in site.iter().filter(|(_, p)| p.live > 0) {
            peaks.push((group.site_peaks(), day.to_string(), peak));
        }
        let (_, skipped) = self.apply(link, group, &generation, &moves).await?;
        raise_peaks(link, group, &peaks).await?;
        Ok(!skipped)
    }

    /// Moves `moves` of `group`'s sums and this record's part (in `generation`): the fields
    /// moved, and whether one was skipped (its part no longer what was read).
    async fn apply(
        &self,
        link: &Link,
        group: Group,
        generation: &str,
        moves: &Moves,
    ) -> Result<(usize, bool), LinkError> {
        let part = group.part(&self.id);
        let (mut moved, mut skipped) = (0, false);
        for (key, rows) in &moves.0 {
            let channel = if *key == group.totals() { EVENTS } else { "" };
            for chunk in rows.chunks(REBUILD_CHUNK) {
                let mut script = REBUILD_SCRIPT.prepare_invoke();
                script
                    .key(&part)
                    .key(key)
                    .key(group.generation())
                    .key(group.days())
                    .arg(generation)
                    .arg(channel);
                for row in chunk {
                    script.arg(&row[..]);
                }
                let done: usize = link
                    .call("rebuild", |mut c| async move {
                        script.invoke_async(&mut c).await
                    })
                    .await?;
                moved += done;
                skipped |= done < chunk.len();
            }
        }
        Ok((moved, skipped))
    }

    /// The count script refused a view of `slug`: rebuild its group at the next heartbeat.
    pub(crate) fn refused(&self, slug: &str) {
        let group = Groups::default().with(Group::of(slug));
        self.pending.fetch_or(group.0, Ordering::Relaxed);
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

    /// The groups whose part Redis lost: one pipeline of `HMGET` two fields of the part per
    /// group, the same size whatever the posts (a Redis Cluster gets each on the group's
    /// master). The part is in the slot of the group's generation and sums, so whatever loses
    /// them (a flush, a restart without the data, a replica promoted without the last writes)
    /// loses it or leaves it short too: gone, of another generation than this node sealed, or
    /// holding fewer views than Redis acknowledged. (A generation gone alone, the part kept,
    /// lost no view: the count script refuses the group's next view, which rebuilds it.)
    pub(crate) async fn lost(&self, link: &Link) -> Result<Groups, LinkError> {
        let pending = Groups(self.pending.load(Ordering::Relaxed));
        if pending == ALL {
            return Ok(ALL);
        }
        let mut check = redis::pipe();
        for group in Group::all() {
            check.hget(group.part(&self.id), &["#n", "#gen"]);
        }
        let replies: Vec<Value> = link
            .call("loss check", |mut c| async move {
                check.query_async(&mut c).await
            })
            .await?;
        if replies.len() != usize::from(crate::cluster::keys::GROUPS) {
            return Ok(ALL);
        }
        let mut lost = pending;
        for (group, part) in Group::all().zip(&replies) {
            let (n, part_gen): (Option<u64>, Option<String>) = redis::from_redis_value(part)?;
            let sealed = self.sealed[group.index()].load(Ordering::Relaxed);
            // `#n` is a count: it stops at the largest.
            let acked = self.acked[group.index()]
                .load(Ordering::Relaxed)
                .min(MAX_COUNT);
            if part_gen.map(|g| salt_of(&g)) != Some(sealed) || n.unwrap_or(0) < acked {
                lost = lost.with(group);
            }
        }
        Ok(lost)
    }

    /// Takes a stopped node's record (`viewcounter retire`): its counts, reading times and
    /// peaks into this record, its parts in Redis into this one's (the sums unchanged), and a
    /// rebuild of every group then applies the max rule (a part Redis lost comes back from
    /// the record) and raises the peaks. Each record is taken once; a retire run again (its
    /// answer lost, the node stopped halfway) finishes what is left and adds nothing twice.
    ///
    /// In steps a crash can cut anywhere: (1) the record takes the counts and the mark
    /// `taking:{old}` in one transaction of the file; (2) the old parts move (a move run
    /// twice moves nothing twice); (3) the mark `took:{old}`. Between (1) and (3) the record
    /// holds the old counts and this part not yet: every rebuild first finishes the moves
    /// ([`Record::finish_takes`]), else the max rule would add them to the sums again.
    pub(crate) async fn take_retired(
        &self,
        link: &Link,
        old: &str,
        retired: Retired,
    ) -> Result<Taken, RebuildError> {
        if old.len() != 16 || !old.bytes().all(|b| b.is_ascii_hexdigit()) || old == self.id {
            return Err(RebuildError::NotARecord(old.to_owned()));
        }
        {
            let _alone = self.fence.write().await;
            if self.taken(&format!("{TOOK}{old}"), false).await? {
                return Ok(Taken::Before);
            }
            if !self.taken(&format!("{TAKING}{old}"), false).await? {
                self.add_retired(old, retired).await?;
            }
            self.finish_take(link, old).await?;
        }
        self.pending.fetch_or(ALL.0, Ordering::Relaxed);
        self.rebuild(link, ALL).await.map(Taken::Now)
    }

    /// Step (1) of [`Record::take_retired`]: the retired counts and `taking:{old}` in one
    /// transaction. Off the async threads: a redb write waits for the disk.
    async fn add_retired(&self, old: &str, retired: Retired) -> Result<(), RebuildError> {
        let meta = Arc::clone(&self.meta);
        let key = format!("{TAKING}{old}");
        tokio::task::spawn_blocking(move || {
            let totals: Vec<(&str, u64)> = (retired.totals.iter())
                .map(|(slug, views)| (slug.as_str(), *views))
                .collect();
            let days: Vec<DayViews<'_>> = (retired.days.iter())
                .map(|(slug, day, views)| DayViews {
                    slug: slug.as_str(),
                    day: *day,
                    views: *views,
                })
                .collect();
            let presence: Vec<PresenceDelta<'_>> = (retired.presence.iter())
                .map(|(slug, day, presence)| PresenceDelta {
                    slug: slug.as_str(),
                    day: *day,
                    presence: *presence,
                })
                .collect();
            let mut meta = meta.lock().unwrap_or_else(PoisonError::into_inner);
            meta.add_marked(&totals, &days, &presence, &retired.site, &key, unix_now())
        })
        .await
        .map_err(StoreError::storage)?
        .map_err(RebuildError::File)
    }

    /// Steps (2) and (3) of [`Record::take_retired`].
    async fn finish_take(&self, link: &Link, old: &str) -> Result<(), RebuildError> {
        for group in Group::all() {
            self.move_part(link, group, old).await?;
        }
        self.taken(&format!("{TOOK}{old}"), true).await?;
        Ok(())
    }

    /// Finishes every take a crash (or Redis going away) cut short between its steps; called
    /// with the fence held, before a rebuild reads the record.
    async fn finish_takes(&self, link: &Link) -> Result<(), RebuildError> {
        let meta = Arc::clone(&self.meta);
        let (taking, took) = tokio::task::spawn_blocking(move || {
            let mut meta = meta.lock().unwrap_or_else(PoisonError::into_inner);
            Ok::<_, StoreError>((meta.meta_keys(TAKING)?, meta.meta_keys(TOOK)?))
        })
        .await
        .map_err(StoreError::storage)??;
        for old in taking.iter().filter(|old| !took.contains(old)) {
            tracing::info!(retired = %old, "finishing the take of a retired record cut short");
            self.finish_take(link, old).await?;
        }
        Ok(())
    }

    /// Moves the retired record `old`'s part of `group` into this record's, chunk by chunk.
    async fn move_part(&self, link: &Link, group: Group, old: &str) -> Result<(), LinkError> {
        let (part, retired) = (group.part(&self.id), group.part(old));
        let mut cursor = "0".to_owned();
        loop {
            let (part, retired, from) = (&part, &retired, cursor.clone());
            let (next, left): (String, u64) = link
                .call("retire", |mut c| async move {
                    MOVE_SCRIPT
                        .key(part)
                        .key(retired)
                        .arg(from)
                        .arg(REBUILD_CHUNK)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if left == 0 {
                return Ok(());
            }
            // Fields left once the scan went round: scan again from the start.
            cursor = next;
        }
    }

    /// Whether `key` is in this file's `meta` table; `mark`: puts it there. Off the async
    /// threads: a redb write waits for the disk.
    async fn taken(&self, key: &str, mark: bool) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let meta = Arc::clone(&self.meta);
        let now = unix_now();
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

    /// Makes the sums of `groups` hold this record again (see the module's doc). A group
    /// whose chunk skipped a field (its part changed since read) is read and moved again, and
    /// sealed only once nothing was skipped.
    pub(crate) async fn rebuild(
        &self,
        link: &Link,
        groups: Groups,
    ) -> Result<Rebuilt, RebuildError> {
        let _alone = self.fence.write().await;
        self.finish_takes(link).await?;
        // Read under the fence: no replay moves a row into the record meanwhile.
        let mut waiting: HashMap<Group, Vec<View>> = HashMap::new();
        for view in self.outbox.views().await? {
            waiting.entry(Group::of(&view.slug)).or_default().push(view);
        }
        let mut rebuilt = Rebuilt::default();
        let mut todo = groups;
        for _ in 0..REBUILD_ROUNDS {
            // Read again each round: it holds what the last round adopted.
            let (totals, days) = self.writer.snapshot().await?;
            let recorded = Recorded {
                totals,
                days,
                presence: self.writer.all_presence().await?,
                site: self.writer.all_site_peaks().await?,
            };
            let mut again = Groups::default();
            for group in todo.iter() {
                let waiting = waiting.get(&group).map_or(&[][..], Vec::as_slice);
                if !self
                    .rebuild_group(link, group, &recorded, waiting, &mut rebuilt)
                    .await?
                {
                    again = again.with(group);
                }
            }
            if again.is_empty() {
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                self.rebuilt.notify_waiters();
                return Ok(rebuilt);
            }
            todo = again;
        }
        Err(RebuildError::Skipped)
    }

    /// Every field of `part`, read in chunks with `HSCAN` (one `HGETALL` of a large part would
    /// hold Redis for all of it).
    async fn read_part(
        &self,
        link: &Link,
        part: &str,
    ) -> Result<HashMap<String, String>, LinkError> {
        let mut fields = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, chunk): (u64, Vec<(String, String)>) = link
                .call("rebuild read", |mut c| async move {
                    redis::cmd("HSCAN")
                        .arg(part)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(REBUILD_CHUNK)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            fields.extend(chunk);
            if next == 0 {
                return Ok(fields);
            }
            cursor = next;
        }
    }

    /// Rebuilds the part of `group`: true once sealed, false when a chunk skipped a field.
    /// `waiting`: the group's views in the outbox.
    async fn rebuild_group(
        &self,
        link: &Link,
        group: Group,
        recorded: &Recorded,
        waiting: &[View],
        rebuilt: &mut Rebuilt,
    ) -> Result<bool, RebuildError> {
        let part = group.part(&self.id);
        // Unsealed until this rebuild seals it: should it fail past the seal (its reply
        // lost), the node counts nothing of the group with the old generation's salt.
        self.sealed[group.index()].store(0, Ordering::Relaxed);
        let gen_key = group.generation();
        let generation = format!("{:016x}", random());
        let generation: String = link
            .call("rebuild generation", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(&gen_key)
                    .arg(&generation)
                    .arg("NX")
                    .ignore()
                    .get(&gen_key)
                    .query_async::<(String,)>(&mut c)
                    .await
                    .map(|(g,)| g)
            })
            .await?;
        let fields = self.read_part(link, &part).await?;
        // Read after the part, and the fields of those counted read again after that: a late
        // run between the part and the decisions (counted, yet not in the part as read)
        // moves its fields, and the group is read again.
        let counted_waiting = waiting_in_part(link, group, waiting).await?;
        if !counted_waiting.fields.is_empty() {
            let names: Vec<&String> = counted_waiting.fields.keys().collect();
            let mut read = redis::cmd("HMGET");
            read.arg(&part).arg(&names);
            let again: Vec<Option<String>> = link
                .call("rebuild read", |mut c| async move {
                    read.query_async(&mut c).await
                })
                .await?;
            if names
                .iter()
                .zip(&again)
                .any(|(f, v)| fields.get(*f) != v.as_ref())
            {
                return Ok(false);
            }
        }
        let mut views = 0u64;

        let mut moves = Moves::default();
        // The max rule for one field; what the record lacks of it, `adopt` gives it.
        let mut consider = |rebuilt: &mut Rebuilt,
                            key: String,
                            field: String,
                            sum: &str,
                            record: u64,
                            adopt: &dyn Fn(u64)| {
            let read = fields.get(&field);
            // A view Redis counted whose row waits in the outbox is the record's already:
            // its replay moves it into the record as the row goes.
            let waiting = counted_waiting.fields.get(&field).copied().unwrap_or(0);
            let record = record.saturating_add(waiting);
            let (target, lacks) = moves.field(key, field, sum, read, record);
            if lacks > 0 {
                adopt(lacks);
                rebuilt.adopted += 1;
            }
            target
        };
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let ours = |slug: &str| Group::of(slug) == group;
        for (slug, record) in recorded.totals.iter().filter(|(slug, _)| ours(slug)) {
            seen.insert(slug.clone());
            let Ok(parsed) = Slug::parse(slug) else {
                continue;
            };
            let target = consider(
                rebuilt,
                group.totals(),
                slug.clone(),
                slug,
                *record,
                &|more| self.writer.add_counts(&parsed, more, None),
            );
            views = views.saturating_add(target);
        }
        for (slug, day, record) in recorded.days.iter().filter(|(slug, _, _)| ours(slug)) {
            let field = day_field(day.key(), slug);
            seen.insert(field.clone());
            let Ok(parsed) = Slug::parse(slug) else {
                continue;
            };
            let key = day.key();
            consider(rebuilt, group.day(key), field, slug, *record, &|more| {
                self.writer.add_counts(&parsed, 0, Some((key, more)))
            });
        }
        let mut peaks = Vec::new();
        for (slug, day, presence) in recorded.presence.iter().filter(|(s, _, _)| ours(s)) {
            let Ok(parsed) = Slug::parse(slug) else {
                continue;
            };
            let key = day.key();
            for (m, record) in measures(&presence.reads).into_iter().enumerate() {
                let sum = read_field(slug, m);
                let field = day_field(key, &sum);
                seen.insert(field.clone());
                consider(rebuilt, group.reads(key), field, &sum, record, &|more| {
                    self.writer.add_presence(&parsed, key, one_measure(m, more))
                });
            }
            if presence.peak.live > 0 {
                peaks.push((group.peaks(key), slug.clone(), presence.peak));
            }
        }
        if group == Group::SITE {
            for (day, peak) in recorded.site.iter().filter(|(_, p)| p.live > 0) {
                peaks.push((group.site_peaks(), day.key().to_string(), *peak));
            }
        }
        // Fields the part has and the record not at all: the node died before its first flush.
        for field in fields.keys().filter(|f| !seen.contains(*f)) {
            let Some(parsed) = PartField::parse(field) else {
                continue;
            };
            let (PartField::Total(slug) | PartField::Day(_, slug) | PartField::Read(_, slug, _)) =
                parsed;
            let Ok(slug) = Slug::parse(slug) else {
                continue;
            };
            match parsed {
                PartField::Total(_) => {
                    let target = consider(
                        rebuilt,
                        group.totals(),
                        field.clone(),
                        slug.as_str(),
                        0,
                        &|more| self.writer.add_counts(&slug, more, None),
                    );
                    views = views.saturating_add(target);
                }
                PartField::Day(day, _) => {
                    let key = group.day(day);
                    consider(rebuilt, key, field.clone(), slug.as_str(), 0, &|more| {
                        self.writer.add_counts(&slug, 0, Some((day, more)))
                    });
                }
                PartField::Read(day, _, m) => {
                    let sum = read_field(slug.as_str(), m);
                    consider(rebuilt, group.reads(day), field.clone(), &sum, 0, &|more| {
                        self.writer.add_presence(&slug, day, one_measure(m, more))
                    });
                }
            }
        }

        let (moved, skipped) = self.apply(link, group, &generation, &moves).await?;
        rebuilt.moved += moved;
        if skipped {
            return Ok(false);
        }
        // A max: raised again whatever the part says, nothing to seal.
        raise_peaks(link, group, &peaks).await?;
        let sealing = salt_of(&generation);
        let sealed: u8 = link
            .call("rebuild seal", |mut c| async move {
                SEAL_SCRIPT
                    .key(&part)
                    .key(group.generation())
                    .arg(&generation)
                    .arg(views.min(MAX_COUNT))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if sealed == 0 {
            return Err(RebuildError::Again);
        }
        // The waiting views counted are in `#n`; their replay acknowledges them one by one.
        let acked = views.saturating_sub(counted_waiting.views);
        self.acked[group.index()].store(acked, Ordering::Relaxed);
        self.sealed[group.index()].store(sealing, Ordering::Relaxed);
        self.pending
            .fetch_and(!Groups::default().with(group).0, Ordering::Relaxed);
        rebuilt.views = rebuilt.views.saturating_add(views);
        rebuilt.groups += 1;
        Ok(true)
    }
}

/// The views of `waiting` (all of `group`) that Redis counted already, a call that timed out
/// having run late.
#[derive(Default)]
struct WaitingInPart {
    /// By the part's fields they are in (the total's and the day's), how many.
    fields: HashMap<String, u64>,
    /// How many in all.
    views: u64,
}

async fn waiting_in_part(
    link: &Link,
    group: Group,
    waiting: &[View],
) -> Result<WaitingInPart, LinkError> {
    let mut in_part = WaitingInPart::default();
    if waiting.is_empty() {
        return Ok(in_part);
    }
    let counted = counted_before(link, group, waiting).await?;
    for (view, _) in waiting.iter().zip(counted).filter(|(_, c)| *c) {
        *in_part.fields.entry(view.slug.clone()).or_default() += 1;
        *in_part
            .fields
            .entry(day_field(view.day, &view.slug))
            .or_default() += 1;
        in_part.views += 1;
    }
    Ok(in_part)
}

/// What [`Record::take_retired`] did.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Took the record now; the rebuild that followed.
    Now(Rebuilt),
    /// Took it before (a retire run again after its answer was lost): nothing to do.
    Before,
}

/// The `meta` key (prefix, then the retired record's id) of a take whose counts the record
/// holds (step 1 of [`Record::take_retired`] done)...
const TAKING: &str = "taking:";
/// ...and of a take done (its parts moved too).
const TOOK: &str = "took:";

/// Now in unix seconds (1 if the clock says before 1970): when a mark was made.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
}

/// What a retired record held (`viewcounter retire` reads it from the stopped node's file).
pub(crate) struct Retired {
    pub totals: Vec<(Slug, u64)>,
    pub days: Vec<(Slug, u32, u64)>,
    /// Reading times and peaks per post and day.
    pub presence: Vec<(Slug, u32, DayPresence)>,
    /// The site's peak per day.
    pub site: Vec<(u32, Peak)>,
}

/// What a rebuild reads of the record, at one point of its writer's queue per part.
struct Recorded {
    totals: Vec<(String, u64)>,
    days: Vec<(String, Day, u64)>,
    presence: Vec<(String, Day, DayPresence)>,
    site: Vec<(Day, Peak)>,
}

/// Raises the peaks of `rows` (hash, field, peak), all of `group`, in Redis ([`RAISE_PEAKS`]).
async fn raise_peaks(
    link: &Link,
    group: Group,
    rows: &[(String, String, Peak)],
) -> Result<(), LinkError> {
    for chunk in rows.chunks(REBUILD_CHUNK) {
        let mut script = PEAKS_SCRIPT.prepare_invoke();
        script.key(group.days());
        for (key, field, peak) in chunk {
            script.key(key).arg(field).arg(peak.live).arg(peak.at);
        }
        let _: u64 = link
            .call(
                "peaks",
                |mut c| async move { script.invoke_async(&mut c).await },
            )
            .await?;
    }
    Ok(())
}

/// A random non-zero number (ids of records, generations and ops); without the OS's
/// randomness, the clock's nanoseconds and a counter, unique enough per process.
pub(crate) fn random() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    let n = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }
    };
    n.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::Commands;

    use super::*;
    use crate::cluster::counter::tests::{Server, conn, connected, day_key, totals_key};
    use crate::storage::calendar::Clock;

    const DAY: u32 = 20261202;

    fn hget(c: &mut redis::Connection, key: &str, field: &str) -> Option<String> {
        c.hget(key, field).unwrap()
    }

    /// A real Redis, a connection of the test's own, and a record in a real redb file whose
    /// writer flushes within 10 ms: what every rebuild test starts from.
    struct Rebuilding {
        /// Held for the test: dropped, Redis stops and the file goes.
        _server: Server,
        link: Link,
        c: redis::Connection,
        _dir: tempfile::TempDir,
        /// The record's file, for a test to write to it as a crashed run would have left it.
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
            let record =
                Record::open(db.share().unwrap(), policy, calendar, Metrics::clustered()).unwrap();
            Some(Self {
                _server: server,
                link,
                c,
                _dir: dir,
                db,
                record,
            })
        }
    }

    fn ids(groups: Groups) -> Vec<usize> {
        groups.iter().map(Group::index).collect()
    }

    /// `viewcounter retire` cut short after the record took the retired counts and before its
    /// last mark (the node killed, or its answer lost and the retire run again): the rerun
    /// finishes the take and the counts are in the record and the sums once.
    #[tokio::test]
    async fn a_retire_cut_short_before_its_last_mark_and_run_again_counts_the_old_record_once() {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        record.rebuild(link, ALL).await.expect("this part sealed");
        let gamma = Slug::parse("gamma").unwrap();
        let old = "00000000000000ab";
        // The stopped node's 7 views of gamma: in its part and in the sums.
        let group = Group::of("gamma");
        let _: () = c.hset(group.part(old), "gamma", 7).unwrap();
        let _: () = c.hset(group.part(old), "#n", 7).unwrap();
        let _: () = c.hset(totals_key("gamma"), "gamma", 7).unwrap();
        let retired = || Retired {
            totals: vec![(gamma.clone(), 7)],
            days: Vec::new(),
            presence: Vec::new(),
            site: Vec::new(),
        };
        record
            .take_retired(link, old, retired())
            .await
            .expect("taken");
        // The crash: the last mark never reached the file.
        t.db.forget_meta(&format!("took:{old}")).unwrap();
        record
            .take_retired(link, old, retired())
            .await
            .expect("the rerun finishes the take");
        let (totals, _) = record.writer.snapshot().await.unwrap();
        assert_eq!(totals, [("gamma".to_owned(), 7)], "the record");
        record.rebuild(link, ALL).await.expect("rebuilt");
        let total: u64 = c.hget(totals_key("gamma"), "gamma").unwrap();
        assert_eq!(total, 7, "the sums");
    }

    #[tokio::test]
    async fn a_rebuild_onto_a_sum_at_the_largest_count_leaves_it_there_and_seals_the_part() {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        record.counted(&Slug::parse("gamma").unwrap(), 5, None);
        // Another node's import took gamma to the largest count; this record's part is gone.
        let _: () = c.hset(totals_key("gamma"), "gamma", MAX_COUNT).unwrap();

        let rebuilt = record
            .rebuild(link, ALL)
            .await
            .expect("the rebuild saturates, never fails");
        assert_eq!(rebuilt.views, 5);
        let total: u64 = c.hget(totals_key("gamma"), "gamma").unwrap();
        assert_eq!(total, MAX_COUNT);
        assert!(
            record.lost(link).await.unwrap().is_empty(),
            "sealed: views count again"
        );
    }

    /// The max rule, on a real Redis and a real redb file: the sums move by what the record
    /// has beyond the part (another node's views stay), the record takes what only the part
    /// had (a node killed before its writer flushed), a second rebuild moves nothing, and a
    /// part left short by an older snapshot (same generation, `#n` below what Redis
    /// acknowledged) is found by the constant-size check and made whole again, its group
    /// alone.
    #[tokio::test]
    async fn a_rebuild_brings_the_sums_to_the_record_once_and_the_record_takes_what_only_redis_had()
    {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        let alpha = Slug::parse("alpha").unwrap();
        let (of_alpha, of_beta) = (Group::of("alpha"), Group::of("beta"));
        assert_ne!(of_alpha, of_beta, "the test wants two key groups");
        record.counted(&alpha, 3, Some((DAY, 3)));
        // Another node's 10 views of alpha; 2 of beta Redis took for this record, unwritten.
        let (alpha_part, beta_part) = (of_alpha.part(record.id()), of_beta.part(record.id()));
        let _: () = c.hset(totals_key("alpha"), "alpha", 10).unwrap();
        let _: () = c.hset(totals_key("beta"), "beta", 2).unwrap();
        let _: () = c.hset(day_key("beta", DAY), "beta", 2).unwrap();
        let beta_day = day_field(DAY, "beta");
        let _: () = c
            .hset_multiple(&beta_part, &[("beta", 2), (beta_day.as_str(), 2)])
            .unwrap();

        let lost = record.lost(link).await.unwrap();
        assert_eq!(lost, ALL, "a fresh record rebuilds every group");
        let rebuilt = record.rebuild(link, lost).await.unwrap();
        assert_eq!((rebuilt.views, rebuilt.adopted), (5, 2));
        let sums = |c: &mut redis::Connection| {
            let mut totals: Vec<Option<u64>> = Vec::new();
            let mut days: Vec<Option<u64>> = Vec::new();
            for slug in ["alpha", "beta"] {
                totals.push(c.hget(totals_key(slug), slug).unwrap());
                days.push(c.hget(day_key(slug, DAY), slug).unwrap());
            }
            (totals, days)
        };
        let whole = (vec![Some(13), Some(2)], vec![Some(3), Some(2)]);
        assert_eq!(sums(c), whole);
        for (group, part, n) in [(of_alpha, &alpha_part, "3"), (of_beta, &beta_part, "2")] {
            let generation: String = c.get(group.generation()).unwrap();
            assert_eq!(hget(c, part, "#gen"), Some(generation));
            assert_eq!(hget(c, part, "#n").as_deref(), Some(n));
        }
        let days: Vec<u32> = c.smembers(of_alpha.days()).unwrap();
        assert_eq!(days, [DAY], "the group's days name the day rebuilt");
        assert!(
            record.lost(link).await.unwrap().is_empty(),
            "whole after the rebuild"
        );

        let again = record.rebuild(link, ALL).await.unwrap();
        assert_eq!((again.moved, again.adopted), (0, 0));
        assert_eq!(sums(c), whole, "a second rebuild moves nothing");
        let (totals, days) = record.writer.snapshot().await.unwrap();
        assert_eq!(totals, [("alpha".to_owned(), 3), ("beta".to_owned(), 2)]);
        let days: Vec<u64> = days.into_iter().map(|(_, _, views)| views).collect();
        assert_eq!(days, [3, 2], "the record took beta's day from the part");

        // An older snapshot: this record's last 2 views of alpha are gone from Redis.
        let alpha_day = day_field(DAY, "alpha");
        let older = [("alpha", 1), (alpha_day.as_str(), 1), ("#n", 1)];
        let _: () = c.hset_multiple(&alpha_part, &older).unwrap();
        let _: () = c.hset(totals_key("alpha"), "alpha", 11).unwrap();
        let _: () = c.hset(day_key("alpha", DAY), "alpha", 1).unwrap();
        let lost = record.lost(link).await.unwrap();
        assert_eq!(
            ids(lost),
            [of_alpha.index()],
            "#n below what Redis acknowledged"
        );
        let rebuilt = record.rebuild(link, lost).await.unwrap();
        assert_eq!(rebuilt.groups, 1, "the group that lost alone");
        assert_eq!(sums(c), whole);
        record.close().await;
    }

    /// Reading times ride the part: a sync moves the sums by what the record holds beyond the
    /// part (another record's readings stay), a second sync of the same post moves nothing,
    /// and the peaks keep the highest of any record, as high and earlier winning. Redis
    /// losing everything, the rebuild brings this record's readings and peaks back.
    #[tokio::test]
    async fn reading_times_sync_once_into_the_sums_and_a_rebuild_restores_them_with_the_peaks() {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        record.rebuild(link, ALL).await.unwrap();
        let group = Group::of("alpha");
        let (reads, peaks) = (group.reads(DAY), group.peaks(DAY));
        // Another record's reading of alpha (0.1 s), and its peak: 2 readers at 50.
        let _: () = c
            .hset_multiple(&reads, &[("alpha 0", 1), ("alpha ms", 100)])
            .unwrap();
        let _: () = c.hset(&peaks, "alpha", "2 50").unwrap();
        let mut presence = DayPresence::default();
        presence.reads.add(Duration::from_millis(2500));
        presence.peak = Peak { live: 2, at: 40 };
        let site = (DAY, Peak { live: 3, at: 45 });
        let read = PresenceDelta {
            slug: "alpha",
            day: DAY,
            presence,
        };
        record.presence(&[read], &[site]);
        record.sync_presence(link).await.unwrap();
        // The post touched again with nothing new: the max rule moves nothing.
        let nothing = PresenceDelta {
            presence: DayPresence::default(),
            ..read
        };
        record.presence(&[nothing], &[site]);
        record.sync_presence(link).await.unwrap();
        let fields = |c: &mut redis::Connection| {
            let mut all: Vec<(String, String)> = c.hgetall(&reads).unwrap();
            all.sort();
            let peak = hget(c, &peaks, "alpha");
            let site = hget(c, &Group::SITE.site_peaks(), &DAY.to_string());
            (all, peak, site)
        };
        let both = |rows: &[(&str, &str)]| -> Vec<(String, String)> {
            rows.iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect()
        };
        let summed = both(&[("alpha 0", "1"), ("alpha 2", "1"), ("alpha ms", "2600")]);
        let (peak, site_peak) = (Some("2 40".to_owned()), Some("3 45".to_owned()));
        assert_eq!(fields(c), (summed, peak.clone(), site_peak.clone()));
        let part = group.part(record.id());
        assert_eq!(
            hget(c, &part, &format!("{DAY} alpha 2")).as_deref(),
            Some("1")
        );

        let () = redis::cmd("FLUSHALL").query(c).unwrap();
        let lost = record.lost(link).await.unwrap();
        assert_eq!(lost, ALL);
        record.rebuild(link, lost).await.unwrap();
        let ours = both(&[("alpha 2", "1"), ("alpha ms", "2500")]);
        assert_eq!(fields(c), (ours, peak, site_peak));
        let days: Vec<u32> = c.smembers(group.days()).unwrap();
        assert_eq!(
            days,
            [DAY],
            "the day of reading times alone is a day of the group"
        );
        record.close().await;
    }

    /// A Redis Cluster failover to a replica that missed writes, or a `FLUSHALL` on one master,
    /// loses some groups: the check finds those, and their rebuild leaves the others alone.
    #[tokio::test]
    async fn a_group_whose_generation_is_gone_is_the_only_one_rebuilt() {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        for slug in ["alpha", "beta"] {
            record.counted(&Slug::parse(slug).unwrap(), 4, Some((DAY, 4)));
        }
        record.rebuild(link, ALL).await.unwrap();
        // All of one group's keys, as a master that lost its data.
        let of_beta = Group::of("beta");
        let keys = [
            of_beta.generation(),
            of_beta.totals(),
            of_beta.day(DAY),
            of_beta.part(record.id()),
        ];
        let _: () = c.del(&keys).unwrap();

        let lost = record.lost(link).await.unwrap();
        assert_eq!(ids(lost), [of_beta.index()]);
        let rebuilt = record.rebuild(link, lost).await.unwrap();
        assert_eq!((rebuilt.groups, rebuilt.views), (1, 4));
        for slug in ["alpha", "beta"] {
            let total: u64 = c.hget(totals_key(slug), slug).unwrap();
            let day: u64 = c.hget(day_key(slug, DAY), slug).unwrap();
            assert_eq!((total, day), (4, 4), "{slug}");
        }
        record.close().await;
    }

    /// `viewcounter retire` moves a retired record's parts into this one's: a field that would
    /// pass the largest count stops at it, as every count does (`HINCRBY` refused the overflow
    /// and the move failed halfway), and the retired parts are gone once moved.
    #[tokio::test]
    async fn taking_a_retired_part_stops_a_field_at_the_largest_count_and_empties_it() {
        let Some(mut t) = Rebuilding::start().await else {
            return;
        };
        let (link, c, record) = (&t.link, &mut t.c, &t.record);
        let group = Group::of("gamma");
        let (ours, old) = (group.part(record.id()), "00000000000000ab");
        let _: () = c.hset(&ours, "gamma", 5).unwrap();
        let retired = group.part(old);
        let _: () = c
            .hset_multiple(&retired, &[("gamma", MAX_COUNT - 1), ("#n", 7)])
            .unwrap();
        // More fields than one chunk: the move goes on until the part is empty.
        let many: Vec<(String, u64)> = (0..REBUILD_CHUNK + 20)
            .map(|i| (format!("post-{i}"), 1))
            .collect();
        let _: () = c.hset_multiple(&retired, &many).unwrap();

        record.move_part(link, group, old).await.expect("moved");
        assert_eq!(hget(c, &ours, "gamma"), Some(MAX_COUNT.to_string()));
        assert_eq!(hget(c, &ours, "#n").as_deref(), Some("7"));
        let moved: u64 = c.hlen(&ours).unwrap();
        assert_eq!(moved, 2 + REBUILD_CHUNK as u64 + 20);
        let left: bool = c.exists(&retired).unwrap();
        assert!(!left, "the retired part is gone");
        record.close().await;
    }
}
