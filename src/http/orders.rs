//! `/v1/orders`: gate mode. The shop posts the order here instead of to its order API; it is
//! held until the buyer confirms the code, then forwarded upstream exactly once.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::{ApiJson, AuthenticatedBrand};
use super::idempotency::{Claim, idempotent};
use super::{ApiError, AppState, rfc3339};
use crate::domain::{NewOrder, OrderRecord};
use crate::domain::{OrderId, OrderStatus, Status};
use crate::gate::hold::HoldRefusal;
use crate::verifier::{StartRequest, VerifyError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(hold_order))
        .routes(routes!(get_order))
}

/// An order to hold until the buyer confirms.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldOrder {
    /// The order as the upstream order API expects it: a JSON object, stored and forwarded
    /// byte for byte (a 20-digit number stays 20 digits).
    #[schema(value_type = Object)]
    pub payload: Box<serde_json::value::RawValue>,
    /// The shop's order reference, shown in the SMS and on the code page.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub order_reference: String,
    /// Decimal amount, e.g. `"49.90"`.
    #[schema(pattern = r"^[0-9]{1,12}(\.[0-9]{1,3})?$", example = "49.90")]
    pub amount: String,
    /// ISO 4217 currency.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// The customer; with a customer directory the number on file is used.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub customer_reference: Option<String>,
    /// The buyer's number, when there is no customer directory.
    #[serde(default)]
    #[schema(
        max_length = 32,
        pattern = r"^ *\+?[0-9 ().-]*[0-9][0-9 ().-]*$",
        example = "+4915123456789"
    )]
    pub phone: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z-]{2,10}$")]
    pub locale: Option<String>,
    #[serde(default)]
    #[schema(max_length = 45, pattern = "^[0-9A-Fa-f:.]+$")]
    pub client_ip: Option<String>,
    #[serde(default)]
    #[schema(max_length = 512)]
    pub user_agent: Option<String>,
    /// Where the outcome is posted (signed webhook): https to a public address (in dev mode
    /// also http to loopback), on a host of the brand's `webhooks.hosts` if it has that list.
    #[serde(default)]
    #[schema(
        max_length = 2048,
        format = "uri",
        example = "https://shop.example/hooks/orderguard"
    )]
    pub callback_url: Option<String>,
}

/// A held order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub brand: String,
    pub status: OrderStatus,
    pub verification_id: String,
    pub verification_status: Option<Status>,
    pub order_reference: String,
    pub amount: String,
    pub currency: String,
    /// The code page for the shop's iframe (see verifications).
    pub widget_url: Option<String>,
    pub callback_url: Option<String>,
    pub forward_attempts: u32,
    /// The upstream's answer once forwarded (or refused).
    pub upstream_status: Option<u16>,
    pub upstream_body: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

async fn order_view(state: &AppState, order: &OrderRecord) -> Result<Order, ApiError> {
    let verification = state.verifier.find(&order.verification_id).await.ok();
    Ok(Order {
        id: order.id.to_string(),
        brand: order.brand.clone(),
        status: order.status,
        verification_id: order.verification_id.to_string(),
        verification_status: verification.as_ref().map(|v| v.status),
        order_reference: order.order_reference.clone(),
        amount: order.amount.decimal(),
        currency: order.amount.currency().to_owned(),
        widget_url: verification.as_ref().map(|v| state.widget_url(v)),
        callback_url: order.callback_url.clone(),
        forward_attempts: order.attempts,
        upstream_status: order.upstream_status,
        upstream_body: order.upstream_body.clone(),
        last_error: order.last_error.clone(),
        created_at: rfc3339(order.created_at),
        updated_at: rfc3339(order.updated_at),
        finished_at: order.finished_at.map(rfc3339),
    })
}

/// A refused hold as its problem.
fn hold_refusal(refusal: HoldRefusal) -> ApiError {
    match refusal {
        HoldRefusal::NotConfigured => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "gate_not_configured",
            "this brand has no [upstream] order API",
        ),
        HoldRefusal::PayloadNotObject => ApiError::Verify(VerifyError::InvalidField {
            field: "payload",
            message: "must be a JSON object".to_owned(),
        }),
        HoldRefusal::PayloadTooLarge { limit } => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the order payload is larger than {limit} bytes"),
        ),
        HoldRefusal::CallbackUrl(message) => ApiError::Verify(VerifyError::InvalidField {
            field: "callback_url",
            message,
        }),
        HoldRefusal::WebhooksNotConfigured => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhooks_not_configured",
            "this brand has no webhooks.secret",
        ),
    }
}

fn refuse(status: StatusCode, kind: &'static str, detail: &str) -> ApiError {
    ApiError::Request {
        status,
        kind,
        detail: detail.to_owned(),
    }
}

/// Hold an order and start its verification; the buyer confirms on the code page.
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = HoldOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
        (status = 202, description = "Held; the SMS is on its way", body = Order),
        (status = 413, description = "`payload_too_large`"),
        (status = 422, description = "`gate_not_configured`, `webhooks_not_configured`, `invalid_request`, the start problems"),
        (status = 503, description = "`customer_directory_unavailable` (with Retry-After)"),
    ),
    security(("api_key" = []))
)]
pub async fn hold_order(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    headers: HeaderMap,
    ApiJson(body): ApiJson<HoldOrder>,
) -> Result<Response, ApiError> {
    let request = serde_json::to_vec(&body).map_err(anyhow::Error::from)?;
    let (state_ref, brand_ref) = (&state, &brand);
    idempotent(
        state_ref,
        brand_ref,
        &headers,
        "orders",
        &request,
        |claim| async move {
            hold(state_ref, brand_ref, body, claim)
                .await
                .into_response()
        },
    )
    .await
}

async fn hold(
    state: &AppState,
    brand: &crate::brands::Brand,
    body: HoldOrder,
    claim: Claim,
) -> Result<Response, ApiError> {
    let payload = body.payload.get().to_owned();
    state
        .hold
        .check(brand, &payload, body.callback_url.as_deref())
        .await
        .map_err(hold_refusal)?;
    // A retry of a request that died mid-way: the order, if the first attempt stored it.
    let resumed = if claim.resumed {
        let order = state
            .store
            .order_for_verification(&claim.verification_id)
            .await?;
        match order {
            Some(order) => {
                state
                    .verifier
                    .resume(brand, &claim.verification_id)
                    .await
                    .map_err(|error| name_the_order(error, order.id))?;
                Some(order)
            }
            None => None,
        }
    } else {
        None
    };
    let order = match resumed {
        Some(order) => order,
        None => {
            let order_id = OrderId::new();
            let request = StartRequest {
                id: claim.verification_id,
                phone: body.phone,
                order_reference: body.order_reference,
                amount: body.amount,
                currency: body.currency,
                locale: body.locale,
                customer_reference: body.customer_reference,
                client_ip: body.client_ip,
                user_agent: body.user_agent,
                order: Some(NewOrder {
                    id: order_id,
                    payload,
                    callback_url: body.callback_url,
                }),
            };
            // The order exists even when its SMS failed: the problem names it, so the shop
            // can read it and call resend.
            state
                .verifier
                .start(brand, request)
                .await
                .map_err(|error| name_the_order(error, order_id))?;
            state
                .store
                .get_order(&brand.id, &order_id)
                .await?
                .ok_or(VerifyError::NotFound)?
        }
    };
    let order_id = order.id;
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(order_view(state, &order).await?),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A failed SMS of a held order: the problem carries the order id too.
fn name_the_order(error: VerifyError, order_id: OrderId) -> VerifyError {
    match error {
        VerifyError::SmsFailed {
            verification_id, ..
        } => VerifyError::SmsFailed {
            verification_id,
            order_id: Some(order_id),
        },
        other => other,
    }
}

/// Read a held order of the calling brand: where it stands, and the upstream's answer.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, description = "The order", body = Order), (status = 404, description = "`not_found`")),
    security(("api_key" = []))
)]
pub async fn get_order(
    State(state): State<AppState>,
    AuthenticatedBrand(brand): AuthenticatedBrand,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: OrderId = id
        .parse()
        .map_err(|_| ApiError::Verify(VerifyError::NotFound))?;
    let order = state
        .store
        .get_order(&brand.id, &id)
        .await?
        .ok_or(VerifyError::NotFound)?;
    // Reading an order also settles an overdue verification (expired), like the API does.
    let _ = state.verifier.find(&order.verification_id).await;
    let order = state
        .store
        .get_order(&brand.id, &id)
        .await?
        .ok_or(VerifyError::NotFound)?;
    Ok(axum::Json(order_view(&state, &order).await?).into_response())
}
