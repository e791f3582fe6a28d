//! A local server standing in for Twilio's Messages endpoint: it records the exact request
//! (path, headers, form fields) and answers as Twilio documents
//! (<https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource>):
//! 201 with the message's `sid`, or an error status with Twilio's JSON error body.

use std::sync::{Arc, Mutex};

use serde_json::json;

/// How the server answers one send.
#[derive(Debug, Clone, Copy)]
pub enum TwilioReply {
    /// 201 with a fresh `SM…` sid.
    Created,
    /// This status with Twilio's error body carrying this error `code`.
    Error(u16, i64),
}

/// One send as Twilio received it.
#[derive(Debug, Clone)]
pub struct TwilioRequest {
    pub path: String,
    pub authorization: String,
    pub content_type: String,
    /// The form fields in the order sent.
    pub form: Vec<(String, String)>,
    /// The sid answered, if the send was accepted.
    pub sid: Option<String>,
}

impl TwilioRequest {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct TwilioServer {
    pub base_url: String,
    requests: Arc<Mutex<Vec<TwilioRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TwilioServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TwilioServer {
    pub async fn start(script: Vec<TwilioReply>, fallback: TwilioReply) -> Self {
        let requests: Arc<Mutex<Vec<TwilioRequest>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let log = requests.clone();
        let handler = move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
            let (log, script) = (log.clone(), script.clone());
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let reply = script.lock().expect("lock").pop_front().unwrap_or(fallback);
                let (status, answer, sid) = match reply {
                    TwilioReply::Created => {
                        let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
                        let answer = json!({"sid": sid, "status": "queued", "error_code": null,
                                            "num_segments": "1", "api_version": "2010-04-01"});
                        (201, answer, Some(sid))
                    }
                    TwilioReply::Error(status, code) => {
                        let answer = json!({"code": code, "message": "refused by the test server",
                                            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                                            "status": status});
                        (status, answer, None)
                    }
                };
                log.lock().expect("lock").push(TwilioRequest {
                    path: uri.path().to_owned(),
                    authorization: header("authorization"),
                    content_type: header("content-type"),
                    form: url::form_urlencoded::parse(body.as_bytes())
                        .map(|(n, v)| (n.into_owned(), v.into_owned()))
                        .collect(),
                    sid,
                });
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    axum::Json(answer),
                )
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Twilio stand-in");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the Twilio stand-in serves");
        });
        Self {
            base_url,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<TwilioRequest> {
        self.requests.lock().expect("lock").clone()
    }
}
