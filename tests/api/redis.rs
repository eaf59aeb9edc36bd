//! A real `redis-server` per test, on a free loopback port in its own temp dir, killed on drop.
//! Without `redis-server` installed a cluster test is skipped (it says so, and how to run it);
//! under `CI=true` it fails instead.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a fresh `redis-server` gets to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub struct RedisServer {
    pub port: u16,
    /// `requirepass`, when the server asks for one.
    password: Option<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// A fresh server, or `None` (the test returns early) when `redis-server` is missing.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// A fresh server that answers only clients giving `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Option<Self> {
        Self::start_with(Some(password.to_owned()))
    }

    fn start_with(password: Option<String>) -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed, and CI=true: cluster tests must run (apt-get install redis-server)"
            );
            say_skipped();
            return None;
        }
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port,
            password,
            child: None,
            dir,
        };
        server.launch();
        Some(server)
    }

    /// The URL a client connects with (its password included).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        while self.try_connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A connection for the test's own reads.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection()
            .expect("connect to the test's redis-server")
    }

    /// `HGET vc:totals slug` (0 when absent).
    pub fn total(&self, slug: &str) -> u64 {
        let got: Option<u64> = redis::cmd("HGET")
            .arg("vc:totals")
            .arg(slug)
            .query(&mut self.connection())
            .expect("HGET");
        got.unwrap_or(0)
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT: it answers what it was sent meanwhile.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Killed (no data kept, as `--save ''`); [`RedisServer::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Started again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// Once per run, straight to stderr: the test harness hides what passing tests print.
fn say_skipped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "cluster tests skipped: redis-server is not installed (apt-get install redis-server, then cargo test again)"
        );
    });
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}
