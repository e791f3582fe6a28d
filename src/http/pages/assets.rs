//! The brands' assets (logos, fonts), served from the brand folders.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::{ApiError, AppState};

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
