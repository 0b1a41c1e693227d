//! Switchyard's shared core: configuration, the Postgres pool and migrations, the RabbitMQ
//! topology and connection, telemetry, Standard Webhooks signing, the run and delivery state
//! machines, and the problem+json error body.
//!
//! Architecture invariant: only `ops` serves HTTP (the operations endpoints); nothing else here
//! names an HTTP server type. The binaries depend on this crate; it depends on none of them.

pub mod amqp;
pub mod batch;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod control;
pub mod conversations;
pub mod db;
pub mod dedupe;
pub mod deliveries;
pub mod egress;
pub mod events;
pub mod filters;
pub mod inbound;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod problem;
pub mod runs;
pub mod secrets;
pub mod signing;
pub mod telemetry;
pub mod template;
pub mod transform;

pub use model::{AgentSpec, Run, RunStatus, RunSummary};

/// Resolves on SIGTERM or Ctrl-C, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
