//! Scripted HTTP servers: upstream order APIs, webhook receivers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

/// How a scripted server answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Waits this many milliseconds, then answers 201.
    Hang(u64),
}

type Recorded = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// An HTTP server that answers from a script (then a fallback) and records every request.
pub struct ScriptedServer {
    pub url: String,
    requests: Recorded,
    /// Requests being answered right now, and the most there ever were at once.
    in_flight: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    pub async fn start(script: Vec<Reply>, fallback: Reply) -> Self {
        Self::start_on("127.0.0.1:0", script, fallback).await
    }

    /// Starts on `address` (a fixed port lets a restarted service find it again).
    pub async fn start_on(address: &str, script: Vec<Reply>, fallback: Reply) -> Self {
        use std::sync::atomic::Ordering;
        let requests: Recorded = Arc::default();
        let in_flight: Arc<(
            std::sync::atomic::AtomicUsize,
            std::sync::atomic::AtomicUsize,
        )> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let log = requests.clone();
        let gauge = in_flight.clone();
        let handler = move |headers: axum::http::HeaderMap, body: String| {
            let (log, script, gauge) = (log.clone(), script.clone(), gauge.clone());
            async move {
                log.lock().expect("lock").push((headers, body));
                let now = gauge.0.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.1.fetch_max(now, Ordering::SeqCst);
                let reply = script.lock().expect("lock").pop_front().unwrap_or(fallback);
                let status = match reply {
                    Reply::Status(status) => status,
                    Reply::Hang(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        201
                    }
                };
                gauge.0.fetch_sub(1, Ordering::SeqCst);
                let status = axum::http::StatusCode::from_u16(status).expect("status");
                (
                    status,
                    axum::Json(json!({"accepted": status.is_success(), "upstream_order": "U-1"})),
                )
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .expect("bind scripted server");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("scripted server serves");
        });
        Self {
            url,
            requests,
            in_flight,
            task,
        }
    }

    /// The most requests this server was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<(axum::http::HeaderMap, String)> {
        self.requests.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    /// The distinct `Idempotency-Key`s received: the orders an idempotent upstream created.
    pub fn idempotency_keys(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .filter_map(|(headers, _)| {
                headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .collect()
    }
}
