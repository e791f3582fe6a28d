//! The `orderguard` binary as operators run it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    DEV_KEY, GatewayBehaviour, OTHER_KEY, Running, SmsGateway, free_port, fresh_postgres_database,
    orderguard, read, start_body, test_brands_dir, wait_until_ready,
};

/// Starts a verification (the README's example body) through the API of the running binary.
async fn start_verification(client: &reqwest::Client, base: &str) -> crate::helpers::Answer {
    read(
        client
            .post(format!("{base}/v1/verifications"))
            .bearer_auth(DEV_KEY)
            .json(&start_body())
            .send()
            .await
            .expect("start"),
    )
    .await
}

/// Checks `code` for verification `id` through the API of the running binary.
async fn check_code(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    code: &str,
) -> crate::helpers::Answer {
    let url = format!("{base}/v1/verifications/{id}/check");
    read(
        client
            .post(url)
            .bearer_auth(DEV_KEY)
            .json(&json!({"code": code}))
            .send()
            .await
            .expect("check"),
    )
    .await
}

/// `orderguard serve` in `dir` as the README runs it (dev mode, the test brands), with `env`
/// on top, once it is ready; and its address.
async fn serve_in_dev_mode(
    dir: &Path,
    client: &reqwest::Client,
    env: &[(&str, &str)],
) -> (Running, String) {
    test_brands_dir(dir);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = orderguard(dir)
        .arg("serve")
        .env("ORDERGUARD_HTTP__PORT", port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut running = Running(child);
    wait_until_ready(client, &base, &mut running.0).await;
    (running, base)
}

/// Sends `signal` (`TERM`, `INT`) and waits for the exit status.
async fn stop(mut running: Running, signal: &str) -> std::process::ExitStatus {
    let pid = running.0.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = std::time::Instant::now() + crate::helpers::patience(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = running.0.try_wait().expect("wait") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "orderguard did not stop within {:?} of SIG{signal}",
        crate::helpers::patience(10)
    );
}

#[test]
fn production_mode_without_real_settings_exits_naming_each_missing_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    test_brands_dir(dir.path());
    let output = orderguard(dir.path())
        .arg("serve")
        .env("ORDERGUARD_MODE", "production")
        .env("ORDERGUARD_TESTING__CLOCK_OFFSET_MS", "86400000")
        .output()
        .expect("run");
    assert!(!output.status.success(), "must refuse to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for setting in [
        "testing.clock_offset_ms (ORDERGUARD_TESTING__CLOCK_OFFSET_MS)",
        "database.url (ORDERGUARD_DATABASE__URL)",
        "secrets.code_key (ORDERGUARD_SECRETS__CODE_KEY)",
        "secrets.event_pepper (ORDERGUARD_SECRETS__EVENT_PEPPER)",
        "secrets.widget_key (ORDERGUARD_SECRETS__WIDGET_KEY)",
        "approval.keys (ORDERGUARD_APPROVAL__KEYS)",
        "sms.providers (ORDERGUARD_SMS__PROVIDERS)",
        "http.public_url (ORDERGUARD_HTTP__PUBLIC_URL)",
    ] {
        assert!(
            stderr.contains(setting),
            "{setting} not named in:\n{stderr}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");

    let with_log = orderguard(dir.path())
        .arg("serve")
        .env("ORDERGUARD_MODE", "production")
        .env("ORDERGUARD_SMS__PROVIDERS", r#"[{kind = "log"}]"#)
        .output()
        .expect("run");
    assert!(!with_log.status.success());
    assert!(
        String::from_utf8_lossy(&with_log.stderr)
            .contains("`log` provider, which is for development only")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_with_real_settings_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    test_brands_dir(dir.path());
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = orderguard(dir.path())
        .arg("serve")
        .env("ORDERGUARD_MODE", "production")
        .env("ORDERGUARD_HTTP__PORT", port.to_string())
        .env("ORDERGUARD_HTTP__PUBLIC_URL", "https://pay.example.test")
        .env("ORDERGUARD_DATABASE__URL", fresh_postgres_database().await)
        .env(
            "ORDERGUARD_SECRETS__CODE_KEY",
            "a-production-key-of-at-least-32-characters",
        )
        .env(
            "ORDERGUARD_SECRETS__EVENT_PEPPER",
            "a-production-pepper-of-at-least-32-chars",
        )
                .env("ORDERGUARD_SECRETS__WIDGET_KEY", "a-production-widget-key-of-32-characters")
        .env(
            "ORDERGUARD_APPROVAL__KEYS",
            r#"[{kid = "prod-1", private_key = "0101010101010101010101010101010101010101010101010101010101010101"}]"#,
        )
        .env("ORDERGUARD_SMS__PROVIDERS__0__KIND", "http")
        .env("ORDERGUARD_SMS__PROVIDERS__0__NAME", "gateway")
        .env("ORDERGUARD_SMS__PROVIDERS__0__URL", &gateway.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut running = Running(child);
    let client = reqwest::Client::new();
    wait_until_ready(&client, &base, &mut running.0).await;

    let post = |key: &'static str| {
        client
            .post(format!("{base}/v1/verifications"))
            .bearer_auth(key)
            .json(&start_body())
            .send()
    };
    read(post(DEV_KEY).await.expect("send"))
        .await
        .assert_problem(401, "unauthorized");
    let started = read(post(OTHER_KEY).await.expect("send")).await;
    assert_eq!(started.status, 201, "{started:#?}");
    assert!(
        started
            .header("strict-transport-security")
            .is_some_and(|hsts| hsts.starts_with("max-age=31536000")),
        "production pins HTTPS: {started:#?}"
    );
    assert_eq!(started.header("cache-control"), Some("no-store"));
    let text = gateway.received.lock().expect("lock")[0].1["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        text.contains("@pay.example.test #"),
        "WebOTP host from public_url: {text}"
    );
    let inbox = client
        .get(format!("{base}/dev/inbox"))
        .send()
        .await
        .expect("inbox");
    assert_eq!(inbox.status(), 404, "no dev inbox in production");

    let status = stop(running, "TERM").await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_clickhouse_migrations_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clickhouse = crate::helpers::TestClickHouse::start().await;
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let output = orderguard(dir.path())
        .arg("migrate")
        .env("ORDERGUARD_DATABASE__URL", &sqlite)
        .env("ORDERGUARD_CLICKHOUSE__URL", clickhouse.url())
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let applied = clickhouse
        .rows("SELECT version, name FROM schema_migrations ORDER BY version")
        .await;
    let names: Vec<&str> = applied
        .iter()
        .filter_map(|row| row["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "0001_events.sql",
            "0002_funnel_hourly.sql",
            "0003_fraud_rules.sql",
            "0004_privacy.sql"
        ]
    );
    let again = orderguard(dir.path())
        .arg("migrate")
        .env("ORDERGUARD_DATABASE__URL", &sqlite)
        .env("ORDERGUARD_CLICKHOUSE__URL", clickhouse.url())
        .output()
        .expect("run");
    assert!(again.status.success(), "a second run changes nothing");
    assert_eq!(
        clickhouse
            .rows("SELECT version FROM schema_migrations")
            .await
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_migrations_of_both_backends_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    for url in [sqlite, fresh_postgres_database().await] {
        let output = orderguard(dir.path())
            .arg("migrate")
            .env("ORDERGUARD_DATABASE__URL", &url)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        sqlx::any::install_default_drivers();
        let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM verification")
            .fetch_one(&mut connection)
            .await
            .expect("table exists");
        assert_eq!(count, 0, "{url}");
    }
}

/// Stopping the service ships what the outbox holds: with the relay's idle period at ten
/// minutes it claims nothing after its first, empty look, so the events of a flow tried just
/// before Ctrl-C reach `data/events.jsonl` only through the drain at shutdown (before it, the
/// file was not even created). Each event once.
/// The service in dev mode in `dir` with its relay idle (a ten-minute period: after its first,
/// empty look only the drain at shutdown ships), and one verification started on it: the
/// running service and the verification's id.
async fn a_start_with_the_relay_idle(dir: &Path, client: &reqwest::Client) -> (Running, String) {
    let (running, base) =
        serve_in_dev_mode(dir, client, &[("ORDERGUARD_EVENTS__PERIOD_MS", "600000")]).await;
    let started = start_verification(client, &base).await;
    assert_eq!(started.status, 201, "{started:#?}");
    let id = started.body["id"].as_str().expect("id").to_owned();
    (running, id)
}

/// The types of verification `id`'s events in `events` (JSON lines), sorted.
fn event_types(events: &str, id: &str) -> Vec<String> {
    let mut types: Vec<String> = events
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("one event per line"))
        .filter(|event| event["verification_id"] == id)
        .map(|event| event["event_type"].as_str().expect("type").to_owned())
        .collect();
    types.sort();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_ships_the_events_still_in_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (running, id) = a_start_with_the_relay_idle(dir.path(), &client).await;
    assert!(stop(running, "INT").await.success());

    let events = std::fs::read_to_string(dir.path().join("data/events.jsonl"))
        .expect("the events file, written at shutdown");
    assert_eq!(
        event_types(&events, &id),
        ["sms_sent", "verification_started"],
        "{events}"
    );
}

/// The sink fails at the moment the service stops (here the events file cannot be written: a
/// directory stands at its path, as a full disk or an unreachable ClickHouse would fail it):
/// the drain gives up at once, the service still stops cleanly, and the events wait in the
/// outbox. At the next start, with the sink back, each of them ships, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_sink_refuses_at_shutdown_ship_once_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (running, id) = a_start_with_the_relay_idle(dir.path(), &client).await;
    let events_file = dir.path().join("data/events.jsonl");
    std::fs::create_dir_all(&events_file).expect("a directory where the file goes");
    assert!(stop(running, "TERM").await.success());
    assert!(events_file.is_dir(), "nothing could be written");

    std::fs::remove_dir(&events_file).expect("the sink back");
    let (running, _) = serve_in_dev_mode(dir.path(), &client, &[]).await;
    let deadline = std::time::Instant::now() + crate::helpers::patience(30);
    let types = loop {
        let events = std::fs::read_to_string(&events_file).unwrap_or_default();
        let types = event_types(&events, &id);
        if types.len() >= 2 || std::time::Instant::now() > deadline {
            break types;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stop(running, "TERM").await.success());
    // Read again after the stop (its drain ships nothing twice).
    let events = std::fs::read_to_string(&events_file).expect("events");
    let count = events
        .lines()
        .filter(|line| line.contains(id.as_str()))
        .count();
    assert_eq!(types, ["sms_sent", "verification_started"], "{events}");
    assert_eq!(count, 2, "each event once: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_command_needs_no_setup_and_approves_a_curl_style_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (running, base) = serve_in_dev_mode(dir.path(), &client, &[]).await;

    let started = start_verification(&client, &base).await;
    assert_eq!(started.status, 201, "{started:#?}");
    let id = started.body["id"].as_str().expect("id");
    let inbox = read(
        client
            .get(format!("{base}/dev/inbox?verification_id={id}"))
            .send()
            .await
            .expect("inbox"),
    )
    .await;
    let code = inbox.body["messages"][0]["code"].as_str().expect("code");
    let checked = check_code(&client, &base, id, code).await;
    assert_eq!(checked.body["status"], "approved", "{checked:#?}");
    assert!(
        dir.path().join("data/orderguard.db").exists(),
        "embedded SQLite in ./data"
    );
    assert!(
        dir.path().join("data/keys/code.key").exists(),
        "dev key generated in ./data"
    );
    assert!(
        stop(running, "INT").await.success(),
        "Ctrl-C (SIGINT) stops it cleanly too"
    );
}

#[test]
fn brands_check_passes_the_shipped_brands_and_fails_a_broken_folder_with_its_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = orderguard(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args(["brands", "check", "brands/"])
        .output()
        .expect("run");
    assert!(
        shipped.status.success(),
        "{}",
        String::from_utf8_lossy(&shipped.stdout)
    );
    assert!(String::from_utf8_lossy(&shipped.stdout).contains("all brands are valid"));

    let brands = test_brands_dir(dir.path());
    let nordwind = brands.join("nordwind/brand.toml");
    let text = std::fs::read_to_string(&nordwind).expect("read");
    std::fs::write(
        &nordwind,
        text.replace("primary = \"#0b2545\"", "primary = \"navy\""),
    )
    .expect("write");
    let broken = orderguard(dir.path())
        .args(["brands", "check"])
        .arg(&brands)
        .output()
        .expect("run");
    assert!(!broken.status.success(), "a broken brand fails the check");
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(
        stdout.trim(),
        r#"nordwind/brand.toml: theme.primary: "navy" is not a colour (#rgb or #rrggbb)"#
    );

    std::fs::write(&nordwind, text).expect("restore");
    let created = orderguard(dir.path())
        .args(["brands", "new", "nordlicht", "--dir"])
        .arg(&brands)
        .output()
        .expect("run");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8_lossy(&created.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.split("): ").nth(1))
        .expect("the new key is printed")
        .trim()
        .to_owned();
    let again = orderguard(dir.path())
        .args(["brands", "check"])
        .arg(&brands)
        .output()
        .expect("run");
    assert!(
        again.status.success(),
        "the new brand passes: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    let registry = orderguard::brands::BrandRegistry::load(&brands, false).expect("loads");
    assert_eq!(
        registry.authenticate(&key).map(|(b, _)| b.id.to_string()),
        Some("nordlicht".to_owned())
    );
}

crate::both_backends!(a_forward_interrupted_by_a_crash_is_resumed_and_reaches_upstream_once);

async fn a_forward_interrupted_by_a_crash_is_resumed_and_reaches_upstream_once(
    backend: crate::helpers::Backend,
) {
    use crate::helpers::{Reply, ScriptedServer, eventually};
    let database = match backend {
        crate::helpers::Backend::Sqlite => None,
        crate::helpers::Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let brands = test_brands_dir(dir.path());
    // The first forward hangs: the service is killed while it is in flight.
    let upstream = ScriptedServer::start(vec![Reply::Hang(30_000)], Reply::Status(201)).await;
    let nordwind = brands.join("nordwind/brand.toml");
    let mut text = std::fs::read_to_string(&nordwind).expect("read");
    text.push_str(&format!(
        "\n[upstream]\nurl = \"{}/orders\"\nauth_header = \"Authorization\"\nauth_secret = \"nordwind_upstream\"\ntimeout_ms = 60000\n",
        upstream.url
    ));
    std::fs::write(&nordwind, text).expect("write");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        let mut command = orderguard(dir.path());
        if let Some(url) = &database {
            command.env("ORDERGUARD_DATABASE__URL", url);
        }
        command
            .arg("serve")
            .env("ORDERGUARD_HTTP__PORT", port.to_string())
            .env(
                "ORDERGUARD_BRAND_SECRETS__NORDWIND_UPSTREAM",
                "Bearer upstream-secret",
            )
            .env("ORDERGUARD_GATE__LEASE_MS", "1000")
            .env("ORDERGUARD_GATE__POLL_INTERVAL_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let client = reqwest::Client::new();
    let mut running = Running(start());
    wait_until_ready(&client, &base, &mut running.0).await;

    let body = json!({"payload": {"sku": "SIM-1"}, "order_reference": "A-3001", "amount": "9.90", "currency": "EUR", "phone": "+4915123456789"});
    let held = read(
        client
            .post(format!("{base}/v1/orders"))
            .bearer_auth(DEV_KEY)
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(held.status, 202, "{held:#?}");
    let (order, verification) = (
        held.body["id"].as_str().expect("id").to_owned(),
        held.body["verification_id"].as_str().expect("v").to_owned(),
    );
    let inbox = read(
        client
            .get(format!("{base}/dev/inbox?verification_id={verification}"))
            .send()
            .await
            .expect("inbox"),
    )
    .await;
    let code = inbox.body["messages"][0]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let checked = check_code(&client, &base, &verification, &code).await;
    assert_eq!(checked.body["status"], "approved", "{checked:#?}");
    eventually("the forward in flight", 10, async || upstream.count() == 1).await;

    // Killed mid-forward (SIGKILL: no shutdown), then started again on the same database.
    drop(running);
    let mut running = Running(start());
    wait_until_ready(&client, &base, &mut running.0).await;
    let status = || async {
        read(
            client
                .get(format!("{base}/v1/orders/{order}"))
                .bearer_auth(DEV_KEY)
                .send()
                .await
                .expect("order"),
        )
        .await
        .body
    };
    eventually("the resumed forward", 20, async || {
        status().await["status"] == "forwarded"
    })
    .await;
    assert_eq!(
        upstream.idempotency_keys().into_iter().collect::<Vec<_>>(),
        vec![order.clone()],
        "one order upstream"
    );
    assert_eq!(
        upstream.count(),
        2,
        "the interrupted attempt and the resumed one, with the same key"
    );
    assert!(stop(running, "TERM").await.success());
}

/// `testing.clock_offset_ms` moves the binary's clock: a verification started by a binary a
/// day ahead is created (and expires) a day ahead of the system clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testing_clock_offset_moves_the_binarys_clock() {
    const DAY_MS: i64 = 86_400_000;
    let dir = tempfile::tempdir().expect("tempdir");
    test_brands_dir(dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = orderguard(dir.path())
        .arg("serve")
        .env("ORDERGUARD_HTTP__PORT", port.to_string())
        .env("ORDERGUARD_TESTING__CLOCK_OFFSET_MS", DAY_MS.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut running = Running(child);
    let client = reqwest::Client::new();
    wait_until_ready(&client, &base, &mut running.0).await;
    let before = orderguard::domain::now_millis();
    let started = start_verification(&client, &base).await;
    assert_eq!(started.status, 201, "{started:#?}");
    // RFC 3339 in one fixed-width format sorts as time does.
    let created = started.body["created_at"].as_str().expect("created_at");
    let a_day_ahead = orderguard::http::rfc3339(before + DAY_MS - 1_000);
    assert!(
        created >= a_day_ahead.as_str(),
        "created {created}, not a day ahead ({a_day_ahead})"
    );
    assert!(stop(running, "TERM").await.success());
}
