//! `switchyard-ingress [serve|migrate]`: flags and environment, then wiring.

use clap::{Parser, Subcommand};
use switchyard_common::config::{DatabaseArgs, TelemetryArgs};
use switchyard_ingress::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "switchyard-ingress", version, about = "Switchyard's HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
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
            let _guard = switchyard_common::telemetry::init("switchyard-ingress", &telemetry)?;
            let applied = switchyard_common::db::migrate(&db.database_url).await?;
            tracing::info!(applied, "migrations applied");
        }
        Command::Serve(config) => {
            let _guard =
                switchyard_common::telemetry::init("switchyard-ingress", &config.telemetry)?;
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                switchyard_common::shutdown_signal().await;
                trigger.cancel();
            });
            if let Err(err) = switchyard_ingress::run(*config, listener, shutdown).await {
                tracing::error!(error = format!("{err:#}"), "ingress stopped");
                return Err(err);
            }
        }
    }
    Ok(())
}
