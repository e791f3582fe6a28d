//! `Idempotency-Key` for both creating resources (`POST /v1/verifications`, `POST /v1/orders`):
//! the first response is stored and replayed for a repeat with the same body; a different body
//! is refused. A claim holds its key for a lease only: a request that died mid-way (a crash, a
//! dropped connection, its own 408) frees its key once the lease ends, and the retry resumes
//! with the verification id stored with the key, so it finds what the dead attempt created.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::domain::{VerificationId, now_millis};
use crate::store::IdempotencyClaim;

/// What a creating request may go ahead with.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// The id of the verification to create (stored with the key).
    pub verification_id: VerificationId,
    /// An earlier attempt with this key died before answering: it may have created the
    /// verification already.
    pub resumed: bool,
}

/// How long a claim holds its key: longer than any request may run (`http.request_timeout_ms`),
/// so only a request that can no longer answer loses it.
pub fn claim_lease(request_timeout: Duration) -> Duration {
    request_timeout + Duration::from_secs(1)
}

/// Runs `create` at most once per `Idempotency-Key` (scoped to the brand and `scope`), and
/// replays its response for a repeat with the same body. Without the header it just runs.
pub async fn idempotent<F, Fut>(
    state: &AppState,
    brand: &crate::brands::Brand,
    headers: &HeaderMap,
    scope: &str,
    request: &[u8],
    create: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Claim) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let fresh = Claim {
        verification_id: VerificationId::new(),
        resumed: false,
    };
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(create(fresh).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid("Idempotency-Key must be 1–255 visible ASCII characters")
        })?;
    let key = format!("{scope}:{key}");
    let request_hash = Sha256::digest(request).to_vec();
    let now = now_millis();
    let lease_until = now + claim_lease(state.request_timeout).as_millis() as i64;
    let claim = match state
        .store
        .idempotency_claim(
            &brand.id,
            &key,
            &request_hash,
            &fresh.verification_id.to_string(),
            now,
            lease_until,
        )
        .await?
    {
        IdempotencyClaim::Claimed { resource, resumed } => Claim {
            verification_id: resource
                .parse()
                .map_err(|_| anyhow::anyhow!("a stored idempotency resource is not an id"))?,
            resumed,
        },
        IdempotencyClaim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).map_err(anyhow::Error::from)?;
            let content_type = if status.is_success() {
                "application/json"
            } else {
                "application/problem+json"
            };
            let mut response = (status, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        IdempotencyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
        IdempotencyClaim::InProgress => return Err(ApiError::IdempotencyInProgress),
    };
    let response = create(claim).await;
    let status = response.status();
    if status.is_server_error() && status != StatusCode::BAD_GATEWAY {
        // Nothing was decided: let the client retry with the same key.
        state.store.idempotency_release(&brand.id, &key).await?;
        return Ok(response);
    }
    // Buffer the body to store it, then answer with the same bytes.
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| anyhow::anyhow!("buffering response: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    state
        .store
        .idempotency_complete(&brand.id, &key, status.as_u16(), &text)
        .await?;
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}
