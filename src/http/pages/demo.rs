//! The dev-mode demo checkout (`/demo/{brand}`): a shop page embedding the code page.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::*;
use crate::brands::pages::DemoView;
use crate::brands::{Page, PageModel};
use crate::domain::{PhoneNumber, now_millis};
use crate::http::extract::ApiQuery;
use crate::http::{ApiError, AppState};
use crate::verifier::{StartRequest, VerifyError};

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
        locales: brand
            .locales
            .iter()
            .map(|code| crate::brands::pages::DemoLocale {
                code: code.clone(),
                url: format!("/demo/{}?locale={code}", brand.id),
                current: *code == locale,
            })
            .collect(),
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
pub(super) fn example_mobile(country: &str) -> Option<String> {
    let metadata = phonenumber::metadata::DATABASE.by_id(country)?;
    let national = metadata.descriptors().mobile()?.example()?;
    let e164 = format!("+{}{national}", metadata.country_code());
    PhoneNumber::parse(&e164, None, &[])
        .ok()
        .map(|p| p.e164().to_owned())
}
