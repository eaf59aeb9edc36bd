//! Cluster mode (issue 14): readers of one post spread over several nodes, held by several
//! client processes (each process has its own open-files cap), a join on the first node, and
//! the time until every reader on every node saw it; then churn through the nodes, with the
//! Redis commands it cost per counted view.
//!
//! `loadgen cluster` is the coordinator; it starts one `loadgen cluster-readers` per client
//! process and talks to each over its stdin/stdout, one line at a time:
//! the reader prints `{"ready":N}` once its streams are open; then, per round, the
//! coordinator sends `arm` (the reader waits for quiet and starts logging, answers `armed`),
//! makes the change, and sends `target TOTAL T0` (T0: unix µs just before the join was sent);
//! the reader answers `{"delays_us":[…],"missed":M}`, each reader's delay from T0 to the first
//! event with a total ≥ TOTAL. Processes on one machine share CLOCK_REALTIME, so delays taken
//! in one process against a T0 taken in another are comparable to the microsecond.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::net::{Target, json_number};
use crate::scenarios::{Changer, Ctx, REACH_TIMEOUT, open_readers};
use crate::stats::summary_ms;

/// How long the readers of one client process may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client process may take to answer a step of a round.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// One client process: holds its readers and answers the coordinator.

/// `loadgen cluster-readers`: opens `streams` readers on `ctx`'s node, then follows the
/// coordinator's lines on stdin until `quit` or end of input.
pub async fn readers(ctx: &Ctx, streams: usize) {
    let hub = open_readers(ctx, streams).await;
    let epoch_unix = unix_us().saturating_sub(hub.epoch.elapsed().as_micros() as u64);
    say(json!({"ready": hub.ready.load(Ordering::SeqCst),
        "failed": hub.open_failed.load(Ordering::SeqCst)}));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["arm"] => {
                hub.quiesce(ctx.quiet, Duration::from_secs(10)).await;
                hub.start_logging();
                say(json!({"armed": true}));
            }
            ["target", total, t0] => {
                let (Ok(total), Ok(t0)) = (total.parse::<u64>(), t0.parse::<u64>()) else {
                    eprintln!("cluster-readers: bad line {line:?}");
                    return;
                };
                hub.set_target(total);
                hub.wait_reached(REACH_TIMEOUT).await;
                hub.logging.store(false, Ordering::SeqCst);
                let t0_hub = t0.saturating_sub(epoch_unix) as u32;
                let (delays, missed) = hub.delays_since(total, t0_hub);
                say(json!({"delays_us": delays, "missed": missed,
                    "alive": hub.alive.load(Ordering::SeqCst), "errors": hub.errors.snapshot()}));
            }
            _ => return,
        }
    }
}

fn say(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// The coordinator.

/// What `loadgen cluster` is told.
pub struct Plan {
    /// The nodes' base URLs; the change is a join on the first.
    pub nodes: Vec<String>,
    pub streams: usize,
    pub clients: usize,
    pub rounds: usize,
    pub sub_path: String,
    pub label: String,
    pub sources: usize,
    pub connect_concurrency: usize,
    /// Churn: workers in all (spread over the client processes) and seconds; 0 skips it.
    pub churn_workers: usize,
    pub churn_seconds: f64,
    pub churn_path: String,
    /// Redis to read `INFO` from around the churn (cluster runs).
    pub redis: Option<String>,
    /// Idle cost instead of the rounds and the churn: `streams` streams held, one per post
    /// (the path template names the post with `{client}` and `{i}`), then Redis's traffic and
    /// the nodes' CPU (`pids`) over `idle_seconds` of nothing happening.
    pub idle_seconds: Option<f64>,
    pub pids: Vec<u32>,
}

/// A client process and its line channel.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    node: usize,
}

impl Client {
    async fn send(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("write to a client process: {e}"))
    }

    async fn answer(&mut self, within: Duration) -> Result<Value, String> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Err(_) => Err(format!("a client process gave no answer within {within:?}")),
            Ok(Err(e)) => Err(format!("read from a client process: {e}")),
            Ok(Ok(None)) => Err("a client process exited".into()),
            Ok(Ok(Some(line))) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}")),
        }
    }
}

fn spawn(args: &[String]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn loadgen: {e}"))
}

async fn start_clients(plan: &Plan) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    for i in 0..plan.clients {
        let node = i % plan.nodes.len();
        let streams = plan.streams / plan.clients + usize::from(i < plan.streams % plan.clients);
        let args: Vec<String> = vec![
            "cluster-readers".into(),
            "--url".into(),
            plan.nodes[node].clone(),
            "--sub-path".into(),
            plan.sub_path.replace("{client}", &(i + 1).to_string()),
            "--label".into(),
            format!("{}-client{}", plan.label, i + 1),
            "--sources".into(),
            plan.sources.to_string(),
            "--connect-concurrency".into(),
            plan.connect_concurrency.to_string(),
            "--streams".into(),
            streams.to_string(),
        ];
        let mut child = spawn(&args)?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        clients.push(Client {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            node,
        });
    }
    Ok(clients)
}

/// `loadgen cluster`: the fan-out rounds, then the churn. One JSON line each on stdout.
pub async fn run(plan: &Plan) -> Result<(), String> {
    let mut clients = start_clients(plan).await?;
    let mut opened = 0;
    for c in &mut clients {
        opened += c.answer(OPEN_TIMEOUT).await?["ready"].as_u64().unwrap_or(0);
    }
    eprintln!(
        "[{}] {opened} of {} streams open over {} nodes",
        plan.label,
        plan.streams,
        plan.nodes.len()
    );
    if let Some(secs) = plan.idle_seconds {
        idle(plan, &mut clients, opened, secs).await?;
    } else {
        fanout(plan, &mut clients, opened).await?;
    }
    for mut c in clients {
        let _ = c.send("quit").await;
        let _ = tokio::time::timeout(STEP_TIMEOUT, c.child.wait()).await;
    }
    if plan.idle_seconds.is_none() && plan.churn_workers > 0 && plan.churn_seconds > 0.0 {
        churn(plan).await?;
    }
    Ok(())
}

async fn fanout(plan: &Plan, clients: &mut [Client], opened: u64) -> Result<(), String> {
    let first = Target::new(&plan.nodes[0], plan.sources).map_err(|e| e.to_string())?;
    let changer = Changer::Join {
        template: plan.sub_path.clone(),
    };
    let mut all = Vec::new();
    let mut by_node: Vec<Vec<u32>> = vec![Vec::new(); plan.nodes.len()];
    let mut missed = 0;
    let mut alive_after = Vec::new();
    let mut errors = Vec::new();
    let mut joiners = Vec::new();
    for round in 1..=plan.rounds {
        for c in clients.iter_mut() {
            c.send("arm").await?;
        }
        for c in clients.iter_mut() {
            c.answer(STEP_TIMEOUT).await?;
        }
        let t0 = unix_us();
        let (total, conn) = changer
            .change(&first)
            .await
            .map_err(|e| format!("round {round}: the join failed: {e}"))?;
        joiners.extend(conn);
        for c in clients.iter_mut() {
            c.send(&format!("target {total} {t0}")).await?;
        }
        let mut round_delays = Vec::new();
        for c in clients.iter_mut() {
            let answer = c.answer(REACH_TIMEOUT + STEP_TIMEOUT).await?;
            missed += answer["missed"].as_u64().unwrap_or(0);
            if round == plan.rounds {
                alive_after.push(answer["alive"].clone());
                errors.push(answer["errors"].clone());
            }
            let delays: Vec<u32> = answer["delays_us"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_u64())
                        .map(|d| d as u32)
                        .collect()
                })
                .unwrap_or_default();
            by_node[c.node].extend(&delays);
            round_delays.extend(delays);
        }
        let (p50, p99, max) = summary_ms(&mut round_delays);
        eprintln!(
            "[{}] round {round}: {} readers saw total {total}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            plan.label,
            round_delays.len()
        );
        all.extend(round_delays);
    }
    drop(joiners);
    let (p50, p99, max) = summary_ms(&mut all);
    let per_node: Vec<Value> = by_node
        .iter_mut()
        .zip(&plan.nodes)
        .map(|(d, url)| {
            let (p50, p99, max) = summary_ms(d);
            json!({"node": url, "readers_x_rounds": d.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max})
        })
        .collect();
    eprintln!(
        "[{}] join on node 1 → every reader: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, {missed} missed",
        plan.label
    );
    println!(
        "{}",
        json!({"scenario": "cluster-fanout", "label": plan.label, "nodes": plan.nodes.len(),
            "clients": plan.clients, "streams": plan.streams, "opened": opened,
            "rounds": plan.rounds, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
            "missed": missed, "per_node": per_node,
            "alive_after_by_client": alive_after, "errors_by_client": errors})
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle: what holding the streams costs while nothing happens.

/// Time for every node to have announced its readers and read the others' after the streams
/// are open and quiet: a few heartbeats.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

async fn idle(plan: &Plan, clients: &mut [Client], opened: u64, secs: f64) -> Result<(), String> {
    for c in clients.iter_mut() {
        c.send("arm").await?;
    }
    for c in clients.iter_mut() {
        c.answer(STEP_TIMEOUT).await?;
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    let cpu = || -> Vec<f64> {
        (plan.pids.iter())
            .map(|&pid| crate::procstat::Server { pid: Some(pid) }.cpu_seconds())
            .collect()
    };
    let traffic = |addr: &str| -> Result<[u64; 3], String> {
        let stats = redis_info(addr, "stats")?;
        let mut got = [0; 3];
        let names = [
            "total_net_input_bytes",
            "total_net_output_bytes",
            "total_commands_processed",
        ];
        for (n, name) in got.iter_mut().zip(names) {
            *n = stat(&stats, name).ok_or_else(|| format!("no {name} in INFO stats"))?;
        }
        Ok(got)
    };
    let before = plan.redis.as_deref().map(traffic).transpose()?;
    let (cpu_before, started) = (cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = plan.redis.as_deref().map(traffic).transpose()?;
    let (cpu_after, wall) = (cpu(), started.elapsed().as_secs_f64());
    let node_cpu_pct: Vec<f64> = (cpu_after.iter().zip(&cpu_before))
        .map(|(a, b)| (a - b) / wall * 100.0)
        .collect();
    let mut line = json!({"scenario": "cluster-idle", "label": plan.label,
        "nodes": plan.nodes.len(), "posts": plan.streams, "opened": opened, "window_s": wall,
        "node_cpu_pct": node_cpu_pct});
    if let (Some(before), Some(after)) = (before, after) {
        let rate = |i: usize| after[i].saturating_sub(before[i]) as f64 / wall;
        line["redis_in_bytes_per_s"] = json!(rate(0));
        line["redis_out_bytes_per_s"] = json!(rate(1));
        line["redis_commands_per_s"] = json!(rate(2));
    }
    eprintln!("[{}] idle: {line}", plan.label);
    println!("{line}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Churn through the nodes, and what it cost Redis.

/// `INFO commandstats` and `total_commands_processed`, read over a plain RESP connection.
#[derive(Clone, Default)]
struct RedisCounters {
    total: u64,
    calls: BTreeMap<String, u64>,
    /// Redis's own CPU (`used_cpu_sys` + `used_cpu_user`, seconds): the scale model's cost of
    /// a view in the one thread that runs every script.
    cpu_s: f64,
    /// `used_memory` (bytes): what a counted view leaves in Redis (its dedupe marker for the
    /// window, its op key for a day).
    memory: u64,
}

/// One `INFO` section (a RESP bulk string) from Redis at `addr` (`host:port`). A raw
/// request instead of a client crate: the bench needs this one read-only command.
fn redis_info(addr: &str, section: &str) -> Result<String, String> {
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let req = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("redis INFO: {e}"))?;
        if n == 0 {
            return Err("redis closed the connection".into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let len: usize = head
            .strip_prefix('$')
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("unexpected INFO answer {head:?}"))?;
        if body.len() >= len {
            return Ok(body[..len].to_string());
        }
    }
}

/// A counter of an `INFO` section (`name:value` lines).
fn stat(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

fn redis_counters(addr: &str) -> Result<RedisCounters, String> {
    let stats = redis_info(addr, "stats")?;
    let total = stat(&stats, "total_commands_processed").ok_or("no total_commands_processed")?;
    let mut calls = BTreeMap::new();
    for line in redis_info(addr, "commandstats")?.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if let Some(n) = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
        {
            calls.insert(name.to_string(), n);
        }
    }
    let cpu = redis_info(addr, "cpu")?;
    let seconds = |name: &str| -> Result<f64, String> {
        (cpu.lines())
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in INFO cpu"))
    };
    let cpu_s = seconds("used_cpu_sys")? + seconds("used_cpu_user")?;
    let memory = stat(&redis_info(addr, "memory")?, "used_memory").ok_or("no used_memory")?;
    Ok(RedisCounters {
        total,
        calls,
        cpu_s,
        memory,
    })
}

fn delta(after: &RedisCounters, before: &RedisCounters) -> RedisCounters {
    RedisCounters {
        total: after.total.saturating_sub(before.total),
        calls: after
            .calls
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(*before.calls.get(k).unwrap_or(&0)),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect(),
        cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
        memory: after.memory.saturating_sub(before.memory),
    }
}

/// Of the commands Redis runs, the share its clients send (each at most one round trip), the
/// rest being run by scripts: `MONITOR` for `window`, lines of `[DB lua]` against the others.
fn client_share(addr: &str, window: Duration) -> Result<(u64, u64), String> {
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_millis(200))).ok();
    conn.write_all(b"MONITOR\r\n").map_err(|e| e.to_string())?;
    let (mut from_clients, mut from_scripts) = (0, 0);
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    let until = Instant::now() + window;
    while Instant::now() < until {
        let Ok(n) = conn.read(&mut buf) else { continue };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = pending.drain(..i + 2).collect();
            let line = String::from_utf8_lossy(&line);
            if !line.starts_with('+') || line.starts_with("+OK") {
                continue;
            }
            if line.contains(" lua] ") {
                from_scripts += 1;
            } else {
                from_clients += 1;
            }
        }
    }
    Ok((from_clients, from_scripts))
}

/// The post's total as the first node answers it (`GET /api/v1/count/SLUG`).
async fn total_of(node: &str, slug: &str, sources: usize) -> Result<u64, String> {
    let target = Target::new(node, sources).map_err(|e| e.to_string())?;
    let (status, body) = target
        .request("GET", &format!("/api/v1/count/{slug}"), b"")
        .await
        .map_err(|e| format!("count {slug}: {e}"))?;
    if status != 200 {
        return Err(format!("count {slug}: HTTP {status}"));
    }
    json_number(&body, b"\"total\"").ok_or_else(|| "count without a total".into())
}

/// The post a connect path template names (`/api/v1/connect/SLUG?view=…`).
fn slug_of(path: &str) -> String {
    let rest = path.trim_start_matches("/api/v1/connect/");
    rest.split('?').next().unwrap_or_default().to_string()
}

/// Polls the post's live count until the readers just closed are gone (at most 60 s).
async fn wait_live_gone(node: &str, slug: &str, sources: usize) -> Result<(), String> {
    let target = Target::new(node, sources).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (_, body) = target
            .request("GET", &format!("/api/v1/count/{slug}"), b"")
            .await
            .map_err(|e| format!("count {slug}: {e}"))?;
        if json_number(&body, b"\"live\"") == Some(0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{slug}: readers still live 60 s after they closed"))
}

async fn churn(plan: &Plan) -> Result<(), String> {
    let slug = slug_of(&plan.churn_path);
    let secs = plan.churn_seconds;
    wait_live_gone(&plan.nodes[0], &slug_of(&plan.sub_path), plan.sources).await?;
    // What Redis does with no load at all (heartbeats, presence): measured over a window as
    // long as the churn, and taken off the churn's count.
    let background = match &plan.redis {
        Some(addr) => {
            let before = redis_counters(addr)?;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Some((delta(&redis_counters(addr)?, &before), secs))
        }
        None => None,
    };
    let total_before = total_of(&plan.nodes[0], &slug, plan.sources).await?;
    let before = plan.redis.as_deref().map(redis_counters).transpose()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..plan.clients {
        let node = &plan.nodes[i % plan.nodes.len()];
        let workers = (plan.churn_workers / plan.clients).max(1);
        let args: Vec<String> = vec![
            "churn".into(),
            "--url".into(),
            node.clone(),
            "--sub-path".into(),
            plan.churn_path.clone(),
            "--label".into(),
            format!("{}-churn{}", plan.label, i + 1),
            "--sources".into(),
            plan.sources.to_string(),
            "--workers".into(),
            workers.to_string(),
            "--duration".into(),
            secs.to_string(),
        ];
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        children.push(cmd.output());
    }
    // A second of MONITOR halfway through the churn: which commands clients send.
    let monitor = plan.redis.clone().map(|addr| {
        let half = Duration::from_secs_f64(secs / 2.0);
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(half);
            client_share(&addr, Duration::from_secs(1))
        })
    });
    let outputs = join_tasks(children).await;
    let share = match monitor {
        Some(task) => Some(task.await.map_err(|e| e.to_string())??),
        None => None,
    };
    let wall = started.elapsed().as_secs_f64();
    let after = plan.redis.as_deref().map(redis_counters).transpose()?;
    let mut views = 0;
    let mut errors = 0;
    for out in outputs {
        let out = out.map_err(|e| format!("churn process: {e}"))?;
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("churn output: {e}"))?;
        views += v["views"].as_u64().unwrap_or(0);
        errors += v["errors_total"].as_u64().unwrap_or(0);
    }
    // Let every node and Redis settle before reading the total the churn left.
    let counted = settled_total(&plan.nodes[0], &slug, plan.sources).await? - total_before;
    let rate = views as f64 / secs;
    let mut line = json!({"scenario": "cluster-churn", "label": plan.label,
        "nodes": plan.nodes.len(), "clients": plan.clients, "workers": plan.churn_workers,
        "duration_s": secs, "wall_s": wall, "views": views, "views_per_s": rate,
        "counted": counted, "errors_total": errors});
    if let (Some(before), Some(after), Some((idle, idle_secs))) = (before, after, background) {
        let used = delta(&after, &before);
        let idle_scaled = idle.total as f64 * wall / idle_secs;
        let per_view = |n: f64| if counted > 0 { n / counted as f64 } else { 0.0 };
        let per_command: BTreeMap<&String, f64> = used
            .calls
            .iter()
            .map(|(name, n)| {
                let idle_n = *idle.calls.get(name).unwrap_or(&0) as f64 * wall / idle_secs;
                (name, per_view(*n as f64 - idle_n))
            })
            .collect();
        line["redis"] = json!({
            "commands": used.total,
            "background_commands_per_s": idle.total as f64 / idle_secs,
            "cpu_us_per_view": per_view((used.cpu_s - idle.cpu_s * wall / idle_secs).max(0.0) * 1e6),
            "memory_bytes_per_view": per_view(used.memory as f64),
            "commands_per_view": per_view(used.total as f64),
            "net_commands_per_view": per_view(used.total as f64 - idle_scaled),
            "net_per_command_per_view": per_command,
            "monitor_from_clients": share.map(|s| s.0),
            "monitor_from_scripts": share.map(|s| s.1),
            "round_trips_per_view": share.filter(|s| s.0 + s.1 > 0).map(|(c, l)| {
                per_view(used.total as f64 - idle_scaled) * c as f64 / (c + l) as f64
            }),
            "background_per_command_per_s": idle.calls.iter()
                .map(|(k, v)| (k.clone(), *v as f64 / idle_secs)).collect::<BTreeMap<_, _>>(),
        });
    }
    eprintln!("[{}] churn: {line}", plan.label);
    println!("{line}");
    Ok(())
}

/// Polls the count until it stops moving (two reads 500 ms apart agree), at most 30 s.
async fn settled_total(node: &str, slug: &str, sources: usize) -> Result<u64, String> {
    let mut last = total_of(node, slug, sources).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = total_of(node, slug, sources).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Runs the futures at once, each as its own task; their outputs in order.
async fn join_tasks<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
