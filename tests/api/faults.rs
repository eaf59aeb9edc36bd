//! Faults a plain `cargo test` can cause: a stop signal and a `kill -9` while readers keep
//! joining, a churn of thousands of readers leaving every way a browser can, files at `--db`
//! that are not (or no longer) a viewcounter database, and a process out of open files. The faults that need root — a
//! full or read-only disk, a client that vanishes without FIN or RST, memory after churn —
//! are in `faults/run.sh`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, TableDefinition};
use tokio::task::JoinHandle;

use testkit::*;

const POSTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// [`UNLIMITED`] for a library server (`--ip-new-post-rate 0` is in `Posts::Any` there).
fn unlimited(c: &mut Config) {
    c.limits.ip_streams = 0;
    c.limits.ip_views_per_minute = 0;
}
const FLUSH: [&str; 4] = ["--flush-after", "200ms", "--flush-max-wait", "1s"];
const MAX_WAIT: Duration = Duration::from_secs(1);
/// The writer's lateness on a busy machine: how much older than the max wait a view must be
/// to be certainly written.
const WRITE_MARGIN: Duration = Duration::from_millis(500);
/// The load: 4 clients joining 25 times a second each, 100 joins a second in all.
const CLIENTS: usize = 4;
const EACH_EVERY: Duration = Duration::from_millis(40);
/// A client gives up by itself after this long (the fault comes much earlier).
const LOAD_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A steady load of joins that tolerates the server going away.

/// What the clients of a load saw.
#[derive(Debug, Default)]
struct Seen {
    /// Joins sent, answered or not.
    sent: u64,
    /// When each join that was answered `200` with its first event completed: the views the
    /// clients saw counted (unique view tokens, no limits: every such join is a view).
    counted: Vec<Instant>,
    /// Failures before the fault was injected: none are expected.
    early_failures: Vec<String>,
}

struct Load {
    seen: Arc<Mutex<Seen>>,
    faulted: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let faulted = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|n| {
                let (seen, faulted) = (Arc::clone(&seen), Arc::clone(&faulted));
                actix_web::rt::spawn(load_client(addr, n, seen, faulted))
            })
            .collect();
        Self {
            seen,
            faulted,
            clients,
        }
    }

    fn counted(&self) -> usize {
        lock(&self.seen).counted.len()
    }

    /// Polls until the clients saw `n` views counted.
    async fn await_counted(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.counted() < n {
            assert!(
                Instant::now() < deadline,
                "only {} joins within {within:?}: {:?}",
                self.counted(),
                lock(&self.seen).early_failures
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From now on failures are the fault's doing.
    fn fault(&self) {
        self.faulted.store(true, Ordering::SeqCst);
    }

    /// Waits for every client to notice the server went away.
    async fn finish(self) -> Seen {
        for client in self.clients {
            tokio::time::timeout(STOP_TIMEOUT, client)
                .await
                .expect("the clients notice the server is gone")
                .expect("client task");
        }
        std::mem::take(&mut *lock(&self.seen))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client: a new reader every `EACH_EVERY`, across the posts; of its streams one in four
/// stays open, the others close cleanly or reset. Stops at the first failed join.
async fn load_client(
    addr: std::net::SocketAddr,
    n: usize,
    seen: Arc<Mutex<Seen>>,
    faulted: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(EACH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = Vec::new();
    for i in 0.. {
        tick.tick().await;
        if started.elapsed() > LOAD_LIMIT {
            break;
        }
        let slug = POSTS[(n + i) % POSTS.len()];
        lock(&seen).sent += 1;
        match try_join(addr, slug, Req::connect(slug, &token())).await {
            Ok(reader) => {
                lock(&seen).counted.push(Instant::now());
                match i % 4 {
                    0 => open.push(reader.stream),
                    1 => reader.stream.close(),
                    _ => reader.stream.reset(),
                }
            }
            Err(e) => {
                if !faulted.load(Ordering::SeqCst) {
                    lock(&seen).early_failures.push(e);
                }
                break;
            }
        }
    }
}

/// The rows of the file, read by `viewcounter export` with no server holding it.
async fn rows_in_file(dir: &Path, db: &Path) -> Vec<(String, u64)> {
    let out = export(dir, &["--db", &db.display().to_string()], &[]).await;
    assert!(out.status.success(), "export failed: {}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("slug,total"), "{}", out.stdout);
    lines
        .map(|l| {
            let (slug, total) = l.rsplit_once(',').unwrap_or_else(|| panic!("row {l:?}"));
            (
                slug.to_owned(),
                total.parse().unwrap_or_else(|_| panic!("row {l:?}")),
            )
        })
        .collect()
}

fn sum(rows: &[(String, u64)]) -> u64 {
    rows.iter().map(|(_, t)| t).sum()
}

#[actix_web::test]
async fn sigterm_while_four_clients_join_at_100_per_second_writes_every_view_they_saw_counted() {
    let mut flags = UNLIMITED.to_vec();
    flags.extend(FLUSH);
    let mut server = BinServer::start(&flags).await;
    let load = Load::start(server.addr);
    // About 1.5 s of load: some views written by the max wait, the rest pending at the signal.
    load.await_counted(150, Duration::from_secs(8)).await;

    load.fault();
    server.signal("TERM");
    let status = server.wait(STOP_TIMEOUT).await;
    let seen = load.finish().await;

    let log = server.log();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(seen.early_failures.is_empty(), "{:?}", seen.early_failures);
    let stored = sum(&rows_in_file(server.dir.path(), &server.db()).await);
    let counted = seen.counted.len() as u64;
    eprintln!(
        "SIGTERM under load: {counted} views seen counted of {} joins sent; file holds {stored}",
        seen.sent
    );
    // Every join answered with its first event was counted before the answer left, and a
    // graceful stop writes every counted view: the file holds exactly what the clients saw.
    assert_eq!(
        stored, counted,
        "file holds {stored}, clients saw {counted} counted ({} sent); log:\n{log}",
        seen.sent
    );
}

#[actix_web::test]
async fn kill_9_under_load_leaves_a_file_that_opens_with_every_view_older_than_the_max_wait() {
    let mut flags = UNLIMITED.to_vec();
    flags.extend(FLUSH);
    let mut server = BinServer::start(&flags).await;
    let load = Load::start(server.addr);
    // About 2.5 s of load, so that well over a second of it is older than the max wait.
    load.await_counted(250, Duration::from_secs(10)).await;

    load.fault();
    let killed_at = Instant::now();
    server.kill_9().await;
    let seen = load.finish().await;

    assert!(seen.early_failures.is_empty(), "{:?}", seen.early_failures);
    let old_enough = killed_at - MAX_WAIT - WRITE_MARGIN;
    let must = seen.counted.iter().filter(|&&t| t < old_enough).count() as u64;
    assert!(
        must >= 50,
        "premise: enough views older than the max wait ({must})"
    );
    let rows = rows_in_file(server.dir.path(), &server.db()).await;
    let stored = sum(&rows);
    eprintln!(
        "kill -9 under load: file holds {stored}; {must} views were older than max wait + {WRITE_MARGIN:?}; {} seen counted, {} sent",
        seen.counted.len(),
        seen.sent
    );
    assert!(
        must <= stored && stored <= seen.sent,
        "file holds {stored}: want at least the {must} views older than {:?} and at most the {} joins sent; log:\n{}",
        MAX_WAIT + WRITE_MARGIN,
        seen.sent,
        server.log()
    );

    // A server starts on that file and goes on from its totals.
    let server = BinServer::start_in(server.into_dir(), &UNLIMITED).await;
    let res = server.send(Req::get("/api/v1/totals")).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(parse_rows(&res.text()), rows);
    let alpha = rows
        .iter()
        .find(|(s, _)| s == "alpha")
        .map_or(0, |(_, t)| *t);
    assert_eq!(server.join("alpha").await.first, counts(1, alpha + 1));
}

// ---------------------------------------------------------------------------------------------
// Churn.

/// How a reader of the churn goes: a tab left open, a page hidden (beacon) but not yet
/// closed, a clean close, a reset, or a beacon followed by either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stay,
    BeaconAndStay,
    Close,
    Reset,
    BeaconThenClose,
    BeaconThenReset,
}

fn fate(i: usize) -> Fate {
    match i % 20 {
        0 | 10 => Fate::Stay,
        5 => Fate::BeaconAndStay,
        1 | 6 | 11 | 16 => Fate::Close,
        2 | 7 | 12 | 17 => Fate::Reset,
        3 | 8 | 13 | 18 => Fate::BeaconThenClose,
        _ => Fate::BeaconThenReset,
    }
}

/// One worker's share of the churn: joins `i = first, first + step, …` below `joins`; hands
/// back the readers that stay, with their post and whether a beacon already took them off.
async fn churn_worker(
    addr: std::net::SocketAddr,
    first: usize,
    step: usize,
    joins: usize,
) -> Vec<(usize, Fate, Reader)> {
    let mut staying = Vec::new();
    for i in (first..joins).step_by(step) {
        let post = i % POSTS.len();
        let slug = POSTS[post];
        let reader = join(addr, slug, Req::connect(slug, &token())).await;
        let fate = fate(i);
        if matches!(
            fate,
            Fate::BeaconAndStay | Fate::BeaconThenClose | Fate::BeaconThenReset
        ) {
            let res = send(
                addr,
                Req::post(format!("/api/v1/leave/{slug}"), reader.id.clone()),
            )
            .await;
            assert_eq!(res.status, 204, "beacon: {res:?}");
        }
        match fate {
            Fate::Stay | Fate::BeaconAndStay => staying.push((post, fate, reader)),
            Fate::Close | Fate::BeaconThenClose => reader.stream.close(),
            Fate::Reset | Fate::BeaconThenReset => reader.stream.reset(),
        }
    }
    staying
}

/// Polls `/api/v1/stats` until `streams` is `want`.
async fn await_streams(app: &TestApp, want: u64, within: Duration) {
    await_value("streams held", want, within, || app.stat("streams")).await;
}

#[actix_web::test]
async fn churn_of_2000_readers_ends_with_live_at_the_open_streams_then_0_and_all_posts_asleep() {
    const JOINS: usize = 2000;
    const WORKERS: usize = 16;
    let app = spawn_app_configured(|c| {
        unlimited(c);
        c.flush.dedupe_window = Duration::from_secs(1);
    })
    .await;

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| actix_web::rt::spawn(churn_worker(app.addr, w, WORKERS, JOINS)))
        .collect();
    let mut staying = Vec::new();
    for w in workers {
        staying.extend(w.await.expect("churn worker"));
    }

    let joins_of = |post: usize| (0..JOINS).filter(|i| i % POSTS.len() == post).count() as u64;
    let live_of = |post: usize| {
        staying
            .iter()
            .filter(|(p, f, _)| *p == post && *f == Fate::Stay)
            .count() as u64
    };
    // Live is the streams left open, less the readers whose beacon said they left.
    for (post, slug) in POSTS.iter().enumerate() {
        app.await_counts(slug, counts(live_of(post), joins_of(post)), READ_TIMEOUT)
            .await;
    }
    await_streams(&app, staying.len() as u64, READ_TIMEOUT).await;
    assert_eq!(
        app.totals().await,
        POSTS
            .iter()
            .enumerate()
            .map(|(p, s)| (s.to_string(), joins_of(p)))
            .collect::<Vec<_>>()
    );

    for (n, (_, _, reader)) in staying.into_iter().enumerate() {
        if n % 2 == 0 {
            reader.stream.close();
        } else {
            reader.stream.reset();
        }
    }
    for (post, slug) in POSTS.iter().enumerate() {
        app.await_counts(slug, counts(0, joins_of(post)), READ_TIMEOUT)
            .await;
    }
    await_streams(&app, 0, READ_TIMEOUT).await;
    // Dedupe memory (1 s) expires, then each post sleeps after its idle grace (5 s).
    app.await_posts_awake(0, Duration::from_secs(10)).await;
    for (post, slug) in POSTS.iter().enumerate() {
        assert_eq!(app.counts(slug).await, counts(0, joins_of(post)));
    }
}

/// A wave too small to trim during it (under 1,024) is trimmed once it is over: within two
/// housekeeping rounds (10 s each), one that sees it end and one that sees nothing more go.
async fn await_one_memory_reclaim(app: &TestApp) {
    await_value("memory reclaims", 1, Duration::from_secs(25), || {
        app.stat("memory_reclaims")
    })
    .await;
}

#[actix_web::test]
async fn after_a_wave_of_posts_sleeps_memory_is_given_back_and_the_posts_count_on() {
    // More than one reclaim's worth (64 posts), spread over both workers.
    const WAVE: usize = 80;
    let app = spawn_app_configured(|c| {
        unlimited(c);
        c.posts = Posts::Any {
            max: 10_000,
            new_per_hour: 0,
        };
        c.flush.dedupe_window = Duration::from_secs(1);
        c.workers = 2;
    })
    .await;
    let slug = |i: usize| format!("wave-{i}");
    for i in 0..WAVE {
        app.join(&slug(i)).await.stream.close();
    }
    assert_eq!(app.stat("memory_reclaims").await, 0);

    // Dedupe memory (1 s) and idle grace (5 s), then the wave is seen over.
    app.await_posts_awake(0, Duration::from_secs(10)).await;
    await_one_memory_reclaim(&app).await;

    // Every worker, the writer and the housekeeping thread took part; all still serve.
    for i in [0, WAVE / 2, WAVE - 1] {
        let reader = app.join(&slug(i)).await;
        assert_eq!(reader.first, counts(1, 2), "{}", slug(i));
    }
    let fresh = app.join("after-the-wave").await;
    assert_eq!(fresh.first, counts(1, 1));
    assert_eq!(app.totals().await.len(), WAVE + 1);
}

#[actix_web::test]
async fn after_the_readers_of_a_hot_post_leave_memory_is_given_back_while_it_stays_awake() {
    const READERS: u64 = 80;
    let app = spawn_app_configured(unlimited).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(app.join(POSTS[0]).await);
    }
    await_streams(&app, READERS, READ_TIMEOUT).await;
    for reader in readers {
        reader.stream.close();
    }
    await_streams(&app, 0, READ_TIMEOUT).await;

    // The post itself remembers its readers (30 min) and stays awake.
    await_one_memory_reclaim(&app).await;
    assert_eq!(app.posts_awake().await, 1);
    let next = app.join(POSTS[0]).await;
    assert_eq!(next.first, counts(1, READERS + 1));
}

// ---------------------------------------------------------------------------------------------
// Files at --db that are not a viewcounter database. (tests/api/cli.rs covers a plain text
// file and a file held by another server.)

/// `viewcounter <args>` on `db` exits 1 (no panic) with a message that names the file and
/// says `why`; with `untouched`, the file is left byte for byte as it was.
async fn assert_refused(args: &[&str], db: &Path, why: &str, untouched: bool) {
    let dir = db.parent().expect("db dir");
    let before = std::fs::read(db).expect("read the file");
    let name = db
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let what = args[0];
    // Still running after 10 s: a `serve` that accepted the file (killed on drop).
    let out = run(dir, args)
        .within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{what} on {name}: {e}: it accepted the file"));
    assert_eq!(out.status.code(), Some(1), "{what}: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    assert!(!out.stdout.contains("listening"), "{what}: {}", out.stdout);
    assert!(
        out.stderr.contains(&name),
        "{what} names the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(why),
        "{what} says {why:?}: {}",
        out.stderr
    );
    assert!(
        !untouched || std::fs::read(db).expect("read the file") == before,
        "{what} changed {name} while refusing it"
    );
}

/// `viewcounter serve` on `db` stops at startup: see [`assert_refused`].
async fn assert_serve_refuses(db: &Path, why: &str, untouched: bool) {
    let db_s = db.display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db_s,
        "--slugs",
        "none.txt",
    ];
    assert_refused(&args, db, why, untouched).await;
}

/// `viewcounter export --db` (no server to ask) refuses `db`: see [`assert_refused`].
async fn assert_export_refuses(db: &Path, why: &str, untouched: bool) {
    let db_s = db.display().to_string();
    // No --url (which would read no file): the file, else the server at --listen.
    let listen = format!("127.0.0.1:{}", closed_port());
    assert_refused(
        &["export", "--db", &db_s, "--listen", &listen],
        db,
        why,
        untouched,
    )
    .await;
}

/// A database written by the server (three views, stopped cleanly), in its directory.
async fn a_written_database() -> (tempfile::TempDir, PathBuf) {
    let mut server = BinServer::start(&[]).await;
    for slug in ["alpha", "beta", "alpha"] {
        drop(server.join(slug).await);
    }
    server.signal("TERM");
    assert!(server.wait(STOP_TIMEOUT).await.success());
    let db = server.db();
    (server.into_dir(), db)
}

/// The server's database cut to a third of its length.
async fn a_truncated_database() -> (tempfile::TempDir, PathBuf) {
    let (dir, db) = a_written_database().await;
    let len = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 3).unwrap();
    (dir, db)
}

/// The server's database with its header intact and garbage over every page after it.
async fn a_database_with_garbage_pages() -> (tempfile::TempDir, PathBuf) {
    let (dir, db) = a_written_database().await;
    let mut bytes = std::fs::read(&db).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    (dir, db)
}

/// A redb file written by `fill` in a fresh directory, as `name`.
fn a_redb_file(
    name: &str,
    fill: impl FnOnce(&redb::WriteTransaction),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(name);
    let file = redb::Database::create(&db).unwrap();
    let txn = file.begin_write().unwrap();
    fill(&txn);
    txn.commit().unwrap();
    (dir, db)
}

/// Our tables, with a schema version this build does not read.
fn a_database_of_a_newer_schema() -> (tempfile::TempDir, PathBuf) {
    a_redb_file("newer.redb", |txn| {
        txn.open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert(
                "schema_version",
                viewcounter::storage::store::SCHEMA_VERSION + 1,
            )
            .unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("totals"))
            .unwrap()
            .insert("alpha", 7)
            .unwrap();
    })
}

#[actix_web::test]
async fn a_truncated_database_stops_the_server_at_startup_naming_the_file() {
    let (_dir, db) = a_truncated_database().await;
    assert_serve_refuses(&db, "corrupt", true).await;
}

#[actix_web::test]
async fn a_database_with_garbage_over_its_pages_stops_the_server_at_startup_naming_the_file() {
    let (_dir, db) = a_database_with_garbage_pages().await;
    assert_serve_refuses(&db, "corrupt", true).await;
}

#[actix_web::test]
async fn a_database_of_a_newer_schema_stops_the_server_at_startup_naming_the_file() {
    let (_dir, db) = a_database_of_a_newer_schema();
    // Opening the file rewrites redb's own bookkeeping, so bytes change; what it holds must not.
    assert_serve_refuses(&db, "schema version", false).await;
    let file = redb::Database::open(&db).expect("still a redb file");
    let txn = file.begin_read().unwrap();
    let meta = txn
        .open_table(TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    let version = meta.get("schema_version").unwrap().map(|v| v.value());
    assert_eq!(
        version,
        Some(viewcounter::storage::store::SCHEMA_VERSION + 1)
    );
    let totals = txn
        .open_table(TableDefinition::<&str, u64>::new("totals"))
        .unwrap();
    assert_eq!(totals.get("alpha").unwrap().map(|v| v.value()), Some(7));
}

#[actix_web::test]
async fn a_redb_file_whose_tables_have_other_types_stops_the_server_at_startup_naming_the_file() {
    let (_dir, db) = a_redb_file("typed.redb", |txn| {
        txn.open_table(TableDefinition::<&str, &str>::new("meta"))
            .unwrap()
            .insert("owner", "some other program")
            .unwrap();
    });
    // redb's integrity check on open rewrites its own bookkeeping; the data stays.
    assert_serve_refuses(&db, "not a viewcounter database", false).await;
}

#[actix_web::test]
async fn a_redb_file_of_another_program_stops_the_server_at_startup_with_its_data_intact() {
    let (_dir, db) = a_redb_file("notes.redb", |txn| {
        txn.open_table(TableDefinition::<&str, &str>::new("notes"))
            .unwrap()
            .insert("2024-05-01", "my precious notes")
            .unwrap();
    });
    // redb's integrity check on open rewrites its own bookkeeping; the data stays.
    assert_serve_refuses(&db, "not a viewcounter database", false).await;
    let file = redb::Database::open(&db).expect("still a redb file");
    let txn = file.begin_read().unwrap();
    let notes = txn
        .open_table(TableDefinition::<&str, &str>::new("notes"))
        .unwrap();
    assert_eq!(
        notes
            .get("2024-05-01")
            .unwrap()
            .map(|v| v.value().to_owned())
            .as_deref(),
        Some("my precious notes")
    );
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert_eq!(tables, ["notes"], "no table of ours was added");
}

#[actix_web::test]
async fn export_refuses_a_truncated_database_naming_the_file() {
    let (_dir, db) = a_truncated_database().await;
    assert_export_refuses(&db, "corrupt", true).await;
}

#[actix_web::test]
async fn export_refuses_a_database_with_garbage_over_its_pages_naming_the_file() {
    let (_dir, db) = a_database_with_garbage_pages().await;
    assert_export_refuses(&db, "corrupt", true).await;
}

#[actix_web::test]
async fn export_refuses_a_database_of_a_newer_schema_naming_the_file() {
    let (_dir, db) = a_database_of_a_newer_schema();
    assert_export_refuses(&db, "schema version", false).await;
}

/// Server CPU time (user + system) so far, from `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[actix_web::test]
async fn out_of_open_files_the_server_pauses_accepting_without_spinning_and_recovers() {
    let mut server = BinServer::start_with_open_files(256, &[]).await;
    let pid = server.child.id().expect("running");

    // More idle connections than the process has descriptors for.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("connect"),
        );
    }
    await_value(
        "a logged accept failure",
        true,
        Duration::from_secs(10),
        || async { server.log().contains("cannot accept connections") },
    )
    .await;
    let before = cpu_time(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - before;
    assert!(
        used < window.elapsed() / 4,
        "{used:?} of CPU in {:?} while out of descriptors: accepting spins",
        window.elapsed()
    );

    drop(idle);
    let reader = server.join("alpha").await;
    assert_eq!(reader.first, counts(1, 1));
    assert_eq!(
        server.log().matches("cannot accept connections").count(),
        1,
        "the failure is logged once, not per attempt"
    );
    server.signal("TERM");
    assert!(server.wait(STOP_TIMEOUT).await.success());
}
