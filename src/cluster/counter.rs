//! One counted view in Redis: the dedupe check, the total, the day and the announcement in
//! one Lua script, so one round trip counts it and a retry (an outbox replay after a lost
//! reply, or a timed-out call that ran late) cannot count it twice.
//!
//! What a view leaves in Redis is kept compact (issue 22: at most 48 B per view remembered for
//! the dedupe window, where a key per marker and per op cost 325 B):
//!
//! - **Dedupe:** a reader's view of a post is a 13-byte record, 7 bytes of its fingerprint (a
//!   64-bit SipHash of "slug reader", [`fingerprint`]) and the 6-byte time (Redis's clock, ms)
//!   it was counted at, appended to a string per key group, bucket (the fingerprint's first
//!   byte: 256 a group, so a lookup scans a 256th of the group's views) and time slice. A
//!   slice is one window long; slice `k` goes to the key of parity `k mod 2`, which expires a
//!   window after the slice ends. A view counted at `t` in slice `k` is in the window while
//!   `now - t <= window` (as `SET … PX` kept a marker until `now > t + window`), so its record
//!   is read in slice `k` or `k + 1`: the script reads both parities' keys of the bucket and
//!   compares the times, exact to the ms as before. Slice `k + 2`, the next of the same
//!   parity, starts after the key of slice `k` expired (`(k + 1)·w + w - 1`), so a key never
//!   holds two slices. Every key is the node's to name (the fingerprint picks the bucket,
//!   both parities are passed), so KEYS declares all and the script touches one hash slot.
//!   A record lives a window to two (1.5 on average) and costs 13 B, up to twice that while
//!   Redis's string has room to grow (`APPEND` doubles it).
//! - **Ops:** each node run numbers its ops per key group (`node-RUN SEQ`, [`OpIds`]); what an
//!   op's first run decided is 2 bits (0 not run, 1 deduplicated, 2 counted) at its number in
//!   a bitmap of [`CHUNK_OPS`] ops per (group, run, chunk), `BITFIELD … u2`. A retry reads its
//!   2 bits and answers that decision, adding nothing, whatever became of the reader's record
//!   meanwhile. Numbers are dense per group, so an op costs 2 bits (up to 4 while Redis's
//!   string has room to grow). A chunk is kept [`SETTLED_MS`] once the node knows every op of
//!   it settled (see [`OpIds`] for why a late copy cannot count twice), else [`OP_MEMORY_MS`]
//!   after its last op ran (a node stopped with ops in its outbox, whose replay after a restart
//!   finds their chunks for a day).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::Script;

use crate::cluster::keys::{GROUPS, Group, day_field};
use crate::cluster::link::{Link, LinkError, post_channel};
use crate::edge::reader_id::HashKey;
use crate::posts::cluster_port::Counted;

/// How long an op's decision is remembered after the last op of its chunk ran: longer than any
/// outage the outbox rides out in practice, so a replay after a lost reply, or a call that ran
/// late, adds nothing even once the reader's record is out of the window.
const OP_MEMORY_MS: u64 = 24 * 60 * 60 * 1000;

/// Ops a chunk of op memory holds: 2 bits each, a string of at most 8 KiB.
const CHUNK_OPS: u64 = 1 << 15;

/// The fixed half of the key of the readers' fingerprints (see [`fingerprint`]).
const FINGERPRINT_KEY: HashKey = HashKey([0x7663_2d73_6565_6e31, 0x6973_7375_6532_3237]);

/// The salt of the fingerprints of a key group whose generation (`vc:{gN}:gen`) is
/// `generation`: never 0 (which means "none yet").
pub(crate) fn salt_of(generation: &str) -> u64 {
    FINGERPRINT_KEY
        .hash_all(&[b"salt ", generation.as_bytes()])
        .max(1)
}

/// A reader's fingerprint for `slug`: the bucket (its first byte) and the 7 bytes its record
/// keeps. Slugs never hold a space, so "slug reader" is unambiguous.
///
/// Keyed by the fixed key mixed with `salt`, the group's ([`salt_of`] its generation): every
/// node counting in the group has it (the script refuses a node whose part is of another
/// generation), and nobody without Redis's data knows it. Reader ids are the clients' to
/// choose; with a key anyone could read in this source, a client could pick ids that all
/// fall in one bucket, whose string each of their views would copy and search.
pub(crate) fn fingerprint(slug: &str, reader: &str, salt: u64) -> (u8, [u8; 7]) {
    let key = HashKey([FINGERPRINT_KEY.0[0] ^ salt, FINGERPRINT_KEY.0[1]]);
    let bits = key.hash_all(&[slug.as_bytes(), b" ", reader.as_bytes()]);
    let [bucket, rest @ ..] = bits.to_be_bytes();
    (bucket, rest)
}

/// The op ids of one run of a node: `node-` then 16 hex digits of a random run id and 16 of a
/// sequence number, counted per key group (its low 4 bits are the group), so each group's ops
/// are numbered densely from 0 and their decisions packed 2 bits apiece.
///
/// It also tells when a chunk of this run's ops is settled: every op of it numbered, and each
/// known to be in Redis and never to be sent by this node again (its call answered, or
/// announced, or its outbox row replayed and deleted). Only a copy of a call that timed out
/// can still reach Redis then: queued on a connection the node gave up on, delivered by the
/// kernel's retransmissions (Linux gives up after ~15.5 min, `tcp_retries2`) or by a client
/// retry, or read late by a stalled Redis. The chunk is then kept [`SETTLED_MS`] more instead
/// of [`OP_MEMORY_MS`]: such a copy finds its op's 2 bits and adds nothing. Ops of an earlier
/// run (an outbox replayed after a restart) are not tracked: their chunks keep the full day.
pub(crate) struct OpIds {
    /// `node-` and the run id: every op id of this run starts so.
    prefix: String,
    #[cfg_attr(not(test), allow(dead_code))]
    run: u64,
    next: [AtomicU64; GROUPS as usize],
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// (group, chunk) → ops numbered and not settled.
    ops: HashMap<(u64, u64), u32>,
    /// Chunks settled, whose expiry is not shortened yet.
    settled: Vec<String>,
}

/// How long a settled chunk of ops is kept: twice the time the kernel retransmits a call
/// before it gives up on the connection (see [`OpIds`]).
pub(crate) const SETTLED_MS: u64 = 30 * 60 * 1000;

impl OpIds {
    /// The ops of `node`'s run `run` (random: a restart numbers from 0 again, in new chunks).
    pub(crate) fn new(node: &str, run: u64) -> Self {
        Self {
            prefix: format!("{node}-{run:016x}"),
            run,
            next: std::array::from_fn(|_| AtomicU64::new(0)),
            open: Mutex::default(),
        }
    }

    /// A new op for a post of `group`.
    pub(crate) fn next(&self, group: Group) -> String {
        let g = group.index() as u64;
        let n = self.next[group.index()].fetch_add(1, Ordering::Relaxed);
        *self.lock().ops.entry((g, n / CHUNK_OPS)).or_default() += 1;
        format!("{}{:016x}", self.prefix, n << 4 | g)
    }

    /// `op` is in Redis and this node sends it no more.
    pub(crate) fn settled(&self, op: &str) {
        let Some(seq) = op
            .strip_prefix(self.prefix.as_str())
            .filter(|seq| seq.len() == 16)
            .and_then(|seq| u64::from_str_radix(seq, 16).ok())
        else {
            return;
        };
        let (g, chunk) = (seq & 0xf, (seq >> 4) / CHUNK_OPS);
        let mut open = self.lock();
        let Some(left) = open.ops.get_mut(&(g, chunk)) else {
            return;
        };
        *left = left.saturating_sub(1);
        let numbered = self.next[g as usize].load(Ordering::Relaxed) >= (chunk + 1) * CHUNK_OPS;
        if *left == 0 && numbered {
            open.ops.remove(&(g, chunk));
            if let Some(group) = Group::all().nth(g as usize) {
                open.settled.push(group.ops(&self.prefix, chunk));
            }
        }
    }

    /// The chunks settled since, to be kept [`SETTLED_MS`] from now.
    pub(crate) fn take_settled(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().settled)
    }

    /// Chunks whose expiry could not be shortened (Redis did not answer): tried again later.
    pub(crate) fn unsettled(&self, chunks: Vec<String>) {
        self.lock().settled.extend(chunks);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shortens the expiry of settled chunks of ops to [`SETTLED_MS`] (see [`OpIds`]): a call
/// each (a chunk a group's 32,768 ops; the chunks of a Redis Cluster are on several masters).
pub(crate) async fn expire_settled(link: &Link, ops: &OpIds) {
    let mut chunks = ops.take_settled();
    while let Some(chunk) = chunks.pop() {
        let done: Result<(), LinkError> = link
            .call("expire ops", |mut conn| {
                let chunk = chunk.clone();
                async move {
                    redis::cmd("PEXPIRE")
                        .arg(chunk)
                        .arg(SETTLED_MS)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await;
        if done.is_err() {
            chunks.push(chunk);
            ops.unsettled(chunks);
            return;
        }
    }
}

/// Where an op's decision is kept: its chunk's key and its number in the chunk. The sequence
/// number is the op's last 16 hex digits (an op of an older version, `node-` and 16 random
/// digits, is read the same way: a chunk of its own); anything else is hashed.
fn op_slot(group: Group, op: &str) -> (String, u64) {
    let parsed = op
        .len()
        .checked_sub(16)
        .filter(|at| op.is_char_boundary(*at))
        .and_then(|at| {
            let (prefix, seq) = op.split_at(at);
            let seq = u64::from_str_radix(seq, 16).ok()?;
            Some((prefix.strip_suffix('-').unwrap_or(prefix), seq))
        });
    let (prefix, seq) = parsed.unwrap_or(("?", FINGERPRINT_KEY.hash_all(&[op.as_bytes()])));
    let n = seq >> 4;
    (group.ops(prefix, n / CHUNK_OPS), n % CHUNK_OPS)
}

/// The Lua both scripts start with: `MAX`, [`crate::storage::MAX_COUNT`] as Redis writes it,
/// and `is_count(v)`, true for a string `HINCRBY` reads as a count from 0 to `MAX` (no sign,
/// no leading zero). Counts stay Redis's strings in Lua, whose numbers are doubles, exact only
/// up to 2^53; two counts compare by length, then as text.
macro_rules! lua_counts {
    () => {
        r#"
local MAX = '9223372036854775807'
local function is_count(v)
  return v == '0' or (v:find('^[1-9]%d*$') ~= nil and (#v < #MAX or (#v == #MAX and v <= MAX)))
end
"#
    };
}
pub(crate) use lua_counts;

/// KEYS, all of the post's key group (see [`crate::cluster::keys`]), so the script touches
/// one hash slot of a Redis Cluster: the op's chunk, the reader's bucket in slices of parity 0
/// and 1, the group's totals, the day's hash, this record's part, the group's generation, the
/// group's set of days. ARGV: slug, window in ms (0: no dedupe), channel, op memory in ms,
/// the part's field of the day, the op, the day, the op's number in its chunk, the reader's
/// 7 fingerprint bytes, the time in ms (empty: Redis's clock; tests give theirs).
///
/// The announcement names the op (`t slug total op`): the node that sent it learns its fate
/// even when its call timed out and the script ran late (see [`crate::cluster::fate`]).
///
/// A part not of the current generation (Redis lost it, or the node has not added it yet) is
/// refused with `VCREBUILD`: the view waits in the outbox until the node rebuilt its part, so
/// the sums never hold a view that the rebuild then adds again. A counted view moves the
/// sums and the part together (see [`crate::cluster::record`]).
///
/// The op's 2 bits record what its first run decided (2 counted, 1 deduplicated); a later run
/// of the same op answers that again and adds nothing (see the module's doc).
///
/// Redis does not undo a script's writes when a later command in it fails, so everything that
/// can fail is read and checked before the first write: the total and the day are counts
/// `HINCRBY` takes, and one at [`crate::storage::MAX_COUNT`] stays there (the view is still
/// counted, its reader recorded). Counts travel as Redis's own strings (see [`lua_counts`]).
const SCRIPT: &str = concat!(
    lua_counts!(),
    r#"
local gen = redis.call('GET', KEYS[7])
if not gen or redis.call('HGET', KEYS[6], '#gen') ~= gen then
  return redis.error_reply('VCREBUILD the part of this node is not of this generation: rebuild first')
end
local op = '#' .. ARGV[8]
local earlier = redis.call('BITFIELD', KEYS[1], 'GET', 'u2', op)[1]
local total = redis.call('HGET', KEYS[4], ARGV[1]) or '0'
if earlier ~= 0 then return {earlier == 2 and 1 or 0, total} end
local day = redis.call('HGET', KEYS[5], ARGV[1]) or '0'
if not is_count(total) or not is_count(day) then
  return redis.error_reply('the views of ' .. ARGV[1] .. ' in ' .. KEYS[4] .. ' or ' .. KEYS[5] .. ' are not a count')
end
local part = redis.call('HMGET', KEYS[6], ARGV[1], ARGV[5], '#n')
for i = 1, 3 do
  part[i] = part[i] or '0'
  if not is_count(part[i]) then
    return redis.error_reply('the views of ' .. ARGV[1] .. ' in ' .. KEYS[6] .. ' are not a count')
  end
end
local function decided(v)
  redis.call('BITFIELD', KEYS[1], 'SET', 'u2', op, v)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
-- A record: 7 fingerprint bytes, then the 6-byte time it was counted at (ms, big-endian).
local fp, RECORD = ARGV[9], 13
local function within(key, now, window)
  local records = redis.call('GET', key)
  if not records then return false end
  local at = 1
  while true do
    local found = string.find(records, fp, at, true)
    if not found then return false end
    if (found - 1) % RECORD == 0 then
      local t = 0
      for i = found + 7, found + 12 do t = t * 256 + string.byte(records, i) end
      if now - t <= window then return true end
      at = found + RECORD
    else
      at = found + 1
    end
  end
end
-- Checked: nothing below fails.
local window = tonumber(ARGV[2])
if window > 0 then
  local now = tonumber(ARGV[10])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if within(KEYS[2], now, window) or within(KEYS[3], now, window) then
    decided(1)
    return {0, total}
  end
  local slice = math.floor(now / window)
  local bytes, t = {}, now
  for i = 6, 1, -1 do
    bytes[i] = string.char(t % 256)
    t = math.floor(t / 256)
  end
  local here = KEYS[2 + slice % 2]
  redis.call('APPEND', here, fp .. table.concat(bytes))
  redis.call('PEXPIREAT', here, (slice + 2) * window - 1)
end
decided(2)
if total ~= MAX then
  redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
  total = redis.call('HGET', KEYS[4], ARGV[1])
end
if day ~= MAX then redis.call('HINCRBY', KEYS[5], ARGV[1], 1) end
redis.call('SADD', KEYS[8], ARGV[7])
for i, field in ipairs({ARGV[1], ARGV[5], '#n'}) do
  if part[i] ~= MAX then redis.call('HINCRBY', KEYS[6], field, 1) end
end
redis.call('PUBLISH', ARGV[3], 't ' .. ARGV[1] .. ' ' .. total .. ' ' .. ARGV[6])
return {1, total}
"#
);

/// The longest dedupe window given to Redis (30 years): a record's time and its slice's
/// expiry stay within 6 bytes of ms and Redis's clock.
const MAX_WINDOW_MS: u64 = 30 * 366 * 24 * 60 * 60 * 1000;

/// `EVALSHA`, falling back to `EVAL` (and loading it) after a Redis restart.
static COUNT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// A view to count in Redis, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub slug: String,
    pub reader: String,
    /// Unique per view (node id and a random number): what makes a retry a no-op.
    pub op: String,
    /// `YYYYMMDD`, the day it was counted on (by this node's `--timezone`).
    pub day: u32,
}

/// Redis refused a view because this node's part is not of the current generation.
pub(crate) fn wants_rebuild(e: &LinkError) -> bool {
    matches!(e, LinkError::Redis(e) if e.code() == Some("VCREBUILD"))
}

/// Counts `view` once per dedupe window (`window` zero: every view counts, once per op), into
/// the part of `record` (its id).
pub(crate) async fn count(
    link: &Link,
    view: &View,
    window: Duration,
    part: Part<'_>,
) -> Result<Counted, LinkError> {
    count_at(link, view, window, part, None).await
}

/// What a count needs of this node's part of the view's key group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    /// The record's id: the part is `vc:{gN}:part:{id}`.
    pub record: &'a str,
    /// The fingerprints' salt of the generation the part is of ([`salt_of`]).
    pub salt: u64,
}

/// [`count`] at `now` (ms), or by Redis's clock if `None`: tests set the time to the ms.
async fn count_at(
    link: &Link,
    view: &View,
    window: Duration,
    part: Part<'_>,
    now: Option<u64>,
) -> Result<Counted, LinkError> {
    let window_ms = window.as_millis().min(u128::from(MAX_WINDOW_MS)) as u64;
    let group = Group::of(&view.slug);
    let (chunk, number) = op_slot(group, &view.op);
    let (bucket, fingerprint) = fingerprint(&view.slug, &view.reader, part.salt);
    let mut invocation = COUNT.prepare_invoke();
    invocation
        .key(chunk)
        .key(group.seen(0, bucket))
        .key(group.seen(1, bucket))
        .key(group.totals())
        .key(group.day(view.day))
        .key(group.part(part.record))
        .key(group.generation())
        .key(group.days())
        .arg(&view.slug)
        .arg(window_ms)
        .arg(post_channel(&view.slug))
        .arg(OP_MEMORY_MS)
        .arg(day_field(view.day, &view.slug))
        .arg(&view.op)
        .arg(view.day)
        .arg(number)
        .arg(&fingerprint[..])
        .arg(now.map(|ms| ms.to_string()).unwrap_or_default());
    let (counted, total): (u8, u64) = link
        .call("count", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(Counted {
        counted: counted == 1,
        total,
    })
}

/// Ops read per pipeline by [`counted_before`].
const DECISIONS_CHUNK: usize = 1024;

/// Which of `views` (all of `group`) Redis counted already, by their ops' first decisions:
/// views of the outbox whose call timed out may have run late. One pipeline of `BITFIELD GET`
/// per chunk, all in the group's slot.
pub(crate) async fn counted_before(
    link: &Link,
    group: Group,
    views: &[View],
) -> Result<Vec<bool>, LinkError> {
    let mut counted = Vec::with_capacity(views.len());
    for chunk in views.chunks(DECISIONS_CHUNK) {
        let mut pipe = redis::pipe();
        for view in chunk {
            let (key, number) = op_slot(group, &view.op);
            pipe.cmd("BITFIELD")
                .arg(key)
                .arg("GET")
                .arg("u2")
                .arg(format!("#{number}"));
        }
        let decided: Vec<(u8,)> = link
            .call("decisions", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        // The count script's 2 bits: 2 counted (`decided(2)`), 1 deduplicated, 0 not run.
        counted.extend(decided.into_iter().map(|(d,)| d == 2));
    }
    Ok(counted)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    use redis::Commands;

    use super::*;

    /// A `redis-server` of the test's own on a free loopback port, killed on drop. `None` (the
    /// test says it was skipped) without `redis-server`; under `CI=true` that fails instead.
    pub(crate) struct Server {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        pub(crate) fn start() -> Option<Self> {
            let installed = Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok();
            if !installed {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "redis-server missing"
                );
                eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
                return None;
            }
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("start redis-server");
            Some(Self {
                child,
                port,
                _dir: dir,
            })
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn view(reader: &str, op: &str) -> View {
        View {
            slug: "alpha".into(),
            reader: reader.into(),
            op: op.into(),
            day: 20261202,
        }
    }

    /// The record every test counts into.
    const RECORD: &str = "test";
    /// The record `test`'s part, its generation `g1` ([`sealed`]).
    const PART: Part<'static> = Part {
        record: RECORD,
        salt: 0x5a17,
    };

    /// Parts of the current generation in every group, as a rebuild leaves them.
    fn sealed(server: &Server) {
        let mut c = conn(server);
        for group in Group::all() {
            let _: () = c.set(group.generation(), "g1").unwrap();
            let _: () = c.hset(group.part(RECORD), "#gen", "g1").unwrap();
        }
    }

    pub(crate) fn totals_key(slug: &str) -> String {
        Group::of(slug).totals()
    }

    pub(crate) fn day_key(slug: &str, day: u32) -> String {
        Group::of(slug).day(day)
    }

    pub(crate) async fn connected(server: &Server) -> Link {
        sealed(server);
        let (pushes, _) = tokio::sync::mpsc::unbounded_channel();
        connected_with(server, pushes).await
    }

    /// A link to `server` once it answers, its pushes (messages, the connection dropping)
    /// sent to `pushes`.
    pub(crate) async fn connected_with(
        server: &Server,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Link {
        connected_to(&server.url(), pushes).await
    }

    /// A link to the Redis (or Redis Cluster) at `url`, once it answers.
    pub(crate) async fn connected_to(
        url: &str,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Link {
        let link = Link::new(&url.to_owned().into(), None, Duration::from_secs(2), pushes)
            .expect("a Redis URL");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.connect().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never answered"
            );
            tokio::task::yield_now().await;
        }
        link
    }

    /// What an outbox replay after a lost reply, or a call that ran late, does: the same op
    /// runs twice. The second run must add nothing, also once the reader's record has
    /// expired (an outage longer than the window), and with no window at all.
    #[tokio::test]
    async fn a_second_run_of_one_op_adds_nothing_whether_or_not_its_readers_record_is_still_there()
    {
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let window = Duration::from_secs(1800);
        let once = |counted, total| Counted { counted, total };
        let run = async |view: &View, window| count(&link, view, window, PART).await.unwrap();

        let first = view("reader-one", "node-1");
        assert_eq!(run(&first, window).await, once(true, 1));
        assert_eq!(run(&first, window).await, once(true, 1));

        // The reader's record is gone (deleted here rather than waited for): a rerun still adds
        // nothing.
        let (bucket, _) = fingerprint("alpha", "reader-one", PART.salt);
        let group = Group::of("alpha");
        let _: () = conn(&server)
            .del(&[group.seen(0, bucket), group.seen(1, bucket)])
            .unwrap();
        assert_eq!(run(&first, window).await, once(true, 1));

        // Another view of another reader counts; one of the same reader within the window
        // does not, and its rerun stays not counted.
        let second = view("reader-two", "node-2");
        assert_eq!(run(&second, window).await, once(true, 2));
        let repeat = view("reader-two", "node-3");
        assert_eq!(run(&repeat, window).await, once(false, 2));
        assert_eq!(run(&repeat, window).await, once(false, 2));

        // No window: every op counts, each once.
        let open = view("reader-two", "node-4");
        assert_eq!(run(&open, Duration::ZERO).await, once(true, 3));
        assert_eq!(run(&open, Duration::ZERO).await, once(true, 3));
    }

    /// A connection for the test's own reads and writes.
    pub(crate) fn conn(server: &Server) -> redis::Connection {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let client = redis::Client::open(server.url()).expect("a Redis URL");
            match client.get_connection_with_timeout(Duration::from_millis(200)) {
                Ok(conn) => return conn,
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server never answered: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn view_of(slug: &str, op: &str) -> View {
        View {
            slug: slug.into(),
            reader: format!("reader-of-{op}"),
            op: op.into(),
            day: 20261202,
        }
    }

    /// At the largest count the view is counted and nothing moves past it; below it, a total
    /// past 2^53 (where Lua's doubles stop being exact) moves by exactly one.
    #[tokio::test]
    async fn a_view_at_the_largest_count_is_counted_and_leaves_its_total_and_day_there() {
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let mut c = conn(&server);
        let max = crate::storage::MAX_COUNT;
        let _: () = c.hset(totals_key("alpha"), "alpha", max).unwrap();
        let beta = 9_007_199_254_740_993u64;
        let _: () = c.hset(totals_key("beta"), "beta", beta).unwrap();
        let _: () = c.hset(day_key("alpha", 20261202), "alpha", max).unwrap();
        let window = Duration::from_secs(1800);

        let at_max = count(&link, &view_of("alpha", "op-1"), window, PART).await;
        let at_max = at_max.expect("the script succeeds");
        assert_eq!(
            at_max,
            Counted {
                counted: true,
                total: max
            }
        );
        let total: u64 = c.hget(totals_key("alpha"), "alpha").unwrap();
        let day: u64 = c.hget(day_key("alpha", 20261202), "alpha").unwrap();
        assert_eq!((total, day), (max, max));
        // Its op is remembered like any other: a replay answers the same.
        let again = count(&link, &view_of("alpha", "op-1"), window, PART)
            .await
            .unwrap();
        assert_eq!(again, at_max);

        let exact = count(&link, &view_of("beta", "op-2"), window, PART)
            .await
            .unwrap();
        assert_eq!(exact.total, 9_007_199_254_740_994);
        let day: u64 = c.hget(day_key("beta", 20261202), "beta").unwrap();
        assert_eq!(day, 1);
    }

    /// Redis does not undo a script's writes when a later command fails: a total that is not a
    /// count must fail the view before its op's bits or its reader's record is written.
    #[tokio::test]
    async fn a_total_that_is_not_a_count_fails_the_view_before_anything_is_written() {
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let mut c = conn(&server);
        let _: () = c.hset(totals_key("alpha"), "alpha", "lots").unwrap();
        let view = view_of("alpha", "op-1");
        let err = count(&link, &view, Duration::from_secs(1800), PART).await;
        assert!(err.is_err(), "{err:?}");
        let group = Group::of("alpha");
        let op: bool = c.exists(op_slot(group, &view.op).0).unwrap();
        let (bucket, _) = fingerprint(&view.slug, &view.reader, PART.salt);
        let records: usize = c
            .exists(&[group.seen(0, bucket), group.seen(1, bucket)])
            .unwrap();
        let day: bool = c.exists(day_key("alpha", view.day)).unwrap();
        assert_eq!((op, records, day), (false, 0, false));
        assert!(link.health.is_up(), "Redis answered: it is not down");
    }

    /// A Redis of the test's own counting with a window of [`Clocked::WINDOW_MS`] at times
    /// the test sets, near Redis's clock (`now`), so what the script writes expires when
    /// Redis's own would.
    struct Clocked {
        _server: Server,
        link: Link,
        now: u64,
    }

    impl Clocked {
        const WINDOW_MS: u64 = 60_000;

        async fn start() -> Option<Self> {
            let server = Server::start()?;
            let link = connected(&server).await;
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn(&server)).unwrap();
            Some(Self {
                _server: server,
                link,
                now: secs * 1000 + micros / 1000,
            })
        }

        async fn count(&self, view: &View, at: u64) -> Counted {
            let window = Duration::from_millis(Self::WINDOW_MS);
            let counted = count_at(&self.link, view, window, PART, Some(at)).await;
            counted.unwrap()
        }
    }

    /// The dedupe window is as exact as a marker's `PX` was: a reader counted at `t` is
    /// deduplicated up to `t + window` included and counted again from the next ms on, whether
    /// `t` and the repeat fall in one time slice or in two.
    #[tokio::test]
    async fn a_reader_is_deduplicated_to_the_last_ms_of_the_window_and_counted_one_ms_later() {
        let Some(redis) = Clocked::start().await else {
            return;
        };
        let w = Clocked::WINDOW_MS;
        // The last ms of a slice (a slice is a window long) and the first of the next.
        let last = (redis.now / w + 1) * w - 1;
        let ops = std::cell::Cell::new(0);
        let at = async |reader: &str, now: u64| {
            ops.set(ops.get() + 1);
            let view = view(reader, &format!("op-{}", ops.get()));
            redis.count(&view, now).await.counted
        };
        // Counted in one slice, repeated in the next.
        assert!(at("reader-one", last).await);
        assert!(!at("reader-one", last + w - 1).await);
        assert!(!at("reader-one", last + w).await, "t + window is within it");
        assert!(at("reader-one", last + w + 1).await);
        // Counted and repeated within one slice.
        let first = last + 1;
        assert!(at("reader-two", first).await);
        assert!(!at("reader-two", first + w - 1).await);
        assert!(at("reader-two", first + w + 1).await);
        // Another reader of the same post, and the same reader of another post, count.
        assert!(at("reader-three", first + 5).await);
        let other = View {
            slug: "beta".into(),
            ..view("reader-two", "op-beta")
        };
        assert!(redis.count(&other, first + 5).await.counted);
    }

    /// An op replayed after its reader's window is over (an outbox replayed after a long
    /// outage) still answers what its first run decided, counted or not, and adds nothing.
    #[tokio::test]
    async fn an_op_replayed_after_its_window_is_over_answers_its_first_decision() {
        let Some(redis) = Clocked::start().await else {
            return;
        };
        let run = async |op: &str, at: u64| redis.count(&view("reader-one", op), at).await;
        let counted = Counted {
            counted: true,
            total: 1,
        };
        let now = redis.now;
        assert_eq!(run("node-1", now).await, counted);
        let repeat = run("node-2", now + 1).await;
        assert!(!repeat.counted);
        let later = now + 3 * Clocked::WINDOW_MS;
        assert_eq!(run("node-1", later).await, counted);
        assert_eq!(run("node-2", later).await, repeat);
    }

    /// Issue 22: what a counted view leaves in Redis, its reader's record and its op's
    /// decision, is at most 48 B a view remembered for the window (a key each, 325 B, before).
    /// Every byte Redis counts for every key, totals and days included, over 10,000 readers
    /// of two posts.
    #[tokio::test]
    async fn a_view_remembered_for_the_window_costs_redis_at_most_48_bytes() {
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let mut c = conn(&server);
        let used = |c: &mut redis::Connection| -> u64 {
            let keys: Vec<String> = c.scan_match("vc:*").unwrap().collect();
            keys.iter()
                .map(|key| {
                    let bytes: Option<u64> = redis::cmd("MEMORY")
                        .arg("USAGE")
                        .arg(key)
                        .arg("SAMPLES")
                        .arg(0)
                        .query(c)
                        .unwrap();
                    bytes.unwrap_or(0)
                })
                .sum()
        };
        let before = used(&mut c);
        let ids = OpIds::new("node-1", 0x5eed);
        let views = 10_000;
        for n in 0..views {
            let slug = if n % 2 == 0 { "alpha" } else { "beta" };
            let view = View {
                slug: slug.into(),
                reader: format!("reader-{n:012}"),
                op: ids.next(Group::of(slug)),
                day: 20261207,
            };
            let counted = count(&link, &view, Duration::from_secs(1800), PART).await;
            assert!(counted.unwrap().counted);
        }
        let per_view = (used(&mut c) - before) as f64 / f64::from(views);
        eprintln!("Redis memory per remembered view: {per_view:.1} B");
        assert!(per_view <= 48.0, "{per_view:.1} B a view");
    }

    /// A run's ops are numbered densely per key group: 2 bits each in one chunk, not one
    /// chunk (or key) an op.
    #[test]
    fn a_runs_ops_of_one_group_are_numbered_densely_in_one_chunk() {
        let ids = OpIds::new("node-1", 0x5eed);
        let (alpha, beta) = (Group::of("alpha"), Group::of("beta"));
        let slots: Vec<_> = (0..3)
            .map(|_| {
                let _ = ids.next(beta);
                op_slot(alpha, &ids.next(alpha))
            })
            .collect();
        let chunk = alpha.ops(&format!("node-1-{:016x}", ids.run), 0);
        let first = (chunk.clone(), 0);
        assert_eq!(slots, [first, (chunk.clone(), 1), (chunk, 2)]);
        // An op of an older version (16 random digits) has a slot of its own, the same each run.
        let old = "node-1-00000000deadbeef";
        assert_eq!(op_slot(alpha, old), op_slot(alpha, old));
    }

    /// A settled chunk is kept [`SETTLED_MS`] from then on, not the day every op's run gives
    /// it; a late copy of one of its ops still finds its decision meanwhile.
    #[tokio::test]
    async fn a_settled_chunk_of_ops_is_kept_half_an_hour_not_a_day() {
        let Some(server) = Server::start() else {
            return;
        };
        let link = connected(&server).await;
        let ids = OpIds::new("node-1", 0x5eed);
        let view = View {
            op: ids.next(Group::of("alpha")),
            ..view("reader-one", "")
        };
        let window = Duration::from_secs(1800);
        let first = count(&link, &view, window, PART).await.unwrap();
        let chunk = op_slot(Group::of("alpha"), &view.op).0;
        let ttl =
            |c: &mut redis::Connection| -> u64 { redis::cmd("PTTL").arg(&chunk).query(c).unwrap() };
        let mut c = conn(&server);
        assert!(ttl(&mut c) > SETTLED_MS, "a day while unsettled");
        // As `settled` leaves it once the chunk's last op settles.
        ids.unsettled(vec![chunk.clone()]);
        expire_settled(&link, &ids).await;
        let kept = ttl(&mut c);
        assert!(
            kept <= SETTLED_MS && kept > SETTLED_MS - 60_000,
            "{kept} ms"
        );
        assert_eq!(count(&link, &view, window, PART).await.unwrap(), first);
        assert_eq!(ids.take_settled(), Vec::<String>::new());
    }

    /// A chunk's expiry is shortened once every op of it is numbered and settled, in whatever
    /// order they settle, and not while one is left; ops of other runs and chunks change
    /// nothing.
    #[test]
    fn a_chunk_of_ops_settles_once_every_op_of_it_is_numbered_and_settled() {
        let ids = OpIds::new("node-1", 0x5eed);
        let alpha = Group::of("alpha");
        let mut ops: Vec<String> = (0..CHUNK_OPS).map(|_| ids.next(alpha)).collect();
        let next_chunk = ids.next(alpha);
        let last = ops.remove(CHUNK_OPS as usize / 2);
        for op in &ops {
            ids.settled(op);
        }
        ids.settled("node-1-00000000deadbeef");
        ids.settled(&next_chunk);
        assert_eq!(ids.take_settled(), Vec::<String>::new());
        ids.settled(&last);
        let chunk = op_slot(alpha, &last).0;
        assert_eq!(ids.take_settled(), [chunk]);
        assert_eq!(ids.take_settled(), Vec::<String>::new());
    }
}
