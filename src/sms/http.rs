//! The generic HTTP provider: a JSON POST of a templated body to a gateway.

use anyhow::Context;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::{SendError, SmsMessage, SmsProvider};
use crate::settings::ProviderSettings;

const DEFAULT_TEMPLATE: &str =
    r#"{"to":"{to}","from":"{from}","text":"{text}","reference":"{message_id}"}"#;

pub struct HttpProvider {
    name: String,
    url: String,
    client: reqwest::Client,
    auth: Option<(String, SecretString)>,
    template: String,
}

impl HttpProvider {
    pub fn from_settings(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let ProviderSettings::Http {
            name,
            url,
            timeout_ms,
            auth_header,
            auth_value,
            body_template,
        } = settings
        else {
            anyhow::bail!("not an http provider");
        };
        let template = body_template
            .clone()
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        // Render once with sample values so a broken template fails at start, not at send.
        serde_json::from_str::<serde_json::Value>(&render(
            &template,
            &[
                ("to", "+1"),
                ("from", "x"),
                ("text", "x"),
                ("message_id", "x"),
            ],
        ))
        .with_context(|| format!("sms provider {name}: body_template does not render to JSON"))?;
        let auth = match (auth_header, auth_value) {
            (Some(header), Some(value)) => Some((header.clone(), value.clone())),
            (None, None) => None,
            _ => anyhow::bail!(
                "sms provider {name}: set both auth_header and auth_value, or neither"
            ),
        };
        let client = super::provider_client(*timeout_ms)?;
        Ok(Self {
            name: name.clone(),
            url: url.clone(),
            client,
            auth,
            template,
        })
    }
}

/// Replaces each `{name}` with the JSON-escaped value (without quotes: the template has them).
fn render(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |body, (name, value)| {
            let escaped = serde_json::to_string(value).unwrap_or_default();
            body.replace(
                &format!("{{{name}}}"),
                &escaped[1..escaped.len().saturating_sub(1)],
            )
        })
}

#[async_trait]
impl SmsProvider for HttpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError> {
        let body = render(
            &self.template,
            &[
                ("to", message.to.e164()),
                ("from", &message.sender),
                ("text", &message.text),
                ("message_id", &message.message_id.to_string()),
            ],
        );
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some((header, value)) = &self.auth {
            request = request.header(header.as_str(), value.expose_secret());
        }
        // Errors are described without the URL's query or the body: both may carry secrets.
        let response = request.send().await.map_err(SendError::transport)?;
        let status = response.status();
        if status.is_success() {
            let reference = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str().map(str::to_owned)));
            Ok(reference)
        } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(SendError::Unavailable(format!("gateway answered {status}")))
        } else {
            Err(SendError::Refused(format!("gateway refused with {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_json_escaped() {
        let body = render(
            DEFAULT_TEMPLATE,
            &[
                ("to", "+4915"),
                ("from", "A\"B"),
                ("text", "l1\nl2"),
                ("message_id", "m"),
            ],
        );
        let value: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(value["from"], "A\"B");
        assert_eq!(value["text"], "l1\nl2");
    }
}
