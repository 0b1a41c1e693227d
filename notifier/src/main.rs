//! `switchyard-notifier [serve|migrate]`: flags and environment, then wiring.

use clap::Parser;
use switchyard_common::cli::{self, Command};
use switchyard_notifier::Config;

#[derive(Parser)]
#[command(
    name = "switchyard-notifier",
    version,
    about = "Switchyard's webhook notifier"
)]
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
            cli::migrate("switchyard-notifier", &db, &telemetry).await
        }
        Command::Serve(config) => {
            let guard =
                switchyard_common::telemetry::init("switchyard-notifier", &config.telemetry)?;
            let result = switchyard_notifier::run(*config, cli::cancel_on_signal()).await;
            if let Err(err) = &result {
                tracing::error!(error = format!("{err:#}"), "notifier stopped");
            }
            guard.shutdown().await;
            result
        }
    }
}
