//! Who may post delivery receipts, and for which providers' messages.
//!
//! Each provider kind authenticates its own receipts (the `http` gateways with the shared
//! `sms.receipt_secret`, each Twilio account with its Auth Token) and a receipt may only
//! settle a message sent through the providers that authenticated it: a gateway that knows
//! the shared secret cannot mark a Twilio message delivered, nor one Twilio account another's.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::settings::ProviderSettings;

/// The receipts each provider kind may post.
#[derive(Default)]
pub struct ReceiptRoutes {
    http: Option<HttpReceipts>,
    twilio: Vec<TwilioReceipts>,
}

/// The generic `http` gateways: one shared secret signs their receipts.
pub struct HttpReceipts {
    pub secret: Arc<[u8]>,
    /// The names of the `http` providers.
    pub providers: Vec<String>,
}

/// One Twilio provider: its Auth Token signs the callbacks to `url`.
struct TwilioReceipts {
    provider: Vec<String>,
    auth_token: SecretString,
    url: String,
}

impl ReceiptRoutes {
    pub fn from_settings(
        providers: &[ProviderSettings],
        receipt_secret: Option<&SecretString>,
        public_url: &str,
    ) -> Self {
        let http: Vec<String> = providers
            .iter()
            .filter_map(|provider| match provider {
                ProviderSettings::Http { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let twilio = providers
            .iter()
            .filter_map(|provider| match provider {
                ProviderSettings::Twilio {
                    name, auth_token, ..
                } => Some(TwilioReceipts {
                    provider: vec![name.clone()],
                    auth_token: auth_token.clone(),
                    url: super::twilio::callback_url(public_url),
                }),
                _ => None,
            })
            .collect();
        Self {
            http: receipt_secret.map(|secret| HttpReceipts {
                secret: Arc::from(secret.expose_secret().as_bytes()),
                providers: http,
            }),
            twilio,
        }
    }

    /// The `http` gateways' secret and names; `None` when `sms.receipt_secret` is not set.
    pub fn http(&self) -> Option<&HttpReceipts> {
        self.http.as_ref()
    }

    /// Whether any Twilio provider is configured.
    pub fn has_twilio(&self) -> bool {
        !self.twilio.is_empty()
    }

    /// The Twilio provider (as a one-name scope) whose Auth Token signed this callback, if any.
    pub fn twilio_signer(&self, params: &[(String, String)], signature: &str) -> Option<&[String]> {
        self.twilio
            .iter()
            .find(|route| {
                super::twilio::valid_signature(
                    route.auth_token.expose_secret(),
                    &route.url,
                    params,
                    signature,
                )
            })
            .map(|route| route.provider.as_slice())
    }
}
