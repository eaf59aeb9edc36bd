//! The scenarios: hold, fanout, idle (one set of streams: `hot`), churn, burst, posts,
//! counts (viewcounter's many-posts read against `/healthz`).
//!
//! Readers record every event as (microseconds since the run's epoch, total).
//! A change is identified by the `total` it produces: for viewcounter the total in
//! the joining client's first event, for nchan the total written into the published
//! JSON. A reader "has seen" a change once it received a state whose total is at
//! least that change's total, so coalesced broadcasts count correctly.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::net::{ConnError, Item, SseConn, Target};
use crate::procstat::Server;
use crate::stats::{Errors, MsHistogram, ms, summary_ms};

/// How long a reader waits for its first event.
pub(crate) const FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a reader retries opening its stream.
const OPEN_ATTEMPTS: u32 = 8;
/// Upper bound for waiting until every reader saw a change.
pub(crate) const REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a scenario needs to know about the server under test.
pub struct Ctx {
    pub target: Arc<Target>,
    pub server: Server,
    pub label: String,
    /// SSE path template for readers (`{token}`, `{i}`).
    pub sub_path: String,
    pub changer: Arc<Changer>,
    /// Streams being opened at once.
    pub connect_concurrency: usize,
    /// Quiet time that counts as "no broadcast in flight".
    pub quiet: Duration,
}

/// How a scenario changes the state every reader sees.
pub enum Changer {
    /// POST a JSON `{"live":L,"total":T}` with a growing total (nchan publisher).
    Publish {
        path: String,
        next: AtomicU64,
        live: AtomicU64,
    },
    /// Connect one more client to the same post (viewcounter: a join).
    Join { template: String },
}

impl Changer {
    pub fn publish(path: String) -> Changer {
        Changer::Publish {
            path,
            next: AtomicU64::new(0),
            live: AtomicU64::new(0),
        }
    }

    /// Stores a first message so subscribers get an event at once (nchan keeps
    /// the newest one). Does nothing for joins.
    pub async fn prime(&self, target: &Target) -> Result<(), ConnError> {
        if let Changer::Publish { .. } = self {
            self.change(target).await?;
        }
        Ok(())
    }

    pub fn set_live(&self, n: u64) {
        if let Changer::Publish { live, .. } = self {
            live.store(n, Ordering::Relaxed);
        }
    }

    /// Makes one change. Returns the total it produced and, for a join, the open
    /// stream of the joining client (dropping it leaves).
    pub async fn change(&self, target: &Target) -> Result<(u64, Option<SseConn>), ConnError> {
        match self {
            Changer::Publish { path, next, live } => {
                let total = next.fetch_add(1, Ordering::Relaxed) + 1;
                let body = format!(
                    "{{\"live\":{},\"total\":{total}}}",
                    live.load(Ordering::Relaxed)
                );
                let (status, _) = target.request("POST", path, body.as_bytes()).await?;
                if (200..300).contains(&status) {
                    Ok((total, None))
                } else {
                    Err(ConnError::Status {
                        code: status,
                        retry_after: None,
                    })
                }
            }
            Changer::Join { template } => {
                let path = target.path(template, 0);
                let mut conn = target.open_sse(&path).await?;
                let (_, _, total) = conn.next_event(FIRST_EVENT_TIMEOUT).await?;
                Ok((total, Some(conn)))
            }
        }
    }
}

/// One reader's record.
#[derive(Default)]
struct Slot {
    /// (µs since epoch, total) of events received while logging.
    log: Vec<(u32, u32)>,
    reached: bool,
    last_total: u64,
    events: u64,
}

/// Shared state of N readers holding streams.
pub struct Hub {
    pub(crate) epoch: Instant,
    slots: Vec<Mutex<Slot>>,
    pub(crate) ready: AtomicUsize,
    pub(crate) open_failed: AtomicUsize,
    pub(crate) alive: AtomicUsize,
    dropped: AtomicUsize,
    reached: AtomicUsize,
    target_total: AtomicU64,
    pub(crate) logging: AtomicBool,
    last_event_us: AtomicU64,
    events: AtomicU64,
    comments: AtomicU64,
    pub errors: Errors,
}

impl Hub {
    fn us(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.epoch).as_micros() as u32
    }

    fn now_us(&self) -> u32 {
        self.us(Instant::now())
    }

    fn on_item(&self, i: usize, at: Instant, item: Item) {
        match item {
            Item::Comment => {
                self.comments.fetch_add(1, Ordering::Relaxed);
            }
            Item::Event { total, .. } => {
                let t = self.us(at);
                self.last_event_us.fetch_max(t as u64, Ordering::Relaxed);
                self.events.fetch_add(1, Ordering::Relaxed);
                let mut s = self.slots[i].lock().unwrap();
                s.events += 1;
                s.last_total = s.last_total.max(total);
                if self.logging.load(Ordering::SeqCst) {
                    s.log.push((t, total as u32));
                }
                if !s.reached && s.last_total >= self.target_total.load(Ordering::SeqCst) {
                    s.reached = true;
                    self.reached.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Starts logging afresh: clears logs and the "reached" marks.
    pub(crate) fn start_logging(&self) {
        self.target_total.store(u64::MAX, Ordering::SeqCst);
        for s in &self.slots {
            let mut s = s.lock().unwrap();
            s.log.clear();
            s.reached = false;
        }
        self.reached.store(0, Ordering::SeqCst);
        self.logging.store(true, Ordering::SeqCst);
    }

    /// Sets the total every reader must reach and counts those already there.
    pub(crate) fn set_target(&self, total: u64) {
        self.target_total.store(total, Ordering::SeqCst);
        for s in &self.slots {
            let mut s = s.lock().unwrap();
            if !s.reached && s.last_total >= total {
                s.reached = true;
                self.reached.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Waits until every live reader reached the target; false on timeout.
    pub(crate) async fn wait_reached(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.reached.load(Ordering::SeqCst) >= self.alive.load(Ordering::SeqCst) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until no reader received an event for `quiet` (at most `limit`).
    pub(crate) async fn quiesce(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let quiet_us = quiet.as_micros() as u64;
        while Instant::now() < deadline {
            let now = self.now_us() as u64;
            let last = self.last_event_us.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= quiet_us {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// First logged time at which each reader reached `total`, relative to `t0_us`.
    pub(crate) fn delays_since(&self, total: u64, t0_us: u32) -> (Vec<u32>, usize) {
        let mut delays = Vec::with_capacity(self.slots.len());
        let mut missed = 0;
        for s in &self.slots {
            let s = s.lock().unwrap();
            match s.log.iter().find(|e| e.1 as u64 >= total) {
                Some(e) => delays.push(e.0.saturating_sub(t0_us)),
                None => missed += 1,
            }
        }
        (delays, missed)
    }

    fn logged_events(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.lock().unwrap().log.len() as u64)
            .sum()
    }
}

/// Opens `n` readers on `ctx.sub_path` and waits until each got its first event
/// (or gave up). Returns the hub; reader tasks keep running until the process ends.
pub async fn open_readers(ctx: &Ctx, n: usize) -> Arc<Hub> {
    let hub = Arc::new(Hub {
        epoch: Instant::now(),
        slots: (0..n).map(|_| Mutex::new(Slot::default())).collect(),
        ready: AtomicUsize::new(0),
        open_failed: AtomicUsize::new(0),
        alive: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        reached: AtomicUsize::new(0),
        target_total: AtomicU64::new(u64::MAX),
        logging: AtomicBool::new(false),
        last_event_us: AtomicU64::new(0),
        events: AtomicU64::new(0),
        comments: AtomicU64::new(0),
        errors: Errors::default(),
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(ctx.connect_concurrency.max(1)));
    for i in 0..n {
        let hub = hub.clone();
        let gate = gate.clone();
        let target = ctx.target.clone();
        let template = ctx.sub_path.clone();
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore closed");
            let mut conn = None;
            for attempt in 1..=OPEN_ATTEMPTS {
                let path = target.path(&template, i as u64);
                let opened = match target.open_sse(&path).await {
                    Ok(mut c) => match c.next_event(FIRST_EVENT_TIMEOUT).await {
                        Ok((at, live, total)) => Ok((c, at, live, total)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match opened {
                    Ok((c, at, live, total)) => {
                        hub.alive.fetch_add(1, Ordering::SeqCst);
                        hub.on_item(i, at, Item::Event { live, total });
                        hub.ready.fetch_add(1, Ordering::SeqCst);
                        conn = Some(c);
                        break;
                    }
                    Err(e) => {
                        hub.errors.add(format!("open:{}", e.kind()));
                        let wait = e
                            .backoff()
                            .unwrap_or(Duration::from_millis(100 * attempt as u64));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            drop(permit);
            let Some(mut conn) = conn else {
                hub.open_failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            loop {
                match conn.next().await {
                    Ok((at, item)) => hub.on_item(i, at, item),
                    Err(e) => {
                        hub.errors.add(format!("stream:{}", e.kind()));
                        hub.dropped.fetch_add(1, Ordering::SeqCst);
                        hub.alive.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
    }
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let done = hub.ready.load(Ordering::SeqCst) + hub.open_failed.load(Ordering::SeqCst);
        if done >= n {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  [{}] {} of {n} streams open ({:.0}/s)",
                ctx.label,
                hub.ready.load(Ordering::SeqCst),
                done as f64 / started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub
}

fn emit(v: Value) {
    println!("{v}");
}

/// hold + fanout + idle on one set of streams; any of the three can be skipped.
pub async fn hot(ctx: &Ctx, streams: usize, rounds: usize, idle_window: Option<Duration>) {
    ctx.changer.set_live(streams as u64);
    let rss_before = ctx.server.rss_bytes();
    let cpu_before = ctx.server.cpu_seconds();
    let t0 = Instant::now();
    let hub = open_readers(ctx, streams).await;
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = hub.ready.load(Ordering::SeqCst);
    // Let allocations from the opening burst settle before reading memory.
    hub.quiesce(ctx.quiet, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = ctx.server.rss_bytes();
    let per_stream = if opened > 0 {
        rss_after.saturating_sub(rss_before) as f64 / opened as f64
    } else {
        0.0
    };
    let open_cpu = ctx.server.cpu_seconds() - cpu_before;
    eprintln!(
        "[{}] hold: {opened}/{streams} streams in {open_secs:.1}s; server RSS {:.1} -> {:.1} MiB = {:.0} bytes/stream; {} open errors; server fds {:?}",
        ctx.label,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_stream,
        hub.errors.total(),
        ctx.server.open_fds(),
    );
    emit(json!({
        "scenario": "hold", "label": ctx.label, "streams": streams, "opened": opened,
        "open_failed": hub.open_failed.load(Ordering::SeqCst),
        "open_seconds": open_secs, "open_per_s": opened as f64 / open_secs,
        "open_cpu_s": open_cpu,
        "rss_before": rss_before, "rss_after": rss_after, "rss_per_stream": per_stream,
        "errors": hub.errors.snapshot(),
    }));

    if rounds > 0 {
        fanout(ctx, &hub, rounds).await;
    }
    if let Some(window) = idle_window {
        idle(ctx, &hub, window).await;
    }
}

async fn fanout(ctx: &Ctx, hub: &Hub, rounds: usize) {
    let mut all = Vec::new();
    let mut per_round = Vec::new();
    let mut missed_total = 0;
    let mut cpu_total = 0.0;
    let mut events_total = 0;
    let mut joiners = JoinSet::new();
    let mut trigger_errors = 0;
    for round in 1..=rounds {
        hub.quiesce(ctx.quiet, Duration::from_secs(10)).await;
        hub.start_logging();
        let cpu0 = ctx.server.cpu_seconds();
        let t0 = hub.now_us();
        let total = match ctx.changer.change(&ctx.target).await {
            Ok((total, conn)) => {
                if let Some(mut c) = conn {
                    // Keep the joiner connected (one change per round), draining its stream.
                    joiners.spawn(async move { while c.next().await.is_ok() {} });
                }
                total
            }
            Err(e) => {
                eprintln!("[{}] fanout round {round}: trigger failed: {e}", ctx.label);
                trigger_errors += 1;
                hub.logging.store(false, Ordering::SeqCst);
                continue;
            }
        };
        hub.set_target(total);
        let complete = hub.wait_reached(REACH_TIMEOUT).await;
        let cpu = ctx.server.cpu_seconds() - cpu0;
        hub.logging.store(false, Ordering::SeqCst);
        let (mut delays, missed) = hub.delays_since(total, t0);
        let events = hub.logged_events();
        let (p50, p99, max) = summary_ms(&mut delays);
        eprintln!(
            "[{}] fanout round {round}: {} readers saw total {total}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms{}; server CPU {:.3}s for {events} events",
            ctx.label,
            delays.len(),
            if complete {
                String::new()
            } else {
                format!(", {missed} missed")
            },
            cpu
        );
        per_round.push(
            json!({"round": round, "reached": delays.len(), "missed": missed,
            "p50_ms": p50, "p99_ms": p99, "max_ms": max, "cpu_s": cpu, "events": events}),
        );
        missed_total += missed;
        cpu_total += cpu;
        events_total += events;
        all.extend(delays);
    }
    let (p50, p99, max) = summary_ms(&mut all);
    let readers = hub.alive.load(Ordering::SeqCst);
    eprintln!(
        "[{}] fanout: {rounds} rounds x {readers} readers: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, {missed_total} missed; {:.2} µs server CPU per delivered event",
        ctx.label,
        per_event_us(cpu_total, events_total)
    );
    emit(json!({
        "scenario": "fanout", "label": ctx.label, "readers": readers, "rounds": rounds,
        "p50_ms": p50, "p99_ms": p99, "max_ms": max, "missed": missed_total,
        "trigger_errors": trigger_errors,
        "cpu_s": cpu_total, "events": events_total,
        "cpu_us_per_event": per_event_us(cpu_total, events_total),
        "per_round": per_round,
    }));
    joiners.abort_all();
}

fn per_event_us(cpu_s: f64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        cpu_s * 1e6 / events as f64
    }
}

async fn idle(ctx: &Ctx, hub: &Hub, window: Duration) {
    hub.quiesce(ctx.quiet, Duration::from_secs(10)).await;
    let events0 = hub.events.load(Ordering::Relaxed);
    let comments0 = hub.comments.load(Ordering::Relaxed);
    let cpu0 = ctx.server.cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = ctx.server.cpu_seconds() - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    let events = hub.events.load(Ordering::Relaxed) - events0;
    let comments = hub.comments.load(Ordering::Relaxed) - comments0;
    let streams = hub.alive.load(Ordering::SeqCst);
    let pct = cpu / secs * 100.0;
    eprintln!(
        "[{}] idle: {streams} streams for {secs:.1}s: server CPU {cpu:.2}s = {pct:.2}% of one core; {comments} heartbeats, {events} events received",
        ctx.label
    );
    emit(json!({
        "scenario": "idle", "label": ctx.label, "streams": streams, "window_s": secs,
        "cpu_s": cpu, "cpu_pct": pct, "heartbeats": comments, "events": events,
    }));
}

/// C workers loop open → first event → close (RST) for `duration`.
pub async fn churn(ctx: &Ctx, workers: usize, duration: Duration) {
    ctx.changer.set_live(0);
    let errors = Arc::new(Errors::default());
    let rejected = Arc::new(AtomicU64::new(0));
    let cpu0 = ctx.server.cpu_seconds();
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let target = ctx.target.clone();
        let template = ctx.sub_path.clone();
        let errors = errors.clone();
        let rejected = rejected.clone();
        set.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let path = target.path(&template, i);
                i += 1;
                let r = async {
                    let mut c = target.open_sse(&path).await?;
                    c.next_event(FIRST_EVENT_TIMEOUT).await
                }
                .await;
                match r {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u32),
                    Err(e) => {
                        if let Some(wait) = e.backoff() {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(
                                wait.min(deadline.saturating_duration_since(Instant::now())),
                            )
                            .await;
                        }
                        errors.add(e.kind());
                    }
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = ctx.server.cpu_seconds() - cpu0;
    let cycles = lat.len() as u64;
    let (p50, p99, max) = summary_ms(&mut lat);
    let rate = cycles as f64 / secs;
    eprintln!(
        "[{}] churn: {workers} workers, {secs:.1}s: {cycles} views = {rate:.0}/s, {} errors, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms; {:.1} µs server CPU per view",
        ctx.label,
        errors.total(),
        per_event_us(cpu, cycles)
    );
    emit(json!({
        "scenario": "churn", "label": ctx.label, "workers": workers, "duration_s": secs,
        "views": cycles, "views_per_s": rate, "errors_total": errors.total(),
        "rejected_503_429": rejected.load(Ordering::Relaxed), "errors": errors.snapshot(),
        "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "cpu_s": cpu, "cpu_us_per_view": per_event_us(cpu, cycles),
    }));
}

/// R changes/s (joins or publishes) on a post with N readers for `duration`.
pub async fn burst(ctx: &Ctx, readers: usize, rate: f64, duration: Duration, max_wait: Duration) {
    ctx.changer.set_live(readers as u64);
    let hub = open_readers(ctx, readers).await;
    let opened = hub.ready.load(Ordering::SeqCst);
    eprintln!("[{}] burst: {opened}/{readers} readers open", ctx.label);
    hub.quiesce(ctx.quiet, Duration::from_secs(10)).await;
    hub.start_logging();
    let cpu0 = ctx.server.cpu_seconds();
    let start = Instant::now();
    let start_us = hub.us(start);
    let n = (rate * duration.as_secs_f64()).round() as u64;
    let changes: Arc<Mutex<Vec<(u32, u64, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Errors::default());
    let mut set = JoinSet::new();
    for j in 0..n {
        let at = start + Duration::from_secs_f64(j as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let target = ctx.target.clone();
        let changer = ctx.changer.clone();
        let changes = changes.clone();
        let errors = errors.clone();
        let hub_epoch = hub.epoch;
        set.spawn(async move {
            let t = Instant::now();
            let r = tokio::time::timeout(max_wait, changer.change(&target)).await;
            match r {
                Ok(Ok((total, conn))) => {
                    let lat = t.elapsed().as_micros() as u32;
                    drop(conn); // the joiner leaves at once (RST)
                    let c = t.saturating_duration_since(hub_epoch).as_micros() as u32;
                    changes.lock().unwrap().push((c, total, lat));
                }
                Ok(Err(e)) => errors.add(e.kind()),
                Err(_) => errors.add("timeout".into()),
            }
        });
    }
    let sent_secs = start.elapsed().as_secs_f64();
    let end_us = hub.now_us();
    while set.join_next().await.is_some() {}
    let changes = std::mem::take(&mut *changes.lock().unwrap());
    let final_total = changes.iter().map(|c| c.1).max().unwrap_or(0);
    hub.set_target(final_total);
    let all_reached = hub.wait_reached(max_wait).await;
    let settled_us = hub.now_us();
    let cpu = ctx.server.cpu_seconds() - cpu0;
    hub.logging.store(false, Ordering::SeqCst);
    let last_change_us = changes.iter().map(|c| c.0).max().unwrap_or(end_us);
    // When the last reader first held the final state (from the logs, not from
    // when the wait above noticed it).
    let (reach, _) = hub.delays_since(final_total, 0);
    let final_reach_us = if all_reached {
        reach.iter().copied().max().unwrap_or(settled_us)
    } else {
        settled_us
    };

    // Staleness: for every (reader, change), time from the change being sent until
    // the reader held a state that includes it.
    let mut by_total: Vec<(u64, u32)> = changes.iter().map(|c| (c.1, c.0)).collect();
    by_total.sort_unstable();
    let mut hist = MsHistogram::new();
    let mut worst_per_reader = Vec::with_capacity(readers);
    let mut unseen = 0u64;
    let mut max_rate = 0u64;
    let mut events_in_window = 0u64;
    let secs = duration.as_secs_f64().ceil() as usize;
    let mut bins = vec![0u64; secs.max(1)];
    for s in &hub.slots {
        let s = s.lock().unwrap();
        bins.iter_mut().for_each(|b| *b = 0);
        for &(t, _) in &s.log {
            if t >= start_us && t < end_us {
                let b = ((t - start_us) / 1_000_000) as usize;
                if b < bins.len() {
                    bins[b] += 1;
                }
                events_in_window += 1;
            }
        }
        max_rate = max_rate.max(bins.iter().copied().max().unwrap_or(0));
        if s.log.is_empty() && s.last_total == 0 {
            continue; // never opened
        }
        let mut worst = 0u32;
        let mut running = 0u64;
        let mut running_at = 0u32;
        let mut e = 0;
        for &(total, c) in &by_total {
            while running < total && e < s.log.len() {
                if s.log[e].1 as u64 > running {
                    running = s.log[e].1 as u64;
                    running_at = s.log[e].0;
                }
                e += 1;
            }
            let delay = if running >= total {
                running_at.saturating_sub(c)
            } else {
                unseen += 1;
                settled_us.saturating_sub(c)
            };
            hist.add_us(delay as u64);
            worst = worst.max(delay);
        }
        worst_per_reader.push(worst);
    }
    let (_, worst_p99, worst_max) = summary_ms(&mut worst_per_reader);
    let mut join_lat: Vec<u32> = changes.iter().map(|c| c.2).collect();
    let (jp50, jp99, jmax) = summary_ms(&mut join_lat);
    let done = changes.len();
    let achieved = done as f64 / sent_secs;
    let mean_rate = events_in_window as f64 / opened.max(1) as f64 / duration.as_secs_f64();
    let settle_ms = ms(final_reach_us.saturating_sub(last_change_us));
    let events = hub.logged_events();
    let keeps_up =
        all_reached && errors.total() == 0 && achieved >= rate * 0.95 && settle_ms <= 500.0;
    eprintln!(
        "[{}] burst: {done}/{n} changes at {achieved:.0}/s (target {rate}/s) to {opened} readers; change latency p50 {jp50:.1} ms p99 {jp99:.1} ms max {jmax:.1} ms; per reader max {max_rate} events/s (mean {mean_rate:.1}/s); staleness max {worst_max:.1} ms (p99 of pairs {:.0} ms, {unseen} unseen); all readers final {settle_ms:.1} ms after the last change{}; server CPU {cpu:.2}s = {:.0}% of one core, {:.2} µs per delivered event; {}",
        ctx.label,
        hist.percentile_ms(99.0),
        if all_reached {
            ""
        } else {
            " (NOT ALL REACHED)"
        },
        cpu / (settled_us - start_us).max(1) as f64 * 1e8,
        per_event_us(cpu, events),
        if keeps_up { "keeps up" } else { "FALLS BEHIND" },
    );
    emit(json!({
        "scenario": "burst", "label": ctx.label, "readers": opened, "rate": rate,
        "duration_s": duration.as_secs_f64(), "changes_sent": n, "changes_ok": done,
        "change_errors": errors.snapshot(), "achieved_rate": achieved,
        "change_p50_ms": jp50, "change_p99_ms": jp99, "change_max_ms": jmax,
        "max_events_per_s_reader": max_rate, "mean_events_per_s_reader": mean_rate,
        "staleness_max_ms": worst_max, "staleness_reader_p99_ms": worst_p99,
        "staleness_pairs_p50_ms": hist.percentile_ms(50.0),
        "staleness_pairs_p99_ms": hist.percentile_ms(99.0), "unseen_pairs": unseen,
        "all_reached": all_reached, "settle_ms": settle_ms, "keeps_up": keeps_up,
        "cpu_s": cpu, "events": events, "cpu_us_per_event": per_event_us(cpu, events),
        "reader_errors": hub.errors.snapshot(),
    }));
}

/// Reads `posts` distinct posts once each (open → first event → close), then
/// watches the server's memory return as their actors go to sleep.
pub async fn posts(ctx: &Ctx, posts: u64, workers: usize, settle: Duration) {
    let rss_start = ctx.server.rss_bytes();
    let errors = Arc::new(Errors::default());
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let target = ctx.target.clone();
        let template = ctx.sub_path.clone();
        let errors = errors.clone();
        let next = next.clone();
        let ok = ok.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= posts {
                    return;
                }
                for _attempt in 0..OPEN_ATTEMPTS {
                    let path = target.path(&template, i);
                    let r = async {
                        let mut c = target.open_sse(&path).await?;
                        c.next_event(FIRST_EVENT_TIMEOUT).await
                    }
                    .await;
                    match r {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            errors.add(e.kind());
                            match e.backoff() {
                                Some(wait) => tokio::time::sleep(wait).await,
                                None => break,
                            }
                        }
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let load_secs = start.elapsed().as_secs_f64();
    let rss_peak = ctx.server.rss_bytes();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "[{}] posts: {ok}/{posts} posts read in {load_secs:.1}s ({:.0}/s), {} errors; server RSS {:.1} -> {:.1} MiB",
        ctx.label,
        ok as f64 / load_secs,
        errors.total(),
        rss_start as f64 / 1048576.0,
        rss_peak as f64 / 1048576.0
    );
    let limit = rss_start as f64 * 1.10;
    let t = Instant::now();
    let mut rss_end = rss_peak;
    let mut returned_after = None;
    while t.elapsed() < settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_end = ctx.server.rss_bytes();
        if rss_end as f64 <= limit {
            returned_after = Some(t.elapsed().as_secs_f64());
            break;
        }
    }
    let ratio = rss_end as f64 / rss_start.max(1) as f64;
    eprintln!(
        "[{}] posts: RSS after {:.0}s: {:.1} MiB = {:.2}x the start{}",
        ctx.label,
        t.elapsed().as_secs_f64(),
        rss_end as f64 / 1048576.0,
        ratio,
        match returned_after {
            Some(s) => format!(", within 10% after {s:.0}s"),
            None => ", NOT within 10%".into(),
        }
    );
    emit(json!({
        "scenario": "posts", "label": ctx.label, "posts": posts, "ok": ok,
        "errors_total": errors.total(), "errors": errors.snapshot(),
        "load_seconds": load_secs, "rss_start": rss_start, "rss_peak": rss_peak,
        "rss_end": rss_end, "rss_end_ratio": ratio,
        "returned_within_10pct": returned_after.is_some(), "seconds_to_return": returned_after,
        "settle_limit_s": settle.as_secs_f64(),
    }));
}

/// `GET /healthz` and `GET /api/v1/counts` requests made before measuring, not recorded.
const COUNTS_WARMUP: usize = 20;
/// Every this many counts answers is parsed in full (the others: rows counted).
const COUNTS_FULL_CHECK_EVERY: usize = 100;

/// viewcounter only: makes sure posts `{prefix}0` … `{prefix}{P-1}` exist with a view each
/// (open → first event → close), then times `requests` `GET /healthz` and as many
/// `GET /api/v1/counts?slug=…` naming all P posts, one fresh connection per request,
/// alternating (and swapping which goes first) so both see the same machine state.
pub async fn counts(ctx: &Ctx, posts: usize, requests: usize, prefix: &str) {
    let errors = Errors::default();
    let template = format!("/api/v1/connect/{prefix}{{i}}?view={{token}}");
    let seed_start = Instant::now();
    let mut seeded = 0;
    for i in 0..posts {
        for attempt in 1..=OPEN_ATTEMPTS {
            let path = ctx.target.path(&template, i as u64);
            let r = async {
                let mut c = ctx.target.open_sse(&path).await?;
                c.next_event(FIRST_EVENT_TIMEOUT).await
            }
            .await;
            match r {
                Ok(_) => {
                    seeded += 1;
                    break;
                }
                Err(e) => {
                    errors.add(format!("seed:{}", e.kind()));
                    let wait = e
                        .backoff()
                        .unwrap_or(Duration::from_millis(100 * attempt as u64));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    let seed_secs = seed_start.elapsed().as_secs_f64();

    let mut counts_path = String::from("/api/v1/counts?");
    for i in 0..posts {
        if i > 0 {
            counts_path.push('&');
        }
        counts_path.push_str(&format!("slug={prefix}{i}"));
    }
    let mut healthz_lat = Vec::with_capacity(requests);
    let mut counts_lat = Vec::with_capacity(requests);
    let mut counts_answers = 0usize;
    for k in 0..COUNTS_WARMUP + requests {
        let measured = k >= COUNTS_WARMUP;
        let order = if k % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_counts in order {
            let (name, path) = if is_counts {
                ("counts", counts_path.as_str())
            } else {
                ("healthz", "/healthz")
            };
            let t = Instant::now();
            let r = ctx.target.request("GET", path, b"").await;
            let us = t.elapsed().as_micros() as u32;
            let ok = match r {
                Ok((200, body)) if is_counts => {
                    let full = counts_answers.is_multiple_of(COUNTS_FULL_CHECK_EVERY);
                    counts_answers += 1;
                    match check_counts(&body, posts, prefix, full) {
                        Ok(()) => true,
                        Err(kind) => {
                            errors.add(format!("{name}:{kind}"));
                            false
                        }
                    }
                }
                Ok((200, _)) => true,
                Ok((code, _)) => {
                    errors.add(format!("{name}:status:{code}"));
                    false
                }
                Err(e) => {
                    errors.add(format!("{name}:{}", e.kind()));
                    if let Some(wait) = e.backoff() {
                        tokio::time::sleep(wait).await;
                    }
                    false
                }
            };
            if ok && measured {
                if is_counts {
                    counts_lat.push(us);
                } else {
                    healthz_lat.push(us);
                }
            }
        }
    }
    let (h50, h99, hmax) = summary_ms(&mut healthz_lat);
    let (c50, c99, cmax) = summary_ms(&mut counts_lat);
    let ratio = (h99 > 0.0).then(|| c99 / h99);
    eprintln!(
        "[{}] counts: {seeded}/{posts} posts seeded in {seed_secs:.1}s; {requests} requests each, alternating: /healthz p50 {h50:.3} ms, p99 {h99:.3} ms, max {hmax:.2} ms; counts of {posts} p50 {c50:.3} ms, p99 {c99:.3} ms, max {cmax:.2} ms; p99 ratio {}; {} errors",
        ctx.label,
        ratio.map_or("—".into(), |q| format!("{q:.2}×")),
        errors.total(),
    );
    emit(json!({
        "scenario": "counts", "label": ctx.label, "posts": posts, "seeded": seeded,
        "requests": requests, "warmup": COUNTS_WARMUP,
        "healthz_ok": healthz_lat.len(), "counts_ok": counts_lat.len(),
        "healthz_p50_ms": h50, "healthz_p99_ms": h99, "healthz_max_ms": hmax,
        "counts_p50_ms": c50, "counts_p99_ms": c99, "counts_max_ms": cmax,
        "ratio_p99": ratio, "errors": errors.total(), "error_kinds": errors.snapshot(),
    }));
}

/// Whether a counts answer lists the `posts` seeded posts: its `"slug"` keys counted or,
/// with `full`, parsed (every post once, with at least the seeding view).
fn check_counts(body: &[u8], posts: usize, prefix: &str, full: bool) -> Result<(), &'static str> {
    if !full {
        let rows = body.windows(6).filter(|w| *w == b"\"slug\"").count();
        return if rows == posts { Ok(()) } else { Err("rows") };
    }
    let rows: Vec<Value> = serde_json::from_slice(body).map_err(|_| "json")?;
    if rows.len() != posts {
        return Err("rows");
    }
    let mut seen = vec![false; posts];
    for row in &rows {
        let i: usize = row["slug"]
            .as_str()
            .and_then(|s| s.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .filter(|&i| i < posts)
            .ok_or("slug")?;
        if std::mem::replace(&mut seen[i], true) {
            return Err("slug");
        }
        if row["total"].as_u64().unwrap_or(0) == 0 || row["live"].as_u64().is_none() {
            return Err("numbers");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_answers_must_list_every_seeded_post() {
        let good = br#"[{"slug":"c-0","live":0,"total":1},{"slug":"c-1","live":1,"total":3}]"#;
        for full in [false, true] {
            assert_eq!(check_counts(good, 2, "c-", full), Ok(()));
            assert_eq!(check_counts(b"[]", 2, "c-", full), Err("rows"));
        }
        let twice = br#"[{"slug":"c-0","live":0,"total":1},{"slug":"c-0","live":0,"total":1}]"#;
        assert_eq!(check_counts(twice, 2, "c-", false), Ok(()));
        assert_eq!(check_counts(twice, 2, "c-", true), Err("slug"));
        let unread = br#"[{"slug":"c-0","live":0,"total":1},{"slug":"c-1","live":0,"total":0}]"#;
        assert_eq!(check_counts(unread, 2, "c-", true), Err("numbers"));
        assert_eq!(check_counts(b"not json", 2, "c-", true), Err("json"));
    }
}
