//! `switchyard-notifier [serve|migrate]`: flags and environment, then wiring.

use clap::{Parser, Subcommand};
use switchyard_common::config::{DatabaseArgs, TelemetryArgs};
use switchyard_notifier::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard-notifier",
    version,
    about = "Switchyard's webhook notifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deliver webhooks.
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
            let _guard = switchyard_common::telemetry::init("switchyard-notifier", &telemetry)?;
            let applied = switchyard_common::db::migrate(&db.database_url).await?;
            tracing::info!(applied, "migrations applied");
        }
        Command::Serve(config) => {
            let _guard =
                switchyard_common::telemetry::init("switchyard-notifier", &config.telemetry)?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                switchyard_common::shutdown_signal().await;
                tracing::info!("shutdown requested; draining");
                trigger.cancel();
            });
            switchyard_notifier::run(*config, shutdown).await?;
        }
    }
    Ok(())
}
