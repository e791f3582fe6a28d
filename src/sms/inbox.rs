//! The development `log` provider and the dev inbox it fills.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::{SendError, SmsMessage, SmsProvider};

/// How many messages the dev inbox keeps.
const INBOX_CAPACITY: usize = 500;

/// A message as the dev inbox shows it. Dev mode only: it holds the full number and code.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InboxMessage {
    pub message_id: String,
    pub verification_id: String,
    pub to: String,
    pub sender: String,
    pub text: String,
    /// The code from the WebOTP line, for scripts and tests.
    pub code: Option<String>,
    pub sent_at: i64,
}

/// In-memory inbox of the last messages the `log` provider took, newest last.
#[derive(Debug, Default)]
pub struct DevInbox {
    messages: Mutex<VecDeque<InboxMessage>>,
}

impl DevInbox {
    pub fn push(&self, message: InboxMessage) {
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if messages.len() == INBOX_CAPACITY {
            messages.pop_front();
        }
        messages.push_back(message);
    }

    /// Messages newest first, optionally only those to `to` or of `verification_id`.
    pub fn list(&self, to: Option<&str>, verification_id: Option<&str>) -> Vec<InboxMessage> {
        let messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        messages
            .iter()
            .rev()
            .filter(|m| to.is_none_or(|to| m.to == to))
            .filter(|m| verification_id.is_none_or(|id| m.verification_id == id))
            .cloned()
            .collect()
    }
}

/// The code in a WebOTP line (`@host #123456`), the last line of every SMS.
pub fn webotp_code(text: &str) -> Option<String> {
    let line = text.lines().last()?;
    let (_, code) = line.rsplit_once(" #")?;
    code.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| code.to_owned())
}

/// Development provider: logs a masked line and keeps the message in the dev inbox.
pub struct LogProvider {
    name: String,
    inbox: Arc<DevInbox>,
}

impl LogProvider {
    pub fn new(name: String, inbox: Arc<DevInbox>) -> Self {
        Self { name, inbox }
    }
}

#[async_trait]
impl SmsProvider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &SmsMessage) -> Result<Option<String>, SendError> {
        tracing::info!(to = %message.to, sender = %message.sender, "dev SMS stored in /dev/inbox");
        self.inbox.push(InboxMessage {
            message_id: message.message_id.to_string(),
            verification_id: message.verification_id.to_string(),
            to: message.to.e164().to_owned(),
            sender: message.sender.clone(),
            text: message.text.clone(),
            code: webotp_code(&message.text),
            sent_at: crate::domain::now_millis(),
        });
        Ok(Some(message.message_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_read_from_the_webotp_line() {
        assert_eq!(
            webotp_code("Acme: 123456\n\n@shop.example #123456").as_deref(),
            Some("123456")
        );
        assert_eq!(webotp_code("no otp line"), None);
    }
}
