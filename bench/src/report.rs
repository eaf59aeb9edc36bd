//! BENCHMARKS.md from the JSON lines of a run: machine, command, the issue-3
//! targets with both figures and their ratio, details, and kept notes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::procstat;

/// Text after this line in an existing BENCHMARKS.md survives a new run.
pub const KEEP_MARKER: &str =
    "<!-- Everything below this line is kept when bench/run.sh rewrites this file. -->";

const VC: &str = "viewcounter";
const NCHAN: &str = "nchan";

struct Results(HashMap<(String, String), Value>);

impl Results {
    fn get(&self, label: &str, scenario: &str) -> Option<&Value> {
        self.0.get(&(label.to_string(), scenario.to_string()))
    }

    fn num(&self, label: &str, scenario: &str, key: &str) -> Option<f64> {
        self.get(label, scenario)?.get(key)?.as_f64()
    }

    fn boolean(&self, label: &str, scenario: &str, key: &str) -> Option<bool> {
        self.get(label, scenario)?.get(key)?.as_bool()
    }
}

/// Writes the report from the result lines (each target's best run per scenario).
pub fn write(
    results: &Path,
    out: &Path,
    command: &str,
    params: &str,
    notes: &[String],
) -> Result<(), String> {
    let mut map = HashMap::new();
    for v in read_lines(results)? {
        let label = v["label"].as_str().unwrap_or_default().to_string();
        let scenario = v["scenario"].as_str().unwrap_or_default().to_string();
        // With several runs of a scenario (REPEAT), keep each target's best one: the
        // load client and anything else on these cores only ever make figures worse.
        let better = match map.get(&(label.clone(), scenario.clone())) {
            Some(old) => score(&scenario, &v) > score(&scenario, old),
            None => true,
        };
        if better {
            map.insert((label, scenario), v);
        }
    }
    let r = Results(map);
    let kept = fs::read_to_string(out)
        .ok()
        .and_then(|old| old.split_once(KEEP_MARKER).map(|(_, tail)| tail.to_string()))
        .unwrap_or_else(|| "\n\n## History and notes\n\n(Add profiling before/after figures here; this section is kept across runs.)\n".into());
    let md = render(&r, command, params, notes) + KEEP_MARKER + &kept;
    fs::write(out, md).map_err(|e| format!("{}: {e}", out.display()))
}

/// The JSON result lines the scenarios wrote.
pub(crate) fn read_lines(results: &Path) -> Result<Vec<Value>, String> {
    let text = fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad result line: {e}")))
        .collect()
}

/// Higher is better, per scenario.
fn score(scenario: &str, v: &Value) -> f64 {
    let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let s = match scenario {
        "hold" => -n("rss_per_stream"),
        "fanout" => -n("p99_ms") - 1e6 * n("missed"),
        "idle" => -n("cpu_pct"),
        "churn" => n("views_per_s") - 1e6 * n("errors_total"),
        "burst" => -n("staleness_max_ms"),
        "posts" => -n("rss_end_ratio"),
        "counts" => -n("counts_p99_ms") - 1e6 * n("errors"),
        _ => 0.0,
    };
    if s.is_nan() { f64::MIN } else { s }
}

pub(crate) fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn mem_total() -> String {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kb / 1048576.0))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn f(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(x) => format!("{}{unit}", group(x, digits)),
        None => "—".into(),
    }
}

/// Formats with thousands separators.
fn group(x: f64, digits: usize) -> String {
    let s = format!("{:.*}", digits, x.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> (Option<f64>, String) {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => {
            let q = a / b;
            let digits = if q == 0.0 || q >= 0.1 {
                2
            } else if q >= 0.01 {
                3
            } else {
                4
            };
            (Some(q), format!("{q:.digits$}×"))
        }
        _ => (None, "—".into()),
    }
}

pub(crate) fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

/// The details table: label, scenario, result key, decimals, unit.
const DETAILS: &[(&str, &str, &str, usize, &str)] = &[
    ("hold: streams opened", "hold", "opened", 0, ""),
    (
        "hold: streams opened per second",
        "hold",
        "open_per_s",
        0,
        "/s",
    ),
    ("hold: server RSS before", "hold", "rss_before", 1, " MiB"),
    ("hold: server RSS after", "hold", "rss_after", 1, " MiB"),
    ("fanout: p50", "fanout", "p50_ms", 1, " ms"),
    ("fanout: max", "fanout", "max_ms", 1, " ms"),
    (
        "fanout: readers that missed a change",
        "fanout",
        "missed",
        0,
        "",
    ),
    (
        "fanout: server CPU per delivered event",
        "fanout",
        "cpu_us_per_event",
        2,
        " µs",
    ),
    ("churn: p50 open → first event", "churn", "p50_ms", 2, " ms"),
    ("churn: p99 open → first event", "churn", "p99_ms", 2, " ms"),
    (
        "churn: server CPU per view",
        "churn",
        "cpu_us_per_view",
        2,
        " µs",
    ),
    (
        "burst: changes/s achieved",
        "burst",
        "achieved_rate",
        0,
        "/s",
    ),
    (
        "burst: change request p99 (join: first event; nchan: POST answered)",
        "burst",
        "change_p99_ms",
        1,
        " ms",
    ),
    (
        "burst: mean events/s per reader",
        "burst",
        "mean_events_per_s_reader",
        1,
        "/s",
    ),
    (
        "burst: staleness p99 over (reader, change) pairs",
        "burst",
        "staleness_pairs_p99_ms",
        0,
        " ms",
    ),
    (
        "burst: all readers at the final state, after the last change",
        "burst",
        "settle_ms",
        0,
        " ms",
    ),
    ("burst: server CPU", "burst", "cpu_s", 2, " s"),
    (
        "burst: server CPU per delivered event (includes serving the joins themselves)",
        "burst",
        "cpu_us_per_event",
        2,
        " µs",
    ),
    (
        "idle: heartbeats received in the window",
        "idle",
        "heartbeats",
        0,
        "",
    ),
    ("idle: server CPU in the window", "idle", "cpu_s", 2, " s"),
];

/// `counts p99 (healthz p99, ratio×)` of viewcounter's counts run, if it ran.
fn counts_vs_healthz(r: &Results) -> Option<String> {
    let counts = r.num(VC, "counts", "counts_p99_ms")?;
    let healthz = r.num(VC, "counts", "healthz_p99_ms");
    Some(format!(
        "{} ({} /healthz, {})",
        f(Some(counts), 3, " ms"),
        f(healthz, 3, " ms"),
        ratio(Some(counts), healthz).1
    ))
}

fn render(r: &Results, command: &str, params: &str, notes: &[String]) -> String {
    let (nproc, model, kernel) = procstat::machine();
    let mut s = String::new();
    let streams = r
        .num(VC, "hold", "streams")
        .or(r.num(NCHAN, "hold", "streams"));
    let readers = r
        .num(VC, "burst", "readers")
        .or(r.num(NCHAN, "burst", "readers"));
    let rate = r.num(VC, "burst", "rate").or(r.num(NCHAN, "burst", "rate"));
    let posts = r.num(VC, "posts", "posts");
    let _ = writeln!(s, "# Benchmarks: viewcounter vs nginx + nchan\n");
    let _ = writeln!(
        s,
        "Written by `bench/run.sh` (`just bench`); both servers were measured one after the other in the same run, with the same load client (`bench/`, binary `loadgen`) on the same cores.\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "- date: {}", date());
    let _ = writeln!(s, "- nproc: {nproc}; CPU: {model}; memory: {}", mem_total());
    let _ = writeln!(s, "- kernel: {kernel}");
    let _ = writeln!(s, "- loopback only; client and servers share the cores\n");
    let _ = writeln!(s, "## Command\n\n```\n{command}\n```\n");
    if !params.is_empty() {
        let _ = writeln!(s, "Parameters: `{params}`\n");
    }

    let _ = writeln!(s, "## Targets (issue 3, point 3)\n");
    let _ = writeln!(
        s,
        "| target | viewcounter | nchan | ratio (viewcounter / nchan) | goal | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");

    let (vc, nc) = (
        r.num(VC, "hold", "rss_per_stream"),
        r.num(NCHAN, "hold", "rss_per_stream"),
    );
    let (q, qs) = ratio(vc, nc);
    let _ = writeln!(
        s,
        "| server RSS per stream, {} streams on one post | {} | {} | {qs} | ≤ 0.5× | {} |",
        f(streams, 0, ""),
        f(vc.map(|b| b / 1024.0), 2, " KiB"),
        f(nc.map(|b| b / 1024.0), 2, " KiB"),
        verdict(q.map(|q| q <= 0.5))
    );

    let (vc, nc) = (
        r.num(VC, "fanout", "p99_ms"),
        r.num(NCHAN, "fanout", "p99_ms"),
    );
    let (q, qs) = ratio(vc, nc);
    let missed = r.num(VC, "fanout", "missed").unwrap_or(0.0);
    let _ = writeln!(
        s,
        "| join → every reader sees it, p99 over all readers and rounds (nchan: publish → every subscriber) | {} | {} | {qs} | ≤ 1× | {} |",
        f(vc, 1, " ms"),
        f(nc, 1, " ms"),
        verdict(q.map(|q| q <= 1.0 && missed == 0.0))
    );

    let (vc, nc) = (
        r.num(VC, "churn", "views_per_s"),
        r.num(NCHAN, "churn", "views_per_s"),
    );
    let (ve, ne) = (
        r.num(VC, "churn", "errors_total"),
        r.num(NCHAN, "churn", "errors_total"),
    );
    let (q, qs) = ratio(vc, nc);
    let _ = writeln!(
        s,
        "| open → first event → close loop, {} workers: views/s (errors) | {} ({}) | {} ({}) | {qs} | ≥ 1×, 0 errors | {} |",
        f(r.num(VC, "churn", "workers"), 0, ""),
        f(vc, 0, ""),
        f(ve, 0, ""),
        f(nc, 0, ""),
        f(ne, 0, ""),
        verdict(q.map(|q| q >= 1.0 && ve == Some(0.0)))
    );

    let burst_title = format!(
        "{} joins/s on a post with {} readers",
        f(rate, 0, ""),
        f(readers, 0, "")
    );
    let (vc, nc) = (
        r.num(VC, "burst", "max_events_per_s_reader"),
        r.num(NCHAN, "burst", "max_events_per_s_reader"),
    );
    let _ = writeln!(
        s,
        "| {burst_title}: events/s received by the busiest reader (nchan: one event per publish) | {} | {} | {} | ≤ 10 | {} |",
        f(vc, 0, ""),
        f(nc, 0, ""),
        ratio(vc, nc).1,
        verdict(vc.map(|v| v <= 10.0))
    );
    let (vc, nc) = (
        r.num(VC, "burst", "staleness_max_ms"),
        r.num(NCHAN, "burst", "staleness_max_ms"),
    );
    let _ = writeln!(
        s,
        "| {burst_title}: newest state reached every reader within (max over readers and joins) | {} | {} | {} | ≤ 500 ms | {} |",
        f(vc, 0, " ms"),
        f(nc, 0, " ms"),
        ratio(vc, nc).1,
        verdict(vc.map(|v| v <= 500.0))
    );
    let keeps = |label: &str| {
        r.boolean(label, "burst", "keeps_up").map(|k| {
            format!(
                "{} ({} of {}/s, final state {} after the last join)",
                if k { "yes" } else { "no" },
                f(r.num(label, "burst", "achieved_rate"), 0, ""),
                f(r.num(label, "burst", "rate"), 0, ""),
                f(r.num(label, "burst", "settle_ms"), 0, " ms"),
            )
        })
    };
    let _ = writeln!(
        s,
        "| {burst_title}: server keeps up | {} | {} | — | yes | {} |",
        keeps(VC).unwrap_or_else(|| "—".into()),
        keeps(NCHAN).unwrap_or_else(|| "—".into()),
        verdict(r.boolean(VC, "burst", "keeps_up"))
    );

    let (vc, nc) = (
        r.num(VC, "idle", "cpu_pct"),
        r.num(NCHAN, "idle", "cpu_pct"),
    );
    let window = r
        .num(VC, "idle", "window_s")
        .or(r.num(NCHAN, "idle", "window_s"));
    let _ = writeln!(
        s,
        "| {} idle streams: server CPU over {}, % of one core | {} | {} | {} | < 2% | {} |",
        f(r.num(VC, "idle", "streams").or(streams), 0, ""),
        f(window, 0, " s"),
        f(vc, 2, "%"),
        f(nc, 2, "%"),
        ratio(vc, nc).1,
        verdict(vc.map(|v| v < 2.0))
    );

    let vc_ratio = r.num(VC, "posts", "rss_end_ratio");
    let posts_cell = match r.get(VC, "posts") {
        Some(_) => format!(
            "{} → peak {} → {} ({})",
            f(
                r.num(VC, "posts", "rss_start").map(|b| b / 1048576.0),
                1,
                " MiB"
            ),
            f(
                r.num(VC, "posts", "rss_peak").map(|b| b / 1048576.0),
                1,
                " MiB"
            ),
            f(
                r.num(VC, "posts", "rss_end").map(|b| b / 1048576.0),
                1,
                " MiB"
            ),
            match r.num(VC, "posts", "seconds_to_return") {
                Some(secs) => format!(
                    "{:.2}× the start, after {secs:.0} s",
                    vc_ratio.unwrap_or(0.0)
                ),
                None => format!(
                    "{:.2}× the start after {} s",
                    vc_ratio.unwrap_or(0.0),
                    f(r.num(VC, "posts", "settle_limit_s"), 0, "")
                ),
            }
        ),
        None => "—".into(),
    };
    let _ = writeln!(
        s,
        "| {} posts each read once (allow-any), then idle: server RSS | {posts_cell} | n/a | — | within 10% of the start | {} |",
        f(posts, 0, ""),
        verdict(r.boolean(VC, "posts", "returned_within_10pct"))
    );

    let counts_title = format!(
        "counts of {} posts in one request (`GET /api/v1/counts`), p99 (in brackets: `/healthz` p99 of the same run, ratio)",
        f(r.num(VC, "counts", "posts"), 0, "")
    );
    let counts_cell = counts_vs_healthz(r).unwrap_or_else(|| "—".into());
    let _ = writeln!(
        s,
        "| {counts_title} | {counts_cell} | n/a | — | ≤ 2 ms | {} |",
        verdict(
            r.num(VC, "counts", "counts_p99_ms")
                .map(|p99| p99 <= 2.0 && r.num(VC, "counts", "errors") == Some(0.0))
        )
    );

    let _ = writeln!(s, "\n## Details\n");
    let _ = writeln!(s, "| measure | viewcounter | nchan | ratio |");
    let _ = writeln!(s, "|---|---|---|---|");
    for &(name, scenario, key, digits, unit) in DETAILS {
        let (mut a, mut b) = (r.num(VC, scenario, key), r.num(NCHAN, scenario, key));
        if unit == " MiB" {
            a = a.map(|x| x / 1048576.0);
            b = b.map(|x| x / 1048576.0);
        }
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} |",
            f(a, digits, unit),
            f(b, digits, unit),
            ratio(a, b).1
        );
    }
    let _ = writeln!(
        s,
        "| counts: {} posts, p99 (vs /healthz p99) | {} | n/a | — |",
        f(r.num(VC, "counts", "posts"), 0, ""),
        counts_vs_healthz(r).unwrap_or_else(|| "—".into())
    );

    let mut errors = String::new();
    for label in [VC, NCHAN] {
        for scenario in ["hold", "fanout", "churn", "burst", "posts", "counts"] {
            let Some(v) = r.get(label, scenario) else {
                continue;
            };
            for key in ["errors", "change_errors", "reader_errors", "error_kinds"] {
                if let Some(map) = v.get(key).and_then(|m| m.as_object())
                    && !map.is_empty()
                {
                    let _ = writeln!(
                        errors,
                        "- {label} {scenario} {key}: {}",
                        Value::Object(map.clone())
                    );
                }
            }
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(s, "\nErrors and retries seen by the client:\n\n{errors}");
    }
    let _ = writeln!(s, "\n## How the figures are taken\n");
    for line in [
        "- RSS: VmRSS from /proc/PID/status summed over the server process and its direct children (nginx master + workers), read before opening the streams and again once they all got their first event; per stream = difference / streams.",
        "- CPU: utime + stime from /proc/PID/stat (same process tree), as deltas over the measured interval; \"per delivered event\" divides by the SSE data events the client received in that interval.",
        "- fanout: a change is one extra client joining the hot post (viewcounter) or one POST to the channel (nchan). Each reader's latency runs from just before the trigger request is sent to the read that delivered a state including the change (a total at least the trigger's); p50/p99/max are over all readers of all rounds. Rounds start only after 500 ms without any event.",
        "- churn: each worker connects from its own source address in turn, sends the GET, reads up to the first data event and closes with SO_LINGER 0 (RST); a view is one such cycle. 503/429 answers are honoured (Retry-After) and counted as errors.",
        "- burst: joins (viewcounter: open → first event → close; nchan: POST) are sent at a fixed rate from new connections; staleness for a (reader, join) pair is the time from sending the join to the reader receiving a state that includes it. \"Keeps up\": every join answered at ≥ 95% of the rate, no errors, and every reader at the final state within 500 ms of the last join.",
        "- counts: first, P posts each get one view (open → first event → close), then `GET /healthz` and `GET /api/v1/counts?slug=…` naming all P are sent one after the other, alternating (which goes first swaps every pair), each on a fresh connection (viewcounter closes every non-stream connection after one answer), after 20 unrecorded pairs; the posts are still awake (read within the dedupe window), so the answer comes from their actors, not from the store; latency runs from connect to the whole body read. Every answer must be 200 and list the P posts (every 100th parsed in full); the target also needs 0 errors. The ratio to `/healthz` is the figure to compare across machines.",
        "- idle: CPU over the window after 500 ms without events; both servers send a heartbeat comment every 15 s (viewcounter's default, nchan_eventsource_ping_interval 15).",
    ] {
        let _ = writeln!(s, "{line}");
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1234567.891, 2), "1,234,567.89");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(-1000.0, 0), "-1,000");
    }
}
