//! `switchyard-worker [serve|migrate]`: flags and environment, then wiring.

use clap::{Parser, Subcommand};
use switchyard_common::config::{DatabaseArgs, TelemetryArgs};
use switchyard_worker::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "switchyard-worker", version, about = "Switchyard's run worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and execute runs.
    Serve(Box<Config>),
    /// Apply database migrations and exit (safe to run concurrently).
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { db, telemetry } => {
            let _guard = switchyard_common::telemetry::init("switchyard-worker", &telemetry)?;
            let applied = switchyard_common::db::migrate(&db.database_url).await?;
            tracing::info!(applied, "migrations applied");
        }
        Command::Serve(config) => {
            let _guard =
                switchyard_common::telemetry::init("switchyard-worker", &config.telemetry)?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                switchyard_common::shutdown_signal().await;
                tracing::info!("shutdown requested; draining");
                trigger.cancel();
            });
            switchyard_worker::run(*config, shutdown).await?;
        }
    }
    Ok(())
}
