//! The load tool's own peers: an SMS sink the service's `http` provider posts to (each buyer
//! waits there for its code, like a phone), and an upstream order API for gate mode.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Receives the service's SMS and hands each code to the buyer waiting for that number.
#[derive(Clone)]
pub struct SmsSink {
    pub address: SocketAddr,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>,
    pub received: Arc<AtomicU64>,
    pub unclaimed: Arc<AtomicU64>,
}

/// The code on the WebOTP line that ends every code SMS.
fn code_of(text: &str) -> Option<String> {
    let (_, code) = text.lines().last()?.rsplit_once(" #")?;
    code.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| code.to_owned())
}

impl SmsSink {
    /// Listens on `address` (port 0 picks one); the SMS URL is `http://<address>/sms`.
    pub async fn bind(address: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let sink = Self {
            address: listener.local_addr()?,
            waiting: Arc::default(),
            received: Arc::default(),
            unclaimed: Arc::default(),
        };
        let state = sink.clone();
        let router = axum::Router::new().route(
            "/sms",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let sink = state.clone();
                async move {
                    sink.received.fetch_add(1, Ordering::Relaxed);
                    let to = body["to"].as_str().unwrap_or_default().to_owned();
                    let code = body["text"].as_str().and_then(code_of);
                    let waiter = sink
                        .waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&to);
                    match (waiter, code) {
                        (Some(waiter), Some(code)) => {
                            let _ = waiter.send(code);
                        }
                        _ => {
                            sink.unclaimed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    axum::Json(json!({"id": body["reference"]}))
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(sink)
    }

    pub fn url(&self) -> String {
        format!("http://{}/sms", self.address)
    }

    /// Registers interest in the next SMS to `to` (before the request that sends it).
    pub fn expect(&self, to: &str) -> oneshot::Receiver<String> {
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(to.to_owned(), sender);
        receiver
    }
}

/// An upstream order API that takes every order (201) and counts them by idempotency key.
#[derive(Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub keys: Arc<Mutex<BTreeSet<String>>>,
}

impl Upstream {
    pub async fn bind(address: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let upstream = Self {
            address: listener.local_addr()?,
            requests: Arc::default(),
            keys: Arc::default(),
        };
        let state = upstream.clone();
        let router = axum::Router::new().route(
            "/orders",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let upstream = state.clone();
                async move {
                    upstream.requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok())
                    {
                        upstream
                            .keys
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key.to_owned());
                    }
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(json!({"accepted": true})),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(upstream)
    }

    pub fn url(&self) -> String {
        format!("http://{}/orders", self.address)
    }

    /// Distinct orders taken (by idempotency key).
    pub fn orders(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
