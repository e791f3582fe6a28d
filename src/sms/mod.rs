//! Sending SMS: a provider trait, the providers, and failover across an ordered list.
//!
//! Sending happens outside any database transaction: a slow provider must never hold a lock.

mod http;
mod inbox;
pub mod segments;

pub use http::HttpProvider;
pub use inbox::{DevInbox, InboxMessage, LogProvider};

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{PhoneNumber, VerificationId};
use crate::metrics::Metrics;
use crate::settings::ProviderSettings;

/// The values of a code SMS.
#[derive(Debug, Clone, Copy)]
pub struct CodeSms<'a> {
    pub brand: &'a str,
    /// The amount as the buyer's locale writes it.
    pub amount: &'a str,
    pub order_reference: &'a str,
    pub minutes: i64,
    pub code: &'a str,
    /// The host of the WebOTP line.
    pub otp_host: &'a str,
}

/// The code SMS: the brand's text for the locale with its placeholders filled, then a blank
/// line and the WebOTP line `@host #code` that browsers use to fill the code in. No-break
/// spaces become spaces, so a localized amount does not force UCS-2.
pub fn compose(text: &str, sms: &CodeSms<'_>) -> String {
    let body = text
        .replace("{brand}", sms.brand)
        .replace("{amount}", &sms.amount.replace('\u{a0}', " "))
        .replace("{order_reference}", sms.order_reference)
        .replace("{minutes}", &sms.minutes.to_string())
        .replace("{code}", sms.code);
    format!("{body}\n\n@{} #{}", sms.otp_host, sms.code)
}

/// One SMS to send. `Debug` leaves the text out: it carries the code.
pub struct SmsMessage {
    pub message_id: uuid::Uuid,
    pub verification_id: VerificationId,
    pub to: PhoneNumber,
    pub sender: String,
    pub text: String,
}

impl std::fmt::Debug for SmsMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsMessage")
            .field("message_id", &self.message_id)
            .field("to", &self.to)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Why a provider did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying the next provider: timeout, connection failure, 5xx, 429.
    #[error("{0}")]
    Retryable(String),
    /// The provider refused the message itself (4xx); another provider is not tried.
    #[error("{0}")]
    Refused(String),
}

impl SendError {
    fn result_label(&self) -> &'static str {
        match self {
            Self::Retryable(reason) if reason.contains("timed out") => "timeout",
            Self::Retryable(_) => "error",
            Self::Refused(_) => "refused",
        }
    }
}

#[async_trait]
pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &str;
    /// Hands the message to the provider; returns the provider's message reference if any.
    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError>;
}

/// Which provider took a message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: String,
    pub provider_reference: Option<String>,
}

/// Every provider failed.
#[derive(Debug, thiserror::Error)]
#[error("no SMS provider accepted the message: {}", .failures.join("; "))]
pub struct SendFailed {
    /// `provider: cause` for each provider tried.
    pub failures: Vec<String>,
    /// The provider tried last.
    pub last_provider: String,
}

impl SendFailed {
    /// The causes, without provider URLs or message content, for events.
    pub fn reason(&self) -> String {
        self.failures.join("; ").chars().take(200).collect()
    }
}

/// Sends through the first provider that accepts, in configured order.
pub struct SmsSender {
    providers: Vec<Arc<dyn SmsProvider>>,
    metrics: Arc<Metrics>,
}

impl SmsSender {
    /// Builds the providers from settings; `inbox` backs the `log` provider.
    pub fn from_settings(
        settings: &[ProviderSettings],
        inbox: Option<Arc<DevInbox>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut providers: Vec<Arc<dyn SmsProvider>> = Vec::new();
        for provider in settings {
            providers.push(match provider {
                ProviderSettings::Log { name } => {
                    let inbox = inbox.clone().ok_or_else(|| {
                        anyhow::anyhow!("the `log` SMS provider is only available in dev mode")
                    })?;
                    Arc::new(LogProvider::new(name.clone(), inbox))
                }
                ProviderSettings::Http { .. } => Arc::new(HttpProvider::from_settings(provider)?),
            });
        }
        anyhow::ensure!(!providers.is_empty(), "no SMS provider configured");
        Ok(Self { providers, metrics })
    }

    pub async fn send(&self, message: &SmsMessage) -> Result<Delivery, SendFailed> {
        let mut failures = Vec::new();
        let mut last_provider = String::new();
        for provider in &self.providers {
            last_provider = provider.name().to_owned();
            match provider.send(message).await {
                Ok(provider_reference) => {
                    self.metrics.sms_sent(provider.name(), "sent");
                    tracing::info!(provider = provider.name(), to = %message.to, "SMS handed to provider");
                    return Ok(Delivery {
                        provider: provider.name().to_owned(),
                        provider_reference,
                    });
                }
                Err(error) => {
                    self.metrics.sms_sent(provider.name(), error.result_label());
                    tracing::warn!(provider = provider.name(), to = %message.to, %error, "SMS provider failed");
                    let refused = matches!(error, SendError::Refused(_));
                    failures.push(format!("{}: {error}", provider.name()));
                    if refused {
                        break;
                    }
                }
            }
        }
        Err(SendFailed {
            failures,
            last_provider,
        })
    }
}
