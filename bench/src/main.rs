//! `loadgen`: the load client of issue 3. Drives viewcounter or nginx+nchan over
//! raw HTTP/1.1 and prints one JSON line per scenario on stdout (a human summary
//! goes to stderr). `loadgen report` turns those lines into BENCHMARKS.md.
//!
//! Layout: `net` (sockets, HTTP, SSE parsing), `procstat` (server RSS/CPU from
//! /proc), `scenarios` (hold, fanout, idle, churn, burst, posts, counts), `report`;
//! `cluster` (issue 14: readers spread over nodes and client processes) and its
//! `cluster_report`.

mod cluster;
mod cluster_report;
mod net;
mod procstat;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::net::Target;
use crate::procstat::Server;
use crate::scenarios::{Changer, Ctx};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "SSE load client for viewcounter and nginx+nchan"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "LOADGEN_URL")]
    url: String,
    /// SSE path template; `{token}` becomes a fresh unique reader id, `{i}` the reader/post index
    #[arg(long, default_value = "/api/v1/connect/hot?view={token}")]
    sub_path: String,
    /// Publisher path (nchan). With it, changes are POSTed JSON messages; without it,
    /// a change is one extra client connecting to `--sub-path`.
    #[arg(long)]
    pub_path: Option<String>,
    /// Server process id, for RSS and CPU readings from /proc (children included)
    #[arg(long)]
    pid: Option<u32>,
    /// Name of the target in the output
    #[arg(long, default_value = "target")]
    label: String,
    /// Number of 127.0.0.x source addresses (from 127.0.0.2) to spread connections over
    #[arg(long, default_value_t = 16)]
    sources: usize,
    /// Streams being opened at once
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Quiet time (ms) without events that counts as "no broadcast in flight"
    #[arg(long, default_value_t = 500)]
    quiet_ms: u64,
    /// Tokio worker threads
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Where `report` and `cluster-report` read results and write BENCHMARKS.md.
#[derive(Args)]
struct ReportArgs {
    /// JSON lines written by the scenarios
    #[arg(long)]
    pub results: PathBuf,
    /// Output file; text after the keep-marker line of an existing file is preserved
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The command that produced the results
    #[arg(long)]
    pub command: String,
    /// Parameters of the run, shown as given
    #[arg(long, default_value = "")]
    pub params: String,
    /// Notes on the configuration, one per flag
    #[arg(long)]
    pub note: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Open N streams; server RSS per stream
    Hold {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 15000)]
        streams: usize,
    },
    /// N readers on one post; time until each sees one change, K times
    Fanout {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 15000)]
        streams: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// N idle streams; server CPU over a window
    Idle {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 15000)]
        streams: usize,
        /// Window in seconds
        #[arg(long, default_value_t = 30.0)]
        window: f64,
    },
    /// hold, then fanout, then idle on the same N streams
    Hot {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 15000)]
        streams: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Idle window in seconds (0 skips)
        #[arg(long, default_value_t = 30.0)]
        window: f64,
    },
    /// C workers loop open → first event → close for T seconds
    Churn {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// R changes/s on a post with N readers for T seconds
    Burst {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 10000)]
        readers: usize,
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Longest wait (seconds) for one change to be answered and, after the
        /// burst, for every reader to reach the final state
        #[arg(long, default_value_t = 30.0)]
        max_wait: f64,
    },
    /// Read S distinct posts once each (`{i}` in --sub-path), then watch memory return
    Posts {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long, default_value_t = 100_000)]
        posts: u64,
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds to wait for memory to return
        #[arg(long, default_value_t = 120.0)]
        settle: f64,
    },
    /// viewcounter only: seed P posts with a view each, then time N `GET /api/v1/counts`
    /// naming all of them against N `GET /healthz`, alternating (`--sub-path` is not used)
    Counts {
        #[command(flatten)]
        t: TargetArgs,
        /// Posts seeded and named in every counts request (the endpoint takes 1 to 100)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100))]
        posts: u64,
        /// Requests of each kind measured (after a short unrecorded warm-up)
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Slug of post i is this prefix followed by i
        #[arg(long, default_value = "bench-count-")]
        slug_prefix: String,
    },
    /// Cluster mode: S streams on one post spread over the nodes and over client processes,
    /// a join on the first node → every reader (p50/p99/max); then churn through the nodes
    /// and, with --redis, the Redis commands per counted view; or, with --idle, what the
    /// streams cost Redis and the nodes while nothing happens
    Cluster {
        /// The nodes' base URLs, comma-separated (one URL: the single-node baseline)
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 15000)]
        streams: usize,
        /// Client processes holding the streams (each has its own open-files cap)
        #[arg(long, default_value_t = 3)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value = "/api/v1/connect/hot?view={token}")]
        sub_path: String,
        #[arg(long, default_value = "cluster")]
        label: String,
        #[arg(long, default_value_t = 16)]
        sources: usize,
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// Churn workers in all, spread over the client processes (0 skips the churn)
        #[arg(long, default_value_t = 64)]
        churn_workers: usize,
        /// Seconds of churn (and of the idle window measured before it)
        #[arg(long, default_value_t = 10.0)]
        churn_duration: f64,
        #[arg(long, default_value = "/api/v1/connect/churn?view={token}")]
        churn_path: String,
        /// Redis `HOST:PORT` to read INFO from around the churn
        #[arg(long)]
        redis: Option<String>,
        /// Idle cost instead of the rounds and the churn: hold the streams (one per post with
        /// --sub-path /api/v1/connect/c{client}-{i}?view={token}), then measure Redis's
        /// traffic and the nodes' CPU over this many seconds of nothing happening
        #[arg(long)]
        idle: Option<f64>,
        /// The nodes' pids, comma-separated, for their CPU in the idle window
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// One client process of `cluster` (started by it; talks over stdin/stdout)
    #[command(hide = true)]
    ClusterReaders {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long)]
        streams: usize,
    },
    /// Write the cluster section of BENCHMARKS.md from `cluster` JSON result lines
    ClusterReport(ReportArgs),
    /// Print a free TCP port on 127.0.0.1 (for starting a server on it)
    FreePort,
    /// Write BENCHMARKS.md from JSON result lines
    Report(ReportArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Command::FreePort = cli.command {
        match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => println!("{}", addr.port()),
            Err(e) => {
                eprintln!("loadgen free-port: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Command::Report(a) | Command::ClusterReport(a) = &cli.command {
        let (what, written) = match &cli.command {
            Command::Report(_) => (
                "report",
                report::write(&a.results, &a.out, &a.command, &a.params, &a.note),
            ),
            _ => (
                "cluster-report",
                cluster_report::write(&a.results, &a.out, &a.command, &a.params, &a.note),
            ),
        };
        if let Err(e) = written {
            eprintln!("loadgen {what}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Command::Cluster { .. } = &cli.command {
        std::process::exit(run_cluster(cli.command));
    }
    let t = match &cli.command {
        Command::Hold { t, .. }
        | Command::Fanout { t, .. }
        | Command::Idle { t, .. }
        | Command::Hot { t, .. }
        | Command::Churn { t, .. }
        | Command::Burst { t, .. }
        | Command::Posts { t, .. }
        | Command::Counts { t, .. }
        | Command::ClusterReaders { t, .. } => t.clone(),
        Command::Report(_)
        | Command::FreePort
        | Command::Cluster { .. }
        | Command::ClusterReport(_) => unreachable!(),
    };
    let nofile = procstat::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(t.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        let target = match Target::new(&t.url, t.sources) {
            Ok(target) => Arc::new(target),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return 2;
            }
        };
        let changer = Arc::new(match &t.pub_path {
            Some(p) => Changer::publish(p.clone()),
            None => Changer::Join {
                template: t.sub_path.clone(),
            },
        });
        let ctx = Ctx {
            target,
            server: Server { pid: t.pid },
            label: t.label.clone(),
            sub_path: t.sub_path.clone(),
            changer,
            connect_concurrency: t.connect_concurrency,
            quiet: Duration::from_millis(t.quiet_ms),
        };
        let needed = match &cli.command {
            Command::Hold { streams, .. }
            | Command::Fanout { streams, .. }
            | Command::Idle { streams, .. }
            | Command::Hot { streams, .. }
            | Command::ClusterReaders { streams, .. } => *streams,
            Command::Burst { readers, .. } => *readers,
            _ => 0,
        };
        if needed as u64 + 100 > nofile {
            eprintln!(
                "loadgen: warning: {needed} streams need more than the open-files limit {nofile}"
            );
        }
        if let Err(e) = ctx.changer.prime(&ctx.target).await {
            eprintln!("loadgen: could not publish the first message: {e}");
            return 1;
        }
        match cli.command {
            Command::Hold { streams, .. } => scenarios::hot(&ctx, streams, 0, None).await,
            Command::Fanout {
                streams, rounds, ..
            } => scenarios::hot(&ctx, streams, rounds, None).await,
            Command::Idle {
                streams, window, ..
            } => scenarios::hot(&ctx, streams, 0, Some(Duration::from_secs_f64(window))).await,
            Command::Hot {
                streams,
                rounds,
                window,
                ..
            } => {
                let idle = (window > 0.0).then(|| Duration::from_secs_f64(window));
                scenarios::hot(&ctx, streams, rounds, idle).await
            }
            Command::Churn {
                workers, duration, ..
            } => scenarios::churn(&ctx, workers, Duration::from_secs_f64(duration)).await,
            Command::Burst {
                readers,
                rate,
                duration,
                max_wait,
                ..
            } => {
                scenarios::burst(
                    &ctx,
                    readers,
                    rate,
                    Duration::from_secs_f64(duration),
                    Duration::from_secs_f64(max_wait),
                )
                .await
            }
            Command::Posts {
                posts,
                workers,
                settle,
                ..
            } => scenarios::posts(&ctx, posts, workers, Duration::from_secs_f64(settle)).await,
            Command::Counts {
                posts,
                requests,
                slug_prefix,
                ..
            } => scenarios::counts(&ctx, posts as usize, requests, &slug_prefix).await,
            Command::ClusterReaders { streams, .. } => cluster::readers(&ctx, streams).await,
            Command::Report(_)
            | Command::FreePort
            | Command::Cluster { .. }
            | Command::ClusterReport(_) => unreachable!(),
        }
        if !ctx.server.alive() {
            eprintln!("loadgen: the server process is gone");
            return 1;
        }
        0
    });
    // Streams still held are closed by the exit (SO_LINGER 0: RST, no TIME_WAIT).
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// `loadgen cluster`: the coordinator, on a runtime of its own; the exit code.
fn run_cluster(command: Command) -> i32 {
    let Command::Cluster {
        nodes,
        streams,
        clients,
        rounds,
        sub_path,
        label,
        sources,
        connect_concurrency,
        churn_workers,
        churn_duration,
        churn_path,
        redis,
        idle,
        pids,
    } = command
    else {
        return 2;
    };
    let plan = cluster::Plan {
        nodes,
        streams,
        clients: clients.max(1),
        rounds,
        sub_path,
        label,
        sources,
        connect_concurrency,
        churn_workers,
        churn_seconds: churn_duration,
        churn_path,
        redis,
        idle_seconds: idle,
        pids,
    };
    procstat::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cluster::run(&plan)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("loadgen cluster: {e}");
            1
        }
    }
}
