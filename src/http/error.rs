//! The HTTP edge's one error type: every refusal becomes `application/problem+json` (RFC 9457)
//! with a stable `type` per cause. 5xx bodies say nothing internal; the cause is logged once here.

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::domain::{PhoneError, now_millis};
use crate::store::{StoreError, StoreErrorKind};
use crate::verifier::VerifyError;

/// Prefix of every problem `type`; the part after it is the stable cause name.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:orderguard:problem:";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("{detail}")]
    Request {
        status: StatusCode,
        kind: &'static str,
        detail: String,
    },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    #[error("the service is at capacity; retry shortly")]
    Overloaded,
    #[error("no such route")]
    UnknownRoute,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Verify(VerifyError::Store(error))
    }
}

impl ApiError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::Request {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_request",
            detail: detail.into(),
        }
    }

    /// Status, stable type name, title, and extension members.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, Map<String, Value>) {
        use StatusCode as S;
        let mut extra = Map::new();
        let (status, kind, title) = match self {
            Self::Verify(error) => match error {
                VerifyError::Phone(phone) => {
                    if let PhoneError::CountryNotAllowed(country) = phone {
                        extra.insert("country".into(), json!(country));
                    }
                    (S::UNPROCESSABLE_ENTITY, phone.kind(), phone_title(phone))
                }
                VerifyError::InvalidField { field, .. } => {
                    extra.insert("field".into(), json!(field));
                    (
                        S::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        request_title("invalid_request"),
                    )
                }
                VerifyError::NotFound => (S::NOT_FOUND, "not_found", request_title("not_found")),
                VerifyError::Expired => (S::GONE, "verification_expired", "Verification expired"),
                VerifyError::Locked => (S::CONFLICT, "verification_locked", "Verification locked"),
                VerifyError::Aborted => {
                    (S::CONFLICT, "verification_aborted", "Verification aborted")
                }
                VerifyError::AlreadyApproved => (
                    S::CONFLICT,
                    "verification_already_approved",
                    "Verification already approved",
                ),
                VerifyError::InvalidCode { attempts_remaining } => {
                    extra.insert("attempts_remaining".into(), json!(attempts_remaining));
                    (S::UNPROCESSABLE_ENTITY, "invalid_code", "Invalid code")
                }
                VerifyError::ResendCooldown { available_at } => {
                    extra.insert(
                        "resend_available_at".into(),
                        json!(super::rfc3339(*available_at)),
                    );
                    (S::TOO_MANY_REQUESTS, "resend_cooldown", "Resend cooldown")
                }
                VerifyError::SendLimitReached => {
                    (S::CONFLICT, "send_limit_reached", "Send limit reached")
                }
                VerifyError::CustomerUnknown => (
                    S::UNPROCESSABLE_ENTITY,
                    "customer_unknown",
                    "Customer unknown",
                ),
                VerifyError::CustomerHasNoPhone => (
                    S::UNPROCESSABLE_ENTITY,
                    "customer_phone_missing",
                    "No mobile number on file",
                ),
                VerifyError::DirectoryUnavailable => (
                    S::SERVICE_UNAVAILABLE,
                    "customer_directory_unavailable",
                    "Customer directory unavailable",
                ),
                VerifyError::Refused(refusal) => {
                    extra.insert("rule".into(), json!(refusal.rule));
                    extra.insert("key_type".into(), json!(refusal.key_type));
                    if let Some(at) = refusal.retry_at {
                        extra.insert("retry_at".into(), json!(super::rfc3339(at)));
                    }
                    let (status, title) = match refusal.problem {
                        "rate_limited" => (S::TOO_MANY_REQUESTS, "Rate limited"),
                        "prefix_blocked" => (S::TOO_MANY_REQUESTS, "Number range blocked"),
                        "sim_swap_recent" => (S::FORBIDDEN, "Recent SIM swap"),
                        "sim_swap_unavailable" => {
                            (S::SERVICE_UNAVAILABLE, "SIM swap check unavailable")
                        }
                        _ => (S::FORBIDDEN, "Number blocked"),
                    };
                    (status, refusal.problem, title)
                }
                VerifyError::SmsTextTooLong => (
                    S::UNPROCESSABLE_ENTITY,
                    "sms_text_too_long",
                    "SMS text too long",
                ),
                VerifyError::SmsFailed {
                    verification_id,
                    order_id,
                } => {
                    extra.insert("verification_id".into(), json!(verification_id));
                    if let Some(order_id) = order_id {
                        extra.insert("order_id".into(), json!(order_id));
                    }
                    (
                        S::BAD_GATEWAY,
                        "sms_delivery_failed",
                        "SMS could not be sent",
                    )
                }
                VerifyError::Store(error) if error.kind() != StoreErrorKind::Other => (
                    S::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "Temporarily unavailable",
                ),
                VerifyError::Internal(error) if StoreError::is_unavailable_cause(error) => (
                    S::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "Temporarily unavailable",
                ),
                VerifyError::Store(_) | VerifyError::Internal(_) => {
                    (S::INTERNAL_SERVER_ERROR, "internal", "Internal error")
                }
            },
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Request { status, kind, .. } => (*status, *kind, request_title(kind)),
            Self::IdempotencyMismatch => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
            ),
            Self::IdempotencyInProgress => (
                S::CONFLICT,
                "idempotency_key_in_use",
                "Idempotency key in use",
            ),
            Self::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            Self::UnknownRoute => (S::NOT_FOUND, "unknown_route", "Unknown route"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::Internal(error) if StoreError::is_unavailable_cause(error) => (
                S::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "Temporarily unavailable",
            ),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        };
        (status, kind, title, extra)
    }

    /// Seconds after which a retry can succeed, for `Retry-After`.
    fn retry_after(&self) -> Option<i64> {
        match self {
            Self::Verify(VerifyError::ResendCooldown { available_at }) => Some(
                ((available_at - now_millis()) as f64 / 1000.0)
                    .ceil()
                    .max(1.0) as i64,
            ),
            Self::IdempotencyInProgress | Self::Overloaded => Some(1),
            Self::Internal(error) | Self::Verify(VerifyError::Internal(error))
                if StoreError::is_unavailable_cause(error) =>
            {
                Some(1)
            }
            Self::Verify(VerifyError::Store(error)) if error.kind() != StoreErrorKind::Other => {
                Some(1)
            }
            Self::Verify(VerifyError::DirectoryUnavailable) => Some(5),
            Self::Verify(VerifyError::Refused(refusal)) => refusal
                .retry_at
                .map(|at| ((at - now_millis()) as f64 / 1000.0).ceil().max(1.0) as i64),
            _ => None,
        }
    }
}

/// The title of a problem type raised in more than one place: one per type, as RFC 9457
/// §3.1.4 asks ("SHOULD NOT change from occurrence to occurrence"). A field the service
/// checks and a body the JSON extractor refuses are both `invalid_request`; an unknown
/// verification and an unknown asset are both `not_found`.
fn request_title(kind: &str) -> &'static str {
    match kind {
        "invalid_request" => "Invalid request",
        "invalid_query" => "Invalid query",
        "malformed_json" => "Malformed JSON",
        "unsupported_media_type" => "Unsupported media type",
        "payload_too_large" => "Payload too large",
        "request_timeout" => "Request timeout",
        "invalid_signature" => "Invalid signature",
        "wrong_scope" => "Wrong scope",
        "not_found" => "Not found",
        _ => "Bad request",
    }
}

fn phone_title(error: &PhoneError) -> &'static str {
    match error {
        PhoneError::Invalid => "Invalid phone number",
        PhoneError::CountryNotAllowed(_) => "Country not allowed",
        PhoneError::PremiumRate => "Premium-rate number",
        PhoneError::SharedCost => "Shared-cost number",
        PhoneError::Voip => "VoIP number",
        PhoneError::FixedLine => "Fixed-line number",
        PhoneError::NotMobile(_) => "Not a mobile number",
    }
}

/// A problem document (RFC 9457): its four members, then the cause's extension members.
struct Problem<'a> {
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    extra: &'a Map<String, Value>,
}

impl serde::Serialize for Problem<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(4 + self.extra.len()))?;
        map.serialize_entry("type", &format_args!("{PROBLEM_TYPE_PREFIX}{}", self.kind))?;
        map.serialize_entry("title", self.title)?;
        map.serialize_entry("status", &self.status)?;
        map.serialize_entry("detail", self.detail)?;
        for (name, value) in self.extra {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title, body) = self.parts();
        let detail = if status.is_server_error() {
            // Logged once, here, inside the request's span; the client learns nothing internal.
            // A capacity refusal is expected under overload: a warning, not an error.
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(error = %format!("{self:#}"), kind, "request failed");
            } else {
                tracing::warn!(error = %format!("{self:#}"), kind, "request refused");
            }
            match kind {
                "sms_delivery_failed" | "customer_directory_unavailable" | "overloaded" => {
                    self.to_string()
                }
                "service_unavailable" => "The service is at capacity; retry shortly.".to_owned(),
                _ => "An internal error occurred; it has been logged.".to_owned(),
            }
        } else {
            self.to_string()
        };
        let problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: &detail,
            extra: &body,
        };
        // Written straight from its parts: a refusal is the cheap answer (its cost is measured
        // against a served start's), and a `Value` tree built only to be serialized was a
        // tenth of it.
        let mut response = match serde_json::to_vec(&problem) {
            Ok(bytes) => (status, bytes).into_response(),
            Err(_) => status.into_response(),
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Self::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Request {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_query",
            detail: rejection.body_text(),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        let (status, kind) = match &rejection {
            FormRejection::InvalidFormContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        };
        Self::Request {
            status,
            kind,
            detail: rejection.body_text(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, kind) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
            }
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            other => (other.status(), "invalid_request"),
        };
        Self::Request {
            status,
            kind,
            detail: rejection.body_text(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_database_pool_is_a_retryable_503_not_a_500() {
        let exhausted = ApiError::Internal(
            anyhow::Error::from(sqlx::Error::PoolTimedOut).context("starting a transaction"),
        );
        let response = exhausted.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let lost = ApiError::Internal(
            anyhow::Error::from(sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into()))
                .context("counting a check"),
        );
        assert_eq!(
            lost.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let bug = ApiError::Internal(anyhow::anyhow!("something else")).into_response();
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// One title per problem type, wherever it is raised (RFC 9457 §3.1.4): a field the
    /// service refuses and a body the extractor refuses are both `invalid_request`.
    #[test]
    fn a_problem_type_has_one_title_wherever_it_is_raised() {
        let title = |error: ApiError| error.parts().2;
        let request = |status, kind| ApiError::Request {
            status,
            kind,
            detail: String::new(),
        };
        assert_eq!(
            title(ApiError::Verify(VerifyError::InvalidField {
                field: "phone",
                message: String::new(),
            })),
            title(ApiError::invalid("unknown field"))
        );
        assert_eq!(
            title(ApiError::Verify(VerifyError::NotFound)),
            title(request(StatusCode::NOT_FOUND, "not_found"))
        );
        for kind in [
            "malformed_json",
            "payload_too_large",
            "unsupported_media_type",
        ] {
            assert_ne!(
                title(request(StatusCode::BAD_REQUEST, kind)),
                "Bad request",
                "{kind}"
            );
        }
    }
}
