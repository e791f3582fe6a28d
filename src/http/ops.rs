//! Operations: liveness, readiness, metrics and the API description.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .routes(routes!(jwks))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Readiness: the database answers (within a second), brands and the phone-number metadata
/// are loaded, no background worker is down, and some SMS provider can take a message (an
/// SMPP provider only while its session is bound).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; the body says which check failed"),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => {
            tracing::warn!(error = %format!("{error:#}"), "readiness: database unreachable");
            "unreachable".to_owned()
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within 1 s");
            "unreachable".to_owned()
        }
    };
    let brands = state.brands.len();
    let phone_metadata = crate::domain::phone::metadata_loaded();
    let workers_down = state.workers.down();
    let sms = state.sms.any_available();
    let ready = database == "ok" && brands > 0 && phone_metadata && workers_down.is_empty() && sms;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": database,
        "backend": state.store.backend().as_str(),
        "brands_loaded": brands,
        "phone_metadata": if phone_metadata { "loaded" } else { "loading" },
        "workers_down": workers_down,
        "sms": if sms { "available" } else { "no_provider_available" },
    });
    (status, axum::Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Response {
    let mut response = super::openapi_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The public keys of approval tokens (JWK Set; EdDSA over Ed25519).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations", responses((status = 200, description = "JWK Set")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = axum::Json(state.approval.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
