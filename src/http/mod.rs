//! The HTTP edge: one router per resource, merged here with the shared layers.

mod admin;
mod callbacks;
mod client_ip;
mod dev;
mod error;
mod extract;
mod idempotency;
pub mod openapi;
mod ops;
mod orders;
mod pages;
mod verifications;

pub use admin::Operators;
pub use error::{ApiError, PROBLEM_TYPE_PREFIX};

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::brands::BrandRegistry;
use crate::metrics::Metrics;
use crate::sms::DevInbox;
use crate::store::Store;
use crate::verifier::Verifier;

pub use client_ip::TrustedProxies;

/// Everything handlers share, built once at start. Cloned for every extractor and middleware
/// of every request, so it is one reference count, not a copy of each field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn Store>,
    pub brands: Arc<BrandRegistry>,
    pub metrics: Arc<Metrics>,
    /// The dev inbox; `None` outside dev mode, which also hides `/dev/*`.
    pub inbox: Option<Arc<DevInbox>>,
    /// The SMS providers (`/readyz` asks whether any can send).
    pub sms: Arc<crate::sms::SmsSender>,
    /// Who may post delivery receipts for which providers.
    pub receipts: Arc<crate::sms::ReceiptRoutes>,
    /// Signs code page links.
    pub widget: Arc<crate::widget::WidgetSigner>,
    /// Where buyers reach the service, without a trailing slash.
    pub public_url: String,
    /// Signs approval tokens and publishes their keys.
    pub approval: Arc<crate::approval::ApprovalSigner>,
    /// What an order must satisfy to be held (gate mode).
    pub hold: crate::gate::hold::HoldPolicy,
    /// The fraud rules (operators list and lift blocks).
    pub fraud: Arc<crate::fraud::Fraud>,
    /// Retention, erasure and access of personal data.
    pub privacy: Arc<crate::privacy::Privacy>,
    /// Who may use the admin routes.
    pub operators: Arc<Operators>,
    /// Which background workers are down (`/readyz` reports them).
    pub workers: Arc<crate::supervisor::WorkerHealth>,
    /// `http.request_timeout_ms`: an idempotency claim outlives any request.
    pub request_timeout: std::time::Duration,
    /// Whose `X-Forwarded-For` names the buyer (`http.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderguard",
        description = "Checkout 2FA gate: holds purchases until the buyer confirms an SMS code. \
            Errors are application/problem+json; `type` is `urn:orderguard:problem:<cause>`."
    ),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "verifications", description = "Verification lifecycle (API key of a brand)"),
        (name = "orders", description = "Gate mode: held orders, forwarded once approved (API key of a brand)"),
        (name = "callbacks", description = "Called by SMS providers (signed)"),
        (name = "code page", description = "HTML pages for the buyer, in the shop's iframe"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "development", description = "Dev mode only"),
        (name = "admin", description = "Operators (operator token of a scope; on http.admin_port when set)")
    )
)]
struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, registered together with its OpenAPI description so the two cannot drift.
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(verifications::router())
        .merge(orders::router())
        .merge(ops::router())
        .merge(callbacks::router())
        .merge(pages::router())
        .merge(dev::router())
        .merge(admin::router())
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi_json() -> &'static str {
    static SPEC: LazyLock<String> = LazyLock::new(|| {
        let mut document = serde_json::to_value(api_router().into_openapi()).unwrap_or_default();
        openapi::complete(&mut document);
        serde_json::to_string_pretty(&document).unwrap_or_default()
    });
    &SPEC
}

/// Limits the HTTP layer applies.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    /// Production mode: every answer carries `Strict-Transport-Security`.
    pub hsts: bool,
    /// `http.admin_port` is set: `/metrics` and `/v1/admin/…` are served only there.
    pub admin_separate: bool,
}

/// Which listener a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Main { admin_separate: bool },
    Admin,
}

/// Whether `path` is an operator's (metrics and admin routes).
fn operator_path(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/v1/admin/") || path == "/v1/admin"
}

/// Keeps the operators' routes off the buyers' listener when they have their own, and
/// everything else off the admin listener (health and readiness are on both).
fn listener_serves(listener: Listener, path: &str) -> bool {
    match listener {
        Listener::Main { admin_separate } => !(admin_separate && operator_path(path)),
        Listener::Admin => operator_path(path) || matches!(path, "/healthz" | "/readyz"),
    }
}

/// The application's router with its layers, ready to serve.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let listener = Listener::Main {
        admin_separate: limits.admin_separate,
    };
    build_router(state, limits, listener)
}

/// The admin listener's router (`http.admin_port`): metrics, operator routes, health.
pub fn admin_router(state: AppState, limits: HttpLimits) -> Router {
    build_router(state, limits, Listener::Admin)
}

fn build_router(state: AppState, limits: HttpLimits, listener: Listener) -> Router {
    let (router, _) = api_router().split_for_parts();
    // Layers listed first wrap the ones after: the request id is set before the span that
    // records it, and panics and timeouts still pass through tracing and metrics.
    // Each `from_fn` layer boxes the request's future and clones the service behind it, so
    // the edge's own work is two of them, not five: a refused start is the cheap answer.
    let edge = Edge {
        listener,
        metrics: state.metrics.clone(),
        hsts: limits.hsts,
    };
    let capacity = Capacity {
        timeout: limits.request_timeout,
        slots: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)),
    };
    let layers = ServiceBuilder::new()
        .map_request(drop_unsafe_request_id)
        .layer(SetRequestIdLayer::x_request_id(FreshRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(middleware::from_fn_with_state(edge, serve_edge))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
            },
        ))
        .layer(middleware::from_fn_with_state(capacity, within_capacity));
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(layers)
        .with_state(state)
}

/// What the edge layer needs: which listener it serves, the metrics, whether to pin HTTPS.
#[derive(Clone)]
struct Edge {
    listener: Listener,
    metrics: Arc<Metrics>,
    hsts: bool,
}

/// The edge: the listener split (operators' routes and the rest), the request's metrics, and
/// the security headers. API answers are never stored by a cache (they carry approval
/// tokens, masked numbers and order state); production answers pin HTTPS (HSTS, one year).
async fn serve_edge(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let serves = listener_serves(edge.listener, path);
    let api = path.starts_with("/v1/");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let mut response = if serves {
        next.run(request).await
    } else {
        ApiError::UnknownRoute.into_response()
    };
    let headers = response.headers_mut();
    if api && !headers.contains_key(axum::http::header::CACHE_CONTROL) {
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    if edge.hsts {
        headers.insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    edge.metrics.http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A random UUID (v4) for a request that brought no usable id, from the thread's
/// cryptographically secure generator (`rand::rng()`, seeded by the OS). tower-http's
/// `MakeRequestUuid` asked the OS for its bytes on every request: a `getrandom` system call
/// per request, as many as the responses written (counted with strace under a flood).
#[derive(Clone, Copy)]
struct FreshRequestId;

impl MakeRequestId for FreshRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        axum::http::HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .ok()
            .map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only if it is 1–128 characters of `A-Z a-z 0-9 - _ . :`;
/// anything else (log injection, PII, megabytes) is dropped and a fresh id generated.
fn drop_unsafe_request_id(mut request: Request) -> Request {
    let safe = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        (1..=128).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    let headers = request.headers_mut();
    let all_safe = headers.get_all("x-request-id").iter().count() == 1
        && headers.get("x-request-id").is_some_and(safe);
    if !all_safe {
        headers.remove("x-request-id");
    }
    request
}

/// The request span: method, matched route (never the raw path or query), request id, brand.
fn make_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), route, request_id, brand = tracing::field::Empty)
}

/// What the capacity layer needs: the request time limit and the in-flight slots.
#[derive(Clone)]
struct Capacity {
    timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Answers `overloaded` (503, Retry-After) when `max_in_flight` requests are being served, and
/// `request_timeout` when a request takes longer than the limit. Liveness and metrics are
/// always served: an overloaded instance is busy, not dead, and its metrics are what an
/// operator needs then. Readiness sheds, taking it out of load balancing.
async fn within_capacity(
    State(capacity): State<Capacity>,
    request: Request,
    next: Next,
) -> Response {
    let _permit = if matches!(request.uri().path(), "/healthz" | "/metrics") {
        None
    } else {
        match capacity.slots.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Overloaded.into_response(),
        }
    };
    match tokio::time::timeout(capacity.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Request {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "request_timeout",
            detail: format!(
                "the request took longer than {} ms",
                capacity.timeout.as_millis()
            ),
        }
        .into_response(),
    }
}

async fn unknown_route() -> ApiError {
    ApiError::UnknownRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
    }
    // Digit by digit: every refusal with a Retry-After carries one, and `format!` with its
    // padded fields was a third of the refusal's answer.
    fn push(text: &mut String, value: i64, width: u32, after: char) {
        for place in (0..width).rev() {
            text.push(char::from(b'0' + (value / 10_i64.pow(place) % 10) as u8));
        }
        text.push(after);
    }
    let mut text = String::with_capacity(24);
    push(&mut text, year, 4, '-');
    push(&mut text, month, 2, '-');
    push(&mut text, day, 2, 'T');
    push(&mut text, rem / 3600, 2, ':');
    push(&mut text, rem % 3600 / 60, 2, ':');
    push(&mut text, rem % 60, 2, '.');
    push(&mut text, ms, 3, 'Z');
    text
}

#[cfg(test)]
mod tests {
    /// A request without a usable id gets a random UUID v4, a new one each time.
    #[test]
    fn fresh_request_ids_are_distinct_random_uuids() {
        use tower_http::request_id::MakeRequestId;
        let request = axum::http::Request::new(());
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                let id = super::FreshRequestId
                    .make_request_id(&request)
                    .expect("an id");
                let text = id.header_value().to_str().expect("ASCII").to_owned();
                let uuid = uuid::Uuid::parse_str(&text).expect("a UUID");
                assert_eq!(uuid.get_version_num(), 4, "{text}");
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{text}");
                text
            })
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_795_257_296_789),
            "2026-11-21T10:34:56.789Z"
        );
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59.999Z");
        // Past the four-digit years, the general path.
        assert_eq!(
            super::rfc3339(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
    }
}
