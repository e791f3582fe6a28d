//! Several replicas for real: three `orderguard` processes in production mode on different ports
//! over one PostgreSQL and one ClickHouse, as the Helm chart runs them. A verification started on
//! one is checked on another and its code page served by a third; rate limits and prefix blocks
//! hold across them; one is killed with SIGKILL in the middle of a load and nothing is lost or
//! duplicated — verifications, forwarded orders, events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::helpers::{
    GatewayBehaviour, OTHER_KEY, Reply, Running, ScriptedServer, SmsGateway, TestClickHouse,
    eventually, free_port, fresh_postgres_database, orderguard, production_secrets, read,
    set_fraud_rules, test_brands_dir, wait_until_ready,
};

struct Replica {
    base: String,
    running: Option<Running>,
}

/// Starts replica `name` over the shared database, ClickHouse and SMS gateway.
async fn replica(
    dir: &Path,
    name: &str,
    shared: &(String, String, String),
    client: &reqwest::Client,
) -> Replica {
    let (database, clickhouse, gateway) = shared;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.join(format!("data-{name}"));
    let child = orderguard(dir)
        .arg("serve")
        .env("ORDERGUARD_MODE", "production")
        .env("ORDERGUARD_HTTP__PORT", port.to_string())
        .env("ORDERGUARD_HTTP__PUBLIC_URL", "https://pay.example.test")
        .env("ORDERGUARD_DATA_DIR", &data)
        .env("ORDERGUARD_BRANDS_DIR", dir.join("brands"))
        .env("ORDERGUARD_EVENTS__INSTANCE", name)
        .env("ORDERGUARD_EVENTS__PERIOD_MS", "100")
        // A batch the killed replica had claimed is taken over after this long.
        .env("ORDERGUARD_EVENTS__LEASE_MS", "3000")
        .env("ORDERGUARD_CLICKHOUSE__URL", clickhouse)
        .env("ORDERGUARD_GATE__POLL_INTERVAL_MS", "100")
        .env("ORDERGUARD_GATE__RETRY_INITIAL_MS", "100")
        .env("ORDERGUARD_GATE__LEASE_MS", "2000")
        .env("ORDERGUARD_SMS__PROVIDERS__0__KIND", "http")
        .env("ORDERGUARD_SMS__PROVIDERS__0__NAME", "gateway")
        .env("ORDERGUARD_SMS__PROVIDERS__0__URL", gateway)
        .env(
            "ORDERGUARD_BRAND_SECRETS__OTHERBRAND_UPSTREAM",
            "Bearer upstream-secret",
        )
        .envs(
            production_secrets(database)
                .iter()
                .map(|(k, v)| (*k, v.as_str())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a replica");
    let mut running = Running(child);
    wait_until_ready(client, &base, &mut running.0).await;
    Replica {
        base,
        running: Some(running),
    }
}

async fn post(client: &reqwest::Client, url: String, body: &Value, key: Option<&str>) -> Value {
    let mut request = client.post(url).bearer_auth(OTHER_KEY).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    match request.send().await {
        Ok(response) => {
            let answer = read(response).await;
            json!({"status": answer.status, "body": answer.body})
        }
        Err(error) => json!({"status": 0, "error": error.to_string()}),
    }
}

/// The code in the last SMS to `phone`.
fn code(gateway: &SmsGateway, phone: &str) -> Option<String> {
    let received = gateway.received.lock().expect("lock");
    received
        .iter()
        .rev()
        .find(|(_, body)| body["to"] == phone)
        .and_then(|(_, body)| body["text"].as_str())
        .and_then(|text| text.rsplit_once(" #"))
        .map(|(_, code)| code.to_owned())
}

/// Buyer `n`'s number: spread over +49151, as real buyers' are.
fn number(n: u64) -> String {
    format!("+49151{:08}", n.wrapping_mul(61_803_399) % 100_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_everything_and_lose_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let brands = test_brands_dir(dir.path());
    set_fraud_rules(
        &brands,
        "otherbrand",
        "[fraud.rate_limits]\nphone = [\"3/10m\"]\n[fraud.pumping]\nmin_starts = 10\nbrand_min_starts = 0\n",
    );
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let path = brands.join("otherbrand/brand.toml");
    let mut text = std::fs::read_to_string(&path).expect("brand.toml");
    text.push_str(&format!(
        "\n[upstream]\nurl = \"{}/orders\"\nauth_header = \"Authorization\"\nauth_secret = \"otherbrand_upstream\"\ntimeout_ms = 2000\n",
        upstream.url
    ));
    std::fs::write(&path, text).expect("write brand.toml");
    let clickhouse = TestClickHouse::start().await;
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let shared = (
        fresh_postgres_database().await,
        clickhouse.url(),
        gateway.url.clone(),
    );
    let client = reqwest::Client::new();
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        replicas.push(replica(dir.path(), name, &shared, &client).await);
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let base = |i: usize| bases[i].clone();

    // Started on A, checked on B, its code page served by C.
    let phone = number(1);
    let started = post(
        &client,
        format!("{}/v1/verifications", base(0)),
        &json!({"phone": phone, "order_reference": "R-1", "amount": "19.90", "currency": "EUR"}),
        None,
    )
    .await;
    assert_eq!(started["status"], 201, "{started}");
    let id = started["body"]["id"].as_str().expect("id").to_owned();
    let widget = started["body"]["widget_url"].as_str().expect("widget");
    let page_path = widget.trim_start_matches("https://pay.example.test");
    let page = client
        .get(format!("{}{page_path}", base(2)))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200, "the code page from replica C");
    assert!(page.text().await.expect("page").contains("R-1"));
    let checked = post(
        &client,
        format!("{}/v1/verifications/{id}/check", base(1)),
        &json!({"code": code(&gateway, &phone).expect("code")}),
        None,
    )
    .await;
    assert_eq!(checked["body"]["status"], "approved", "{checked}");

    // One limit over all three: the number's 4th start is refused whichever replica gets it.
    let limited = number(2);
    let mut statuses = Vec::new();
    for attempt in 0..6 {
        let answer = post(
            &client,
            format!("{}/v1/verifications", base(attempt % 3)),
            &json!({"phone": limited, "order_reference": format!("L-{attempt}"), "amount": "1.00", "currency": "EUR"}),
            None,
        )
        .await;
        statuses.push(answer["status"].as_u64().expect("status"));
    }
    assert_eq!(
        statuses,
        [201, 201, 201, 429, 429, 429],
        "phone limit 3/10m"
    );

    // A prefix block placed through one replica holds on the others: a pumper over random
    // numbers of +49179, never confirming, through A, until A refuses the prefix.
    let mut n = 0u64;
    eventually("the pumping guard blocks +49179", 90, async || {
        n += 1;
        let phone = format!("+49179{:08}", n.wrapping_mul(61_803_399) % 100_000_000);
        let answer = post(
            &client,
            format!("{}/v1/verifications", base(0)),
            &json!({"phone": phone, "order_reference": format!("P-{n}"), "amount": "1.00", "currency": "EUR"}),
            None,
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        answer["body"]["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(":prefix_blocked"))
    })
    .await;
    for other in [1, 2] {
        let answer = post(
            &client,
            format!("{}/v1/verifications", base(other)),
            &json!({"phone": "+4917912345678", "order_reference": format!("X-{other}"), "amount": "1.00", "currency": "EUR"}),
            None,
        )
        .await;
        assert_eq!(answer["status"], 429, "replica {other}: {answer}");
        assert!(
            answer["body"]["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(":prefix_blocked"))
        );
    }

    // A load over the three, four buyers at a time: verifications and held orders, each
    // confirmed; C is SIGKILLed while requests are in flight. A shop retries what failed on
    // another replica with the same Idempotency-Key.
    let done = std::sync::atomic::AtomicUsize::new(0);
    let c_alive = std::sync::atomic::AtomicBool::new(true);
    let flow = async |k: usize| -> (String, String, Option<String>) {
        let phone = number(1_000 + k as u64);
        let gate = k % 3 == 0;
        let alive = || -> Vec<usize> {
            if c_alive.load(std::sync::atomic::Ordering::SeqCst) {
                vec![0, 1, 2]
            } else {
                vec![0, 1]
            }
        };
        let key = format!("flow-{k}");
        let (path, body) = if gate {
            (
                "/v1/orders",
                json!({"payload": {"sku": "SIM", "n": k}, "order_reference": format!("G-{k}"),
                       "amount": "9.90", "currency": "EUR", "phone": phone}),
            )
        } else {
            (
                "/v1/verifications",
                json!({"phone": phone, "order_reference": format!("F-{k}"), "amount": "9.90", "currency": "EUR"}),
            )
        };
        // A request the killed replica was serving holds its key for its lease (the request
        // timeout + 1 s): the retry waits as Retry-After says.
        let mut answer = json!({"status": 0});
        for attempt in 0..60 {
            let targets = alive();
            let target = targets[(k + attempt) % targets.len()];
            answer = post(
                &client,
                format!("{}{path}", base(target)),
                &body,
                Some(&key),
            )
            .await;
            if matches!(answer["status"].as_u64(), Some(201 | 202)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert!(
            matches!(answer["status"].as_u64(), Some(201 | 202)),
            "flow {k}: {answer}"
        );
        let verification = answer["body"]
            .get("verification_id")
            .or(answer["body"].get("id"))
            .and_then(Value::as_str)
            .expect("verification id")
            .to_owned();
        let order = gate.then(|| answer["body"]["id"].as_str().expect("order").to_owned());
        let code = code(&gateway, &phone).expect("an SMS");
        let mut checked = json!({});
        for attempt in 0..20 {
            let targets = alive();
            let target = targets[(k + attempt + 1) % targets.len()];
            checked = post(
                &client,
                format!("{}/v1/verifications/{verification}/check", base(target)),
                &json!({"code": code}),
                None,
            )
            .await;
            if checked["status"] == 200
                || checked["body"]["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(":verification_already_approved"))
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(
            checked["status"] == 200 || checked["status"] == 409,
            "flow {k} check: {checked}"
        );
        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (phone, verification, order)
    };
    let worker = async |first: usize| {
        let mut results = Vec::new();
        for k in (first..60).step_by(4) {
            results.push(flow(k).await);
        }
        results
    };
    let mut killed = replicas[2].running.take().expect("running");
    let killer = async {
        eventually("half the load done", 60, async || {
            done.load(std::sync::atomic::Ordering::SeqCst) >= 24
        })
        .await;
        killed.0.kill().expect("SIGKILL replica C");
        c_alive.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = killed.0.wait();
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all((0..4).map(worker)), killer);
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut orders: BTreeSet<String> = BTreeSet::new();
    for (phone, verification, order) in results.into_iter().flatten() {
        assert_eq!(ids.insert(phone, verification), None);
        orders.extend(order);
    }
    assert_eq!(ids.len(), 60);

    // Nothing lost, nothing twice: in the database, at the order API, in ClickHouse.
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&shared.0)
        .await
        .expect("database");
    for (phone, id) in &ids {
        let (count, status): (i64, String) =
            sqlx::query_as("SELECT COUNT(*), MIN(status) FROM verification WHERE phone_e164 = $1")
                .bind(phone)
                .fetch_one(&mut db)
                .await
                .expect("count");
        assert_eq!((count, status.as_str()), (1, "approved"), "{phone} ({id})");
    }
    // The upstream answering is not the end of a forward: the forwarder then records the
    // outcome and its `order_forwarded` event in one transaction. Wait for that record, or the
    // outbox may be seen empty before the event is in it.
    eventually("every held order recorded as forwarded", 60, async || {
        let forwarded: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM held_order WHERE status = 'forwarded'")
                .fetch_one(&mut db)
                .await
                .expect("held orders");
        forwarded as usize == orders.len()
    })
    .await;
    let keys = upstream.idempotency_keys();
    assert_eq!(keys, orders, "each order forwarded once, with its own key");
    assert_eq!(upstream.count(), orders.len(), "no order forwarded twice");
    eventually("the outbox drained into ClickHouse", 60, async || {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&mut db)
            .await
            .expect("outbox");
        pending == 0
    })
    .await;
    let rows = clickhouse
        .rows(
            "SELECT event_type, count() AS rows, uniqExact(event_id) AS events FROM events \
             WHERE verification_id IN (SELECT verification_id FROM events WHERE event_type = 'verification_approved') \
             GROUP BY event_type ORDER BY event_type",
        )
        .await;
    let by_type: BTreeMap<String, (u64, u64)> = rows
        .iter()
        .map(|row| {
            let number = |v: &Value| v.as_u64().or_else(|| v.as_str()?.parse().ok()).expect("n");
            (
                row["event_type"].as_str().expect("type").to_owned(),
                (number(&row["rows"]), number(&row["events"])),
            )
        })
        .collect();
    let flows_approved = ids.len() as u64 + 1;
    for kind in ["verification_started", "sms_sent", "verification_approved"] {
        assert_eq!(
            by_type.get(kind),
            Some(&(flows_approved, flows_approved)),
            "{kind}: one row per approved verification, none twice: {by_type:?}"
        );
    }
    let gate_events = by_type.get("order_forwarded").copied().unwrap_or_default();
    assert_eq!(
        gate_events,
        (orders.len() as u64, orders.len() as u64),
        "one order_forwarded per order: {by_type:?}"
    );
}
