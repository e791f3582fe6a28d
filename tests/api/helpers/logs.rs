//! Log capture and audit.

use std::sync::{Arc, LazyLock, Mutex, Once};

use tracing_subscriber::layer::SubscriberExt;

use super::*;

static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Default::default);
static SECRETS: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Default::default);

#[derive(Clone)]
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test process, at debug level for the service.
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "orderguard=trace,tower_http=debug,sqlx=debug,handlebars=trace,info",
        );
        // No timestamps: their digit runs could look like codes to the audit.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_writer(|| LogWriter)
            .finish()
            // The service's own guard, so the audit below sees what production would log
            // with handlebars at trace: its helper parameters carry order references.
            .with(orderguard::telemetry::pii_guard());
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Remembers a value that must never appear in a log line (a code, a phone number).
pub fn must_not_be_logged(secret: &str) {
    SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(secret.to_owned());
}

/// Every remembered secret found in the captured logs, with the line it is on.
pub fn leaks_in_logs() -> Vec<String> {
    let logs =
        String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut leaks = Vec::new();
    for secret in secrets.iter() {
        for line in logs.lines() {
            if contains_token(line, secret) {
                leaks.push(format!("{secret:?} in: {line}"));
            }
        }
    }
    leaks
}

/// Whether `needle` occurs in `haystack` not as part of a longer run of hex digits (so a
/// six-digit code does not match inside a UUID).
fn contains_token(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        // The fraction of a decimal number (`elapsed=1.306566ms`) is not a code.
        let mut preceding = haystack[..at].chars().rev();
        if preceding.next() == Some('.') && preceding.next().is_some_and(|c| c.is_ascii_digit()) {
            return false;
        }
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_hexdigit())
            && !after.is_some_and(|c| c.is_ascii_hexdigit())
    })
}

pub fn captured_log_len() -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

#[test]
fn the_log_audit_finds_a_secret_but_not_inside_a_uuid() {
    assert!(contains_token("sent code=482913 to", "482913"));
    assert!(!contains_token("id=0a482913-1111", "482913"));
    assert!(contains_token("to=+4915123456789", PHONE));
}

/// Everything logged so far in this test process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
