//! The buyer's pages: the code page in the shop's iframe (`/w/{id}`), its form posts, the
//! brands' assets, and the dev-mode demo checkout (`/demo/{brand}`).
//!
//! No cookies at all: the signed link (`t`) is the credential, carried in the URL and in each
//! form. Every page forbids framing except by the brand's allowed origins, loads nothing from
//! third parties, sends no referrer and is never cached.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use crate::brands::pages::{BrandView, FormView, VerificationView};
use crate::brands::{Brand, Page, PageModel};
use crate::domain::VerificationRecord;
use crate::domain::{Status, now_millis};

mod assets;
mod code_page;
mod demo;

use assets::*;
use code_page::*;
use demo::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_code_page))
        .routes(routes!(submit_code))
        .routes(routes!(resend_from_page))
        .routes(routes!(cancel_from_page))
        .routes(routes!(brand_asset))
        .routes(routes!(demo_checkout))
}

/// What a page is about, resolved from the link.
pub(super) struct PageContext {
    brand: Arc<Brand>,
    record: VerificationRecord,
    token: String,
    locale: String,
    parent: String,
}

/// The outcome a page shows.
#[derive(Clone, Copy)]
pub(super) enum Outcome {
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
pub(super) fn page_headers(response: &mut Response, frame_ancestors: &str, frames: bool) {
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
pub(super) fn frame_ancestors(state: &AppState, brand: &Brand) -> String {
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
pub(super) fn parent_origin(state: &AppState, brand: &Brand, requested: Option<&str>) -> String {
    let requested = requested.unwrap_or_default();
    if brand.frame_origins.iter().any(|o| o == requested) {
        return requested.to_owned();
    }
    if state.inbox.is_some() && !requested.is_empty() && requested == state.public_origin() {
        return requested.to_owned();
    }
    brand.frame_origins.first().cloned().unwrap_or_default()
}

pub(super) fn brand_view(brand: &Brand) -> BrandView {
    let asset = |name: &str| format!("/assets/{}/{name}?v={}", brand.id, brand.version);
    BrandView {
        id: brand.id.to_string(),
        name: brand.display_name.clone(),
        // Empty: the header shows the brand's name as text.
        logo_url: if brand.theme.logo.is_empty() {
            String::new()
        } else {
            asset(&brand.theme.logo)
        },
        stylesheet_url: asset("style.css"),
        theme_url: asset("theme.css"),
    }
}

pub(super) fn verification_view(record: &VerificationRecord, locale: &str) -> VerificationView {
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
pub(super) fn render(
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

pub(super) fn html(
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
