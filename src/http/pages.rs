//! The buyer's pages: the code page in the shop's iframe (`/w/{id}`), its form posts, the
//! brands' assets, and the dev-mode demo checkout (`/demo/{brand}`).
//!
//! No cookies at all: the signed link (`t`) is the credential, carried in the URL and in each
//! form. Every page forbids framing except by the brand's allowed origins, loads nothing from
//! third parties, sends no referrer and is never cached.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::{ApiForm, ApiQuery};
use super::{ApiError, AppState};
use crate::brands::pages::{BrandView, DemoView, FormView, VerificationView};
use crate::brands::{Brand, Page, PageModel};
use crate::domain::VerificationRecord;
use crate::domain::{PhoneNumber, Status, VerificationId, now_millis};
use crate::verifier::{StartRequest, VerifyError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_code_page))
        .routes(routes!(submit_code))
        .routes(routes!(resend_from_page))
        .routes(routes!(cancel_from_page))
        .routes(routes!(brand_asset))
        .routes(routes!(demo_checkout))
}

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

/// What a page is about, resolved from the link.
struct PageContext {
    brand: Arc<Brand>,
    record: VerificationRecord,
    token: String,
    locale: String,
    parent: String,
}

/// The outcome a page shows.
#[derive(Clone, Copy)]
enum Outcome {
    Pending,
    WrongCode(u32),
    Resent,
    Cooldown,
    SendLimit,
    SmsFailed,
    Problem,
    Final(Status),
    InvalidLink,
}

impl AppState {
    /// The code page link of a verification, valid until shortly after it expires.
    pub fn widget_url(&self, record: &VerificationRecord) -> String {
        let token = self
            .widget
            .token(&record.id, record.expires_at + crate::widget::LINK_GRACE_MS);
        format!("{}/w/{}?t={token}", self.public_url, record.id)
    }

    fn public_origin(&self) -> String {
        let url = url::Url::parse(&self.public_url).ok();
        url.map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }
}

/// The response headers of every page: framing, scripts and styles from here only.
fn page_headers(response: &mut Response, frame_ancestors: &str, frames: bool) {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-src {}; frame-ancestors {frame_ancestors}",
        if frames { "'self'" } else { "'none'" }
    );
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_SECURITY_POLICY, &csp);
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::CACHE_CONTROL, "no-store");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_TYPE, "text/html; charset=utf-8");
}

/// The origins that may frame the brand's code page (`'self'` too in dev mode, for the demo).
fn frame_ancestors(state: &AppState, brand: &Brand) -> String {
    let mut origins: Vec<&str> = brand.frame_origins.iter().map(String::as_str).collect();
    if state.inbox.is_some() {
        origins.push("'self'");
    }
    if origins.is_empty() {
        "'none'".to_owned()
    } else {
        origins.join(" ")
    }
}

/// The parent origin to address: the shop's choice if the brand allows it, else its first.
fn parent_origin(state: &AppState, brand: &Brand, requested: Option<&str>) -> String {
    let requested = requested.unwrap_or_default();
    if brand.frame_origins.iter().any(|o| o == requested) {
        return requested.to_owned();
    }
    if state.inbox.is_some() && !requested.is_empty() && requested == state.public_origin() {
        return requested.to_owned();
    }
    brand.frame_origins.first().cloned().unwrap_or_default()
}

fn brand_view(brand: &Brand) -> BrandView {
    let asset = |name: &str| format!("/assets/{}/{name}?v={}", brand.id, brand.version);
    BrandView {
        id: brand.id.to_string(),
        name: brand.display_name.clone(),
        logo_url: asset(&brand.theme.logo),
        stylesheet_url: asset("style.css"),
        theme_url: asset("theme.css"),
    }
}

fn verification_view(record: &VerificationRecord, locale: &str) -> VerificationView {
    let wait = record
        .resend_available_at()
        .map_or(0, |at| ((at - now_millis()) as f64 / 1000.0).ceil() as i64)
        .max(0);
    let sends_remaining = record.max_sends.saturating_sub(record.sends);
    VerificationView {
        id: record.id.to_string(),
        masked_phone: record.phone.masked(),
        order_reference: record.order_reference.clone(),
        amount: record.amount.localized(locale),
        code_length: record.code_length,
        attempts_remaining: record.max_checks.saturating_sub(record.checks_used),
        sends_remaining,
        resend_wait_seconds: wait,
        can_resend: wait == 0 && sends_remaining > 0,
    }
}

/// Renders the page for `outcome`.
fn render(
    state: &AppState,
    brand: &Brand,
    locale: &str,
    context: Option<&PageContext>,
    outcome: Outcome,
) -> Response {
    let text = |key: &str| brand.text(locale, key).to_owned();
    let (page, name, notify, heading, message, is_error) = match outcome {
        Outcome::Pending => (
            Page::Code,
            "pending",
            "",
            String::new(),
            String::new(),
            false,
        ),
        Outcome::WrongCode(left) => (
            Page::Code,
            "wrong_code",
            "",
            String::new(),
            format!("{} {left}", text("outcome.wrong_code")),
            true,
        ),
        Outcome::Resent => (
            Page::Code,
            "resent",
            "",
            String::new(),
            text("outcome.resent"),
            false,
        ),
        Outcome::Cooldown => (
            Page::Code,
            "cooldown",
            "",
            String::new(),
            text("outcome.cooldown"),
            true,
        ),
        Outcome::SendLimit => (
            Page::Code,
            "send_limit",
            "",
            String::new(),
            text("outcome.send_limit"),
            true,
        ),
        Outcome::SmsFailed => (
            Page::Code,
            "sms_failed",
            "",
            String::new(),
            text("outcome.sms_failed"),
            true,
        ),
        Outcome::Problem => (
            Page::Code,
            "error",
            "",
            String::new(),
            text("outcome.error"),
            true,
        ),
        Outcome::Final(status) => {
            let (name, notify) = match status {
                Status::Approved => ("approved", "approved"),
                Status::Aborted => ("aborted", "aborted"),
                Status::Locked => ("locked", "failed"),
                Status::Expired | Status::Pending => ("expired", "failed"),
            };
            let heading = text(&format!("outcome.{name}_title"));
            (
                Page::Result,
                name,
                notify,
                heading,
                text(&format!("outcome.{name}_text")),
                false,
            )
        }
        Outcome::InvalidLink => {
            let heading = text("outcome.invalid_link_title");
            (
                Page::Error,
                "invalid_link",
                "",
                heading,
                text("outcome.invalid_link_text"),
                true,
            )
        }
    };
    let id = context.map(|c| c.record.id.to_string()).unwrap_or_default();
    let model = PageModel {
        brand: brand_view(brand),
        t: brand.catalog(locale).clone(),
        lang: locale.to_owned(),
        page,
        verification: context.map(|c| verification_view(&c.record, locale)),
        outcome: name.to_owned(),
        notify: notify.to_owned(),
        heading,
        message,
        message_is_error: is_error,
        form: FormView {
            check_url: format!("/w/{id}/check"),
            resend_url: format!("/w/{id}/resend"),
            cancel_url: format!("/w/{id}/cancel"),
            token: context.map(|c| c.token.clone()).unwrap_or_default(),
            locale: locale.to_owned(),
            parent: context.map(|c| c.parent.clone()).unwrap_or_default(),
        },
        parent_origin: context.map(|c| c.parent.clone()).unwrap_or_default(),
        script_url: format!("/assets/{}/widget.js?v={}", brand.id, brand.version),
        demo: None,
    };
    let status = match outcome {
        Outcome::InvalidLink => StatusCode::FORBIDDEN,
        _ => StatusCode::OK,
    };
    html(state, brand, page, &model, status, false)
}

fn html(
    state: &AppState,
    brand: &Brand,
    page: Page,
    model: &PageModel,
    status: StatusCode,
    frames: bool,
) -> Response {
    let mut response = match brand.render(page, model) {
        Ok(body) => (status, body).into_response(),
        Err(error) => {
            // Templates are checked when a brand loads; this is a bug worth a loud log.
            tracing::error!(brand = %brand.id, page = page.template(), error = %error, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be shown.",
            )
                .into_response()
        }
    };
    let ancestors = if page == Page::Demo {
        "'none'".to_owned()
    } else {
        frame_ancestors(state, brand)
    };
    page_headers(&mut response, &ancestors, frames);
    response
}

/// Resolves the link to its verification, or answers the themed invalid-link page.
async fn resolve(
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

fn final_outcome(record: &VerificationRecord) -> Outcome {
    match record.status {
        Status::Pending => Outcome::Pending,
        status => Outcome::Final(status),
    }
}

/// What a refusal of the verifier shows on the page.
fn refusal_outcome(error: &VerifyError) -> Outcome {
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
enum Action {
    Check,
    Resend,
    Cancel,
}

/// Resolves the form's link, runs `action`, and renders what became of it.
async fn page_action(
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
        Action::Resend => state.verifier.resend(brand, id).await,
        Action::Cancel => state.verifier.cancel(brand, id).await,
    };
    let outcome = match result {
        Ok(record) => {
            context.record = record;
            match action {
                Action::Resend => Outcome::Resent,
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
    headers: HeaderMap,
    ApiForm(form): ApiForm<PageForm>,
) -> Response {
    page_action(&state, &id, &headers, &form, Action::Resend).await
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

/// A brand's asset (its own, else `_base`'s), or its theme as `theme.css`.
#[utoipa::path(get, path = "/assets/{brand}/{file}", tag = "code page",
    params(("brand" = String, Path, description = "Brand id (or `_base`)"), ("file" = String, Path, description = "File name, or theme.css")),
    responses((status = 200, description = "The file"), (status = 404, description = "`not_found`")))]
pub async fn brand_asset(
    State(state): State<AppState>,
    Path((brand, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::Request {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        detail: "no such asset".to_owned(),
    };
    let brand = state
        .brands
        .get_or_fallback(&brand)
        .filter(|b| b.id.as_str() == brand)
        .ok_or_else(not_found)?;
    let (bytes, content_type): (axum::body::Bytes, &'static str) = if file == "theme.css" {
        (brand.theme_css().into(), "text/css; charset=utf-8")
    } else {
        let asset = brand.asset(&file).ok_or_else(not_found)?;
        (
            axum::body::Bytes::copy_from_slice(&asset.bytes),
            asset.content_type,
        )
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // URLs carry the brand's version, so a changed file gets a new URL.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The demo query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DemoQuery {
    /// A locale the brand offers.
    locale: Option<String>,
}

/// Dev mode only: a demo checkout of the brand embedding a fresh code page, with the SMS the
/// buyer got.
#[utoipa::path(get, path = "/demo/{brand}", tag = "development", params(("brand" = String, Path, description = "Brand id"), DemoQuery),
    responses((status = 200, description = "HTML demo checkout", content_type = "text/html"),
              (status = 404, description = "Not in dev mode, or no such brand")))]
pub async fn demo_checkout(
    State(state): State<AppState>,
    Path(brand): Path<String>,
    ApiQuery(query): ApiQuery<DemoQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let inbox = state.inbox.clone().ok_or(ApiError::UnknownRoute)?;
    let brand = state
        .brands
        .get(&brand)
        .ok_or(ApiError::Verify(VerifyError::NotFound))?;
    let accept_language = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    let locale = brand
        .pick_locale(query.locale.as_deref(), accept_language)
        .to_owned();
    let country = brand
        .default_country
        .clone()
        .unwrap_or_else(|| "DE".to_owned());
    let phone = example_mobile(&country)
        .ok_or_else(|| ApiError::invalid(format!("no example number for {country}")))?;
    let currency = match country.as_str() {
        "SE" => "SEK",
        "NO" => "NOK",
        "DK" => "DKK",
        "GB" => "GBP",
        _ => "EUR",
    };
    let request = StartRequest {
        id: crate::domain::VerificationId::new(),
        phone: Some(phone),
        order_reference: format!("DEMO-{}", now_millis() % 100_000),
        amount: "49.90".to_owned(),
        currency: currency.to_owned(),
        locale: Some(locale.clone()),
        customer_reference: None,
        client_ip: None,
        user_agent: None,
        order: None,
    };
    let record = state.verifier.start(&brand, request).await?;
    let message = inbox
        .list(None, Some(&record.id.to_string()))
        .into_iter()
        .next();
    let origin = state.public_origin();
    let widget_url = format!(
        "{}&locale={locale}&parent={}",
        state.widget_url(&record),
        url::form_urlencoded::byte_serialize(origin.as_bytes()).collect::<String>()
    );
    let mut model = PageModel::sample(Page::Demo, brand.catalog(&locale).clone());
    model.brand = brand_view(&brand);
    model.lang = locale.clone();
    model.verification = None;
    model.script_url = format!("/assets/{}/widget.js?v={}", brand.id, brand.version);
    model.demo = Some(DemoView {
        widget_url,
        sms_text: message.as_ref().map(|m| m.text.clone()).unwrap_or_default(),
        sms_to: message.map(|m| m.to).unwrap_or_default(),
        inbox_url: format!("/dev/inbox?verification_id={}", record.id),
        amount: record.amount.localized(&locale),
        order_reference: record.order_reference.clone(),
    });
    Ok(html(
        &state,
        &brand,
        Page::Demo,
        &model,
        StatusCode::OK,
        true,
    ))
}

/// libphonenumber's example mobile number of `country`, in E.164.
fn example_mobile(country: &str) -> Option<String> {
    let metadata = phonenumber::metadata::DATABASE.by_id(country)?;
    let national = metadata.descriptors().mobile()?.example()?;
    let e164 = format!("+{}{national}", metadata.country_code());
    PhoneNumber::parse(&e164, None, &[])
        .ok()
        .map(|p| p.e164().to_owned())
}
