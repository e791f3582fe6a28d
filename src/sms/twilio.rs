//! Twilio's Messages API: `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form-encoded `To`, `From` (or `MessagingServiceSid`), `Body` and `StatusCallback`, with
//! Basic auth (the Account SID and Auth Token, or an API key SID and secret). A 201 answers
//! with the message's `sid`; 429 and 5xx fail over; another 4xx carries Twilio's error
//! `code` (21211 an invalid number, 21610 a number that opted out, …), kept for logs and
//! events.
//!
//! Status callbacks (`POST /v1/callbacks/sms/twilio`) are signed: `X-Twilio-Signature` is the
//! base64 HMAC-SHA1, under the Auth Token, of the full URL Twilio called followed by every
//! POST parameter's name and value, sorted by name. See
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>.

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};

use super::{SendError, SmsMessage, SmsProvider};
use crate::settings::ProviderSettings;

pub struct TwilioProvider {
    name: String,
    messages_url: String,
    /// Basic auth: the Account SID and Auth Token, or an API key's SID and secret.
    user: String,
    password: SecretString,
    sender: Sender,
    status_callback: Option<String>,
    client: reqwest::Client,
}

/// Who the message comes from.
enum Sender {
    /// A number or an alphanumeric sender id (`From`); the brand's sender when not configured.
    From(Option<String>),
    /// A Messaging Service (`MessagingServiceSid`), which picks the number itself.
    Service(String),
}

/// Twilio error codes worth naming in logs and events.
/// <https://www.twilio.com/docs/api/errors>
fn describe(code: i64) -> &'static str {
    match code {
        21211 => "invalid 'To' number",
        21408 => "region not enabled for this account",
        21610 => "the number opted out (STOP)",
        21612 => "no route to this number from the sender",
        21614 => "'To' is not a mobile number",
        21617 => "body too long",
        30003 => "unreachable handset",
        30004 => "message blocked",
        30005 => "unknown destination handset",
        30006 => "landline or unreachable carrier",
        30007 => "filtered by the carrier",
        30008 => "unknown error",
        _ => "",
    }
}

/// `code (description)` of a Twilio error code, for logs and events.
pub fn error_text(code: i64) -> String {
    match describe(code) {
        "" => format!("twilio error {code}"),
        text => format!("twilio error {code} ({text})"),
    }
}

impl TwilioProvider {
    /// `public_url` is where Twilio posts status callbacks (`{public_url}/v1/callbacks/sms/twilio`).
    pub fn from_settings(settings: &ProviderSettings, public_url: &str) -> anyhow::Result<Self> {
        let ProviderSettings::Twilio {
            name,
            account_sid,
            auth_token,
            api_key_sid,
            api_key_secret,
            from,
            messaging_service_sid,
            base_url,
            timeout_ms,
            status_callbacks,
        } = settings
        else {
            anyhow::bail!("not a twilio provider");
        };
        anyhow::ensure!(
            account_sid.starts_with("AC") && account_sid.len() == 34,
            "sms provider {name}: account_sid must be a Twilio Account SID (AC + 32 hex digits)"
        );
        let (user, password) = match (api_key_sid, api_key_secret) {
            (Some(sid), Some(secret)) => (sid.clone(), secret.clone()),
            (None, None) => (account_sid.clone(), auth_token.clone()),
            _ => anyhow::bail!(
                "sms provider {name}: set both api_key_sid and api_key_secret, or neither"
            ),
        };
        let sender = match (from, messaging_service_sid) {
            (_, Some(service)) if from.is_some() => anyhow::bail!(
                "sms provider {name}: set from or messaging_service_sid, not both ({service})"
            ),
            (_, Some(service)) => Sender::Service(service.clone()),
            (from, None) => Sender::From(from.clone()),
        };
        let client = super::provider_client(*timeout_ms)?;
        Ok(Self {
            name: name.clone(),
            messages_url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                base_url.trim_end_matches('/')
            ),
            user,
            password,
            sender,
            status_callback: status_callbacks.then(|| callback_url(public_url)),
            client,
        })
    }
}

#[async_trait]
impl SmsProvider for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError> {
        let mut form: Vec<(&str, &str)> = vec![("To", message.to.e164()), ("Body", &message.text)];
        match &self.sender {
            Sender::From(Some(from)) => form.push(("From", from)),
            Sender::From(None) => form.push(("From", &message.sender)),
            Sender::Service(service) => form.push(("MessagingServiceSid", service)),
        }
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback));
        }
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(SendError::transport)?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body["sid"].as_str().map(str::to_owned));
        }
        let reason = match body["code"].as_i64() {
            Some(code) => format!("{} ({status})", error_text(code)),
            None => format!("twilio answered {status}"),
        };
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(SendError::Unavailable(reason))
        } else {
            Err(SendError::Refused(reason))
        }
    }
}

/// Where Twilio posts status callbacks: the URL it signs.
pub fn callback_url(public_url: &str) -> String {
    format!(
        "{}/v1/callbacks/sms/twilio",
        public_url.trim_end_matches('/')
    )
}

/// Checks `X-Twilio-Signature` (`signature`) of a callback to `url` with the form `params`,
/// under `auth_token`, in constant time.
pub fn valid_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    // As Twilio's own validator: each distinct name, sorted, followed by its distinct values,
    // sorted (`sorted(set(values))` in twilio-python's `RequestValidator`).
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    // `verify_slice` compares in constant time and refuses any other length.
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_url_and_every_parameter() {
        // Twilio's documented example (webhooks-security): this URL and these parameters
        // under the Auth Token 12345 sign to 0/KCTR6DLpKmkAf8muzZqo1nDgQ=.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let signature = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(valid_signature("12345", url, &params, signature));
        assert!(
            !valid_signature("12346", url, &params, signature),
            "another token"
        );
        let mut tampered = params.clone();
        tampered[2].1 = "1235".to_owned();
        assert!(
            !valid_signature("12345", url, &tampered, signature),
            "a changed value"
        );
        assert!(
            !valid_signature("12345", "https://mycompany.com/other", &params, signature),
            "another URL"
        );
        assert!(
            !valid_signature("12345", url, &params, "0/KCTR6DLpKmkAf8"),
            "truncated"
        );
        assert!(!valid_signature("12345", url, &params, ""), "missing");
    }
}
