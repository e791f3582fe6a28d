//! The Grafana dashboards (`dashboards/`) against real data: a run of the service writes every
//! kind of event to the test ClickHouse and is scraped by a real Prometheus; then
//! `tests/dashboards/check.py` expands every panel's query as the ClickHouse plugin and Grafana
//! do and runs it, and `promtool` checks and unit-tests the alert rules.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::helpers::{
    Backend, DEV_KEY, Reply, ScriptedServer, TestApp, TestClickHouse, eventually, serve,
    set_fraud_rules, ship_to, spawn_app_with,
};

const FJALLNET_KEY: &str = "og_dev_fjallnet_8d3a6c1e5f2b7094";
const RECEIPT_SECRET: &str = "receipt-secret-for-dashboards";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Messages the gateway accepted: (number, reference, text).
type Accepted = Arc<Mutex<Vec<(String, String, String)>>>;

/// An SMS gateway that accepts every message but those to numbers ending in 99 (503), and
/// records each accepted message (its reference answers delivery receipts).
async fn gateway() -> (String, Accepted) {
    let accepted: Accepted = Arc::default();
    let log = accepted.clone();
    let handler = move |body: axum::Json<Value>| {
        let log = log.clone();
        async move {
            let to = body["to"].as_str().unwrap_or_default().to_owned();
            if to.ends_with("99") {
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({})),
                );
            }
            let reference = body["reference"].as_str().unwrap_or_default().to_owned();
            let text = body["text"].as_str().unwrap_or_default().to_owned();
            log.lock().expect("lock").push((to, reference, text));
            (axum::http::StatusCode::OK, axum::Json(json!({"id": "gw"})))
        }
    };
    let router = axum::Router::new().route("/send", axum::routing::post(handler));
    let url = format!("{}/send", serve(router).await);
    (url, accepted)
}

/// A CAMARA SIM Swap v2 check endpoint: numbers ending in 77 were swapped.
async fn sim_swap() -> String {
    let handler = |body: axum::Json<Value>| async move {
        let swapped = body["phoneNumber"]
            .as_str()
            .is_some_and(|n| n.ends_with("77"));
        axum::Json(json!({"swapped": swapped}))
    };
    let router = axum::Router::new().route("/sim-swap/v2/check", axum::routing::post(handler));
    serve(router).await
}

/// A spread-out number of `prefix` for buyer `n` (no two close together: no number walk).
fn number(prefix: &str, n: u64, digits: usize) -> String {
    let space = 10u64.pow(digits as u32);
    format!(
        "{prefix}{:0digits$}",
        (n.wrapping_mul(61_803_399) + 1_234_567) % space
    )
}

struct Run<'a> {
    app: &'a TestApp,
    accepted: &'a Accepted,
}

impl Run<'_> {
    async fn start(&self, key: &str, phone: &str, locale: &str) -> Value {
        let mut body = json!({"phone": phone, "order_reference": format!("D-{}", uuid::Uuid::now_v7().simple()),
                              "amount": "29.90", "currency": "EUR", "client_ip": "198.51.100.7"});
        if !locale.is_empty() {
            body["locale"] = json!(locale);
        }
        self.app.post("/v1/verifications", key, &body).await.body
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> u16 {
        self.app.post(path, key, &body).await.status
    }

    /// The code in the last SMS to `phone` (its WebOTP line).
    fn code(&self, phone: &str) -> String {
        let accepted = self.accepted.lock().expect("lock");
        let (_, _, text) = accepted
            .iter()
            .rev()
            .find(|(to, _, _)| to == phone)
            .expect("an SMS to the number");
        text.rsplit_once(" #").expect("WebOTP line").1.to_owned()
    }

    /// A code that is not `phone`'s.
    fn wrong_code(&self, phone: &str) -> String {
        let code = self.code(phone);
        let last = code
            .chars()
            .last()
            .and_then(|c| c.to_digit(10))
            .unwrap_or(0);
        format!("{}{}", &code[..code.len() - 1], (last + 1) % 10)
    }
}

/// Runs the traffic every panel reads: approvals after one or two codes, locks, aborts,
/// expiries, resends, refusals by several rules, a prefix block, SIM-swap refusals and flags,
/// delivered and undelivered SMS and failed sends, held orders forwarded and refused upstream;
/// over both example brands and four countries.
async fn traffic(app: &TestApp, accepted: &Accepted) {
    let run = Run { app, accepted };
    let brands: [(&str, &[&str], usize, &str); 4] = [
        (DEV_KEY, &["+49151", "+49160", "+49171"], 8, "de"),
        (FJALLNET_KEY, &["+4670", "+4673"], 7, "sv"),
        (FJALLNET_KEY, &["+4791"], 6, "en"),
        (FJALLNET_KEY, &["+35840"], 7, ""),
    ];
    let mut n = 0u64;
    for (key, prefixes, digits, locale) in brands {
        for prefix in prefixes {
            for path in 0..6 {
                n += 1;
                let phone = number(prefix, n, digits);
                let started = run.start(key, &phone, locale).await;
                let Some(id) = started["id"].as_str().map(str::to_owned) else {
                    continue;
                };
                let check = |code: String| json!({"code": code});
                let checked = format!("/v1/verifications/{id}/check");
                match path {
                    0 | 1 => {
                        let code = run.code(&phone);
                        assert_eq!(run.post(key, &checked, check(code)).await, 200);
                    }
                    2 => {
                        run.post(key, &checked, check(run.wrong_code(&phone))).await;
                        let code = run.code(&phone);
                        assert_eq!(run.post(key, &checked, check(code)).await, 200);
                    }
                    3 => {
                        let wrong = run.wrong_code(&phone);
                        for _ in 0..5 {
                            run.post(key, &checked, check(wrong.clone())).await;
                        }
                    }
                    4 => {
                        app.travel(&id, 31_000).await;
                        run.post(key, &format!("/v1/verifications/{id}/resend"), json!({}))
                            .await;
                        run.post(key, &format!("/v1/verifications/{id}/cancel"), json!({}))
                            .await;
                    }
                    _ => app.travel(&id, 600_000).await,
                }
            }
        }
    }
    // Refusals: a country the brand does not serve, a number past its limit, SIM swaps.
    run.start(DEV_KEY, "+46701234567", "de").await;
    for _ in 0..3 {
        run.start(DEV_KEY, "+4915255550123", "de").await;
    }
    run.start(DEV_KEY, "+4915255550177", "de").await;
    run.start(FJALLNET_KEY, "+46735550177", "sv").await;
    // Sends every provider refused (numbers ending in 99).
    run.start(DEV_KEY, "+4915255551299", "de").await;
    run.start(FJALLNET_KEY, "+46735551299", "sv").await;
    // A pumper over random numbers of one prefix, one start every 2 s on the fraud clock, until
    // the pumping guard blocks it.
    for k in 0..40 {
        run.start(DEV_KEY, &number("+49179", 1_000 + k, 8), "de")
            .await;
        app.clock.advance(2_000);
    }
    // Gate mode: orders held, forwarded (201) and refused upstream (400).
    for k in 0..3 {
        let body = json!({"payload": {"items": [{"sku": "SIM-25", "quantity": 1}]},
                          "order_reference": format!("O-{k}-{}", uuid::Uuid::now_v7().simple()),
                          "amount": "49.90", "currency": "EUR",
                          "phone": number("+49152", 500 + k, 8)});
        let held = app.post("/v1/orders", DEV_KEY, &body).await;
        assert_eq!(held.status, 202, "{held:#?}");
        let verification = held.body["verification_id"]
            .as_str()
            .expect("id")
            .to_owned();
        let code = run.code(body["phone"].as_str().expect("phone"));
        let checked = format!("/v1/verifications/{verification}/check");
        assert_eq!(
            run.post(DEV_KEY, &checked, json!({"code": code})).await,
            200
        );
    }
    // Delivery receipts: most delivered, a few not.
    let references: Vec<String> = accepted
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, reference, _)| reference.clone())
        .collect();
    for (index, reference) in references.iter().enumerate() {
        let status = if index % 7 == 3 {
            "failed"
        } else {
            "delivered"
        };
        let body = json!({"reference": reference, "status": status}).to_string();
        let now = orderguard::domain::now_millis() / 1000;
        let signature = crate::helpers::sign_receipt(RECEIPT_SECRET, now, &body);
        let answer = app.post_http_receipt(&body, &signature).await;
        assert_eq!(answer.status, 200, "{answer:#?}");
    }
}

/// A free loopback port (the test's Prometheus cannot take port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Debian's Prometheus, scraping `target` every second, until dropped.
struct Prometheus {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: orderguard\n    static_configs:\n      - targets: ['{target}']\n",
                root().join("dashboards/alerts/orderguard.rules.yml").display()
            ),
        )
        .expect("config");
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus (Debian's prometheus package; tests/run.sh installs it)");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    async fn series(&self, client: &reqwest::Client, expr: &str) -> usize {
        let answer = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await;
        match answer {
            Ok(answer) => answer
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
                .unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Runs `command` to its end off the test's runtime threads.
async fn run(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run a tool of the test")
}

fn python() -> String {
    std::env::var("ORDERGUARD_TEST_PYTHON").unwrap_or_else(|_| {
        root()
            .join("target/chdb-venv/bin/python")
            .display()
            .to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_on_real_events_and_every_alert_rule_holds() {
    let clickhouse = TestClickHouse::start().await;
    let (gateway_url, accepted) = gateway().await;
    let swap_url = sim_swap().await;
    let upstream = ScriptedServer::start(
        vec![Reply::Status(201), Reply::Status(400)],
        Reply::Status(201),
    )
    .await;
    let upstream_url = upstream.url.clone();
    let events_to = &clickhouse;
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        ship_to(events_to, s);
        s.sms.providers = vec![orderguard::settings::ProviderSettings::Http {
            name: "gateway-a".to_owned(),
            url: gateway_url,
            timeout_ms: 2_000,
            auth_header: None,
            auth_value: None,
            body_template: None,
        }];
        s.sms.receipt_secret = Some(RECEIPT_SECRET.to_owned().into());
        s.brand_secrets
            .insert("operator_token".into(), "camara-bearer".to_owned().into());
        s.brand_secrets
            .insert("nordwind_upstream".into(), "Bearer up".to_owned().into());
        s.gate.poll_interval_ms = 50;
        let swap = |on_swap: &str| {
            format!(
                "[fraud.sim_swap]\nbase_url = \"{swap_url}\"\ntoken_secret = \"operator_token\"\non_swap = \"{on_swap}\"\n"
            )
        };
        set_fraud_rules(
            &s.brands_dir,
            "nordwind",
            &format!(
                "[fraud.rate_limits]\nphone = [\"2/10m\"]\n[fraud.pumping]\nmin_starts = 10\nbrand_min_starts = 0\n{}",
                swap("refuse")
            ),
        );
        set_fraud_rules(
            &s.brands_dir,
            "fjallnet",
            &format!(
                "[fraud.pumping]\nmin_starts = 1000\nbrand_min_starts = 0\n{}",
                swap("flag")
            ),
        );
        let path = s.brands_dir.join("nordwind/brand.toml");
        let mut text = std::fs::read_to_string(&path).expect("brand.toml");
        text.push_str(&format!(
            "\n[upstream]\nurl = \"{upstream_url}/orders\"\nauth_header = \"Authorization\"\nauth_secret = \"nordwind_upstream\"\ntimeout_ms = 2000\n"
        ));
        std::fs::write(&path, text).expect("write brand.toml");
    })
    .await;
    let prometheus = Prometheus::start(app.address.trim_start_matches("http://"));
    eventually("Prometheus scrapes the service", 60, async || {
        prometheus.series(&app.client, "up == 1").await > 0
    })
    .await;

    traffic(&app, &accepted).await;
    eventually("both held orders forwarded or refused", 30, async || {
        upstream.count() >= 3
    })
    .await;
    app.wait_for_outbox_drained(60).await;
    // The sweeper marks the overdue ones expired, and a forwarder records an upstream's answer
    // (with its event) only after the upstream answered: wait for those events to arrive.
    eventually("expiries and forwards in ClickHouse", 60, async || {
        app.wait_for_outbox_drained(60).await;
        clickhouse
            .number("SELECT count() FROM events WHERE event_type = 'verification_expired'")
            .await
            >= 7
            && clickhouse
                .number(
                    "SELECT count() FROM events \
                     WHERE event_type IN ('order_forwarded', 'order_forward_failed')",
                )
                .await
                >= 3
    })
    .await;
    let counts = clickhouse
        .rows("SELECT event_type, count() AS n FROM events GROUP BY event_type ORDER BY event_type")
        .await;
    println!("events: {counts:?}");
    let span = clickhouse
        .rows("SELECT toUnixTimestamp(min(ts)) AS first, toUnixTimestamp(max(ts)) AS last FROM events")
        .await;
    let (first, last) = (
        span[0]["first"].as_u64().expect("first") - 3_600,
        span[0]["last"].as_u64().expect("last") + 3_600,
    );

    let metrics = app.metrics().await;
    let metrics_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(metrics_file.path(), &metrics).expect("write metrics");
    // Scraped for long enough that every rate over a 5-minute window (the checker's `$__rate_interval`) has samples
    // of the traffic: every series the traffic created exists by now, and a rate needs two
    // samples of it, so two scrapes (1 s apart) after this moment. Waiting for some series
    // only let those created last (refusals, finished verifications) have one sample when the
    // machine was quiet and the run fast.
    let traffic_done = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let two_scrapes_later = format!("timestamp(up) > {}", traffic_done + 2.0);
    eventually("Prometheus scraped the service's traffic", 60, async || {
        prometheus.series(&app.client, &two_scrapes_later).await > 0
            && prometheus
                .series(
                    &app.client,
                    "rate(orderguard_verifications_started_total[5m]) > 0",
                )
                .await
                > 0
            && prometheus
                .series(
                    &app.client,
                    "rate(orderguard_sms_send_seconds_bucket[5m]) > 0",
                )
                .await
                > 0
    })
    .await;

    let mut check = std::process::Command::new(python());
    check
        .arg(root().join("tests/dashboards/check.py"))
        .args([
            "--dashboards",
            &root().join("dashboards").display().to_string(),
        ])
        .args([
            "--clickhouse",
            &clickhouse.url(),
            "--database",
            "orderguard",
        ])
        .args(["--from", &first.to_string(), "--to", &last.to_string()])
        .args(["--metrics", &metrics_file.path().display().to_string()])
        .args(["--prometheus", &prometheus.url]);
    let output = run(check).await;
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "dashboards check failed:\n{report}"
    );
    assert!(
        report.contains(" 0 failures") && report.matches("ok   ").count() > 40,
        "{report}"
    );

    // The alert rules: syntax and their unit tests, by Prometheus' own tool.
    let alerts = root().join("dashboards/alerts");
    for args in [
        vec!["check", "rules", "orderguard.rules.yml"],
        vec!["test", "rules", "orderguard.test.yml"],
    ] {
        let mut promtool = std::process::Command::new("promtool");
        promtool.args(&args).current_dir(&alerts);
        let output = run(promtool).await;
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The rules loaded into the running Prometheus too.
    let rules: Value = app
        .client
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("json");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 7, "{rules}");
}
