//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use switchyard_common::db;

use crate::AppState;

/// Liveness: the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Prometheus metrics (see `switchyard_common::metrics`).
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    switchyard_common::ops::exposition(&state.metrics, &state.pool, &state.broker)
}

/// Readiness. Postgres down means not ready (503): nothing can be accepted. RabbitMQ down is
/// `degraded` but ready: runs are still accepted durably and the sweeper publishes them later.
/// `detail` says what a state other than `ready` means.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = db::ping(&state.pool, Duration::from_millis(500)).await;
    let rabbitmq = state.broker.is_connected();
    let (code, status) = match (postgres, rabbitmq) {
        (true, true) => (StatusCode::OK, "ready"),
        (true, false) => (StatusCode::OK, "degraded"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let up = |b: bool| if b { "up" } else { "down" };
    // Cached API keys are used only while revocations can reach this replica.
    let key_cache = if state.auth.keys.is_live() {
        "live"
    } else {
        "bypassed"
    };
    let mut body = json!({
        "status": status,
        "postgres": up(postgres),
        "rabbitmq": up(rabbitmq),
        "keyCache": key_cache,
    });
    let detail = match (postgres, rabbitmq) {
        (true, true) => None,
        (true, false) => Some(
            "RabbitMQ is down: runs are still accepted and recorded; they are published when it is back",
        ),
        (false, _) => Some("PostgreSQL does not answer: no invocation can be accepted"),
    };
    if let Some(detail) = detail {
        body["detail"] = json!(detail);
    }
    (code, Json(body))
}
