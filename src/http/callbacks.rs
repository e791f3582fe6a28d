//! `/v1/callbacks/sms/{provider}`: delivery receipts from SMS providers.
//!
//! The generic `http` provider's receipt is a JSON body `{"reference": "...", "status": "..."}`
//! signed with the shared secret `sms.receipt_secret`: the header
//! `X-Orderguard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Signatures older than five minutes are refused, so a captured receipt cannot be replayed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState};
use crate::domain::now_millis;
use crate::verifier::ReceiptResult;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive_sms_receipt))
}

/// A delivery receipt of the generic `http` provider.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SmsReceipt {
    /// Our message id (sent to the gateway as `{message_id}`) or the gateway's own id.
    pub reference: String,
    /// `delivered`, or `undelivered` / `failed` / `expired` / `rejected`.
    pub status: String,
    /// The gateway's error description, if any.
    #[serde(default)]
    pub error: Option<String>,
}

/// Receive a delivery receipt (signed; see `X-Orderguard-Signature`).
#[utoipa::path(
    post, path = "/v1/callbacks/sms/{provider}", tag = "callbacks",
    params(("provider" = String, Path, description = "`http`, the generic provider")),
    request_body = SmsReceipt,
    responses(
        (status = 200, description = "Recorded (`result`: `recorded` or `duplicate`)"),
        (status = 401, description = "`invalid_signature`"),
        (status = 404, description = "`unknown_message`, or receipts are not configured (`receipts_disabled`)"),
    )
)]
pub async fn receive_sms_receipt(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let not_found = |kind, detail: &str| ApiError::Request {
        status: StatusCode::NOT_FOUND,
        kind,
        detail: detail.to_owned(),
    };
    if provider != "http" {
        return Err(not_found(
            "unknown_provider",
            "receipts are accepted for the `http` provider",
        ));
    }
    let secret = state
        .receipt_secret
        .as_deref()
        .ok_or_else(|| not_found("receipts_disabled", "sms.receipt_secret is not set"))?;
    let header = headers
        .get("x-orderguard-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !crate::signature::verify(secret, header, &body, now_millis() / 1000) {
        return Err(ApiError::Request {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_signature",
            detail: "X-Orderguard-Signature is missing, wrong or older than five minutes"
                .to_owned(),
        });
    }
    let receipt: SmsReceipt = serde_json::from_slice(&body).map_err(|e| ApiError::Request {
        status: StatusCode::BAD_REQUEST,
        kind: "malformed_json",
        detail: e.to_string(),
    })?;
    let delivered = match receipt.status.as_str() {
        "delivered" => true,
        "undelivered" | "failed" | "expired" | "rejected" => false,
        other => {
            return Err(ApiError::invalid(format!(
                "status {other:?} is not a delivery status"
            )));
        }
    };
    let reason = receipt.error.as_deref().unwrap_or(if delivered {
        ""
    } else {
        receipt.status.as_str()
    });
    match state
        .verifier
        .sms_receipt(&provider, &receipt.reference, delivered, reason)
        .await?
    {
        ReceiptResult::UnknownMessage => {
            Err(not_found("unknown_message", "no SMS with this reference"))
        }
        result => Ok(axum::Json(serde_json::json!({"result": result.as_str()})).into_response()),
    }
}
