//! Personal data over its life, on both backends: the retention purge leaves no number, payload
//! or stored answer behind (and events keep their pseudonyms); an erasure removes every trace
//! of one person in the database and the test ClickHouse, and only theirs; access shows what
//! is held.

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Backend, GatewayBehaviour, OTHER_KEY, Reply, ScriptedServer, SmsGateway, TestApp,
    TestClickHouse, eventually, every_value, ship_to, spawn_app_with,
};

both_backends!(
    after_the_retention_period_no_number_payload_or_stored_answer_remains,
    an_erasure_removes_every_trace_of_one_person_and_nothing_else,
);

const PRIVACY_TOKEN: &str = "og_operator_privacy_dpo_token_9876";
const FRAUD_TOKEN: &str = "og_operator_fraud_team_token_1234";
const RECEIPT_SECRET: &str = "receipt-secret-for-privacy";
/// What an order's payload holds about the buyer.
const PAYLOAD_MARK: &str = "Ada Lovelace, 12 St James's Square";

fn operators(s: &mut orderguard::settings::Settings) {
    s.admin.tokens = vec![
        orderguard::settings::OperatorToken {
            actor: "dpo".to_owned(),
            scope: "privacy".to_owned(),
            hash: orderguard::brands::api_key_hash(PRIVACY_TOKEN),
        },
        orderguard::settings::OperatorToken {
            actor: "fraud-team".to_owned(),
            scope: "fraud".to_owned(),
            hash: orderguard::brands::api_key_hash(FRAUD_TOKEN),
        },
    ];
}

/// `otherbrand` (a production-style key) with an order API at `upstream`.
fn with_gate(s: &mut orderguard::settings::Settings, upstream: &str) {
    let path = s.brands_dir.join("otherbrand/brand.toml");
    let mut text = std::fs::read_to_string(&path).expect("brand.toml");
    text.push_str(&format!(
        "\n[upstream]\nurl = \"{upstream}/orders\"\nauth_header = \"Authorization\"\nauth_secret = \"up\"\ntimeout_ms = 2000\n"
    ));
    std::fs::write(&path, text).expect("write brand.toml");
    s.brand_secrets
        .insert("up".into(), "Bearer up".to_owned().into());
    s.gate.poll_interval_ms = 50;
    s.sms.receipt_secret = Some(RECEIPT_SECRET.to_owned().into());
}

async fn start(app: &TestApp, phone: &str, customer: Option<&str>, key: Option<&str>) -> Value {
    let mut body = json!({"phone": phone, "order_reference": format!("P-{}", uuid::Uuid::now_v7().simple()),
                          "amount": "19.90", "currency": "EUR", "client_ip": "203.0.113.9"});
    if let Some(customer) = customer {
        body["customer_reference"] = json!(customer);
    }
    let mut request = app
        .client
        .post(app.url("/v1/verifications"))
        .bearer_auth(OTHER_KEY)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = crate::helpers::read(request.send().await.expect("start")).await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    answer.body
}

fn code(gateway: &SmsGateway, phone: &str) -> String {
    let received = gateway.received.lock().expect("lock");
    let text = received
        .iter()
        .rev()
        .find(|(_, body)| body["to"] == phone)
        .expect("an SMS")
        .1["text"]
        .as_str()
        .expect("text")
        .to_owned();
    text.rsplit_once(" #").expect("WebOTP").1.to_owned()
}

async fn approve(app: &TestApp, gateway: &SmsGateway, id: &str, phone: &str) {
    let answer = crate::helpers::read(
        app.client
            .post(app.url(&format!("/v1/verifications/{id}/check")))
            .bearer_auth(OTHER_KEY)
            .json(&json!({"code": code(gateway, phone)}))
            .send()
            .await
            .expect("check"),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:#?}");
}

async fn hold(app: &TestApp, phone: &str) -> Value {
    let body = json!({"payload": {"ship_to": PAYLOAD_MARK, "sku": "SIM-25"},
                      "order_reference": format!("O-{}", uuid::Uuid::now_v7().simple()),
                      "amount": "49.90", "currency": "EUR", "phone": phone});
    let held = app.post("/v1/orders", OTHER_KEY, &body).await;
    assert_eq!(held.status, 202, "{held:#?}");
    held.body
}

async fn operator(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app.client.post(app.url(path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = crate::helpers::read(request.send().await.expect("operator")).await;
    (answer.status, answer.body)
}

/// An erasure or access request (`what`) with the privacy-scope token.
async fn privacy(app: &TestApp, what: &str, body: &Value) -> (u16, Value) {
    operator(
        app,
        &format!("/v1/admin/privacy/{what}"),
        Some(PRIVACY_TOKEN),
        body,
    )
    .await
}

/// The national digits of `phone` (what a scan looks for: `+4915…` or `015…` or the rest).
fn digits(phone: &str) -> &str {
    &phone[5..]
}

async fn receipt(app: &TestApp, reference: &str, status: &str) -> u16 {
    let body = json!({"reference": reference, "status": status}).to_string();
    let now = orderguard::domain::now_millis() / 1000;
    let signature = crate::helpers::sign_receipt(RECEIPT_SECRET, now, &body);
    app.post_http_receipt(&body, &signature).await.status
}

async fn after_the_retention_period_no_number_payload_or_stored_answer_remains(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let provider = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        with_gate(s, &upstream.url);
        s.sms.providers = vec![provider];
        s.privacy.purge_interval_ms = 100;
    })
    .await;
    let (approved, pending, ordered) = ("+4915123450001", "+4915123450002", "+4915123450003");
    let first = start(&app, approved, Some("customer-77"), Some("key-1")).await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    approve(&app, &gateway, &first_id, approved).await;
    // One never confirmed: it expires (and so finishes) before the retention period starts.
    let unconfirmed = start(&app, pending, None, None).await;
    let unconfirmed = unconfirmed["id"].as_str().expect("id").to_owned();
    app.travel(&unconfirmed, 600_000).await;
    eventually("the unconfirmed one expired", 10, async || {
        app.get(&format!("/v1/verifications/{unconfirmed}"), OTHER_KEY)
            .await
            .body["status"]
            == "expired"
    })
    .await;
    let order = hold(&app, ordered).await;
    let verification = order["verification_id"].as_str().expect("id").to_owned();
    approve(&app, &gateway, &verification, ordered).await;
    eventually("the order forwarded", 30, async || upstream.count() == 1).await;
    // Recorded (with its event) after the upstream answered: wait for the record, so the event
    // is in the outbox before it is drained and counted.
    let order_path = format!("/v1/orders/{}", order["id"].as_str().expect("order id"));
    eventually("the forward recorded", 30, async || {
        app.get(&order_path, OTHER_KEY).await.body["status"] == "forwarded"
    })
    .await;
    app.wait_for_outbox_drained(30).await;

    let before = every_value(&app.database_url).await;
    for raw in [
        digits(approved),
        digits(pending),
        digits(ordered),
        PAYLOAD_MARK,
    ] {
        assert!(
            before.iter().any(|(_, _, v)| v.contains(raw)),
            "{raw} is stored before the retention period"
        );
    }
    let rows = |values: &[(String, String, String)], table: &str| {
        values
            .iter()
            .filter(|(t, c, _)| t == table && c == "verification_id")
            .count()
    };
    let verifications_before = rows(&before, "verification");
    let events_before = clickhouse.number("SELECT count() FROM events").await;

    // 31 days later everything finished is due.
    app.clock.advance(31 * 86_400_000);
    eventually(
        "the purge blanked every number and payload",
        30,
        async || {
            let values = every_value(&app.database_url).await;
            let left: Vec<_> = values
                .iter()
                .filter(|(_, _, v)| {
                    [
                        digits(approved),
                        digits(pending),
                        digits(ordered),
                        PAYLOAD_MARK,
                    ]
                    .iter()
                    .any(|raw| v.contains(raw))
                })
                .collect();
            if !left.is_empty() {
                println!("still held: {left:?}");
            }
            left.is_empty()
        },
    )
    .await;
    let after = every_value(&app.database_url).await;
    assert_eq!(
        rows(&after, "verification"),
        verifications_before,
        "rows stay for counts"
    );
    assert!(
        !after.iter().any(|(t, _, _)| t == "idempotency"),
        "no stored answer older than a day: {:?}",
        after
            .iter()
            .filter(|(t, _, _)| t == "idempotency")
            .collect::<Vec<_>>()
    );
    let metrics = app.metrics().await;
    for table in ["verification", "held_order", "idempotency"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "orderguard_privacy_purged_total{{table=\"{table}\"}}"
            )) && !l.ends_with(" 0")),
            "{table} purged: {metrics}"
        );
    }

    // A late delivery receipt still becomes an event, with the pseudonym stored at start.
    let reference = gateway.received.lock().expect("lock")[0].1["reference"]
        .as_str()
        .expect("reference")
        .to_owned();
    assert_eq!(receipt(&app, &reference, "delivered").await, 200);
    app.wait_for_outbox_drained(30).await;
    let pseudonyms = clickhouse
        .rows(&format!(
            "SELECT event_type, phone_pseudonym FROM events WHERE verification_id = '{first_id}' \
             AND event_type IN ('verification_started', 'sms_delivered') ORDER BY event_type"
        ))
        .await;
    assert_eq!(pseudonyms.len(), 2, "{pseudonyms:?}");
    assert_eq!(
        pseudonyms[0]["phone_pseudonym"],
        pseudonyms[1]["phone_pseudonym"]
    );
    assert_eq!(
        pseudonyms[0]["phone_pseudonym"].as_str().map(str::len),
        Some(32)
    );
    // Every earlier event is still counted; only the receipt's was added.
    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        events_before + 1
    );
    // And nowhere in ClickHouse a raw number, ever.
    for row in clickhouse.rows("SELECT * FROM events").await {
        let text = row.to_string();
        for raw in [
            digits(approved),
            digits(pending),
            digits(ordered),
            PAYLOAD_MARK,
        ] {
            assert!(!text.contains(raw), "{raw} in {row}");
        }
    }
}

async fn an_erasure_removes_every_trace_of_one_person_and_nothing_else(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let provider = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        with_gate(s, &upstream.url);
        operators(s);
        s.sms.providers = vec![provider];
    })
    .await;
    let (person, other) = ("+4915123459911", "+4915123459922");
    // The person: an approved verification (known-good), a pending one, a held order.
    let first = start(&app, person, Some("cust-ada"), Some("ada-1")).await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    approve(&app, &gateway, &first_id, person).await;
    let pending = start(&app, person, None, None).await;
    let pending_id = pending["id"].as_str().expect("id").to_owned();
    hold(&app, person).await;
    // Someone else.
    let theirs = start(&app, other, Some("cust-bob"), None).await;
    approve(&app, &gateway, theirs["id"].as_str().expect("id"), other).await;
    app.wait_for_outbox_drained(30).await;

    let persons = clickhouse
        .rows(&format!(
            "SELECT phone_pseudonym FROM events WHERE verification_id = '{first_id}' \
             AND event_type = 'verification_started'"
        ))
        .await;
    let person_pseudonym = persons[0]["phone_pseudonym"]
        .as_str()
        .expect("p")
        .to_owned();
    let person_events =
        format!("SELECT count() FROM events WHERE phone_pseudonym = '{person_pseudonym}'");
    assert!(clickhouse.number(&person_events).await >= 6);
    let others_before = clickhouse
        .number(&format!(
            "SELECT count() FROM events WHERE phone_pseudonym != '{person_pseudonym}'"
        ))
        .await;

    let request = json!({"brand": "otherbrand", "phone": person});
    // Only a privacy operator may ask.
    let (status, _) = operator(&app, "/v1/admin/privacy/erasure", None, &request).await;
    assert_eq!(status, 401);
    let (status, body) = operator(
        &app,
        "/v1/admin/privacy/erasure",
        Some(FRAUD_TOKEN),
        &request,
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (403, Some("urn:orderguard:problem:wrong_scope"))
    );
    let (status, body) = privacy(
        &app,
        "access",
        &json!({"brand": "otherbrand", "phone": person, "customer_reference": "x"}),
    )
    .await;
    assert_eq!(status, 422, "one of phone and customer_reference: {body}");

    // Access first: everything held.
    let (status, held) = privacy(&app, "access", &request).await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(
        held["verifications"].as_array().map(Vec::len),
        Some(3),
        "{held}"
    );
    assert_eq!(held["orders"].as_array().map(Vec::len), Some(1), "{held}");
    assert!(
        held["orders"][0]["payload"]
            .as_str()
            .is_some_and(|p| p.contains(PAYLOAD_MARK))
    );
    assert_eq!(held["known_good"], true);
    assert!(
        held["events"]["verification_started"].as_u64() == Some(3),
        "{held}"
    );

    let (status, erased) = privacy(&app, "erasure", &request).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["database"]["verifications"], 3, "{erased}");
    assert_eq!(
        erased["database"]["aborted"], 2,
        "the pending one and the held order's"
    );
    assert_eq!(erased["database"]["orders"], 1);
    assert_eq!(erased["database"]["known_good"], 1);
    assert!(
        erased["database"]["idempotency_keys"].as_u64() >= Some(1),
        "{erased}"
    );
    assert_eq!(erased["event_sink"], "clickhouse");
    assert!(erased["events"].as_u64() >= Some(6), "{erased}");

    // No trace left in the database…
    let values = every_value(&app.database_url).await;
    for (table, column, value) in &values {
        assert!(
            !value.contains(digits(person)) && !value.contains(&person_pseudonym),
            "{table}.{column} still holds the person: {value}"
        );
        assert!(!value.contains(PAYLOAD_MARK), "{table}.{column}: {value}");
    }
    assert!(
        values.iter().any(|(_, _, v)| v.contains(digits(other))),
        "others untouched"
    );
    let status = app
        .get(&format!("/v1/verifications/{pending_id}"), OTHER_KEY)
        .await;
    assert_eq!(status.body["status"], "aborted", "{status:#?}");
    // …nor in ClickHouse; everyone else's events are all there, with the audit event.
    app.wait_for_outbox_drained(30).await;
    assert_eq!(clickhouse.number(&person_events).await, 0);
    let audit = clickhouse
        .rows("SELECT * FROM events WHERE event_type = 'privacy_erasure'")
        .await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dpo"))
    );
    assert!(!audit[0].to_string().contains(digits(person)));
    assert!(!audit[0].to_string().contains(&person_pseudonym));
    assert_eq!(
        clickhouse
            .number(&format!(
                "SELECT count() FROM events WHERE phone_pseudonym != '{person_pseudonym}' \
                 AND event_type != 'privacy_erasure'"
            ))
            .await,
        others_before
    );

    // A second erasure finds nothing.
    let (status, again) = privacy(&app, "erasure", &request).await;
    assert_eq!(status, 200);
    assert_eq!(again["events"], 0, "{again}");
    for (what, count) in again["database"].as_object().expect("counts") {
        assert_eq!(count, 0, "{what}: {again}");
    }
    let (_, held) = privacy(&app, "access", &request).await;
    assert_eq!(held["verifications"], json!([]), "{held}");
    assert_eq!(held["known_good"], false, "{held}");
}

/// The embedded default keeps its events in JSON-lines files: an erasure rewrites them without
/// the person's lines, rotated files included, and keeps everyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_rewrites_the_json_lines_files_without_the_person() {
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let provider = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(Backend::Sqlite, |s| {
        operators(s);
        s.sms.providers = vec![provider];
        // Small files: the person's events spread over rotated ones too.
        s.events.jsonl_rotate_bytes = 2_000;
        s.events.period_ms = 20;
    })
    .await;
    let (person, other) = ("+4915123458811", "+4915123458822");
    for _ in 0..3 {
        for phone in [person, other] {
            let started = start(&app, phone, Some(&format!("c-{phone}")), None).await;
            approve(&app, &gateway, started["id"].as_str().expect("id"), phone).await;
        }
        app.wait_for_outbox_drained(30).await;
    }
    let lines = |app: &TestApp| {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&app.data_dir)
            .expect("data dir")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("events") && name.ends_with(".jsonl") {
                let text = std::fs::read_to_string(entry.path()).expect("read");
                lines.extend(text.lines().map(str::to_owned));
            }
        }
        lines
    };
    let files = std::fs::read_dir(&app.data_dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .count();
    assert!(files >= 2, "rotated files: {files}");
    let before = lines(&app);
    let (status, held) = privacy(
        &app,
        "access",
        &json!({"brand": "otherbrand", "phone": person}),
    )
    .await;
    assert_eq!(status, 200, "{held}");
    let theirs = held["events"]
        .as_object()
        .expect("events")
        .values()
        .filter_map(Value::as_u64)
        .sum::<u64>();
    assert!(
        theirs >= 12,
        "the person's events, counted in the files: {held}"
    );
    let (status, erased) = privacy(
        &app,
        "erasure",
        &json!({"brand": "otherbrand", "phone": person}),
    )
    .await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["event_sink"].as_str(), erased["events"].as_u64()),
        (Some("jsonl"), Some(theirs))
    );
    app.wait_for_outbox_drained(30).await;
    let after = lines(&app);
    // Everyone else's lines stay; the audit line was added.
    assert_eq!(after.len() as u64, before.len() as u64 - theirs + 1);
    assert!(after.iter().any(|l| l.contains("privacy_erasure")));
    let pseudonyms: Vec<String> = before
        .iter()
        .filter(|l| !after.contains(l))
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("event")["phone_pseudonym"]
                .as_str()
                .expect("p")
                .to_owned()
        })
        .collect();
    assert_eq!(pseudonyms.len() as u64, theirs);
    for line in &after {
        assert!(
            !pseudonyms.iter().any(|p| line.contains(p.as_str())),
            "{line}"
        );
    }
}
