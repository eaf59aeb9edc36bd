//! The writer's [`Store`] in cluster mode: totals and days are Redis's (`vc:totals`,
//! `vc:day:YYYYMMDD`), so the owner's reads (`/totals`, `/history`, `/top`, `/daily`, a
//! sleeping post's `/count`) and imports speak for the whole cluster. Counted views do not
//! come through here: each is one script call from its post (`cluster::counter`).
//!
//! It runs on the writer thread, so it uses a blocking connection whose reads and writes time
//! out after `--redis-timeout`; while the cluster finds Redis down it fails at once, and the
//! writer answers from what it remembers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Commands, ConnectionLike, IntoConnectionInfo, Script};

use crate::cluster::counter::{day_field, day_key, gen_key, lua_counts, totals_key};
use crate::cluster::link::{self, EVENTS, is_unavailable};
use crate::cluster::{Cluster, Settings};
use crate::secret::RedisUrl;
use crate::storage::presence::Peak;
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
/// KEYS: `vc:totals`, the node's part, `vc:gen`, then the day's hash of each day row. ARGV:
/// the channel, the number of total rows, the views of all total rows and `MAX_COUNT` minus
/// them (for `#n`), then (field, delta, limit, part field) for each total row and then each
/// day row; `limit` is `MAX_COUNT - delta`: a count above it saturates at `MAX_COUNT` (views
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
local totals = tonumber(ARGV[2])
local plan = {}
local n = redis.call('HGET', KEYS[2], '#n') or '0'
if not is_count(n) then return redis.error_reply('nothing imported: #n in ' .. KEYS[2] .. ' is not a count') end
for i = 1, totals + #KEYS - 3 do
  local key = i <= totals and KEYS[1] or KEYS[i - totals + 3]
  local at = 4 + 4 * (i - 1)
  local field, delta, limit, part = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local current = redis.call('HGET', key, field) or '0'
  local in_part = redis.call('HGET', KEYS[2], part) or '0'
  if not is_count(current) or not is_count(in_part) then
    return redis.error_reply('nothing imported: ' .. field .. ' in ' .. key .. ' is not a count')
  end
  plan[i] = {key, field, delta, above(current, limit), part, above(in_part, limit)}
end
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
    timeout: Duration,
    /// A node's: whose health it reads and reports, and whose record takes imports. `None`
    /// for `export --redis`.
    cluster: Option<Arc<Cluster>>,
    /// The importing node's part (see [`IMPORT`]); `None`: imports are refused.
    part: Option<String>,
    conn: Option<redis::Connection>,
}

impl RedisStore {
    /// The store of a node in the cluster.
    pub(crate) fn new(settings: &Settings, cluster: Arc<Cluster>) -> Result<Self, StoreError> {
        let mut store =
            Self::standalone(&settings.redis, settings.ca.as_deref(), cluster.timeout())?;
        store.part = Some(cluster.record_part());
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
        let client = url
            .expose()
            .into_connection_info()
            .map_err(|e| e.to_string())
            .and_then(|info| link::client(info, ca))
            .map_err(|e| StoreError::Storage(format!("--redis \"{url}\": {e}")))?;
        Ok(Self {
            client,
            timeout,
            cluster: None,
            part: None,
            conn: None,
        })
    }

    /// Runs `op` on the connection (made if needed). Failing to reach Redis drops the
    /// connection and marks Redis down; Redis refusing the call (an import it found a
    /// non-count in) does neither. Writes are never tried twice.
    fn with<T>(
        &mut self,
        what: &'static str,
        op: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run(what, false, op)
    }

    /// A read: the connection kept from before Redis restarted fails once ("unexpected end of
    /// file": the old server closed it), so a read that finds it dropped is tried once more on
    /// a fresh one. Not after a timeout: a stalled Redis must not cost two of them.
    fn read<T>(
        &mut self,
        what: &'static str,
        op: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run(what, true, op)
    }

    fn run<T>(
        &mut self,
        what: &'static str,
        retry_dropped: bool,
        op: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        if self.cluster.as_ref().is_some_and(|c| !c.is_up()) {
            return Err(StoreError::Storage("Redis is down".into()));
        }
        let mut outcome = self.connection().and_then(&op);
        let dropped = |e: &redis::RedisError| {
            !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
        };
        if retry_dropped && outcome.as_ref().is_err_and(dropped) {
            self.conn = None;
            outcome = self.connection().and_then(&op);
        }
        outcome.map_err(|e| {
            if is_unavailable(&e) {
                self.conn = None;
                if let Some(cluster) = &self.cluster {
                    cluster.health().failed(what, &e);
                }
            }
            StoreError::Storage(format!("Redis: {e}"))
        })
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.as_ref().is_none_or(|c| !c.is_open()) {
            let timeout = self.timeout;
            let conn = self.client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

fn sorted<T: Ord>(mut rows: Vec<T>) -> Vec<T> {
    rows.sort();
    rows
}

impl Store for RedisStore {
    fn load(&mut self, slug: &str) -> Result<Option<u64>, StoreError> {
        self.read("load", |c| c.hget(totals_key(), slug))
    }

    /// Imports: added in one script, all or nothing, each count saturating at [`MAX_COUNT`];
    /// the new totals are announced so every node's readers see them. Presence (reading
    /// times, peaks) is not kept in Redis yet.
    fn add_all(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        _seen: &[Seen<'_>],
        _presence: &[PresenceDelta<'_>],
        _site: &[(u32, Peak)],
    ) -> Result<(), StoreError> {
        let Some(part) = self.part.clone() else {
            return Err(StoreError::Storage(IMPORT_THROUGH_A_NODE.into()));
        };
        // One row per field: the script checks each against the count before the import.
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for &(slug, delta) in batch {
            let sum = totals.entry(slug).or_default();
            *sum = add_counts(*sum, delta);
        }
        let mut per_day: BTreeMap<(u32, &str), u64> = BTreeMap::new();
        for d in days {
            let sum = per_day.entry((d.day, d.slug)).or_default();
            *sum = add_counts(*sum, d.views);
        }
        // The main writer flushes reading times and peaks here too, which Redis does not keep.
        if totals.is_empty() && per_day.is_empty() {
            return Ok(());
        }
        let mut import = IMPORT_SCRIPT.prepare_invoke();
        import
            .key(totals_key())
            .key(&part)
            .key(gen_key())
            .arg(EVENTS)
            .arg(totals.len());
        let all = totals.values().fold(0, |all, &v| add_counts(all, v));
        import.arg(all).arg(MAX_COUNT - all);
        for (slug, &delta) in &totals {
            import
                .arg(*slug)
                .arg(delta)
                .arg(MAX_COUNT - delta)
                .arg(*slug);
        }
        for (&(day, slug), &views) in &per_day {
            import
                .key(day_key(day))
                .arg(slug)
                .arg(views)
                .arg(MAX_COUNT - views)
                .arg(day_field(day, slug));
        }
        // Not while this node rebuilds its part: the rebuild's snapshot and its part would
        // disagree on the import.
        let cluster = self.cluster.clone();
        let _fence = cluster.as_ref().map(|c| c.import_fence());
        self.with("import", |c| import.invoke::<()>(c))?;
        if let Some(cluster) = &cluster {
            cluster.imported(&totals, &per_day);
        }
        Ok(())
    }

    fn days_of(&mut self, slug: &str, days: &[u32]) -> Result<Vec<u64>, StoreError> {
        let mut pipe = redis::pipe();
        for &day in days {
            pipe.hget(day_key(day), slug);
        }
        let views: Vec<Option<u64>> = self.read("history", |c| pipe.query(c))?;
        Ok(views.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn day(&mut self, day: u32) -> Result<Vec<(String, u64)>, StoreError> {
        self.read("day", |c| c.hgetall(day_key(day))).map(sorted)
    }

    fn all_days(&mut self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let keys: Vec<String> = self.read("days", |c| {
            c.scan_match::<_, String>("vc:day:*")
                .map(|keys| keys.collect())
        })?;
        let mut rows = Vec::new();
        for key in keys {
            let Some(day) = key.strip_prefix("vc:day:").and_then(|d| d.parse().ok()) else {
                continue;
            };
            let views: Vec<(String, u64)> = self.read("days", |c| c.hgetall(&key))?;
            rows.extend(views.into_iter().map(|(slug, v)| (slug, day, v)));
        }
        Ok(sorted(rows))
    }

    /// Redis keeps the dedupe markers (they expire by themselves).
    fn seen(&mut self, _slug: &str, _since: u64) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }

    fn forget_seen_before(&mut self, _cutoff: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn totals(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read("totals", |c| c.hgetall(totals_key())).map(sorted)
    }

    fn row_count(&mut self) -> Result<u64, StoreError> {
        self.read("posts", |c| c.hlen(totals_key()))
    }
}

#[cfg(test)]
mod tests {
    use redis::Commands;

    use super::*;
    use crate::cluster::counter::tests::{Server, conn};

    /// A node's store, whose part is of the current generation (as a rebuild leaves it).
    fn store(server: &Server) -> RedisStore {
        let mut c = conn(server);
        let _: () = c.set(gen_key(), "g1").unwrap();
        let _: () = c.hset("vc:part:test", "#gen", "g1").unwrap();
        let mut store =
            RedisStore::standalone(&RedisUrl::from(server.url()), None, Duration::from_secs(2))
                .expect("a Redis URL");
        store.part = Some("vc:part:test".into());
        store
    }

    fn views(slug: &str, views: u64) -> DayViews<'_> {
        DayViews {
            slug,
            day: 20261202,
            views,
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
        let _: () = c
            .hset_multiple(totals_key(), &[("alpha", 5), ("beta", MAX_COUNT - 10)])
            .unwrap();
        let _: () = c.hset(day_key(20261202), "beta", MAX_COUNT - 1).unwrap();

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
    }

    /// Redis does not undo a script's (nor a MULTI's) earlier writes when a later one fails:
    /// a value that is not a count must refuse the import before anything is written.
    #[test]
    fn an_import_that_meets_a_value_that_is_not_a_count_writes_nothing() {
        let Some(server) = Server::start() else {
            return;
        };
        let mut c = conn(&server);
        let _: () = c
            .hset_multiple(totals_key(), &[("alpha", "5"), ("gamma", "lots")])
            .unwrap();

        let err = store(&server).add(&[("alpha", 1), ("gamma", 1)], &[views("alpha", 1)], &[]);
        assert!(err.is_err(), "{err:?}");
        let alpha: u64 = c.hget(totals_key(), "alpha").unwrap();
        let day: bool = c.exists(day_key(20261202)).unwrap();
        assert_eq!((alpha, day), (5, false));
    }
}
