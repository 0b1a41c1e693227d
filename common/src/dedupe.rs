//! Once-only guards in front of the accept path: `Idempotency-Key` (the same key and request
//! return the original run) and `ignoreDuplicates` (the same body to the same trigger is dropped).
//! Each is one upsert that either claims the slot for a new run id or names the run holding it.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// JSON with object members sorted, recursively: equal documents give equal text.
pub fn canonical(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// SHA-256 of the parts, each length-prefixed so that no two lists of parts collide.
pub fn digest(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().to_vec()
}

fn ttl_secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Who holds a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Ours now: go on with the new run id.
    Claimed,
    /// Held by an earlier request for the same thing: its run.
    Taken { run_id: Uuid },
    /// Held by an earlier request with the same key but another request (idempotency only).
    Mismatch,
}

/// Claims `Idempotency-Key` `key` of `principal` (who sent it: an API key, or a trigger's inbound
/// webhooks) in the tenant for `run_id`, unless a live row holds it. Keys of different
/// principals never meet.
pub async fn claim_idempotency_key(
    client: &impl GenericClient,
    tenant_id: &str,
    principal: &str,
    key: &str,
    request_hash: &[u8],
    run_id: Uuid,
    ttl: Duration,
) -> Result<Slot, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "WITH claim AS ( \
                 INSERT INTO idempotency_keys AS k (tenant_id, key, request_hash, run_id, expires_at, \
                                                    principal) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6) \
                 ON CONFLICT (tenant_id, principal, key) DO UPDATE \
                     SET request_hash = EXCLUDED.request_hash, run_id = EXCLUDED.run_id, \
                         expires_at = EXCLUDED.expires_at \
                     WHERE k.expires_at < now() \
                 RETURNING k.run_id) \
             SELECT true, run_id, NULL::bytea FROM claim \
             UNION ALL \
             SELECT false, run_id, request_hash FROM idempotency_keys \
             WHERE tenant_id = $1 AND principal = $6 AND key = $2 \
               AND NOT EXISTS (SELECT 1 FROM claim)",
        )
        .await?;
    // A row committed by a concurrent claim after this statement began is seen by ON CONFLICT but
    // not by the SELECT: then nothing comes back, and a second statement sees it.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &tenant_id,
        &key,
        &request_hash,
        &run_id,
        &ttl_secs(ttl),
        &principal,
    ];
    let row = match client.query_opt(&stmt, &params).await? {
        Some(row) => row,
        None => client.query_one(&stmt, &params).await?,
    };
    let claimed: bool = row.try_get(0)?;
    if claimed {
        return Ok(Slot::Claimed);
    }
    let held: Vec<u8> = row.try_get(2)?;
    if held == request_hash {
        Ok(Slot::Taken {
            run_id: row.try_get(1)?,
        })
    } else {
        Ok(Slot::Mismatch)
    }
}

/// Claims the body `body_hash` of a trigger for `run_id`, unless a live row holds it.
pub async fn claim_trigger_body(
    client: &impl GenericClient,
    tenant_id: &str,
    trigger_id: &str,
    body_hash: &[u8],
    run_id: Uuid,
    window: Duration,
) -> Result<Slot, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "WITH claim AS ( \
                 INSERT INTO trigger_duplicates AS d (tenant_id, trigger_id, body_hash, run_id, expires_at) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
                 ON CONFLICT (tenant_id, trigger_id, body_hash) DO UPDATE \
                     SET run_id = EXCLUDED.run_id, expires_at = EXCLUDED.expires_at \
                     WHERE d.expires_at < now() \
                 RETURNING d.run_id) \
             SELECT true, run_id FROM claim \
             UNION ALL \
             SELECT false, run_id FROM trigger_duplicates \
             WHERE tenant_id = $1 AND trigger_id = $2 AND body_hash = $3 AND NOT EXISTS (SELECT 1 FROM claim)",
        )
        .await?;
    // As with idempotency keys: a row committed by a concurrent claim after this statement began
    // is seen by ON CONFLICT but not by the SELECT; then a second statement sees it.
    let window = window.as_secs_f64();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&tenant_id, &trigger_id, &body_hash, &run_id, &window];
    let row = match client.query_opt(&stmt, &params).await? {
        Some(row) => row,
        None => client.query_one(&stmt, &params).await?,
    };
    if row.try_get::<_, bool>(0)? {
        Ok(Slot::Claimed)
    } else {
        Ok(Slot::Taken {
            run_id: row.try_get(1)?,
        })
    }
}

/// Gives back the slots `run_id` claimed, when its run could not be recorded.
pub async fn release(
    client: &impl GenericClient,
    tenant_id: &str,
    run_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND run_id = $2",
            &[&tenant_id, &run_id],
        )
        .await?;
    client
        .execute(
            "DELETE FROM trigger_duplicates WHERE tenant_id = $1 AND run_id = $2",
            &[&tenant_id, &run_id],
        )
        .await?;
    Ok(())
}

/// Points the idempotency keys claimed for `from` (a call that joined a debounce, so its own run
/// will never exist) at `to`, the run that carries the call: a retry replays that run.
pub async fn repoint(
    client: &impl GenericClient,
    tenant_id: &str,
    from: Uuid,
    to: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE idempotency_keys SET run_id = $3 WHERE tenant_id = $1 AND run_id = $2",
            &[&tenant_id, &from, &to],
        )
        .await?;
    Ok(())
}

/// Ends the period of a debounce whose run `run_id` was released before `expires_at` came: the
/// next call with that key opens a new one.
pub async fn end_period(
    client: &impl GenericClient,
    tenant_id: &str,
    trigger_id: &str,
    key_hash: &[u8],
    run_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM trigger_duplicates \
             WHERE tenant_id = $1 AND trigger_id = $2 AND body_hash = $3 AND run_id = $4",
            &[&tenant_id, &trigger_id, &key_hash, &run_id],
        )
        .await?;
    Ok(())
}

/// Deletes expired rows of both tables; returns how many went.
pub async fn purge_expired(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let a = client
        .execute("DELETE FROM idempotency_keys WHERE expires_at < now()", &[])
        .await?;
    let b = client
        .execute(
            "DELETE FROM trigger_duplicates WHERE expires_at < now()",
            &[],
        )
        .await?;
    Ok(a + b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_member_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "é"}});
        let b = json!({"a": {"x": "é", "y": [1, {"c": 3, "d": 2}]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"x":"é","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        assert_ne!(canonical(&json!([1, 2])), canonical(&json!([2, 1])));
    }

    #[test]
    fn digests_keep_parts_apart() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }
}
