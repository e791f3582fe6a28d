//! The application.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orderguard::settings::{Mode, Settings};
use orderguard::startup::Application;
use serde_json::{Value, json};
use sqlx::Connection;

use super::*;

pub struct TestApp {
    pub address: String,
    /// The service's data directory (embedded database, keys, events.jsonl).
    pub data_dir: PathBuf,
    /// The brands folder the service reads (a copy, safe to change).
    pub brands_dir: PathBuf,
    pub client: reqwest::Client,
    pub database_url: String,
    /// The clock the fraud rules read: tests move it instead of waiting out windows.
    pub clock: Arc<orderguard::fraud::Clock>,
    /// `http://127.0.0.1:<admin port>` when `http.admin_port` is set.
    pub admin_address: Option<String>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

/// A brands folder: the shipped brands plus a second test brand with its own key.
pub fn test_brands_dir(root: &Path) -> PathBuf {
    let dir = root.join("brands");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("brands"), &dir);
    let other = dir.join("otherbrand");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(
        other.join("brand.toml"),
        format!(
            "display_name = \"Other Brand\"\nallowed_countries = [\"DE\", \"SE\", \"GB\"]\n[limits]\nmax_checks = 3\ncode_length = 8\n[[api_keys]]\nid = \"test\"\nhash = \"{}\"\n",
            orderguard::brands::api_key_hash(OTHER_KEY)
        ),
    )
    .expect("write brand");
    for brand in ["nordwind", "fjallnet", "otherbrand"] {
        set_fraud_rules(&dir, brand, RELAXED_FRAUD_RULES);
    }
    dir
}

/// Where the test's own fraud rules start in a test brand's brand.toml.
const FRAUD_MARKER: &str = "\n# test: fraud rules\n";

/// Fraud rules that never refuse what the other tests do (the same number again and again,
/// thousands of starts to one prefix). The fraud tests replace them with [`set_fraud_rules`];
/// the example brands in `brands/` keep their protective defaults.
pub const RELAXED_FRAUD_RULES: &str = "[fraud.rate_limits]\nphone = [\"100000/1m\"]\ncustomer = [\"100000/1m\"]\n\
    ip = [\"100000/1m\"]\nip_range = [\"100000/1m\"]\norder_reference = [\"100000/1m\"]\n\
    brand = [\"1000000/1m\"]\n[fraud.pumping]\nmin_starts = 1000000\nbrand_min_starts = 0\n";

/// Replaces the test fraud rules of `brand` in the brands folder `dir` with `rules` (TOML
/// merged over `_base`).
pub fn set_fraud_rules(dir: &Path, brand: &str, rules: &str) {
    let path = dir.join(brand).join("brand.toml");
    let text = std::fs::read_to_string(&path).expect("brand.toml");
    let own = text.split(FRAUD_MARKER).next().unwrap_or_default();
    std::fs::write(&path, format!("{own}{FRAUD_MARKER}{rules}")).expect("write brand.toml");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Dev-mode settings for a test on `backend`, in a fresh temporary directory.
pub async fn test_settings(backend: Backend, dir: &Path) -> Settings {
    let mut settings = Settings {
        mode: Mode::Dev,
        data_dir: dir.join("data"),
        ..Settings::default()
    };
    settings.brands_dir = test_brands_dir(dir);
    settings.http.port = 0;
    settings.sweeper.interval_ms = 100;
    settings.database.max_connections = 5;
    settings.database.url = Some(match backend {
        Backend::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            dir.join("data").join("orderguard.db").display()
        ),
        Backend::Postgres => fresh_postgres_database().await,
    });
    settings
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings(backend, dir.path()).await;
    configure(&mut settings);
    let database_url = settings.database_url();
    let data_dir = settings.data_dir.clone();
    let brands_dir = settings.brands_dir.clone();
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let clock = app.fraud_clock();
    let admin_address = app
        .admin_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let task = tokio::spawn(async move {
        app.run_until_stopped(std::future::pending())
            .await
            .expect("server runs");
    });
    // Traffic waits for readiness, as behind a load balancer.
    let client = reqwest::Client::new();
    eventually("the app is ready", 20, async || {
        client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    must_not_be_logged(PHONE);
    must_not_be_logged(PHONE.trim_start_matches("+49"));
    // The order reference of `start_body`: page models carry it, and handlebars logs helper
    // parameters at debug level.
    must_not_be_logged("A-1001");
    TestApp {
        address,
        data_dir,
        brands_dir,
        client,
        database_url,
        clock,
        admin_address,
        _dir: dir,
        task,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            return;
        }
        let leaks = leaks_in_logs();
        assert!(
            leaks.is_empty(),
            "secrets leaked into the logs:\n{}",
            leaks.join("\n")
        );
        assert!(
            captured_log_len() > 0,
            "no log line was captured: the audit would be vacuous"
        );
    }
}

/// A response read whole: status, headers, JSON body (or `Null`).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The problem `type` without its prefix, e.g. `invalid_code`.
    pub fn problem(&self) -> &str {
        self.body["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(orderguard::http::PROBLEM_TYPE_PREFIX))
            .unwrap_or("<no problem type>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Retry-After` header's seconds (RFC 9110 10.2.3, the delay form).
    #[track_caller]
    pub fn retry_after(&self) -> i64 {
        self.header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds")
    }

    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(
            (self.status, self.problem()),
            (status, kind),
            "unexpected answer: {self:#?}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:#?}"
        );
    }
}

pub async fn read(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// `X-Orderguard-Signature` of a receipt `body` signed with `secret` at `timestamp` (seconds).
pub fn sign_receipt(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

pub fn start_body() -> Value {
    json!({"phone": PHONE, "order_reference": "A-1001", "amount": "49.90", "currency": "EUR"})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        read(
            self.client
                .post(self.url(path))
                .bearer_auth(key)
                .json(body)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// A page: status, headers and HTML.
    pub async fn page(&self, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            self.url(url)
        };
        let response = self.client.get(url).send().await.expect("page");
        (
            response.status().as_u16(),
            response.headers().clone(),
            response.text().await.expect("html"),
        )
    }

    /// Posts a generic-provider delivery receipt `body` to `/v1/callbacks/sms/http` with the
    /// header `X-Orderguard-Signature: signature`.
    pub async fn post_http_receipt(&self, body: &str, signature: &str) -> Answer {
        read(
            self.client
                .post(self.url("/v1/callbacks/sms/http"))
                .header("x-orderguard-signature", signature)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .expect("receipt"),
        )
        .await
    }

    /// A form post from the code page.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let response = self
            .client
            .post(self.url(path))
            .form(fields)
            .send()
            .await
            .expect("form post");
        (
            response.status().as_u16(),
            response.text().await.expect("html"),
        )
    }

    /// A GET without an API key.
    pub async fn get_public(&self, path: &str) -> Answer {
        read(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        response.text().await.expect("metrics text")
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        read(
            self.client
                .get(self.url(path))
                .bearer_auth(key)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn start(&self, body: &Value) -> Answer {
        self.post("/v1/verifications", DEV_KEY, body).await
    }

    /// Starts a verification for [`PHONE`] and returns its id.
    pub async fn start_ok(&self) -> String {
        let answer = self.start(&start_body()).await;
        assert_eq!(answer.status, 201, "{answer:#?}");
        answer.body["id"].as_str().expect("id").to_owned()
    }

    pub async fn check(&self, id: &str, code: &str) -> Answer {
        self.post(
            &format!("/v1/verifications/{id}/check"),
            DEV_KEY,
            &json!({"code": code}),
        )
        .await
    }

    pub async fn resend(&self, id: &str) -> Answer {
        self.post(
            &format!("/v1/verifications/{id}/resend"),
            DEV_KEY,
            &json!({}),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Answer {
        self.post(
            &format!("/v1/verifications/{id}/cancel"),
            DEV_KEY,
            &json!({}),
        )
        .await
    }

    pub async fn status(&self, id: &str) -> Answer {
        self.get(&format!("/v1/verifications/{id}"), DEV_KEY).await
    }

    /// The codes sent for verification `id`, newest first, read from the dev inbox.
    pub async fn codes(&self, id: &str) -> Vec<String> {
        let inbox = read(
            self.client
                .get(self.url(&format!("/dev/inbox?verification_id={id}")))
                .send()
                .await
                .expect("inbox"),
        )
        .await;
        let codes: Vec<String> = inbox.body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["code"].as_str().expect("code").to_owned())
            .collect();
        codes.iter().for_each(|code| must_not_be_logged(code));
        codes
    }

    /// The text of the latest SMS of verification `id`, as the dev inbox holds it.
    pub async fn sms_text(&self, id: &str) -> String {
        let inbox = self
            .get_public(&format!("/dev/inbox?verification_id={id}"))
            .await;
        inbox.body["messages"][0]["text"]
            .as_str()
            .expect("an SMS was sent")
            .to_owned()
    }

    /// How many SMS the dev inbox holds.
    pub async fn sms_count(&self) -> usize {
        let all = self.get_public("/dev/inbox").await;
        all.body["messages"].as_array().map_or(0, Vec::len)
    }

    pub async fn latest_code(&self, id: &str) -> String {
        self.codes(id)
            .await
            .into_iter()
            .next()
            .expect("a code was sent")
    }

    /// A code that is certainly not the current one.
    pub async fn wrong_code(&self, id: &str) -> String {
        let right = self.latest_code(id).await;
        if right == "000000" {
            "111111".to_owned()
        } else {
            "000000".to_owned()
        }
    }

    /// Pretends `ms` milliseconds passed for verification `id` (moves its times back).
    pub async fn travel(&self, id: &str, ms: i64) {
        let sql = "UPDATE verification SET created_at = created_at - $2, expires_at = expires_at - $2, \
                   last_sent_at = last_sent_at - $2 WHERE verification_id = $1";
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        let done = sqlx::query(sql)
            .bind(id)
            .bind(ms)
            .execute(&mut connection)
            .await
            .expect("time travel");
        assert_eq!(done.rows_affected(), 1, "no verification {id}");
    }
}
