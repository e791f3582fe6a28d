//! The code page in the shop's iframe (`/w/{id}`) and its three form posts.

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::*;
use crate::brands::Brand;
use crate::domain::VerificationRecord;
use crate::domain::{Status, VerificationId, now_millis};
use crate::http::extract::{ApiForm, ApiQuery};
use crate::http::{ApiError, AppState};
use crate::verifier::VerifyError;

/// The code page's query: the signed link, and the shop's choices.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The signed link token from `widget_url`.
    t: Option<String>,
    /// A locale the brand offers; else `Accept-Language`, else the brand default.
    locale: Option<String>,
    /// The shop page's origin (one of the brand's `frame_origins`), for postMessage.
    parent: Option<String>,
}

/// A form post from the code page.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PageForm {
    t: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    parent: Option<String>,
}

/// Resolves the link to its verification, or answers the themed invalid-link page.
pub(super) async fn resolve(
    state: &AppState,
    id: &str,
    token: Option<&str>,
    locale: Option<&str>,
    parent: Option<&str>,
    headers: &HeaderMap,
) -> Result<PageContext, Response> {
    let accept_language = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    let invalid = |brand: Option<Arc<Brand>>| {
        let brand = brand.or_else(|| state.brands.get_or_fallback(crate::brands::BASE_DIR));
        match brand {
            Some(brand) => {
                let locale = brand.pick_locale(locale, accept_language).to_owned();
                render(state, &brand, &locale, None, Outcome::InvalidLink)
            }
            None => ApiError::Verify(VerifyError::NotFound).into_response(),
        }
    };
    let Ok(id) = id.parse::<VerificationId>() else {
        return Err(invalid(None));
    };
    let record = match state.verifier.find(&id).await {
        Ok(record) => record,
        Err(VerifyError::NotFound) => return Err(invalid(None)),
        Err(error) => return Err(ApiError::Verify(error).into_response()),
    };
    // Only the brand's look is used before the link is verified: nothing of the buyer's.
    let brand = state.brands.get_or_fallback(&record.brand);
    let valid = token.is_some_and(|t| state.widget.verify(&id, t, now_millis()));
    let Some(brand) = brand.filter(|_| valid) else {
        tracing::info!(verification_id = %id, "code page link missing, forged or expired");
        return Err(invalid(state.brands.get(&record.brand)));
    };
    let locale = brand
        .pick_locale(locale.or(record.locale.as_deref()), accept_language)
        .to_owned();
    let parent = parent_origin(state, &brand, parent);
    Ok(PageContext {
        brand,
        record,
        token: token.unwrap_or_default().to_owned(),
        locale,
        parent,
    })
}

pub(super) fn final_outcome(record: &VerificationRecord) -> Outcome {
    match record.status {
        Status::Pending => Outcome::Pending,
        status => Outcome::Final(status),
    }
}

/// What a refusal of the verifier shows on the page.
pub(super) fn refusal_outcome(error: &VerifyError) -> Outcome {
    match error {
        VerifyError::InvalidCode { attempts_remaining } => Outcome::WrongCode(*attempts_remaining),
        VerifyError::Locked => Outcome::Final(Status::Locked),
        VerifyError::Expired => Outcome::Final(Status::Expired),
        VerifyError::Aborted => Outcome::Final(Status::Aborted),
        VerifyError::AlreadyApproved => Outcome::Final(Status::Approved),
        VerifyError::ResendCooldown { .. } => Outcome::Cooldown,
        VerifyError::SendLimitReached => Outcome::SendLimit,
        VerifyError::SmsFailed { .. } | VerifyError::SmsTextTooLong => Outcome::SmsFailed,
        // A resend the fraud rules refused: the buyer waits as for a cooldown.
        VerifyError::Refused(_) => Outcome::Cooldown,
        VerifyError::InvalidField { .. } => Outcome::WrongCode(0),
        VerifyError::NotFound => Outcome::InvalidLink,
        VerifyError::Phone(_)
        | VerifyError::Internal(_)
        | VerifyError::Store(_)
        | VerifyError::CustomerUnknown
        | VerifyError::CustomerHasNoPhone
        | VerifyError::DirectoryUnavailable => {
            tracing::error!(error = %error, "code page action failed");
            Outcome::Problem
        }
    }
}

/// The code page: the code input, or the result once the verification has ended.
#[utoipa::path(get, path = "/w/{id}", tag = "code page", params(("id" = String, Path, description = "Verification id"), PageQuery),
    responses((status = 200, description = "HTML: code entry or result", content_type = "text/html"),
              (status = 403, description = "HTML: the link is missing, forged or expired", content_type = "text/html")))]
pub async fn show_code_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
    headers: HeaderMap,
) -> Response {
    match resolve(
        &state,
        &id,
        query.t.as_deref(),
        query.locale.as_deref(),
        query.parent.as_deref(),
        &headers,
    )
    .await
    {
        Ok(context) => {
            let outcome = final_outcome(&context.record);
            render(
                &state,
                &context.brand,
                &context.locale,
                Some(&context),
                outcome,
            )
        }
        Err(page) => page,
    }
}

/// The three form posts of the code page.
#[derive(Clone, Copy)]
pub(super) enum Action {
    Check,
    /// From the buyer at this address.
    Resend(std::net::IpAddr),
    Cancel,
}

/// Resolves the form's link, runs `action`, and renders what became of it.
pub(super) async fn page_action(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    form: &PageForm,
    action: Action,
) -> Response {
    let resolved = resolve(
        state,
        id,
        Some(&form.t),
        form.locale.as_deref(),
        form.parent.as_deref(),
        headers,
    )
    .await;
    let mut context = match resolved {
        Ok(context) => context,
        Err(page) => return page,
    };
    let (brand, id) = (&context.brand, &context.record.id);
    let result = match action {
        Action::Check => {
            state
                .verifier
                .check(brand, id, form.code.as_deref().unwrap_or_default())
                .await
        }
        Action::Resend(client) => {
            let client = client.to_string();
            state.verifier.resend(brand, id, Some(&client)).await
        }
        Action::Cancel => state.verifier.cancel(brand, id).await,
    };
    let outcome = match result {
        Ok(record) => {
            context.record = record;
            match action {
                Action::Resend(_) => Outcome::Resent,
                Action::Check | Action::Cancel => final_outcome(&context.record),
            }
        }
        Err(error) => {
            // Show the verification as it stands now (attempts left, cooldown).
            if let Ok(record) = state.verifier.find(&context.record.id).await {
                context.record = record;
            }
            refusal_outcome(&error)
        }
    };
    render(
        state,
        &context.brand,
        &context.locale,
        Some(&context),
        outcome,
    )
}

/// The code form: checks the code and shows the outcome.
#[utoipa::path(post, path = "/w/{id}/check", tag = "code page", params(("id" = String, Path, description = "Verification id")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML: the outcome", content_type = "text/html"),
              (status = 403, description = "HTML: the link is missing, forged or expired", content_type = "text/html")))]
pub async fn submit_code(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiForm(form): ApiForm<PageForm>,
) -> Response {
    page_action(&state, &id, &headers, &form, Action::Check).await
}

/// The resend form: sends a new code.
#[utoipa::path(post, path = "/w/{id}/resend", tag = "code page", params(("id" = String, Path, description = "Verification id")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML: the code page again", content_type = "text/html"),
              (status = 403, description = "HTML: the link is missing, forged or expired", content_type = "text/html")))]
pub async fn resend_from_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiForm(form): ApiForm<PageForm>,
) -> Response {
    // The buyer's own browser asks: its address counts toward the IP limits.
    let client = state.trusted_proxies.client(peer.ip(), &headers);
    page_action(&state, &id, &headers, &form, Action::Resend(client)).await
}

/// The cancel form: the buyer aborts the purchase.
#[utoipa::path(post, path = "/w/{id}/cancel", tag = "code page", params(("id" = String, Path, description = "Verification id")),
    request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML: aborted", content_type = "text/html"),
              (status = 403, description = "HTML: the link is missing, forged or expired", content_type = "text/html")))]
pub async fn cancel_from_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiForm(form): ApiForm<PageForm>,
) -> Response {
    page_action(&state, &id, &headers, &form, Action::Cancel).await
}
