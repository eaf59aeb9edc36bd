//! A real `redis-server` of the test's own, on a free loopback port in a temp dir, killed on
//! drop; and the rule for tools a test needs: without `redis-server` (or `haproxy`) on the
//! PATH a test is skipped, saying so once and how to run it, unless `CI` is `true` (or `1`),
//! where a missing tool fails the test.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tempfile::TempDir;

use crate::http::closed_port;

/// How long a fresh (or restarted) `redis-server` gets to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// One command of the test's own: a paused Redis answers none, and the test fails instead of
/// hanging.
const COMMAND_WITHIN: Duration = Duration::from_secs(2);

/// True when `program` can run. When it cannot: under `CI=true` the test fails; otherwise
/// the skip is reported once, on the terminal (written past the test harness's capture, so a
/// plain `cargo test` shows it), and the test passes.
pub fn have(program: &str, package: &str) -> bool {
    if on_path(program) {
        return true;
    }
    assert!(
        !under_ci(),
        "CI=true and `{program}` is not installed: the cluster tests need it \
         (apt-get install {package})"
    );
    static TOLD: Once = Once::new();
    TOLD.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\nviewcounter: cluster tests skipped: `{program}` is not installed. To run them: \
             `apt-get install {package}`, then `cargo test`.\n"
        );
    });
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// It keeps an append-only file written on every command (`appendfsync always`), as a
/// production Redis would: a kill -9 and restart loses nothing it acknowledged.
pub struct Redis {
    /// Its loopback port, the same after a restart.
    pub port: u16,
    /// `requirepass`, when the server asks for one.
    password: Option<String>,
    /// Its append-only file and log; a restart reads the same directory.
    dir: TempDir,
    /// `None` between [`Redis::kill_9`] and [`Redis::restart`].
    child: Option<Child>,
}

impl Redis {
    /// A running Redis, or `None` (the test then passes as skipped) when there is none to run.
    pub async fn start() -> Option<Self> {
        Self::start_with(None).await
    }

    /// A Redis that answers only clients giving `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> Option<Self> {
        Self::start_with(Some(password.to_owned())).await
    }

    async fn start_with(password: Option<String>) -> Option<Self> {
        if !have("redis-server", "redis-server") {
            return None;
        }
        let mut redis = Self {
            port: closed_port(),
            password,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        redis.launch().await;
        Some(redis)
    }

    /// The URL a client connects with (its password included).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        while self.try_connection().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within {READY_WITHIN:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    async fn try_connection(&self) -> Option<MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let connect = client.get_multiplexed_async_connection();
        let mut conn = tokio::time::timeout(COMMAND_WITHIN, connect)
            .await
            .ok()?
            .ok()?;
        let ping = redis::cmd("PING");
        let pong = ping.query_async::<String>(&mut conn);
        tokio::time::timeout(COMMAND_WITHIN, pong)
            .await
            .ok()?
            .ok()?;
        Some(conn)
    }

    /// A connection for the test's own commands.
    pub async fn connection(&self) -> MultiplexedConnection {
        self.try_connection()
            .await
            .expect("connect to the test's redis-server")
    }

    /// One command that must succeed within 2 s: its answer.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.connection().await;
        match tokio::time::timeout(COMMAND_WITHIN, cmd.query_async(&mut conn)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("a redis command failed: {e}"),
            Err(_) => panic!("redis did not answer within {COMMAND_WITHIN:?}"),
        }
    }

    /// `HGET vc:totals SLUG`: the cluster's total of a post (0 when it has none).
    pub async fn total(&self, slug: &str) -> u64 {
        let total: Option<u64> = self
            .query(redis::cmd("HGET").arg("vc:totals").arg(slug))
            .await;
        total.unwrap_or(0)
    }

    /// The post's views summed over every `vc:day:*` hash.
    pub async fn day_views(&self, slug: &str) -> u64 {
        let keys: Vec<String> = self.query(redis::cmd("KEYS").arg("vc:day:*")).await;
        let mut sum = 0;
        for key in keys {
            let views: Option<u64> = self.query(redis::cmd("HGET").arg(&key).arg(slug)).await;
            sum += views.unwrap_or(0);
        }
        sum
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        // SIGCONT first: a paused process dies only once it runs again.
        self.signal_child(&child, libc::SIGCONT);
        child.kill().expect("SIGKILL redis");
        child.wait().expect("redis exits");
    }

    /// Starts Redis again on the same port and directory (it reloads its append-only file).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.launch().await;
    }

    /// SIGSTOP: connections stay open and nothing is answered, as a stalled Redis.
    pub fn pause(&self) {
        self.signal_child(self.child.as_ref().expect("running"), libc::SIGSTOP);
    }

    /// SIGCONT: it answers what it was sent meanwhile.
    pub fn resume(&self) {
        self.signal_child(self.child.as_ref().expect("running"), libc::SIGCONT);
    }

    fn signal_child(&self, child: &Child, signal: i32) {
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: a signal to our own child process, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal redis-server");
    }

    /// A cluster node on this Redis named `name`: in this process or as the binary.
    pub fn node<'a>(&'a self, name: &'a str) -> crate::node::NodeOn<'a> {
        crate::node::NodeOn { redis: self, name }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_9();
        }
    }
}
