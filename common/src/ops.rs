//! The operations endpoints every binary has: `/metrics` (the Prometheus exposition, with the
//! pool and broker gauges read at each scrape), `/healthz` and `/readyz`; and the worker's and
//! notifier's ops listener, their only HTTP server. The metric names are in `metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::amqp::Broker;
use crate::metrics::{BROKER_CONNECTED, POOL_CONNECTIONS, POOL_MAX};

/// The body of `GET /metrics`, with the pool and the broker connection as they are now.
pub fn exposition(
    handle: &PrometheusHandle,
    pool: &Pool,
    broker: &Broker,
) -> impl IntoResponse + use<> {
    let status = pool.status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(POOL_MAX).set(status.max_size as f64);
    metrics::gauge!(BROKER_CONNECTED).set(if broker.is_connected() { 1.0 } else { 0.0 });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// Readiness of a process that needs Postgres and RabbitMQ: 200 `ready` with both up, else 503
/// with the state of each and the reason in `detail`.
pub async fn readiness(pool: &Pool, broker: &Broker) -> (StatusCode, Value) {
    let postgres = crate::db::ping(pool, Duration::from_millis(500)).await;
    let rabbitmq = broker.is_connected();
    let up = |b: bool| if b { "up" } else { "down" };
    let mut detail = Vec::new();
    if !postgres {
        detail.push("PostgreSQL does not answer: no run can be claimed or recorded");
    }
    if !rabbitmq {
        detail.push("the RabbitMQ connection is down: no message is consumed until it is back");
    }
    let code = if detail.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if detail.is_empty() { "ready" } else { "unavailable" },
        "postgres": up(postgres),
        "rabbitmq": up(rabbitmq),
    });
    if !detail.is_empty() {
        body["detail"] = json!(detail.join("; "));
    }
    (code, body)
}

#[derive(Clone)]
struct Ops {
    handle: PrometheusHandle,
    pool: Pool,
    broker: Broker,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`: the worker's and the
/// notifier's only HTTP.
pub async fn serve_ops(
    addr: SocketAddr,
    handle: PrometheusHandle,
    pool: Pool,
    broker: Broker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app =
        Router::new()
            .route(
                "/metrics",
                get(|State(ops): State<Ops>| async move {
                    exposition(&ops.handle, &ops.pool, &ops.broker)
                }),
            )
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route(
                "/readyz",
                get(|State(ops): State<Ops>| async move {
                    let (code, body) = readiness(&ops.pool, &ops.broker).await;
                    (code, axum::Json(body))
                }),
            )
            .with_state(Ops {
                handle,
                pool,
                broker,
            });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
