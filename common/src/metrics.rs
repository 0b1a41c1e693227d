//! Prometheus metrics: the `metrics` facade, rendered by `metrics-exporter-prometheus`, with the
//! `service` label on every series. Each binary installs the recorder once and serves `/metrics`
//! (with its pool and broker connection read at each scrape) (the ingress on its own port; the worker and the
//! notifier on `SWITCHYARD_OPS_LISTEN`, beside `/healthz` and `/readyz`).
//!
//! Every metric name is here, so that the dashboard (`deploy/grafana`) and the README have one
//! list to follow.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests served, by `method`, `route` (the matched path template) and `status`.
pub const HTTP_REQUESTS: &str = "switchyard_http_requests_total";
/// Their latency, by `method` and `route`.
pub const HTTP_DURATION: &str = "switchyard_http_request_duration_seconds";
/// Invocations by `outcome`: `accepted`, `dropped`, `rejected` or `replayed`.
pub const INVOCATIONS: &str = "switchyard_invocations_total";
/// Runs that reached a final status, by `status`, counted where the transition happened.
pub const RUNS_FINISHED: &str = "switchyard_runs_finished_total";
/// Runs now `queued` and `running` (label `status`), sampled from Postgres by the workers.
pub const RUNS: &str = "switchyard_runs";
/// From queued to first claimed, by `priority` band (`0`, `1-49`, `50-100`) and the tenant's
/// `weight` band (`1`, `2-4`, `5-19`, `20-100`).
pub const QUEUE_LAG: &str = "switchyard_run_queue_lag_seconds";
/// From claimed to finished, per attempt, by `tenant` and `agent`.
pub const EXECUTION: &str = "switchyard_run_execution_seconds";
/// Webhook attempts by `outcome`: `success` or `failure`.
pub const DELIVERY_ATTEMPTS: &str = "switchyard_delivery_attempts_total";
/// Deliveries that ended, by `status`: `delivered` or `failed`.
pub const DELIVERIES_FINISHED: &str = "switchyard_deliveries_finished_total";
/// How long an attempt took, answer or not.
pub const DELIVERY_DURATION: &str = "switchyard_delivery_attempt_duration_seconds";
/// The age of the oldest delivery still pending (0 when none), sampled by the notifiers.
pub const OLDEST_PENDING_DELIVERY: &str = "switchyard_deliveries_oldest_pending_seconds";
/// The connection pool, by `state`: `idle` or `in_use`.
pub const POOL_CONNECTIONS: &str = "switchyard_db_pool_connections";
/// The pool's cap.
pub const POOL_MAX: &str = "switchyard_db_pool_max_connections";
/// 1 while the broker connection is up, else 0.
pub const BROKER_CONNECTED: &str = "switchyard_broker_connected";
/// Event streams (SSE) and waits for a run's end open on an ingress replica.
pub const OPEN_STREAMS: &str = "switchyard_open_streams";

/// Histogram buckets in seconds: from a millisecond to ten minutes.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    600.0,
];

/// Installs the process's recorder, labelled with `service`. Call once, inside the runtime: it
/// starts the upkeep that keeps histograms bounded.
pub fn install(service: &'static str) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
