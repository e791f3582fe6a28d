//! A real ClickHouse engine: chdb-core behind tests/clickhouse/server.py.

use std::path::Path;
use std::time::Duration;

use orderguard::settings::Settings;
use serde_json::Value;
use sqlx::Connection;

use super::*;

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
