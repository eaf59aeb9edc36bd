//! A real `redis-server` of the test's own, on a free loopback port in a temp dir, killed on
//! drop; and the rule for tools a test needs: without `redis-server` (or `haproxy`) on the
//! PATH a test is skipped, saying so once and how to run it, unless `CI` is `true` (or `1`),
//! where a missing tool fails the test.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};
use viewcounter::cluster::keys::Group;

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

/// By default it keeps an append-only file written on every command (`appendfsync always`):
/// a kill -9 and restart loses nothing it acknowledged. [`Redis::start_debian_default`] runs
/// Debian's own persistence instead, and [`Redis::start_tls_as`] a hosted Redis's TLS and ACL.
pub struct Redis {
    /// Its loopback port, the same after a restart.
    pub port: u16,
    /// How it was asked to run; a restart runs it the same way.
    setup: Setup,
    /// Its append-only file, log and certificates; a restart reads the same directory.
    dir: TempDir,
    /// `None` between [`Redis::kill_9`] and [`Redis::restart`].
    child: Option<Child>,
}

/// What a test's Redis runs with beyond the loopback port and its directory.
#[derive(Default)]
struct Setup {
    /// `requirepass`: the default user's password.
    password: Option<String>,
    /// An ACL user and its password; the default user is then off, as on hosted Redis.
    user: Option<(String, String)>,
    /// Only a TLS port, with a certificate from a CA of the test's own (`ca.crt`).
    tls: bool,
    /// Debian's `redis.conf` persistence (snapshots, no append-only file).
    debian_default: bool,
}

/// The rights of the ACL user of [`Redis::start_tls_as`]: everything but `CONFIG`, which
/// hosted Redis services refuse too.
const HOSTED_USER_RULES: &[&str] = &["on", "~*", "&*", "+@all", "-config"];

/// The value of `name` in an `INFO` answer (its `name:value` line), as Redis wrote it.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl Redis {
    /// A running Redis, or `None` (the test then passes as skipped) when there is none to run.
    pub async fn start() -> Option<Self> {
        Self::start_with(Setup::default()).await
    }

    /// A Redis that answers only clients giving `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> Option<Self> {
        Self::start_with(Setup {
            password: Some(password.to_owned()),
            ..Setup::default()
        })
        .await
    }

    /// A Redis as Debian's package runs it: `save 3600 1 300 100 60 10000`, no append-only
    /// file, so a kill -9 loses what came after the last snapshot.
    pub async fn start_debian_default() -> Option<Self> {
        Self::start_with(Setup {
            debian_default: true,
            ..Setup::default()
        })
        .await
    }

    /// A Redis as hosted services run it: TLS only, its certificate signed by a private CA
    /// ([`Redis::ca_file`]), the default user off, `user` with `password` allowed all but
    /// `CONFIG`, and snapshots without an append-only file. Needs `openssl` (the command) to make the certificates.
    pub async fn start_tls_as(user: &str, password: &str) -> Option<Self> {
        if !have("openssl", "openssl") {
            return None;
        }
        Self::start_with(Setup {
            user: Some((user.to_owned(), password.to_owned())),
            tls: true,
            debian_default: true,
            password: None,
        })
        .await
    }

    async fn start_with(setup: Setup) -> Option<Self> {
        if !have("redis-server", "redis-server") {
            return None;
        }
        let mut redis = Self {
            port: closed_port(),
            setup,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        if redis.setup.tls {
            make_certificates(redis.dir.path());
        }
        redis.launch().await;
        Some(redis)
    }

    /// The URL a client connects with (its user and password included).
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls { "rediss" } else { "redis" };
        let login = match (&self.setup.user, &self.setup.password) {
            (Some((user, password)), _) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            (None, None) => String::new(),
        };
        format!("{scheme}://{login}127.0.0.1:{}/0", self.port)
    }

    /// The PEM file of the CA that signed a TLS Redis's certificate (`--redis-ca`).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn client(&self) -> Option<redis::Client> {
        if !self.setup.tls {
            return redis::Client::open(self.url()).ok();
        }
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(self.ca_file()).ok()?),
        };
        redis::Client::build_with_tls(self.url(), certificates).ok()
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        let dir = self.dir.path();
        command.args(["--bind", "127.0.0.1"]).arg("--dir").arg(dir);
        if self.setup.tls {
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file());
        } else {
            command.args(["--port", &port]);
        }
        if let Some(password) = &self.setup.password {
            command.args(["--requirepass", password]);
        }
        if let Some((user, password)) = &self.setup.user {
            command
                .arg("--user")
                .arg(user)
                .args(HOSTED_USER_RULES)
                .arg(format!(">{password}"))
                .args(["--user", "default", "off"]);
        }
        if self.setup.debian_default {
            command.args(["--appendonly", "no", "--save", "3600 1 300 100 60 10000"]);
        } else {
            command.args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]);
        }
        let child = command
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
        answering(self.client()?).await
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

    /// `HGET vc:{gN}:totals SLUG`: the cluster's total of a post (0 when it has none).
    pub async fn total(&self, slug: &str) -> u64 {
        let total: Option<u64> = self
            .query(redis::cmd("HGET").arg(Group::of(slug).totals()).arg(slug))
            .await;
        total.unwrap_or(0)
    }

    /// The post's views summed over every day's hash of its key group (`vc:{gN}:day:*`).
    pub async fn day_views(&self, slug: &str) -> u64 {
        let days = Group::of(slug).day(0).replace(":day:0", ":day:*");
        let keys: Vec<String> = self.query(redis::cmd("KEYS").arg(days)).await;
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
        crate::node::NodeOn {
            url: self.url(),
            name,
        }
    }
}

/// A CA of the test's own (`ca.crt`) and a certificate it signed for 127.0.0.1 and localhost
/// (`server.crt`, `server.key`), made by the `openssl` command. P-256 keys: quick to make.
pub(crate) fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=viewcounter test CA",
            ],
            &key[..],
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=localhost"],
            &key[..],
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_9();
        }
    }
}

/// A connection to `client`'s Redis once it answers `PING`, each step within
/// [`COMMAND_WITHIN`]; `None` when it does not.
async fn answering(client: redis::Client) -> Option<MultiplexedConnection> {
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

/// A Redis Cluster of the test's own on loopback: three masters with a replica each (six
/// `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`), a failover
/// one second after a master stops answering (`cluster-node-timeout 1000`). Every member keeps
/// an append-only file as [`Redis`] does; a replica gets its master's writes asynchronously,
/// so a master killed with -9 may take its last writes with it, as in production.
pub struct RedisCluster {
    members: Vec<Member>,
    dir: TempDir,
}

struct Member {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// Masters and replicas of [`RedisCluster`].
const CLUSTER_MEMBERS: usize = 6;

impl RedisCluster {
    /// A running cluster, every slot served, or `None` (the test then passes as skipped)
    /// without `redis-server` or `redis-cli`.
    pub async fn start() -> Option<Self> {
        if !have("redis-server", "redis-server") || !have("redis-cli", "redis-tools") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut members = Vec::new();
        for _ in 0..CLUSTER_MEMBERS {
            let port = closed_port();
            let own = dir.path().join(port.to_string());
            std::fs::create_dir(&own).expect("a member's dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&own)
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"])
                // A replica promoted whatever it missed (the case the records rebuild), and
                // synced at once rather than after Redis's 5 s wait for more replicas.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--save", "", "--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            members.push(Member {
                port,
                child: Some(child),
            });
        }
        let cluster = Self { members, dir };
        for i in 0..CLUSTER_MEMBERS {
            let deadline = Instant::now() + READY_WITHIN;
            while cluster.try_connection(i).await.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not answer PING within {READY_WITHIN:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let addresses: Vec<String> = (cluster.members.iter())
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.serving(None).await;
        Some(cluster)
    }

    /// The URL of member `i` (a client finds the others from it).
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/0", self.members[i].port)
    }

    /// A viewcounter node named `name` given member `i`'s URL.
    pub fn node<'a>(&self, i: usize, name: &'a str) -> crate::node::NodeOn<'a> {
        crate::node::NodeOn {
            url: self.url(i),
            name,
        }
    }

    /// A member's log.
    pub fn log(&self, i: usize) -> String {
        let path = self.dir.path().join(self.members[i].port.to_string());
        std::fs::read_to_string(path.join("redis.log")).unwrap_or_default()
    }

    async fn try_connection(&self, i: usize) -> Option<MultiplexedConnection> {
        answering(redis::Client::open(self.url(i)).ok()?).await
    }

    /// A command to member `i`, `None` when it does not answer.
    async fn ask<T: redis::FromRedisValue>(&self, i: usize, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.try_connection(i).await?;
        let answer = cmd.query_async(&mut conn);
        tokio::time::timeout(COMMAND_WITHIN, answer)
            .await
            .ok()?
            .ok()
    }

    /// The member that is the master of `key`'s hash slot now.
    pub async fn master_of(&self, key: &str) -> usize {
        self.owner(key, None)
            .await
            .expect("a live member knows the slot's master")
    }

    /// The members that are masters now.
    pub async fn masters(&self) -> Vec<usize> {
        let mut masters = Vec::new();
        for i in self.alive() {
            let role: Option<Vec<redis::Value>> = self.ask(i, &redis::cmd("ROLE")).await;
            let first = role.and_then(|r| r.into_iter().next());
            if first
                .is_some_and(|v| redis::from_redis_value::<String>(&v).is_ok_and(|r| r == "master"))
            {
                masters.push(i);
            }
        }
        masters
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some())
    }

    /// `key`'s master as member `besides` (or the first live member) sees it.
    async fn owner(&self, key: &str, besides: Option<usize>) -> Option<usize> {
        let asked = self.alive().find(|&i| Some(i) != besides)?;
        let slot: u16 = self
            .ask(asked, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await?;
        let slots: Vec<redis::Value> = self.ask(asked, redis::cmd("CLUSTER").arg("SLOTS")).await?;
        for range in slots {
            let range: Vec<redis::Value> = redis::from_redis_value(&range).ok()?;
            let (start, end): (u16, u16) = (
                redis::from_redis_value(range.first()?).ok()?,
                redis::from_redis_value(range.get(1)?).ok()?,
            );
            if (start..=end).contains(&slot) {
                let master: Vec<redis::Value> = redis::from_redis_value(range.get(2)?).ok()?;
                let port: u16 = redis::from_redis_value(master.get(1)?).ok()?;
                return self.members.iter().position(|m| m.port == port);
            }
        }
        None
    }

    /// Subscriptions to `channel` on every live member (`PUBSUB NUMSUB` is each member's own).
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let mut n = 0;
        for i in self.alive() {
            let got: Option<(String, u64)> = self
                .ask(i, redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
                .await;
            n += got.map_or(0, |(_, n)| n);
        }
        n
    }

    /// SIGKILL member `i`, and waits until the process is gone.
    pub fn kill_9(&mut self, i: usize) {
        let mut child = self.members[i].child.take().expect("the member is running");
        child.kill().expect("SIGKILL redis");
        child.wait().expect("redis exits");
    }

    /// Waits until every live member says `cluster_state:ok`, every live replica has synced
    /// (`master_link_status:up`) and, after `killed`, a live member is the master of `key`'s
    /// slot (its replica promoted): the time it took.
    pub async fn serving(&self, killed: Option<(usize, &str)>) -> Duration {
        let started = Instant::now();
        let deadline = started + READY_WITHIN;
        loop {
            let mut ok = true;
            for i in self.alive() {
                let info: Option<String> = self.ask(i, redis::cmd("CLUSTER").arg("INFO")).await;
                ok &= info.is_some_and(|info| info.contains("cluster_state:ok"));
                let replication: Option<String> =
                    self.ask(i, redis::cmd("INFO").arg("replication")).await;
                ok &= replication.is_some_and(|r| {
                    r.contains("role:master") || r.contains("master_link_status:up")
                });
            }
            if let Some((killed, key)) = killed {
                ok &= self
                    .owner(key, Some(killed))
                    .await
                    .is_some_and(|o| o != killed);
            }
            if ok {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not serve every slot within {READY_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
