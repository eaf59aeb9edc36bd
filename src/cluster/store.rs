//! The writer's [`Store`] in cluster mode: totals and days are Redis's (`vc:totals`,
//! `vc:day:YYYYMMDD`), so the owner's reads (`/totals`, `/history`, `/top`, `/daily`, a
//! sleeping post's `/count`) and imports speak for the whole cluster. Counted views do not
//! come through here: each is one script call from its post (`cluster::counter`).
//!
//! It runs on the writer thread, so it uses a blocking connection whose reads and writes time
//! out after `--redis-timeout`; while the cluster finds Redis down it fails at once, and the
//! writer answers from what it remembers.

use std::sync::Arc;
use std::time::Duration;

use redis::{Commands, ConnectionLike};

use crate::cluster::Cluster;
use crate::cluster::counter::{day_key, totals_key};
use crate::cluster::link::EVENTS;
use crate::secret::RedisUrl;
use crate::storage::store::{DayViews, Seen, Store, StoreError};

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    /// A node's: whose health it reads and reports. `None` for `export`/`import --redis`.
    cluster: Option<Arc<Cluster>>,
    conn: Option<redis::Connection>,
}

impl RedisStore {
    /// The store of a node in the cluster.
    pub(crate) fn new(url: &RedisUrl, cluster: Arc<Cluster>) -> Result<Self, StoreError> {
        let mut store = Self::standalone(url, cluster.timeout())?;
        store.cluster = Some(cluster);
        Ok(store)
    }

    /// Redis read and written directly (`export --redis`, `import --redis`).
    pub fn standalone(url: &RedisUrl, timeout: Duration) -> Result<Self, StoreError> {
        // `url` prints with its password masked.
        let client = redis::Client::open(url.expose())
            .map_err(|e| StoreError::Storage(format!("--redis \"{url}\": {e}")))?;
        Ok(Self {
            client,
            timeout,
            cluster: None,
            conn: None,
        })
    }

    /// Runs `op` on the connection (made if needed); a failure drops it and marks Redis down.
    /// For writes (imports): never tried twice, a write that failed may have been applied.
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
            self.conn = None;
            if let Some(cluster) = &self.cluster {
                cluster.health().failed(what, &e);
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

    /// Imports: added atomically, then announced so every node's readers see the new totals.
    fn add(
        &mut self,
        batch: &[(&str, u64)],
        days: &[DayViews<'_>],
        _seen: &[Seen<'_>],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in days {
            pipe.hincr(day_key(d.day), d.slug, d.views).ignore();
        }
        for &(slug, delta) in batch {
            pipe.hincr(totals_key(), slug, delta);
        }
        let totals: Vec<u64> = self.with("import", |c| pipe.query(c))?;
        let mut announce = redis::pipe();
        for (&(slug, _), total) in batch.iter().zip(totals) {
            announce
                .publish(EVENTS, format!("t {slug} {total}"))
                .ignore();
        }
        // The totals are written; a lost announcement is healed when posts next wake.
        let _ = self.with("announce", |c| announce.query::<()>(c));
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
