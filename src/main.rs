//! The `viewcounter` binary: parse the command line, then serve or export.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use viewcounter::Application;
use viewcounter::cli::{Cli, Command, ServeArgs};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("VIEWCOUNTER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Some(Command::Export(args)) => viewcounter::export::export(&args)
                .await
                .map(|out| {
                    print!("{out}");
                })
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
    let app = Application::build(args).await.map_err(|e| e.to_string())?;
    println!("listening on http://{}", app.address());
    let _ = std::io::stdout().flush();
    app.run_until(stop_signal())
        .await
        .map_err(|e| e.to_string())
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
