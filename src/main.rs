//! The `viewcounter` binary: parse the command line, then serve or export.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use viewcounter::Application;
use viewcounter::cli::{Cli, Command, ServeArgs};
use viewcounter::config::Config;

fn main() -> ExitCode {
    viewcounter::memory::fix_allocator_thresholds();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The `redis` crate's cluster client warns at every failed reconnect to a master
            // that died (hundreds a second until its replica takes over); the node says Redis
            // is unavailable itself, once per 10 s.
            EnvFilter::try_from_env("VIEWCOUNTER_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,redis::cluster_handling=error")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal only: journald and log files keep plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let outcome = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Some(Command::Export(args)) => viewcounter::cli::export::export(&args)
                .await
                .map(|out| {
                    // Where the numbers came from: on stderr, so stdout stays CSV or JSON.
                    eprintln!("export: from {}", out.from);
                    print!("{}", out.text);
                })
                .map_err(|e| e.to_string()),
            Some(Command::Import(args)) => viewcounter::cli::import::import(&args)
                .await
                .map(|out| {
                    print!("{out}");
                })
                .map_err(|e| e.to_string()),
            Some(Command::Retire(args)) => viewcounter::cli::retire::retire(&args)
                .await
                .map(|out| print!("{out}"))
                .map_err(|e| e.to_string()),
            Some(Command::Serve(args)) => serve(*args).await,
            None => serve(cli.serve).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("viewcounter: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = Config::try_from(args).map_err(|e| format!("invalid configuration: {e}"))?;
    // Installed before "listening" is printed, so a supervisor's signal is never missed.
    let stop = stop_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let app = Application::build(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("listening on http://{}", app.address());
    let _ = std::io::stdout().flush();
    app.run_until(stop).await.map_err(|e| e.to_string())
}

/// Completes on SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
