//! The writer's [`Store`] in cluster mode: totals, days, reading times and peaks are Redis's
//! (each key group's `vc:{gN}:totals`, `vc:{gN}:day:YYYYMMDD`, `vc:{gN}:reads:YYYYMMDD`,
//! `vc:{gN}:peaks:YYYYMMDD` and the site's `vc:{g0}:site`, see [`crate::cluster::keys`]), so
//! the owner's reads (`/totals`, `/history`, `/top`, `/daily`, a sleeping post's `/count`) and
//! imports speak for the whole cluster. Counted views do not come through here: each is one
//! script call from its post (`cluster::counter`). What the node's readers leave (reading
//! times, peaks) does: the node's record takes it, and Redis from the record (see
//! [`crate::cluster::record`]).
//!
//! It runs on the writer thread, so it uses a blocking connection whose reads and writes time
//! out after `--redis-timeout`; while the cluster finds Redis down it fails at once, and the
//! writer answers from what it remembers. A Redis Cluster (found by `INFO`, as the node's link
//! does) gets the `redis` crate's blocking cluster connection; every call here is of one key
//! group, so of one hash slot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{
    Cmd, Commands, ConnectionInfo, ConnectionLike, IntoConnectionInfo, Script, Value,
    from_redis_value,
};

use crate::cluster::counter::lua_counts;
use crate::cluster::keys::{
    Group, MEASURES, day_field, parse_peak, parse_read_field, read_field, set_measure,
};
use crate::cluster::link::{self, EVENTS, is_unavailable};
use crate::cluster::{Cluster, Settings};
use crate::edge::reader_id::{HashKey, ReaderKey};
use crate::secret::RedisUrl;
use crate::storage::presence::{DayPresence, Peak};
use crate::storage::store::{DayViews, PresenceDelta, Seen, Store, StoreError};
use crate::storage::{MAX_COUNT, add_counts};

/// An import, all of it or nothing: every count it changes is read and checked first, then
/// all are written and the new totals announced. Redis does not undo a script's writes when a
/// later command fails, so nothing that can fail comes after the first write.
///
/// The importing node's part takes the import too (as the count script does a view, see
/// [`crate::cluster::record`]), so a rebuild after Redis lost its data brings it back; a part
/// not of this generation refuses it (`VCREBUILD`) until the node rebuilt it.
///
/// One key group's rows at a time (so one hash slot of a Redis Cluster). KEYS: the group's
/// totals, the node's part of the group, the group's generation, the group's set of days,
/// the import's mark in the group, then the day's hash of each day row. ARGV:
/// the channel, the number of total rows, the views of all total rows and `MAX_COUNT` minus
/// them (for `#n`), `check` or `apply`, the mark's expiry (s), then (field, delta, limit, part
/// field) for each total row and then each day row. A group whose mark is set answers `DONE`
/// and changes nothing (an earlier run of the import applied it); `apply` sets the mark; `limit` is `MAX_COUNT - delta`: a count above it saturates at `MAX_COUNT` (views
/// may have been counted since the writer read it), compared as Redis's strings (see
/// [`lua_counts`]). The part's fields saturate the same way.
const IMPORT: &str = concat!(
    lua_counts!(),
    r#"
local function above(a, b) return #a > #b or (#a == #b and a > b) end
local gen = redis.call('GET', KEYS[3])
if not gen or redis.call('HGET', KEYS[2], '#gen') ~= gen then
  return redis.error_reply('VCREBUILD nothing imported: the node is rebuilding its part of the sums after Redis lost data; try again in a few seconds')
end
-- Applied by an earlier run of this import, cut short after this group: nothing to do.
if redis.call('EXISTS', KEYS[5]) == 1 then return 'DONE' end
local totals = tonumber(ARGV[2])
local plan = {}
local n = redis.call('HGET', KEYS[2], '#n') or '0'
if not is_count(n) then return redis.error_reply('nothing imported: #n in ' .. KEYS[2] .. ' is not a count') end
for i = 1, totals + #KEYS - 5 do
  local key = i <= totals and KEYS[1] or KEYS[i - totals + 5]
  local at = 6 + 4 * (i - 1)
  local field, delta, limit, part = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local current = redis.call('HGET', key, field) or '0'
  local in_part = redis.call('HGET', KEYS[2], part) or '0'
  if not is_count(current) or not is_count(in_part) then
    return redis.error_reply('nothing imported: ' .. field .. ' in ' .. key .. ' is not a count')
  end
  plan[i] = {key, field, delta, above(current, limit), part, above(in_part, limit)}
end
if ARGV[5] == 'check' then return 'OK' end
-- Checked: nothing below fails.
local function add(key, field, delta, saturates)
  if saturates then
    redis.call('HSET', key, field, MAX)
  else
    redis.call('HINCRBY', key, field, delta)
  end
end
for _, row in ipairs(plan) do
  add(row[1], row[2], row[3], row[4])
  add(KEYS[2], row[5], row[3], row[6])
end
add(KEYS[2], '#n', ARGV[3], above(n, ARGV[4]))
redis.call('SET', KEYS[5], '1', 'EX', ARGV[6])
for i = 6, #KEYS do
  redis.call('SADD', KEYS[4], string.match(KEYS[i], ':day:(%d+)$'))
end
for i = 1, totals do
  local field = plan[i][2]
  redis.call('PUBLISH', ARGV[1], 't ' .. field .. ' ' .. redis.call('HGET', KEYS[1], field))
end
return 'OK'
"#
);

/// Why an import goes through a node, never straight into Redis.
pub(crate) const IMPORT_THROUGH_A_NODE: &str = "an import into the cluster goes through a node: \
`viewcounter import --url http://NODE:PORT FILE` (the node keeps it in its --db file, the \
durable record, and adds it to Redis's sums; written straight into Redis, it would be lost \
with Redis's data)";

static IMPORT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(IMPORT));

pub struct RedisStore {
    client: redis::Client,
    /// For a Redis Cluster's client.
    info: ConnectionInfo,
    ca: Option<std::path::PathBuf>,
    timeout: Duration,
    /// A node's: whose health it reads and reports, and whose record takes imports. `None`
    /// for `export --redis`.
    cluster: Option<Arc<Cluster>>,
    /// The importing node's record id, whose parts take imports (see [`IMPORT`]); `None`:
    /// imports are refused.
    record: Option<String>,
    conn: Option<Conn>,
    /// Made once `--redis` said it is a Redis Cluster's node.
    cluster_client: Option<redis::cluster::ClusterClient>,
    /// Tests: an import's applies fail after this many key groups, as when Redis goes away
    /// between two of them.
    #[cfg(test)]
    cut_after: Option<usize>,
}

/// A blocking connection to a standalone Redis or a Redis Cluster.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Self::Single(c) => c.req_command(cmd),
            Self::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Single(c) => c.check_connection(),
            Self::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Single(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }
}

impl RedisStore {
    /// The store of a node in the cluster.
    pub(crate) fn new(settings: &Settings, cluster: Arc<Cluster>) -> Result<Self, StoreError> {
        let mut store =
            Self::standalone(&settings.redis, settings.ca.as_deref(), cluster.timeout())?;
        store.record = Some(cluster.record_id());
        store.cluster = Some(cluster);
        Ok(store)
    }

    /// Redis read and written directly (`export --redis`, `import --redis`).
    pub fn standalone(
        url: &RedisUrl,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        // `url` prints with its password masked.
        let bad = |e: String| StoreError::Storage(format!("--redis \"{url}\": {e}"));
        let info = url
            .expose()
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            client: link::client(info.clone(), ca).map_err(bad)?,
            info,
            ca: ca.map(Path::to_path_buf),
            timeout,
            cluster: None,
            record: None,
            conn: None,
            cluster_client: None,
            #[cfg(test)]
            cut_after: None,
        })
    }

    /// Runs `op` on the connection (made if needed). Failing to reach Redis drops the
    /// connection and marks Redis down; Redis refusing the call (an import it found a
    /// non-count in) does neither. Writes are never tried twice.
    fn with<T>(
        &mut self,
        what: &'static str,
        op: impl Fn(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run(what, false, op)
    }

    /// A read: the connection kept from before Redis restarted fails once ("unexpected end of
    /// file": the old server closed it), so a read that finds it dropped is tried once more on
    /// a fresh one. Not after a timeout: a stalled Redis must not cost two of them.
    fn read<T>(
        &mut self,
        what: &'static str,
        op: impl Fn(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run(what, true, op)
    }

    fn run<T>(
        &mut self,
        what: &'static str,
        retry_dropped: bool,
        op: impl Fn(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.cluster.as_ref().is_some_and(|c| !c.is_up()) {
            return Err(StoreError::Storage("Redis is down".into()));
        }
        let mut outcome = self.connection().and_then(&op);
        let dropped = |e: &redis::RedisError| {
            !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
        };
        if retry_dropped && outcome.as_ref().is_err_and(dropped) {
            self.reconnect();
            outcome = self.connection().and_then(&op);
        }
        outcome.map_err(|e| {
            if is_unavailable(&e) {
                self.reconnect();
                if let Some(cluster) = &self.cluster {
                    cluster.health().failed(what, &e);
                }
            }
            StoreError::Storage(format!("Redis: {e}"))
        })
    }

    /// The connection is made anew at the next call. (The `redis` crate's blocking cluster
    /// connection keeps a master that failed as its slots' master: a new one asks the others.)
    fn reconnect(&mut self) {
        self.conn = None;
    }

    /// The connection, made if needed: `INFO cluster` tells a Redis Cluster from a standalone
    /// Redis, as the node's link does. A Redis Cluster's client, once made, connects to any
    /// node it learnt, not only `--redis`'s (perhaps the master that failed).
    fn connection(&mut self) -> redis::RedisResult<&mut Conn> {
        if self.conn.is_none()
            && let Some(cluster) = &self.cluster_client
        {
            self.conn = Some(Conn::Cluster(Box::new(cluster.get_connection()?)));
        }
        let stale = match &self.conn {
            None => true,
            Some(Conn::Single(c)) => !c.is_open(),
            // Dropped by `reconnect` after a failure, not because one master is gone.
            Some(Conn::Cluster(_)) => false,
        };
        if stale {
            let timeout = self.timeout;
            let mut conn = self.client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            let info: String = redis::cmd("INFO").arg("cluster").query(&mut conn)?;
            self.conn = Some(if link::is_cluster(&info) {
                let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
                let cluster =
                    link::cluster_builder(&self.info, &slots, self.ca.as_deref(), timeout)
                        .map_err(|e| {
                            redis::RedisError::from((
                                redis::ErrorKind::InvalidClientConfig,
                                "Redis Cluster client",
                                e,
                            ))
                        })?
                        .build()?;
                let conn = cluster.get_connection()?;
                self.cluster_client = Some(cluster);
                Conn::Cluster(Box::new(conn))
            } else {
                Conn::Single(conn)
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// `read` of one command on each key group's key, in order.
    fn each_group<T>(
        &mut self,
        what: &'static str,
        key: impl Fn(Group) -> String,
        op: impl Fn(&mut Conn, &str) -> redis::RedisResult<T>,
    ) -> Result<Vec<T>, StoreError> {
        Group::all()
            .map(|group| {
                let key = key(group);
                self.read(what, |c| op(c, &key))
            })
            .collect()
    }

    /// The views of an import (see [`Store::add_all`]).
    fn add_views(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
    ) -> Result<(), StoreError> {
        if batch.is_empty() && days.is_empty() {
            return Ok(());
        }
        let Some(record) = self.record.clone() else {
            return Err(StoreError::Storage(IMPORT_THROUGH_A_NODE.into()));
        };
        let mut groups: BTreeMap<Group, Rows<'_>> = BTreeMap::new();
        for &(slug, delta) in batch {
            let rows = groups.entry(Group::of(slug)).or_default();
            let sum = rows.0.entry(slug).or_default();
            *sum = add_counts(*sum, delta);
        }
        for d in days {
            let rows = groups.entry(Group::of(d.slug)).or_default();
            let sum = rows.1.entry((d.day, d.slug)).or_default();
            *sum = add_counts(*sum, d.views);
        }
        if groups.is_empty() {
            return Ok(());
        }
        // Not while this node rebuilds its part: the rebuild's snapshot and its part would
        // disagree on the import.
        let cluster = self.cluster.clone();
        let _fence = cluster.as_ref().map(|c| c.import_fence());
        let id = import_id(&groups);
        let import = |group, (totals, per_day): &Rows<'_>, mode| {
            import_of(group, &record, id, totals, per_day, mode)
        };
        // Each group's script checks its rows first and writes nothing (a value that is not
        // a count, a part not of this generation): then nothing of the import is applied. A
        // group an earlier run of the same import applied answers that it is done.
        let mut todo = Vec::new();
        for (&group, rows) in &groups {
            let check = import(group, rows, "check");
            if self.with("import check", |c| check.invoke::<String>(c))? != "DONE" {
                todo.push((group, rows));
            }
        }
        let (all, before) = (groups.len(), groups.len() - todo.len());
        if before > 0 {
            tracing::info!(
                groups = all,
                before,
                "an import run again: the key groups an earlier run applied are skipped"
            );
        }
        // Fails now only if Redis went away or lost data since the checks.
        for (done, (group, rows)) in todo.into_iter().enumerate() {
            let apply = import(group, rows, "apply");
            let applied = match () {
                #[cfg(test)]
                () if self.cut_after == Some(done) => {
                    Err(StoreError::Storage("Redis: the test cut it here".into()))
                }
                () => self.with("import", |c| apply.invoke::<String>(c)),
            };
            match applied {
                // Another run of the same import applied it since the check.
                Ok(done) if done == "DONE" => {}
                Ok(_) => {
                    if let Some(cluster) = &cluster {
                        cluster.imported(&rows.0, &rows.1);
                    }
                }
                Err(e) if done + before == 0 => return Err(e),
                Err(e) => {
                    return Err(StoreError::Storage(format!(
                        "{e} (imported before it: the posts of {} of the import's {all} key \
                         groups; this node's record holds them. Run the same import again \
                         within a day to import the rest: the groups already in are skipped)",
                        done + before
                    )));
                }
            }
        }
        // Whole: the same rows imported again later are added again, as on a single node.
        for &group in groups.keys() {
            let mark = group.import_mark(id);
            if let Err(e) = self.with("import mark", |c| c.del::<_, ()>(&mark)) {
                tracing::warn!(error = %e, %mark, "cannot delete an import's mark: the same rows imported again within a day skip its group");
            }
        }
        Ok(())
    }

    /// Each group with its set of days (no `SCAN`, which a Redis Cluster answers per master).
    fn known_days(&mut self) -> Result<Vec<(Group, Vec<u32>)>, StoreError> {
        let known: Vec<Vec<u32>> =
            self.each_group("days", Group::days, |c, key| c.smembers(key))?;
        Ok(Group::all().zip(known).collect())
    }

    /// The presence of `group`'s posts on `day` into `posts`, by slug.
    fn presence_on(
        &mut self,
        group: Group,
        day: u32,
        posts: &mut BTreeMap<String, DayPresence>,
    ) -> Result<(), StoreError> {
        /// A day's reads hash (field, count) and peaks hash (slug, `LIVE AT`) of the group.
        type Hashes = (Vec<(String, u64)>, Vec<(String, String)>);
        let (reads, peaks) = (group.reads(day), group.peaks(day));
        let (reads, peaks): Hashes = self.read("presence", |c| {
            redis::pipe().hgetall(&reads).hgetall(&peaks).query(c)
        })?;
        for (field, count) in reads {
            if let Some((slug, m)) = parse_read_field(&field) {
                set_measure(
                    &mut posts.entry(slug.to_owned()).or_default().reads,
                    m,
                    count,
                );
            }
        }
        for (slug, peak) in peaks {
            if let Some(peak) = parse_peak(&peak) {
                posts.entry(slug).or_default().peak = peak;
            }
        }
        Ok(())
    }
}

fn sorted<T: Ord>(mut rows: Vec<T>) -> Vec<T> {
    rows.sort();
    rows
}

impl Store for RedisStore {
    /// A node's load fails with [`StoreError::Lost`] while the post's key group has no
    /// generation: Redis lost it, and its totals are short until the nodes rebuilt them (a
    /// post woken on them would show its readers a total that drops).
    fn load(&mut self, slug: &str) -> Result<Option<u64>, StoreError> {
        let group = Group::of(slug);
        let (generation, total): (Option<String>, Option<u64>) = self.read("load", |c| {
            redis::pipe()
                .get(group.generation())
                .hget(group.totals(), slug)
                .query(c)
        })?;
        if generation.is_none() && self.cluster.is_some() {
            return Err(StoreError::Lost(format!("the key group of {slug}")));
        }
        Ok(total)
    }

    /// Imports: added in one script per key group, all or nothing within the group, each count
    /// saturating at [`MAX_COUNT`]; the new totals are announced so every node's readers see
    /// them. Presence (reading times and peaks, of this node's readers or of an import) goes
    /// to the node's record, once every view of the call is in Redis, and from the record
    /// into Redis's sums and peaks (see [`crate::cluster::record`]).
    fn add_all(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        _seen: &[Seen<'_>],
        presence: &[PresenceDelta<'_>],
        site: &[(u32, Peak)],
    ) -> Result<(), StoreError> {
        self.add_views(batch, days)?;
        if presence.is_empty() && site.is_empty() {
            return Ok(());
        }
        let Some(cluster) = &self.cluster else {
            return Err(StoreError::Storage(IMPORT_THROUGH_A_NODE.into()));
        };
        cluster.presence(presence, site);
        Ok(())
    }

    /// One pipeline per key group among `rows` (a Redis Cluster routes a pipeline by its first
    /// key), so a drain of many moved posts costs at most 16 round trips, not one per post.
    fn presence_of(&mut self, rows: &[(&str, u32)]) -> Result<Vec<DayPresence>, StoreError> {
        let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
        for (i, &(slug, _)) in rows.iter().enumerate() {
            groups.entry(Group::of(slug)).or_default().push(i);
        }
        let mut all = vec![DayPresence::default(); rows.len()];
        for (group, at) in groups {
            let mut pipe = redis::pipe();
            for &i in &at {
                let (slug, day) = rows[i];
                let fields: Vec<String> = (0..MEASURES).map(|m| read_field(slug, m)).collect();
                pipe.cmd("HMGET").arg(group.reads(day)).arg(fields);
                pipe.hget(group.peaks(day), slug);
            }
            let replies: Vec<(Vec<Option<u64>>, Option<String>)> = self.read("presence", |c| {
                let replies: Vec<Value> = pipe.query(c)?;
                replies
                    .chunks(2)
                    .map(|r| Ok((from_redis_value(&r[0])?, from_redis_value(&r[1])?)))
                    .collect()
            })?;
            for (i, (counts, peak)) in at.into_iter().zip(replies) {
                let presence = &mut all[i];
                for (m, count) in counts.into_iter().enumerate() {
                    set_measure(&mut presence.reads, m, count.unwrap_or(0));
                }
                presence.peak = peak.as_deref().and_then(parse_peak).unwrap_or_default();
            }
        }
        Ok(all)
    }

    fn day_presence(&mut self, day: u32) -> Result<Vec<(String, DayPresence)>, StoreError> {
        let mut all = BTreeMap::new();
        for group in Group::all() {
            self.presence_on(group, day, &mut all)?;
        }
        Ok(all.into_iter().collect())
    }

    fn all_presence(&mut self) -> Result<Vec<(String, u32, DayPresence)>, StoreError> {
        let mut rows = Vec::new();
        for (group, days) in self.known_days()? {
            for day in days {
                let mut posts = BTreeMap::new();
                self.presence_on(group, day, &mut posts)?;
                rows.extend(posts.into_iter().map(|(slug, p)| (slug, day, p)));
            }
        }
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(rows)
    }

    fn site_peaks(&mut self, days: &[u32]) -> Result<Vec<Peak>, StoreError> {
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let key = Group::SITE.site_peaks();
        let peaks: Vec<Option<String>> = self.read("site peaks", |c| {
            redis::cmd("HMGET").arg(&key).arg(days).query(c)
        })?;
        Ok(peaks
            .iter()
            .map(|p| p.as_deref().and_then(parse_peak).unwrap_or_default())
            .collect())
    }

    fn all_site_peaks(&mut self) -> Result<Vec<(u32, Peak)>, StoreError> {
        let key = Group::SITE.site_peaks();
        let peaks: BTreeMap<u32, String> = self.read("site peaks", |c| c.hgetall(&key))?;
        Ok(peaks
            .into_iter()
            .filter_map(|(day, p)| Some((day, parse_peak(&p)?)))
            .collect())
    }

    fn days_of(&mut self, slug: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        let group = Group::of(slug);
        let mut pipe = redis::pipe();
        for &day in days {
            pipe.hget(group.day(day), slug);
        }
        let views: Vec<Option<u64>> = self.read("history", |c| pipe.query(c))?;
        Ok(views.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn day(&mut self, day: u32) -> Result<Vec<(String, u64)>, StoreError> {
        let groups: Vec<Vec<(String, u64)>> =
            self.each_group("day", |g| g.day(day), |c, key| c.hgetall(key))?;
        Ok(sorted(groups.into_iter().flatten().collect()))
    }

    /// Each group's days from its set of days (no `SCAN`, which a Redis Cluster answers per
    /// master), then each day's hash.
    fn all_days(&mut self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let mut rows = Vec::new();
        for (group, days) in self.known_days()? {
            for day in days {
                let key = group.day(day);
                let views: Vec<(String, u64)> = self.read("days", |c| c.hgetall(&key))?;
                rows.extend(views.into_iter().map(|(slug, v)| (slug, day, v)));
            }
        }
        Ok(sorted(rows))
    }

    /// Redis keeps the readers' dedupe records (their slices expire by themselves).
    fn seen(&mut self, _slug: &str, _since: u64) -> Result<Vec<(ReaderKey, u64)>, StoreError> {
        Ok(Vec::new())
    }

    fn forget_seen_before(&mut self, _cutoff: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let groups: Vec<Vec<(String, u64)>> =
            self.each_group("totals", Group::totals, |c, key| c.hgetall(key))?;
        Ok(sorted(groups.into_iter().flatten().collect()))
    }

    fn row_count(&mut self) -> Result<u64, StoreError> {
        let groups: Vec<u64> = self.each_group("posts", Group::totals, |c, key| c.hlen(key))?;
        Ok(groups.into_iter().sum())
    }
}

/// An import's rows of one key group: one row per field (the script checks each against the
/// count before the import), totals by slug and views by (day, slug).
type Rows<'a> = (BTreeMap<&'a str, u64>, BTreeMap<(u32, &'a str), u64>);

/// How long an import's marks outlive a run cut short: a rerun within it skips the groups
/// that run applied.
const IMPORT_MARK_SECS: u64 = 24 * 60 * 60;

/// An import's id: a hash of all its rows, the same for the same rows (so a run of the same
/// import again finds the marks of the groups an earlier run applied), whichever node takes
/// it.
fn import_id(groups: &BTreeMap<Group, Rows<'_>>) -> u64 {
    let mut text = String::new();
    for (totals, per_day) in groups.values() {
        for (slug, delta) in totals {
            text.push_str(&format!("t {slug} {delta}\n"));
        }
        for ((day, slug), views) in per_day {
            text.push_str(&format!("d {day} {slug} {views}\n"));
        }
    }
    IMPORT_ID_KEY.hash_all(&[text.as_bytes()])
}

/// The key of [`import_id`]'s hash: fixed, as every node must give the same rows the same id.
const IMPORT_ID_KEY: HashKey = HashKey([0x7663_2d69_6d70_6f72, 0x7420_6964_206b_6579]);

/// The import script's call for one key group's rows (see [`IMPORT`]).
fn import_of<'a>(
    group: Group,
    record: &str,
    id: u64,
    totals: &BTreeMap<&str, u64>,
    per_day: &BTreeMap<(u32, &str), u64>,
    mode: &str,
) -> redis::ScriptInvocation<'a> {
    let mut import = IMPORT_SCRIPT.prepare_invoke();
    import
        .key(group.totals())
        .key(group.part(record))
        .key(group.generation())
        .key(group.days())
        .key(group.import_mark(id))
        .arg(EVENTS)
        .arg(totals.len());
    let all = totals.values().fold(0, |all, &v| add_counts(all, v));
    import
        .arg(all)
        .arg(MAX_COUNT - all)
        .arg(mode)
        .arg(IMPORT_MARK_SECS);
    for (slug, &delta) in totals {
        import
            .arg(*slug)
            .arg(delta)
            .arg(MAX_COUNT - delta)
            .arg(*slug);
    }
    for (&(day, slug), &views) in per_day {
        import
            .key(group.day(day))
            .arg(slug)
            .arg(views)
            .arg(MAX_COUNT - views)
            .arg(day_field(day, slug));
    }
    import
}

#[cfg(test)]
mod tests {
    use redis::Commands;

    use super::*;
    use crate::cluster::counter::tests::{Server, conn, day_key, totals_key};
    use crate::cluster::keys::measures;

    /// A node's store, whose parts are of the current generation (as a rebuild leaves them).
    fn store(server: &Server) -> RedisStore {
        let mut c = conn(server);
        for group in Group::all() {
            let _: () = c.set(group.generation(), "g1").unwrap();
            let _: () = c.hset(group.part("test"), "#gen", "g1").unwrap();
        }
        let mut store =
            RedisStore::standalone(&RedisUrl::from(server.url()), None, Duration::from_secs(2))
                .expect("a Redis URL");
        store.record = Some("test".into());
        store
    }

    fn views(slug: &str, views: u64) -> DayViews<'_> {
        DayViews {
            slug,
            day: 20261202,
            views,
        }
    }

    /// Redis's `total_reads_processed`: one read event per request the client wrote (a sync
    /// client writes a pipeline at once and waits; Redis reads up to 16 KB at a time).
    fn reads_processed(c: &mut redis::Connection) -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
        testkit::info_field(&info, "total_reads_processed")
            .and_then(|n| n.parse().ok())
            .expect("INFO stats gives total_reads_processed")
    }

    /// The writer tells a following dashboard every post whose presence moved, from its one
    /// thread that also loads the posts being woken: 200 posts cost one pipeline per key
    /// group, not 200 round trips, and each row gets its own post's numbers.
    #[test]
    fn the_presence_of_many_posts_is_read_in_a_round_trip_per_key_group_each_row_its_own() {
        let Some(server) = Server::start() else {
            return;
        };
        let mut c = conn(&server);
        let day = 20261202;
        let slugs: Vec<String> = (0..200).map(|i| format!("post-{i}")).collect();
        for (i, slug) in slugs.iter().enumerate() {
            let group = Group::of(slug);
            let _: () = c
                .hset(group.reads(day), read_field(slug, 3), i + 1)
                .unwrap();
            let _: () = c
                .hset(group.peaks(day), slug, format!("{} 1000", i + 2))
                .unwrap();
        }
        let mut store = store(&server);
        // Connected, and one row past the days it has, before counting.
        assert_eq!(
            store.presence_of(&[("absent", day - 1)]).unwrap(),
            [DayPresence::default()]
        );
        let rows: Vec<(&str, u32)> = slugs.iter().map(|s| (s.as_str(), day)).collect();
        let before = reads_processed(&mut c);
        let presence = store.presence_of(&rows).unwrap();
        let reads = reads_processed(&mut c) - before - 1;
        assert!(reads <= 2 * 16, "{reads} round trips for 200 posts");
        for (i, p) in presence.iter().enumerate() {
            assert_eq!(measures(&p.reads)[3], i as u64 + 1, "{}", slugs[i]);
            assert_eq!(
                p.peak,
                Peak {
                    live: i as u64 + 2,
                    at: 1000
                }
            );
        }
    }

    /// Views may land between the writer's read and the import: the script stops each count
    /// at the largest against what Redis holds then, and applies every row.
    #[test]
    fn an_import_that_goes_past_the_largest_count_stops_every_row_there_and_applies_all() {
        let Some(server) = Server::start() else {
            return;
        };
        let mut c = conn(&server);
        let _: () = c.hset(totals_key("alpha"), "alpha", 5).unwrap();
        let _: () = c.hset(totals_key("beta"), "beta", MAX_COUNT - 10).unwrap();
        let _: () = c
            .hset(day_key("beta", 20261202), "beta", MAX_COUNT - 1)
            .unwrap();

        let mut redis = store(&server);
        redis
            .add(
                &[("alpha", 3), ("beta", 100), ("gamma", MAX_COUNT)],
                &[views("beta", 100), views("gamma", 7)],
                &[],
            )
            .expect("applied");
        let mut totals = redis.totals().unwrap();
        totals.sort();
        let want = [("alpha", 8), ("beta", MAX_COUNT), ("gamma", MAX_COUNT)];
        assert_eq!(totals, want.map(|(s, t)| (s.to_owned(), t)));
        assert_eq!(
            redis.day(20261202).unwrap(),
            [("beta".to_owned(), MAX_COUNT), ("gamma".to_owned(), 7)]
        );
        assert_eq!(
            redis.all_days().unwrap(),
            [
                ("beta".to_owned(), 20261202, MAX_COUNT),
                ("gamma".to_owned(), 20261202, 7)
            ],
            "every group's days, without a SCAN"
        );
    }

    /// An import through a node is one script per key group: cut short after one group (Redis
    /// gone between two applies), the same import run again applies the rest and adds the
    /// first group's rows once, not twice. Once whole, its marks go: the same rows imported
    /// again later add again, as on a single node.
    #[test]
    fn an_import_cut_short_after_a_key_group_and_run_again_adds_every_row_once() {
        let Some(server) = Server::start() else {
            return;
        };
        let mut full = store(&server);
        let slugs = ["alpha", "beta", "gamma"];
        let mut groups: Vec<Group> = slugs.iter().map(|s| Group::of(s)).collect();
        groups.sort();
        groups.dedup();
        assert_eq!(groups.len(), 3, "three key groups");
        let mut c = conn(&server);
        let mut cut_short = store(&server);
        cut_short.cut_after = Some(1);
        let rows = [("alpha", 3), ("beta", 4), ("gamma", 5)];
        let days = [views("alpha", 3), views("beta", 4), views("gamma", 5)];
        let err = cut_short.add(&rows, &days, &[]).unwrap_err().to_string();
        assert!(err.contains("1 of the import's 3 key groups"), "{err}");

        full.add(&rows, &days, &[]).expect("the rest applied");
        let want = |n: u64| rows.map(|(s, v)| (s.to_owned(), v * n)).to_vec();
        assert_eq!(full.totals().unwrap(), want(1));
        assert_eq!(full.day(20261202).unwrap(), want(1));
        let marks: Vec<String> = c.keys("vc:*:import:*").unwrap();
        assert_eq!(marks, Vec::<String>::new(), "whole: no mark left");
        full.add(&rows, &days, &[]).expect("imported again");
        assert_eq!(full.totals().unwrap(), want(2));
    }

    /// Redis does not undo a script's (nor a MULTI's) earlier writes when a later one fails:
    /// a value that is not a count must refuse the import before anything is written, in its
    /// own key group (`theta` is of `alpha`'s) and in the others (`beta`'s).
    #[test]
    fn an_import_that_meets_a_value_that_is_not_a_count_writes_nothing() {
        let Some(server) = Server::start() else {
            return;
        };
        assert_eq!(Group::of("alpha"), Group::of("theta"));
        let mut c = conn(&server);
        let _: () = c
            .hset_multiple(totals_key("alpha"), &[("alpha", "5"), ("theta", "lots")])
            .unwrap();

        let rows = [("alpha", 1), ("beta", 1), ("theta", 1)];
        let err = store(&server).add(&rows, &[views("alpha", 1), views("beta", 1)], &[]);
        assert!(err.is_err(), "{err:?}");
        let alpha: u64 = c.hget(totals_key("alpha"), "alpha").unwrap();
        let beta: Option<u64> = c.hget(totals_key("beta"), "beta").unwrap();
        let day: bool = c.exists(day_key("alpha", 20261202)).unwrap();
        assert_eq!((alpha, beta, day), (5, None, false));
    }
}
