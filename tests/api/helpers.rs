//! Test support: the real service on port 0 over a fresh database, request helpers, a real
//! local SMS gateway, and the log audit every test runs when its app is dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use orderguard::settings::{Mode, ProviderSettings, Settings};
use orderguard::startup::Application;
use serde_json::{Value, json};
use sqlx::Connection;
use tracing_subscriber::layer::SubscriberExt;

/// The example brand's development key, as printed in the README.
pub const DEV_KEY: &str = "og_dev_nordwind_4f1c8e2a9b7d4e6f";
/// A second brand that exists only in tests, to prove brands are isolated.
pub const OTHER_KEY: &str = "og_test_otherbrand_0123456789abcdef";
/// A German mobile number (libphonenumber's example).
pub const PHONE: &str = "+4915123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per backend: `both_backends!(name, …)` makes `name::sqlite` and
/// `name::postgres` from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Log capture and audit
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// The PostgreSQL server the tests use; `ORDERGUARD_TEST_POSTGRES_URL` overrides it.
pub fn postgres_admin_url() -> String {
    std::env::var("ORDERGUARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database for one test and returns its URL. Never skips: no server, no pass.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for the tests and did not answer at {admin}: {e}. Run the README's test command, which starts it.")
    });
    // The prefix names this checkout (tests/run.sh sets it), so a run drops only the databases
    // its own earlier runs left, never those of a run going on beside it.
    let prefix = std::env::var("ORDERGUARD_TEST_DB_PREFIX")
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or_else(|| "og_test_".to_owned());
    let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base)
        .to_owned();
    format!("{base}/{name}")
}

// ---------------------------------------------------------------------------------------------
// The application
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// A real SMS gateway on loopback
// ---------------------------------------------------------------------------------------------

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

#[test]
fn the_log_audit_finds_a_secret_but_not_inside_a_uuid() {
    assert!(contains_token("sent code=482913 to", "482913"));
    assert!(!contains_token("id=0a482913-1111", "482913"));
    assert!(contains_token("to=+4915123456789", PHONE));
}

// ---------------------------------------------------------------------------------------------
// A real ClickHouse engine: chdb-core behind tests/clickhouse/server.py
// ---------------------------------------------------------------------------------------------

/// A test ClickHouse server process; stopped and started again on the same port and data.
pub struct TestClickHouse {
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<std::process::Child>,
    client: reqwest::Client,
}

fn clickhouse_python() -> String {
    std::env::var("ORDERGUARD_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chdb-venv/bin/python");
        assert!(
            venv.exists(),
            "the test ClickHouse (chdb-core) is not installed: run the README's test command, bash tests/run.sh"
        );
        venv.display().to_string()
    })
}

impl TestClickHouse {
    pub async fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            port: 0,
            data,
            child: None,
            client: reqwest::Client::new(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clickhouse/server.py");
        let mut child = std::process::Command::new(clickhouse_python())
            .arg(script)
            .args([
                "--data",
                &self.data.path().join("chdb").display().to_string(),
            ])
            .args(["--port", &self.port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the test ClickHouse");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await
        .expect("reader")
        .expect("read the port");
        self.port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the test ClickHouse did not start: {line:?}"));
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server: ClickHouse is down until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = std::time::Instant::now() + patience(5);
        while std::time::Instant::now() < deadline {
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.launch().await;
    }

    /// Makes the next `count` requests wait `delay_ms` before they are served.
    pub async fn slow_next(&self, delay_ms: u64, count: u32) {
        let url = format!("{}/__fail?delay_ms={delay_ms}&count={count}", self.url());
        self.client.post(url).send().await.expect("fault hook");
    }

    /// Makes the next `count` requests fail with `status`.
    /// Lets the next `count` inserts commit, then cuts their connections unanswered.
    pub async fn drop_next_acks(&self, count: u32) {
        let url = format!("{}/__drop_ack?count={count}", self.url());
        self.client.post(url).send().await.expect("fault hook");
    }

    pub async fn fail_next(&self, status: u16, count: u32) {
        let url = format!("{}/__fail?status={status}&count={count}", self.url());
        self.client.post(url).send().await.expect("fault hook");
    }

    /// Runs `sql` and returns the rows as JSON objects (JSONEachRow).
    pub async fn rows(&self, sql: &str) -> Vec<Value> {
        let response = self
            .client
            .post(format!("{}/?database=orderguard", self.url()))
            .body(format!("{sql} FORMAT JSONEachRow"))
            .send()
            .await
            .expect("query ClickHouse");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "{sql}: {text}");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("JSON row"))
            .collect()
    }

    /// Runs a statement that returns nothing.
    pub async fn execute(&self, sql: &str) {
        let response = self
            .client
            .post(format!("{}/?database=orderguard", self.url()))
            .body(sql.to_owned())
            .send()
            .await
            .expect("query ClickHouse");
        let status = response.status();
        assert!(
            status.is_success(),
            "{sql}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A single number from `sql`.
    pub async fn number(&self, sql: &str) -> u64 {
        let rows = self.rows(sql).await;
        let value = rows
            .first()
            .and_then(|row| row.as_object())
            .and_then(|o| o.values().next().cloned());
        match value {
            Some(Value::Number(n)) => n.as_u64().expect("unsigned"),
            Some(Value::String(s)) => s.parse().expect("number"),
            other => panic!("{sql}: no number in {other:?}"),
        }
    }
}

impl Drop for TestClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settings fragment: events go to `clickhouse`, shipped quickly.
pub fn ship_to(clickhouse: &TestClickHouse, settings: &mut Settings) {
    settings.clickhouse.url = Some(clickhouse.url());
    settings.events.period_ms = 50;
    settings.events.retry_initial_ms = 50;
    settings.events.retry_max_ms = 500;
}

impl TestApp {
    /// Puts a raw row into the outbox, as if a state change had written it.
    pub async fn insert_outbox_row(&self, event_id: &str, payload: &str) {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        sqlx::query("INSERT INTO outbox (event_id, created_at, payload) VALUES ($1, $2, $3)")
            .bind(event_id)
            .bind(orderguard::domain::now_millis())
            .bind(payload)
            .execute(&mut connection)
            .await
            .expect("insert outbox row");
    }

    /// Runs a statement on the service's own database (a fault or a purge done behind its back).
    pub async fn db_execute(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        sqlx::query(sql)
            .execute(&mut connection)
            .await
            .expect("statement");
    }

    /// One number from the service's own database.
    pub async fn db_number(&self, sql: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        sqlx::query_scalar(sql)
            .fetch_one(&mut connection)
            .await
            .expect("query")
    }

    /// Rows still in the outbox.
    pub async fn outbox_len(&self) -> i64 {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&mut connection)
            .await
            .expect("count")
    }

    /// Waits until the relay has emptied the outbox (at most `seconds`).
    pub async fn wait_for_outbox_drained(&self, seconds: u64) {
        let deadline = std::time::Instant::now() + patience(seconds);
        loop {
            let pending = self.outbox_len().await;
            if pending == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the outbox still holds {pending} events after {seconds} s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted HTTP servers: upstream order APIs, webhook receivers
// ---------------------------------------------------------------------------------------------

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

/// Polls `ready` every 50 ms until it holds; fails after `seconds`.
/// How long a test waits for a condition that takes `seconds` on a quiet machine: five times
/// as long, so two busy cores never fail a test that is merely slow. Only a test that fails
/// waits that long; the others go on as soon as the condition holds.
pub fn patience(seconds: u64) -> Duration {
    Duration::from_secs(seconds * 5)
}

pub async fn eventually(what: &str, seconds: u64, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + patience(seconds);
    loop {
        if ready().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy to cut a peer off (the database "goes down" and comes back)
// ---------------------------------------------------------------------------------------------

/// Forwards `127.0.0.1:<port>` to `target`. `stop` closes the port and cuts every connection
/// through it (the peer is gone: connections refused); `start` opens it again.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

impl TcpProxy {
    pub async fn to(target: &str) -> Self {
        let mut proxy = Self {
            port: 0,
            target: target.to_owned(),
            running: None,
        };
        proxy.start().await;
        proxy
    }

    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy");
        self.port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (target, mut cut) = (target.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        self.running = Some((task, cut));
    }

    pub fn stop(&mut self) {
        if let Some((task, cut)) = self.running.take() {
            task.abort();
            let _ = cut.send(true);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
