//! API keys as the ingress holds them: found by SHA-256 digest through a cache that the control
//! exchange empties, and their last use, written in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use switchyard_common::catalog::api_keys::{self, ApiKey};
use switchyard_common::control::Control;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::cache::ControlledCache;
use crate::error::ApiError;

/// API keys by digest.
pub type KeyCache = ControlledCache<[u8; 32], ApiKey>;

/// The active key with this digest: from the cache, else from Postgres (then cached).
/// The live (unrevoked) key whose SHA-256 is `hash`, through the cache.
pub(crate) async fn resolve_digest(
    state: &AppState,
    hash: &[u8; 32],
) -> Result<Arc<ApiKey>, ApiError> {
    resolve(&state.auth.keys, &state.pool, hash).await
}

pub(crate) async fn resolve(
    keys: &KeyCache,
    pool: &Pool,
    hash: &[u8; 32],
) -> Result<Arc<ApiKey>, ApiError> {
    if let Some(key) = keys.get(hash) {
        return Ok(key);
    }
    let epoch = keys.epoch();
    let client = pool.get().await.map_err(ApiError::from_pool)?;
    let key = api_keys::authenticate(&client, hash)
        .await
        .map_err(ApiError::from_pg)?
        .map(Arc::new)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid or was revoked"))?;
    keys.fill(*hash, key.clone(), epoch);
    Ok(key)
}

/// The control message sent when a key is revoked.
pub fn revoked_message(key: &ApiKey) -> Control {
    Control::ApiKeyRevoked {
        tenant_id: key.tenant_id.clone(),
        key_id: key.id,
    }
}

/// When each key was last used, held in memory and written in batches.
#[derive(Default)]
pub struct Usage {
    pending: Mutex<HashMap<Uuid, OffsetDateTime>>,
}

impl Usage {
    pub fn touch(&self, key: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key, OffsetDateTime::now_utc());
        }
    }

    async fn flush(&self, pool: &Pool) {
        let batch: Vec<(Uuid, OffsetDateTime)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let written = match pool.get().await {
            Ok(client) => api_keys::record_use(&client, &batch).await.is_ok(),
            Err(_) => false,
        };
        if !written && let Ok(mut pending) = self.pending.lock() {
            // Keep them for the next round; a newer use wins.
            for (id, at) in batch {
                let slot = pending.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }

    /// Writes the recorded uses every `every`, and once more at `shutdown`.
    pub async fn flush_every(
        self: Arc<Self>,
        pool: Pool,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            self.flush(&pool).await;
        }
        self.flush(&pool).await;
    }
}
