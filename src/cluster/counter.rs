//! One counted view in Redis: the dedupe marker, the total, the day and the announcement in
//! one Lua script, so one round trip counts it and a retry (an outbox replay after a lost
//! reply, or a timed-out call that ran late) cannot count it twice.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::cluster::link::{EVENTS, Link, LinkError};

/// How long an op is remembered: longer than any outage the outbox rides out in practice, so a
/// replay after a lost reply, or a call that ran late, adds nothing even once the reader's
/// dedupe marker (`--dedupe-window`) has expired.
const OP_MEMORY_MS: u64 = 24 * 60 * 60 * 1000;

/// KEYS: the op key, the reader's marker, `vc:totals`, the day's hash. ARGV: slug, window in
/// ms (0: no dedupe), channel, op memory in ms.
///
/// The op key records what the op's first run decided (`c` counted, `d` deduplicated); a later
/// run of the same op answers that again and adds nothing. `SET … NX GET` (Redis 7.0) sets it
/// and reads what an earlier run left in one command.
const SCRIPT: &str = r#"
local function total() return tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') end
local earlier = redis.call('SET', KEYS[1], 'c', 'NX', 'GET', 'PX', ARGV[4])
if earlier then return {earlier == 'c' and 1 or 0, total()} end
if tonumber(ARGV[2]) > 0 and not redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[4])
  return {0, total()}
end
local t = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('PUBLISH', ARGV[3], 't ' .. ARGV[1] .. ' ' .. t)
return {1, t}
"#;

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

/// What Redis decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The view is in the total (now, or by an earlier run of the same op).
    pub counted: bool,
    /// The post's total after it.
    pub total: u64,
}

pub(crate) fn totals_key() -> &'static str {
    "vc:totals"
}

pub(crate) fn day_key(day: u32) -> String {
    format!("vc:day:{day}")
}

/// Slugs and reader ids never hold a space, so "slug reader" is unambiguous.
fn seen_key(slug: &str, reader: &str) -> String {
    format!("vc:seen:{slug} {reader}")
}

/// Counts `view` once per dedupe window (`window` zero: every view counts, once per op).
pub(crate) async fn count(
    link: &Link,
    view: &View,
    window: Duration,
) -> Result<Counted, LinkError> {
    let window_ms = window.as_millis().min(u64::MAX as u128) as u64;
    let mut invocation = COUNT.prepare_invoke();
    invocation
        .key(format!("vc:op:{}", view.op))
        .key(seen_key(&view.slug, &view.reader))
        .key(totals_key())
        .key(day_key(view.day))
        .arg(&view.slug)
        .arg(window_ms)
        .arg(EVENTS)
        .arg(OP_MEMORY_MS);
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
mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A `redis-server` of the test's own on a free loopback port, killed on drop. `None` (the
    /// test says it was skipped) without `redis-server`; under `CI=true` that fails instead.
    struct Server {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Option<Self> {
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

        fn url(&self) -> String {
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

    async fn connected(server: &Server) -> Link {
        let (pushes, _) = tokio::sync::mpsc::unbounded_channel();
        let link =
            Link::new(&server.url().into(), Duration::from_secs(2), pushes).expect("a Redis URL");
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

        let first = view("reader-one", "node-1");
        assert_eq!(count(&link, &first, window).await.unwrap(), once(true, 1));
        assert_eq!(count(&link, &first, window).await.unwrap(), once(true, 1));

        // The marker expires (deleted here rather than waited for): a rerun still adds nothing.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(seen_key("alpha", "reader-one"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(count(&link, &first, window).await.unwrap(), once(true, 1));

        // Another view of another reader counts; one of the same reader within the window
        // does not, and its rerun stays not counted.
        let second = view("reader-two", "node-2");
        assert_eq!(count(&link, &second, window).await.unwrap(), once(true, 2));
        let repeat = view("reader-two", "node-3");
        assert_eq!(count(&link, &repeat, window).await.unwrap(), once(false, 2));
        assert_eq!(count(&link, &repeat, window).await.unwrap(), once(false, 2));

        // No window: every op counts, each once.
        let open = view("reader-two", "node-4");
        assert_eq!(
            count(&link, &open, Duration::ZERO).await.unwrap(),
            once(true, 3)
        );
        assert_eq!(
            count(&link, &open, Duration::ZERO).await.unwrap(),
            once(true, 3)
        );
    }
}
