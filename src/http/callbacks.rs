//! `/v1/callbacks/sms/{provider}`: delivery receipts from SMS providers.
//!
//! The generic `http` provider's receipt is a JSON body `{"reference": "...", "status": "..."}`
//! signed with the shared secret `sms.receipt_secret`: the header
//! `X-Orderguard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Signatures older than five minutes are refused, so a captured receipt cannot be replayed.
//!
//! Twilio's status callbacks arrive at `/v1/callbacks/sms/twilio`, form-encoded and signed
//! with the account's Auth Token (`X-Twilio-Signature`, see [`crate::sms::twilio`]).
//!
//! Each kind authenticates its own receipts, and a receipt only settles a message sent
//! through the providers that authenticated it ([`crate::sms::ReceiptRoutes`]).

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
    OpenApiRouter::new()
        .routes(routes!(receive_twilio_status))
        .routes(routes!(receive_sms_receipt))
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
    // `/v1/callbacks/sms/twilio` has its own route; any other name is unknown.
    if provider != "http" {
        return Err(not_found(
            "unknown_provider",
            "receipts are accepted for the `http` provider",
        ));
    }
    let http = state
        .receipts
        .http()
        .ok_or_else(|| not_found("receipts_disabled", "sms.receipt_secret is not set"))?;
    let secret = &*http.secret;
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
    let result = state
        .verifier
        .sms_receipt(
            "http",
            &http.providers,
            &receipt.reference,
            delivered,
            reason,
        )
        .await?;
    receipt_answer(result)
}

/// A 404 problem of kind `kind`.
fn not_found(kind: &'static str, detail: &str) -> ApiError {
    ApiError::Request {
        status: StatusCode::NOT_FOUND,
        kind,
        detail: detail.to_owned(),
    }
}

fn receipt_answer(result: ReceiptResult) -> Result<Response, ApiError> {
    match result {
        ReceiptResult::UnknownMessage => {
            Err(not_found("unknown_message", "no SMS with this reference"))
        }
        result => Ok(axum::Json(serde_json::json!({"result": result.as_str()})).into_response()),
    }
}

/// A Twilio status callback (form-encoded; only the fields read are listed).
/// <https://www.twilio.com/docs/messaging/guides/track-outbound-message-status>
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TwilioStatus {
    /// The message's SID (`SM…`), as the send was answered.
    #[serde(rename = "MessageSid")]
    pub message_sid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`, …
    #[serde(rename = "MessageStatus")]
    pub message_status: String,
    /// Twilio's error code when undelivered or failed.
    #[serde(rename = "ErrorCode", default)]
    pub error_code: Option<String>,
}

/// Receive a Twilio status callback (signed with the Auth Token: `X-Twilio-Signature`).
#[utoipa::path(
    post, path = "/v1/callbacks/sms/twilio", tag = "callbacks",
    request_body(content = TwilioStatus, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Recorded (`result`: `recorded`, `duplicate` or `ignored` for a status that is not final)"),
        (status = 403, description = "`invalid_signature`: missing or wrong `X-Twilio-Signature`; nothing was read"),
        (status = 404, description = "`unknown_message`, or no Twilio provider is configured (`receipts_disabled`)"),
    )
)]
pub async fn receive_twilio_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !state.receipts.has_twilio() {
        return Err(not_found(
            "receipts_disabled",
            "no Twilio provider is configured",
        ));
    }
    // The signature covers every parameter: they are parsed as pairs only to verify it,
    // and nothing is read from them before it holds.
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(providers) = state.receipts.twilio_signer(&params, signature) else {
        return Err(ApiError::Request {
            status: StatusCode::FORBIDDEN,
            kind: "invalid_signature",
            detail: "X-Twilio-Signature is missing or does not match this URL and body".to_owned(),
        });
    };
    let status = twilio_status(&params)?;
    let delivered = match status.message_status.as_str() {
        "delivered" => true,
        "undelivered" | "failed" => false,
        // queued, sending, sent, accepted, scheduled, read, …: not a final delivery status.
        _ => return Ok(axum::Json(serde_json::json!({"result": "ignored"})).into_response()),
    };
    let reason = match status.error_code.as_deref().map(str::parse::<i64>) {
        Some(Ok(code)) => crate::sms::twilio::error_text(code),
        _ if delivered => String::new(),
        _ => status.message_status.clone(),
    };
    let result = state
        .verifier
        .sms_receipt("twilio", providers, &status.message_sid, delivered, &reason)
        .await?;
    receipt_answer(result)
}

/// The callback's fields: a missing or repeated field is a clear 400.
fn twilio_status(params: &[(String, String)]) -> Result<TwilioStatus, ApiError> {
    let field = |name: &str| {
        let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (Some(value), None) => Ok(Some(value.clone())),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(ApiError::invalid(format!("{name} is given twice"))),
        }
    };
    let required =
        |name: &str| field(name)?.ok_or_else(|| ApiError::invalid(format!("{name} is missing")));
    Ok(TwilioStatus {
        message_sid: required("MessageSid")?,
        message_status: required("MessageStatus")?,
        error_code: field("ErrorCode")?,
    })
}
