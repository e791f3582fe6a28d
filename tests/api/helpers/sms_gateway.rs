//! A real SMS gateway on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderguard::settings::ProviderSettings;
use serde_json::{Value, json};

use super::*;

/// How the gateway answers.
#[derive(Debug, Clone, Copy)]
pub enum GatewayBehaviour {
    Accept,
    Status(u16),
    Hang,
}

/// An HTTP server standing in for an SMS provider: it records what it is sent.
pub struct SmsGateway {
    pub url: String,
    pub received: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmsGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmsGateway {
    pub async fn start(behaviour: GatewayBehaviour) -> Self {
        let received: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>> = Arc::default();
        let log = received.clone();
        let handler = move |headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                log.lock().expect("lock").push((headers, value));
                match behaviour {
                    GatewayBehaviour::Accept => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"id": "gw-1"})),
                    ),
                    GatewayBehaviour::Status(code) => (
                        axum::http::StatusCode::from_u16(code).expect("status"),
                        axum::Json(json!({"error": "nope"})),
                    ),
                    GatewayBehaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        (axum::http::StatusCode::OK, axum::Json(json!({})))
                    }
                }
            }
        };
        let router = axum::Router::new().route("/send", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let url = format!("http://{}/send", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("gateway serves");
        });
        Self {
            url,
            received,
            task,
        }
    }

    pub fn provider(&self, name: &str, timeout_ms: u64) -> ProviderSettings {
        ProviderSettings::Http {
            name: name.to_owned(),
            url: self.url.clone(),
            timeout_ms,
            auth_header: Some("Authorization".to_owned()),
            auth_value: Some("Bearer gateway-secret".to_owned().into()),
            body_template: None,
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// The code in the last message's WebOTP line.
    pub fn last_code(&self) -> String {
        let received = self.received.lock().expect("lock");
        let text = received.last().expect("a message").1["text"]
            .as_str()
            .expect("text")
            .to_owned();
        let code = text.rsplit_once(" #").expect("WebOTP line").1.to_owned();
        must_not_be_logged(&code);
        code
    }
}
