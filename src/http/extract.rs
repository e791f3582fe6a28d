//! Request extractors whose rejections are problem documents.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::brands::Brand;

/// `axum::Json`, with malformed JSON, unknown fields, wrong content types and oversized bodies
/// answered as problems.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// `axum::Form` for the code page's posts, with a missing field, a wrong content type or an
/// oversized body answered as problems rather than axum's plain-text rejections.
pub struct ApiForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiForm<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Form(value) = axum::Form::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Query`, with malformed or unknown parameters answered as problems.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub(super) fn bearer_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// The brand whose API key (`Authorization: Bearer <key>`) came with the request.
pub struct AuthenticatedBrand(pub Arc<Brand>);

impl FromRequestParts<AppState> for AuthenticatedBrand {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer_token(parts).ok_or(ApiError::Unauthorized)?;
        let (brand, key_label) = state
            .brands
            .authenticate(key.trim())
            .ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("brand", brand.id.as_str());
        tracing::debug!(key = %key_label, "authenticated");
        Ok(Self(brand))
    }
}
