//! `/v1/verifications`: start, read, check, resend, cancel.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::{ApiJson, AuthenticatedBrand};
use super::idempotency::{Claim, idempotent};
use super::{ApiError, AppState, rfc3339};
use crate::domain::VerificationRecord;
use crate::domain::{Status, VerificationId};
use crate::verifier::StartRequest;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_verification))
        .routes(routes!(get_verification))
        .routes(routes!(check_code))
        .routes(routes!(resend_code))
        .routes(routes!(cancel_verification))
}

/// Start a verification: the buyer gets an SMS with a one-time code.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartVerification {
    /// The buyer's mobile number, E.164 (`+4915123456789`) or national for the brand's country.
    /// Not needed (and ignored) with a `customer_reference` when the brand has a customer
    /// directory: the number on file is used.
    #[serde(default)]
    #[schema(
        max_length = 32,
        pattern = r"^ *\+?[0-9 ().-]*[0-9][0-9 ().-]*$",
        example = "+4915123456789"
    )]
    pub phone: Option<String>,
    /// The shop's order reference, shown in the SMS (1–64 characters, no control characters;
    /// shortened in the SMS if the brand's segment budget needs it).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$",
        example = "A-1001"
    )]
    pub order_reference: String,
    /// Decimal amount, e.g. `"49.90"`, with at most the currency's decimal places.
    #[schema(pattern = r"^[0-9]{1,12}(\.[0-9]{1,3})?$", example = "49.90")]
    pub amount: String,
    /// ISO 4217 currency, e.g. `"EUR"`.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// Buyer's language tag, e.g. `"de"`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z-]{2,10}$", example = "de")]
    pub locale: Option<String>,
    /// The shop's reference of the customer; only a keyed hash of it is kept.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub customer_reference: Option<String>,
    /// The buyer's IP address (IPv4 or IPv6) as the shop saw it; only a keyed hash of it is kept.
    #[serde(default)]
    #[schema(max_length = 45, pattern = "^[0-9A-Fa-f:.]+$", example = "203.0.113.7")]
    pub client_ip: Option<String>,
    /// The buyer's User-Agent; only its coarse browser family is kept.
    #[serde(default)]
    #[schema(max_length = 512)]
    pub user_agent: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckCode {
    /// The digits the buyer typed (spaces and dashes are ignored).
    #[schema(pattern = "^[0-9]{4,10}$", example = "123456")]
    pub code: String,
}

/// A verification as shops see it. The phone number is masked; the code never appears.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    pub id: String,
    pub brand: String,
    pub status: Status,
    /// Masked number, e.g. `+491********89`.
    pub phone: String,
    pub country: String,
    pub order_reference: String,
    pub amount: String,
    pub currency: String,
    pub locale: Option<String>,
    pub attempts_remaining: u32,
    pub sends_remaining: u32,
    /// When resend is allowed again (RFC 3339), while pending.
    pub resend_available_at: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub finished_at: Option<String>,
    /// The code page for the shop's iframe. Append `&parent=<shop origin>` (one of the
    /// brand's frame origins) and optionally `&locale=de`.
    pub widget_url: String,
    /// Once approved: a short-lived EdDSA JWS for the order API (check it with
    /// `/.well-known/jwks.json`).
    pub approval_token: Option<String>,
}

impl Verification {
    fn new(state: &AppState, record: &VerificationRecord) -> Self {
        let pending = record.status == Status::Pending;
        Self {
            id: record.id.to_string(),
            brand: record.brand.clone(),
            status: record.status,
            phone: record.phone.masked(),
            country: record.phone.country().to_owned(),
            order_reference: record.order_reference.clone(),
            amount: record.amount.decimal(),
            currency: record.amount.currency().to_owned(),
            locale: record.locale.clone(),
            attempts_remaining: record.max_checks.saturating_sub(record.checks_used),
            sends_remaining: record.max_sends.saturating_sub(record.sends),
            resend_available_at: record
                .resend_available_at()
                .filter(|_| pending)
                .map(rfc3339),
            created_at: rfc3339(record.created_at),
            expires_at: rfc3339(record.expires_at),
            finished_at: record.finished_at.map(rfc3339),
            widget_url: state.widget_url(record),
            approval_token: None,
        }
    }
}

fn parse_id(id: &str) -> Result<VerificationId, ApiError> {
    // An id that is not a UUID cannot exist: same answer as an unknown one.
    id.parse()
        .map_err(|_| ApiError::Verify(crate::verifier::VerifyError::NotFound))
}

async fn verification_response(
    state: &AppState,
    status: StatusCode,
    record: &VerificationRecord,
) -> Response {
    let mut view = Verification::new(state, record);
    if record.status == Status::Approved {
        // A held order's token is bound to that order's id and payload: the same token the
        // forwarder sends. Without its order (unreadable now) no token is given.
        view.approval_token = if record.has_order {
            match state.store.order_for_verification(&record.id).await {
                Ok(Some(order)) => state.approval.token(
                    record,
                    Some(crate::approval::OrderBinding {
                        order_id: &order.id,
                        payload: order.payload.as_bytes(),
                    }),
                ),
                _ => None,
            }
        } else {
            state.approval.token(record, None)
        };
    }
    (status, axum::Json(view)).into_response()
}

/// Start a verification and send the first code.
///
/// With an `Idempotency-Key` header, a repeated request with the same body gets the first
/// response again (header `Idempotent-Replayed: true`); the same key with a different body is
/// refused with `idempotency_key_reused`.
#[utoipa::path(
    post, path = "/v1/verifications", tag = "verifications",
    request_body = StartVerification,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1–255 visible ASCII characters")),
    responses(
        (status = 201, description = "Started; the SMS is on its way", body = Verification),
        (status = 401, description = "Missing or unknown API key (`unauthorized`)"),
        (status = 422, description = "`invalid_phone`, `country_not_allowed`, `premium_rate_number`, `shared_cost_number`, `voip_number`, `fixed_line_number`, `non_mobile_number`, `invalid_request`, `idempotency_key_reused`"),
        (status = 502, description = "`sms_delivery_failed`: no provider took the SMS; resend later"),
    ),
    security(("api_key" = []))
)]
pub async fn start_verification(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartVerification>,
) -> Result<Response, ApiError> {
    let request = serde_json::to_vec(&body).map_err(anyhow::Error::from)?;
    let brand_ref = &brand;
    let state_ref = &state;
    idempotent(
        state_ref,
        brand_ref,
        &headers,
        "verifications",
        &request,
        |claim| async move {
            start(state_ref, brand_ref, body, claim)
                .await
                .into_response()
        },
    )
    .await
}

async fn start(
    state: &AppState,
    brand: &crate::brands::Brand,
    body: StartVerification,
    claim: Claim,
) -> Result<Response, ApiError> {
    // A retry of a request that died mid-way: answer with what it created, if it got that far.
    let resumed = if claim.resumed {
        state.verifier.resume(brand, &claim.verification_id).await?
    } else {
        None
    };
    let record = match resumed {
        Some(record) => record,
        None => {
            state
                .verifier
                .start(brand, start_request(body, claim))
                .await?
        }
    };
    let mut response = verification_response(state, StatusCode::CREATED, &record).await;
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/verifications/{}", record.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn start_request(body: StartVerification, claim: Claim) -> StartRequest {
    StartRequest {
        id: claim.verification_id,
        phone: body.phone,
        order_reference: body.order_reference,
        amount: body.amount,
        currency: body.currency,
        locale: body.locale,
        customer_reference: body.customer_reference,
        client_ip: body.client_ip,
        user_agent: body.user_agent,
        order: None,
    }
}

/// Read a verification of the calling brand.
#[utoipa::path(
    get, path = "/v1/verifications/{id}", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    responses(
        (status = 200, description = "The verification", body = Verification),
        (status = 404, description = "`not_found` (also for another brand's verification)"),
    ),
    security(("api_key" = []))
)]
pub async fn get_verification(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.verifier.get(&brand, &parse_id(&id)?).await?;
    Ok(verification_response(&state, StatusCode::OK, &record).await)
}

/// Check the code the buyer typed. Wrong codes count towards the lock, per verification.
#[utoipa::path(
    post, path = "/v1/verifications/{id}/check", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    request_body = CheckCode,
    responses(
        (status = 200, description = "Approved", body = Verification),
        (status = 409, description = "`verification_locked`, `verification_aborted`, `verification_already_approved`"),
        (status = 410, description = "`verification_expired`"),
        (status = 422, description = "`invalid_code` with `attempts_remaining`, or `invalid_request`"),
    ),
    security(("api_key" = []))
)]
pub async fn check_code(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CheckCode>,
) -> Result<Response, ApiError> {
    let record = state
        .verifier
        .check(&brand, &parse_id(&id)?, &body.code)
        .await?;
    Ok(verification_response(&state, StatusCode::OK, &record).await)
}

/// Send a new code; the previous one stops working.
#[utoipa::path(
    post, path = "/v1/verifications/{id}/resend", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    responses(
        (status = 200, description = "A new code was sent", body = Verification),
        (status = 409, description = "`send_limit_reached` or the verification is no longer pending"),
        (status = 429, description = "`resend_cooldown`, with `Retry-After` and `resend_available_at`"),
    ),
    security(("api_key" = []))
)]
pub async fn resend_code(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.verifier.resend(&brand, &parse_id(&id)?, None).await?;
    Ok(verification_response(&state, StatusCode::OK, &record).await)
}

/// Cancel a pending verification (the buyer aborted the purchase).
#[utoipa::path(
    post, path = "/v1/verifications/{id}/cancel", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    responses(
        (status = 200, description = "Aborted", body = Verification),
        (status = 409, description = "No longer pending"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_verification(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = state.verifier.cancel(&brand, &parse_id(&id)?).await?;
    Ok(verification_response(&state, StatusCode::OK, &record).await)
}
