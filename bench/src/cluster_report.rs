//! `loadgen cluster-report`: the cluster figures (`bench/cluster.sh`) as a section of
//! BENCHMARKS.md below its keep-marker, between markers of its own, replaced on each run.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::procstat::machine;
use crate::report::{
    KEEP_MARKER as KEEP, date, f as figure, mem_total, read_lines, verdict as met,
};

const START: &str =
    "<!-- bench-cluster: start (bench/cluster.sh writes from here to its end marker) -->";
const END: &str = "<!-- bench-cluster: end -->";
/// The targets of issue 14.
const MAX_P99_RATIO: f64 = 2.0;
const MAX_TRIPS_PER_VIEW: f64 = 2.0;
/// Issue 22, item 7: what a counted view leaves in Redis, at most.
const MAX_BYTES_PER_VIEW: f64 = 48.0;

/// The label of the cluster's lines and of the one node's.
pub const CLUSTER: &str = "cluster";
pub const SINGLE: &str = "single";

fn find<'a>(lines: &'a [Value], scenario: &str, label: &str) -> Option<&'a Value> {
    lines
        .iter()
        .find(|v| v["scenario"] == scenario && v["label"] == label)
}

fn f(v: Option<&Value>, key: &str) -> Option<f64> {
    v.and_then(|v| v[key].as_f64())
}

fn num(x: Option<f64>, digits: usize) -> String {
    figure(x, digits, "")
}

fn latency(v: Option<&Value>) -> String {
    format!(
        "{} / {} / {} ms",
        num(f(v, "p50_ms"), 1),
        num(f(v, "p99_ms"), 1),
        num(f(v, "max_ms"), 1)
    )
}

/// The section's markdown.
pub fn section(lines: &[Value], command: &str, params: &str, notes: &[String]) -> String {
    let cf = find(lines, "cluster-fanout", CLUSTER);
    let sf = find(lines, "cluster-fanout", SINGLE);
    let cc = find(lines, "cluster-churn", CLUSTER);
    let sc = find(lines, "cluster-churn", SINGLE);
    let ratio = match (f(cf, "p99_ms"), f(sf, "p99_ms")) {
        (Some(c), Some(s)) if s > 0.0 => Some(c / s),
        _ => None,
    };
    let redis = cc.map(|c| &c["redis"]);
    let per_view = redis.and_then(|r| r["net_commands_per_view"].as_f64());
    let trips = redis.and_then(|r| r["round_trips_per_view"].as_f64());
    let (nproc, model, kernel) = machine();
    let nodes = cf.and_then(|v| v["nodes"].as_u64()).unwrap_or(0);
    // No figures at all counts as missed (a failed run), not as none missed.
    let missed = |v: Option<&Value>| f(v, "missed").unwrap_or(f64::INFINITY);
    let mut s = String::new();
    let _ = writeln!(s, "{START}\n");
    let _ = writeln!(
        s,
        "## Cluster mode: {nodes} nodes on one Redis against one node (`just bench-cluster`)\n"
    );
    let _ = writeln!(
        s,
        "Run of {} on {nproc} cores ({model}), {} RAM, Linux {kernel}: `{command}`  \nParameters: {params}\n",
        date(),
        mem_total()
    );
    let streams = cf.or(sf).and_then(|v| v["streams"].as_u64()).unwrap_or(0);
    let _ = writeln!(
        s,
        "| | cluster ({nodes} nodes + Redis) | one node | target | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| join on node 1 → every reader on every node, {streams} streams: p50 / p99 / max | {} | {} | | |",
        latency(cf),
        latency(sf)
    );
    let _ = writeln!(
        s,
        "| cross-node p99 / single-node p99 | {} | 1 | ≤ {MAX_P99_RATIO} | {} |",
        num(ratio, 2),
        // A reader that missed the change has no delay in the figures: the target needs none.
        met(ratio.map(|r| r <= MAX_P99_RATIO && missed(cf) == 0.0 && missed(sf) == 0.0))
    );
    let _ = writeln!(
        s,
        "| streams open / missed a change | {} / {} | {} / {} | | |",
        num(f(cf, "opened"), 0),
        num(f(cf, "missed"), 0),
        num(f(sf, "opened"), 0),
        num(f(sf, "missed"), 0)
    );
    let _ = writeln!(
        s,
        "| churn (open → first event → close), views/s | {} | {} | | |",
        num(f(cc, "views_per_s"), 0),
        num(f(sc, "views_per_s"), 0)
    );
    let _ = writeln!(
        s,
        "| churn: views answered / counted in the total | {} / {} | {} / {} | | |",
        num(f(cc, "views"), 0),
        num(f(cc, "counted"), 0),
        num(f(sc, "views"), 0),
        num(f(sc, "counted"), 0)
    );
    let _ = writeln!(
        s,
        "| Redis round trips per counted view (commands clients send, background taken off) | {} | — | ≤ {MAX_TRIPS_PER_VIEW} | {} |",
        num(trips, 2),
        met(trips.map(|p| p <= MAX_TRIPS_PER_VIEW))
    );
    let _ = writeln!(
        s,
        "| Redis commands per counted view, those scripts run included (background taken off) | {} | — | | |",
        num(per_view, 2)
    );
    let _ = writeln!(
        s,
        "| Redis CPU per counted view (its one thread; background taken off) | {} µs | — | | |",
        num(redis.and_then(|r| r["cpu_us_per_view"].as_f64()), 1)
    );
    let _ = writeln!(
        s,
        "| Redis memory per counted view (its reader's record for the dedupe window, its op's decision; `used_memory` delta over the churn) | {} B | — | ≤ 48 | {} |",
        num(redis.and_then(|r| r["memory_bytes_per_view"].as_f64()), 0),
        met(redis
            .and_then(|r| r["memory_bytes_per_view"].as_f64())
            .map(|b| b <= MAX_BYTES_PER_VIEW))
    );
    let _ = writeln!(
        s,
        "| Redis commands per counted view, background included | {} | — | | |\n",
        num(redis.and_then(|r| r["commands_per_view"].as_f64()), 2)
    );
    if let Some(r) = redis {
        let _ = writeln!(
            s,
            "Redis commands per counted view during the churn, by command (the background rate, \
             measured over an idle window as long as the churn, taken off): {}. In the idle \
             window: {} commands/s ({}). MONITOR for 1 s halfway through the churn: {} \
             commands sent by clients, {} run by scripts.\n",
            breakdown(&r["net_per_command_per_view"], 2),
            num(r["background_commands_per_s"].as_f64(), 1),
            breakdown(&r["background_per_command_per_s"], 1),
            r["monitor_from_clients"],
            r["monitor_from_scripts"],
        );
    }
    idle_table(&mut s, lines);
    if let Some(cf) = cf {
        let _ = writeln!(
            s,
            "Cluster streams still open after the last round, by client process: {}; their \
             errors: {}.\n",
            cf["alive_after_by_client"], cf["errors_by_client"]
        );
    }
    if let Some(nodes) = cf.and_then(|v| v["per_node"].as_array()) {
        let _ = writeln!(
            s,
            "Cluster fan-out by node (readers × rounds, p50 / p99 / max):"
        );
        for (i, n) in nodes.iter().enumerate() {
            let _ = write!(
                s,
                "node {} ({}): {} samples, {}",
                i + 1,
                n["node"].as_str().unwrap_or("?"),
                n["readers_x_rounds"],
                latency(Some(n))
            );
            s.push_str(if i + 1 < nodes.len() { "  \n" } else { "\n\n" });
        }
    }
    for note in notes {
        let _ = writeln!(s, "- {note}");
    }
    let _ = writeln!(s, "\n{END}");
    s
}

/// Issue 22's idle target: Redis traffic (in + out) at 15,000 posts with one reader each.
const MAX_IDLE_BYTES_PER_S: f64 = 20_000.0;

/// Issue 22's idle target for a node: its CPU within this many points of one node without
/// Redis holding the same streams.
const MAX_IDLE_CPU_POINTS: f64 = 0.5;

/// The idle cost, one row per run of `cluster --idle` on the cluster (posts with one reader
/// each), beside the run on one node without Redis holding as many streams as each cluster node
/// (label `single-idle`, when the run has it).
fn idle_table(s: &mut String, lines: &[Value]) {
    let idle: Vec<&Value> = (lines.iter())
        .filter(|v| v["scenario"] == "cluster-idle" && v["label"] != "single-idle")
        .collect();
    if idle.is_empty() {
        return;
    }
    let single = |streams: f64| {
        (lines.iter()).find(|v| {
            v["scenario"] == "cluster-idle"
                && v["label"] == "single-idle"
                && f(Some(v), "posts").is_some_and(|p| (p - streams).abs() < 1.0)
        })
    };
    let _ = writeln!(
        s,
        "Idle cost: one reader on each post, the streams spread over the nodes, then a window \
         with nothing happening (Redis `INFO stats` deltas; each node's CPU, % of one core), and \
         one node without Redis holding as many streams as each cluster node, over the same \
         window. Targets: Redis in + out ≤ {} KB/s at 15,000 posts; each node's CPU within {} \
         points of the single node's.\n",
        MAX_IDLE_BYTES_PER_S / 1000.0,
        MAX_IDLE_CPU_POINTS
    );
    let _ = writeln!(
        s,
        "| posts (streams open) | Redis in | Redis out | in + out | commands/s | node CPU | \
         single node, same streams per node | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for v in idle {
        let (inb, outb) = (
            f(Some(v), "redis_in_bytes_per_s"),
            f(Some(v), "redis_out_bytes_per_s"),
        );
        let both = inb.zip(outb).map(|(i, o)| i + o);
        let kb = |b: Option<f64>| b.map_or("—".into(), |b| format!("{:.1} KB/s", b / 1000.0));
        let cpus = |v: &Value| -> Vec<f64> {
            (v["node_cpu_pct"].as_array().into_iter().flatten())
                .filter_map(Value::as_f64)
                .collect()
        };
        let cpu = cpus(v);
        let shown = |c: &[f64]| {
            (c.iter().map(|c| format!("{c:.2}%")))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let posts = f(Some(v), "posts").unwrap_or(0.0);
        let nodes = f(Some(v), "nodes").unwrap_or(1.0).max(1.0);
        let alone = single((posts / nodes).floor()).map(cpus);
        let bytes_met =
            (posts >= 15_000.0).then(|| both.is_some_and(|b| b <= MAX_IDLE_BYTES_PER_S));
        let cpu_met = alone
            .as_ref()
            .and_then(|a| a.first())
            .map(|a| !cpu.is_empty() && cpu.iter().all(|c| c - a <= MAX_IDLE_CPU_POINTS));
        let verdict = match (bytes_met, cpu_met) {
            (None, None) => "",
            (b, c) => met(Some(b.unwrap_or(true) && c.unwrap_or(true))),
        };
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {verdict} |",
            num(Some(posts), 0),
            num(f(Some(v), "opened"), 0),
            kb(inb),
            kb(outb),
            kb(both),
            num(f(Some(v), "redis_commands_per_s"), 1),
            shown(&cpu),
            alone.map_or("—".into(), |a| shown(&a)),
        );
    }
    s.push('\n');
}

fn breakdown(v: &Value, digits: usize) -> String {
    let Some(map) = v.as_object() else {
        return "—".into();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
        .filter(|(_, x)| x.abs() >= 0.005)
        .map(|(k, x)| format!("`{k}` {x:.digits$}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Puts `section` into the file at `out`: in place of the last run's section, else at the end
/// (below the keep-marker, which is added if the file has none).
pub fn write(
    results: &Path,
    out: &Path,
    command: &str,
    params: &str,
    notes: &[String],
) -> Result<(), String> {
    let lines = read_lines(results)?;
    let new = section(&lines, command, params, notes);
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let updated = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &old[..a], new.trim_end(), &old[b + END.len()..])
        }
        _ if old.contains(KEEP) => format!("{}\n\n{new}", old.trim_end()),
        _ => format!("{}\n\n{KEEP}\n\n{new}", old.trim_end()),
    };
    std::fs::write(out, updated).map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_replaces_the_first_section_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("cluster-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (results, out) = (dir.join("r.jsonl"), dir.join("B.md"));
        std::fs::write(&out, format!("top\n{KEEP}\nkept notes\n")).unwrap();
        let line = |p99: f64, missed: u64| {
            format!(
                "{{\"scenario\":\"cluster-fanout\",\"label\":\"cluster\",\"nodes\":3,\"p50_ms\":1,\"p99_ms\":{p99},\"max_ms\":9,\"streams\":15000,\"missed\":{missed}}}\n\
                 {{\"scenario\":\"cluster-fanout\",\"label\":\"single\",\"nodes\":1,\"p50_ms\":1,\"p99_ms\":10,\"max_ms\":9,\"streams\":15000,\"missed\":0}}\n"
            )
        };
        // Readers that missed the change: the ratio alone does not meet the target.
        std::fs::write(&results, line(15.0, 7)).unwrap();
        write(&results, &out, "just bench-cluster", "", &[]).unwrap();
        assert!(
            std::fs::read_to_string(&out)
                .unwrap()
                .contains("| 1.50 | 1 | ≤ 2 | **no** |")
        );
        std::fs::write(&results, line(30.0, 0)).unwrap();
        write(&results, &out, "just bench-cluster", "", &[]).unwrap();
        std::fs::write(&results, line(15.0, 0)).unwrap();
        write(&results, &out, "just bench-cluster", "", &[]).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.matches(START).count(), 1, "{text}");
        assert!(
            text.starts_with("top\n") && text.contains("kept notes"),
            "{text}"
        );
        assert!(text.contains("| 1.50 | 1 | ≤ 2 | yes |"), "{text}");
        assert!(!text.contains("3.00"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_nodes_idle_cpu_is_held_against_one_node_with_the_same_streams_per_node() {
        let line = |label: &str, posts: u64, cpu: &str| -> Value {
            serde_json::from_str(&format!(
                "{{\"scenario\":\"cluster-idle\",\"label\":\"{label}\",\"nodes\":{},\"posts\":{posts},\"opened\":{posts},\"window_s\":10,\"node_cpu_pct\":[{cpu}],\"redis_in_bytes_per_s\":1000,\"redis_out_bytes_per_s\":1000,\"redis_commands_per_s\":30}}",
                if label == "single-idle" { 1 } else { 3 }
            ))
            .unwrap()
        };
        let table = |cluster_cpu: &str| {
            let mut s = String::new();
            let lines = [
                line("cluster-idle", 45_000, cluster_cpu),
                line("single-idle", 15_000, "1.0"),
                line("single-idle", 45_000, "9.0"),
            ];
            idle_table(&mut s, &lines);
            s
        };
        let within = table("1.2,1.5,1.1");
        assert!(
            within.contains("| 1.20% / 1.50% / 1.10% | 1.00% | yes |"),
            "{within}"
        );
        let past = table("1.2,1.6,1.1");
        assert!(past.contains("| 1.00% | **no** |"), "{past}");
        assert_eq!(within.matches("| 45,000 ").count(), 1, "{within}");
    }
}
