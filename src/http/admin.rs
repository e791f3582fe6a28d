//! `/v1/admin/…`: the operators' routes, with bearer tokens from `admin.tokens` (stored as
//! SHA-256 hashes) and one scope each. With `http.admin_port` set they are served only there.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, AppState, rfc3339};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_blocks))
        .routes(routes!(lift_block))
        .routes(routes!(erase_person))
        .routes(routes!(access_person))
}

/// The configured operators: token digests with their actor and scope.
#[derive(Debug, Default)]
pub struct Operators {
    tokens: Vec<([u8; 32], String, String)>,
}

impl Operators {
    pub fn from_settings(settings: &crate::settings::AdminSettings) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for token in &settings.tokens {
            let digest = token
                .hash
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "admin.tokens: {}: hash must be sha256:<64 hex digits>",
                        token.actor
                    )
                })?;
            anyhow::ensure!(
                matches!(token.scope.as_str(), "fraud" | "privacy"),
                "admin.tokens: {}: scope must be fraud or privacy",
                token.actor
            );
            tokens.push((digest, token.actor.clone(), token.scope.clone()));
        }
        Ok(Self { tokens })
    }

    /// The actor and scope of `token`; every configured digest is compared in constant time.
    fn find(&self, token: &str) -> Option<(String, String)> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (known, actor, scope) in &self.tokens {
            if bool::from(known.ct_eq(&digest)) {
                found = Some((actor.clone(), scope.clone()));
            }
        }
        found
    }
}

/// The actor of the operator token of the request, if it is of `scope`.
fn operator(parts: &Parts, state: &AppState, scope: &str) -> Result<String, ApiError> {
    let token = super::extract::bearer_token(parts).ok_or(ApiError::Unauthorized)?;
    let (actor, found) = state
        .operators
        .find(token.trim())
        .ok_or(ApiError::Unauthorized)?;
    if found != scope {
        return Err(ApiError::Request {
            status: StatusCode::FORBIDDEN,
            kind: "wrong_scope",
            detail: format!("this operator token is not of the {scope} scope"),
        });
    }
    tracing::Span::current().record("brand", "admin");
    Ok(actor)
}

/// An operator of the fraud scope, from `Authorization: Bearer <token>`.
pub struct FraudOperator(pub String);

impl FromRequestParts<AppState> for FraudOperator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        operator(parts, state, "fraud").map(Self)
    }
}

/// An operator of the privacy scope (erasure and access requests).
pub struct PrivacyOperator(pub String);

impl FromRequestParts<AppState> for PrivacyOperator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        operator(parts, state, "privacy").map(Self)
    }
}

/// A prefix block in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrefixBlock {
    pub brand: String,
    /// Country code and national digits, e.g. `+49151`.
    pub prefix: String,
    /// Starts and approvals in the window that tripped the guard.
    pub starts: i64,
    pub approvals: i64,
    /// approvals ÷ starts when it tripped.
    pub conversion: f64,
    /// How many times in a row the prefix was blocked (the cool-down doubles each time).
    pub level: i64,
    pub cooldown_seconds: i64,
    pub blocked_at: String,
    /// When the block ends by itself.
    pub released_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PrefixBlocks {
    pub blocks: Vec<PrefixBlock>,
}

/// List the prefix blocks in force (fraud scope).
#[utoipa::path(
    get, path = "/v1/admin/blocks", tag = "admin",
    responses(
        (status = 200, description = "The blocks in force", body = PrefixBlocks),
        (status = 403, description = "`wrong_scope`"),
    ),
    security(("operator_token" = []))
)]
pub async fn list_blocks(
    State(state): State<AppState>,
    _operator: FraudOperator,
) -> Result<Response, ApiError> {
    let blocks = state
        .fraud
        .blocks()
        .await?
        .into_iter()
        .map(|block| PrefixBlock {
            prefix: block
                .bucket
                .strip_prefix("prefix:")
                .unwrap_or(&block.bucket)
                .to_owned(),
            brand: block.brand,
            starts: block.starts,
            approvals: block.approvals,
            conversion: if block.starts > 0 {
                block.approvals as f64 / block.starts as f64
            } else {
                0.0
            },
            level: block.block_level,
            cooldown_seconds: (block.blocked_until - block.blocked_at) / 1000,
            blocked_at: rfc3339(block.blocked_at),
            released_at: rfc3339(block.blocked_until),
        })
        .collect();
    Ok(axum::Json(PrefixBlocks { blocks }).into_response())
}

/// Lift a prefix block at once (fraud scope); the `prefix_block_lifted` event names the
/// operator.
#[utoipa::path(
    delete, path = "/v1/admin/blocks/{brand}/{prefix}", tag = "admin",
    params(
        ("brand" = String, Path, description = "Brand id"),
        ("prefix" = String, Path, description = "The prefix, e.g. `+49151` (URL-encoded `%2B49151`)"),
    ),
    responses(
        (status = 204, description = "Lifted"),
        (status = 403, description = "`wrong_scope`"),
        (status = 404, description = "`not_found`: no block in force on that prefix"),
    ),
    security(("operator_token" = []))
)]
pub async fn lift_block(
    State(state): State<AppState>,
    FraudOperator(actor): FraudOperator,
    Path((brand, prefix)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::Request {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        detail: "no block in force on that prefix".to_owned(),
    };
    let brand = state.brands.get(&brand).ok_or_else(not_found)?;
    if state.fraud.lift(&brand, &prefix, &actor).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found())
    }
}

/// Whom an erasure or access request is about: a phone number or a customer reference (one of
/// the two), in a brand.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonRequest {
    /// Brand id.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub brand: String,
    /// The person's number (E.164, or national for the brand's country).
    #[schema(min_length = 1, max_length = 32)]
    pub phone: Option<String>,
    /// The shop's reference of the customer.
    #[schema(min_length = 1, max_length = 128)]
    pub customer_reference: Option<String>,
}

impl PersonRequest {
    fn subject(
        &self,
        state: &AppState,
    ) -> Result<
        (
            std::sync::Arc<crate::brands::Brand>,
            crate::privacy::Subject,
        ),
        ApiError,
    > {
        let brand = state.brands.get(&self.brand).ok_or(ApiError::Request {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            detail: "no such brand".to_owned(),
        })?;
        let subject = match (&self.phone, &self.customer_reference) {
            (Some(phone), None) => {
                // Any valid number, whatever the brand's rules: a refused one may have left
                // blocked-start events.
                let (phone, _) = crate::domain::PhoneNumber::parse_valid(
                    phone,
                    brand.default_country.as_deref(),
                )
                .map_err(|error| ApiError::Verify(error.into()))?;
                crate::privacy::Subject::Phone(phone)
            }
            (None, Some(reference)) if !reference.trim().is_empty() && reference.len() <= 128 => {
                crate::privacy::Subject::Customer(reference.trim().to_owned())
            }
            _ => {
                return Err(ApiError::invalid(
                    "give exactly one of phone and customer_reference",
                ));
            }
        };
        Ok((brand, subject))
    }
}

/// Erase every trace of a person in a brand (privacy scope): the database (pending
/// verifications aborted; numbers, pseudonyms, payloads and answers blanked, which forgets
/// the known-good mark; keys, unshipped events and counters deleted) and the event store
/// (ClickHouse or the JSON-lines files). An audit event records that an erasure happened and
/// who asked, never whom. Erasing again finds nothing.
#[utoipa::path(
    post, path = "/v1/admin/privacy/erasure", tag = "admin",
    request_body = PersonRequest,
    responses(
        (status = 200, description = "What was removed, by store"),
        (status = 403, description = "`wrong_scope`"),
        (status = 404, description = "`not_found`: no such brand"),
        (status = 422, description = "`invalid_phone`, `invalid_request`"),
    ),
    security(("operator_token" = []))
)]
pub async fn erase_person(
    State(state): State<AppState>,
    PrivacyOperator(actor): PrivacyOperator,
    super::extract::ApiJson(request): super::extract::ApiJson<PersonRequest>,
) -> Result<Response, ApiError> {
    let (brand, subject) = request.subject(&state)?;
    let report = state.privacy.erase(&brand, &subject, &actor).await?;
    Ok(axum::Json(report).into_response())
}

/// Everything held about a person in a brand (privacy scope), to answer an access request:
/// verifications, held orders with their payloads, event counts, known-good mark, counters.
#[utoipa::path(
    post, path = "/v1/admin/privacy/access", tag = "admin",
    request_body = PersonRequest,
    responses(
        (status = 200, description = "Everything held about the person"),
        (status = 403, description = "`wrong_scope`"),
        (status = 404, description = "`not_found`: no such brand"),
        (status = 422, description = "`invalid_phone`, `invalid_request`"),
    ),
    security(("operator_token" = []))
)]
pub async fn access_person(
    State(state): State<AppState>,
    _operator: PrivacyOperator,
    super::extract::ApiJson(request): super::extract::ApiJson<PersonRequest>,
) -> Result<Response, ApiError> {
    let (brand, subject) = request.subject(&state)?;
    let report = state.privacy.access(&brand, &subject).await?;
    Ok(axum::Json(report).into_response())
}
