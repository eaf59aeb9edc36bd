//! One counted view in Redis: the dedupe marker, the total, the day and the announcement in
//! one Lua script, so one round trip counts it and a retry (an outbox replay after a lost
//! reply, or a timed-out call that ran late) cannot count it twice.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::cluster::keys::{Group, day_field};
use crate::cluster::link::{Link, LinkError, post_channel};
use crate::posts::cluster_port::Counted;

/// How long an op is remembered: longer than any outage the outbox rides out in practice, so a
/// replay after a lost reply, or a call that ran late, adds nothing even once the reader's
/// dedupe marker (`--dedupe-window`) has expired.
const OP_MEMORY_MS: u64 = 24 * 60 * 60 * 1000;

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
/// one hash slot of a Redis Cluster: the op key, the reader's marker, the group's totals, the
/// day's hash, this record's part, the group's generation, the group's set of days. ARGV:
/// slug, window in ms (0: no dedupe), channel, op memory in ms, the part's field of the day,
/// the op, the day.
///
/// The announcement names the op (`t slug total op`): the node that sent it learns its fate
/// even when its call timed out and the script ran late (see [`crate::cluster::fate`]).
///
/// A part not of the current generation (Redis lost it, or the node has not added it yet) is
/// refused with `VCREBUILD`: the view waits in the outbox until the node rebuilt its part, so
/// the sums never hold a view that the rebuild then adds again. A counted view moves the
/// sums and the part together (see [`crate::cluster::record`]).
///
/// The op key records what the op's first run decided (`c` counted, `d` deduplicated); a later
/// run of the same op answers that again and adds nothing.
///
/// Redis does not undo a script's writes when a later command in it fails, so everything that
/// can fail is read and checked before the first write: the total and the day are counts
/// `HINCRBY` takes, and one at [`crate::storage::MAX_COUNT`] stays there (the view is still
/// counted, its marker set). Counts travel as Redis's own strings (see [`lua_counts`]).
const SCRIPT: &str = concat!(
    lua_counts!(),
    r#"
local gen = redis.call('GET', KEYS[6])
if not gen or redis.call('HGET', KEYS[5], '#gen') ~= gen then
  return redis.error_reply('VCREBUILD the part of this node is not of this generation: rebuild first')
end
local earlier = redis.call('GET', KEYS[1])
local total = redis.call('HGET', KEYS[3], ARGV[1]) or '0'
if earlier then return {earlier == 'c' and 1 or 0, total} end
local day = redis.call('HGET', KEYS[4], ARGV[1]) or '0'
if not is_count(total) or not is_count(day) then
  return redis.error_reply('the views of ' .. ARGV[1] .. ' in ' .. KEYS[3] .. ' or ' .. KEYS[4] .. ' are not a count')
end
local part = redis.call('HMGET', KEYS[5], ARGV[1], ARGV[5], '#n')
for i = 1, 3 do
  part[i] = part[i] or '0'
  if not is_count(part[i]) then
    return redis.error_reply('the views of ' .. ARGV[1] .. ' in ' .. KEYS[5] .. ' are not a count')
  end
end
-- Checked: nothing below fails.
if tonumber(ARGV[2]) > 0 and not redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[4])
  return {0, total}
end
redis.call('SET', KEYS[1], 'c', 'PX', ARGV[4])
if total ~= MAX then
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  total = redis.call('HGET', KEYS[3], ARGV[1])
end
if day ~= MAX then redis.call('HINCRBY', KEYS[4], ARGV[1], 1) end
redis.call('SADD', KEYS[7], ARGV[7])
for i, field in ipairs({ARGV[1], ARGV[5], '#n'}) do
  if part[i] ~= MAX then redis.call('HINCRBY', KEYS[5], field, 1) end
end
redis.call('PUBLISH', ARGV[3], 't ' .. ARGV[1] .. ' ' .. total .. ' ' .. ARGV[6])
return {1, total}
"#
);

/// The longest dedupe window given to Redis (about 100 years): `SET … PX` refuses an expiry
/// past the end of its clock, and the window is the first write of a view.
const MAX_WINDOW_MS: u64 = 100 * 366 * 24 * 60 * 60 * 1000;

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
    record: &str,
) -> Result<Counted, LinkError> {
    let window_ms = window.as_millis().min(u128::from(MAX_WINDOW_MS)) as u64;
    let group = Group::of(&view.slug);
    let mut invocation = COUNT.prepare_invoke();
    invocation
        .key(group.op(&view.op))
        .key(group.seen(&view.slug, &view.reader))
        .key(group.totals())
        .key(group.day(view.day))
        .key(group.part(record))
        .key(group.generation())
        .key(group.days())
        .arg(&view.slug)
        .arg(window_ms)
        .arg(post_channel(&view.slug))
        .arg(OP_MEMORY_MS)
        .arg(day_field(view.day, &view.slug))
        .arg(&view.op)
        .arg(view.day);
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
    const PART: &str = "test";

    /// Parts of the current generation in every group, as a rebuild leaves them.
    fn sealed(server: &Server) {
        let mut c = conn(server);
        for group in Group::all() {
            let _: () = c.set(group.generation(), "g1").unwrap();
            let _: () = c.hset(group.part(PART), "#gen", "g1").unwrap();
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
        let link = Link::new(&server.url().into(), None, Duration::from_secs(2), pushes)
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
    /// runs twice. The second run must add nothing, also once the reader's dedupe marker has
    /// expired (an outage longer than the window), and with no window at all.
    #[tokio::test]
    async fn a_second_run_of_one_op_adds_nothing_whether_or_not_the_marker_is_still_there() {
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

        // The marker expires (deleted here rather than waited for): a rerun still adds nothing.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(Group::of("alpha").seen("alpha", "reader-one"))
            .query_async(&mut conn)
            .await
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
    /// count must fail the view before its op key or its reader's marker is written.
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
        let op: bool = c.exists(Group::of("alpha").op(&view.op)).unwrap();
        let marker: bool = c
            .exists(Group::of("alpha").seen(&view.slug, &view.reader))
            .unwrap();
        let day: bool = c.exists(day_key("alpha", view.day)).unwrap();
        assert_eq!((op, marker, day), (false, false, false));
        assert!(link.health.is_up(), "Redis answered: it is not down");
    }
}
