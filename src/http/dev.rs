//! Dev-mode helpers: the SMS inbox of the `log` provider. Absent (404) in production.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::sms::InboxMessage;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_inbox))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxFilter {
    /// Only messages to this E.164 number.
    to: Option<String>,
    /// Only messages of this verification.
    verification_id: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Inbox {
    messages: Vec<InboxMessage>,
}

/// Dev mode only: SMS the `log` provider took, newest first.
#[utoipa::path(get, path = "/dev/inbox", tag = "development", params(InboxFilter), responses(
    (status = 200, description = "Messages, newest first", body = Inbox),
    (status = 404, description = "Not in dev mode (`unknown_route`)"),
))]
pub async fn list_inbox(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<InboxFilter>,
) -> Result<Response, ApiError> {
    let inbox = state.inbox.as_ref().ok_or(ApiError::UnknownRoute)?;
    let messages = inbox.list(filter.to.as_deref(), filter.verification_id.as_deref());
    Ok(axum::Json(Inbox { messages }).into_response())
}
