//! `switchyard-ingress [serve|migrate]`: flags and environment, then wiring.

use clap::Parser;
use switchyard_common::cli::{self, Command};
use switchyard_ingress::Config;

#[derive(Parser)]
#[command(name = "switchyard-ingress", version, about = "Switchyard's HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Command<Config>,
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let threads = match &command {
        Command::Serve(config) => config.runtime.runtime_threads,
        Command::Migrate { .. } => 1,
    };
    cli::runtime(threads)?.block_on(run(command))
}

async fn run(command: Command<Config>) -> anyhow::Result<()> {
    match command {
        Command::Migrate { db, telemetry } => {
            cli::migrate("switchyard-ingress", &db, &telemetry).await
        }
        Command::Serve(config) => {
            let guard =
                switchyard_common::telemetry::init("switchyard-ingress", &config.telemetry)?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            let result = switchyard_ingress::run(*config, listener, cli::cancel_on_signal()).await;
            if let Err(err) = &result {
                tracing::error!(error = format!("{err:#}"), "ingress stopped");
            }
            guard.shutdown().await;
            result
        }
    }
}
