//! What the three binaries' `main` share: the `serve` / `migrate` command line, the migrate step,
//! and shutdown on SIGTERM or Ctrl-C.

use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseArgs, TelemetryArgs};

/// `serve` with the binary's own settings, or `migrate`.
#[derive(clap::Subcommand)]
pub enum Command<C: clap::Args> {
    /// Run the service.
    Serve(Box<C>),
    /// Apply database migrations and exit (safe to run from many processes at once).
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
}

/// The `migrate` subcommand: logs set up, migrations applied under the advisory lock.
pub async fn migrate(
    service: &'static str,
    db: &DatabaseArgs,
    telemetry: &TelemetryArgs,
) -> anyhow::Result<()> {
    let guard = crate::telemetry::init(service, telemetry)?;
    let applied = crate::db::migrate(&db.database_url).await;
    if let Ok(applied) = &applied {
        tracing::info!(applied, "migrations applied");
    }
    guard.shutdown().await;
    applied.map(|_| ())
}

/// The async runtime: single-threaded for `threads == 1`, else multi-threaded with `threads`
/// workers (0: one per core).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().build()
}

/// A token cancelled when SIGTERM or Ctrl-C arrives.
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        tracing::info!("shutdown requested; draining");
        trigger.cancel();
    });
    token
}
