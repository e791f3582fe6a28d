//! The event pipeline against a real ClickHouse engine: every state change arrives exactly
//! once, pseudonymised, through outages, bad data and several instances.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Backend, DEV_KEY, PHONE, TestClickHouse, ship_to, spawn_app_with, start_body,
};

both_backends!(
    events_keep_the_pseudonym_and_prefix_stored_at_start,
    every_lifecycle_path_emits_exactly_its_events,
    no_raw_personal_data_reaches_clickhouse,
);

/// `event_type[:outcome]` per verification, in order. (ClickHouse does not sort UUIDs in
/// their text order; the text of a v7 UUID sorts by creation.)
async fn sequences(clickhouse: &TestClickHouse) -> BTreeMap<String, Vec<String>> {
    let rows = clickhouse
        .rows("SELECT toString(verification_id) AS id, event_type, outcome, attempt FROM events FINAL ORDER BY ts, toString(event_id)")
        .await;
    let mut sequences: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let kind = row["event_type"].as_str().expect("type");
        let step = match (kind, row["outcome"].as_str().unwrap_or_default()) {
            ("code_checked", outcome) => format!("{kind}:{outcome}:{}", row["attempt"]),
            _ => kind.to_owned(),
        };
        sequences
            .entry(row["id"].as_str().expect("id").to_owned())
            .or_default()
            .push(step);
    }
    sequences
}

async fn every_lifecycle_path_emits_exactly_its_events(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| ship_to(&clickhouse, s)).await;

    let approved = app.start_ok().await;
    let wrong = app.wrong_code(&approved).await;
    app.check(&approved, &wrong)
        .await
        .assert_problem(422, "invalid_code");
    assert_eq!(
        app.check(&approved, &app.latest_code(&approved).await)
            .await
            .status,
        200
    );

    let locked = app.start_ok().await;
    let wrong = app.wrong_code(&locked).await;
    for _ in 0..5 {
        app.check(&locked, &wrong).await;
    }

    let aborted = app.start_ok().await;
    assert_eq!(app.cancel(&aborted).await.status, 200);

    let expired = app.start_ok().await;
    app.travel(&expired, 301_000).await;
    assert_eq!(app.status(&expired).await.body["status"], "expired");

    let resent = app.start_ok().await;
    app.travel(&resent, 31_000).await;
    assert_eq!(app.resend(&resent).await.status, 200);
    assert_eq!(
        app.check(&resent, &app.latest_code(&resent).await)
            .await
            .status,
        200
    );

    let mut premium = start_body();
    premium["phone"] = json!("+49 900 1234567");
    app.start(&premium)
        .await
        .assert_problem(422, "premium_rate_number");

    app.wait_for_outbox_drained(30).await;
    let sequences = sequences(&clickhouse).await;
    let expect = |id: &str, steps: &[&str]| {
        let got: Vec<&str> = sequences
            .get(id)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(got, steps, "events of verification {id}");
    };
    let start = ["verification_started", "sms_sent"];
    expect(
        &approved,
        &[
            &start[..],
            &[
                "code_checked:incorrect:1",
                "code_checked:correct:2",
                "verification_approved",
            ],
        ]
        .concat(),
    );
    let mut lock_steps = start.to_vec();
    let checks: Vec<String> = (1..=5)
        .map(|n| format!("code_checked:incorrect:{n}"))
        .collect();
    lock_steps.extend(checks.iter().map(String::as_str));
    lock_steps.push("verification_locked");
    expect(&locked, &lock_steps);
    expect(&aborted, &[&start[..], &["verification_aborted"]].concat());
    expect(&expired, &[&start[..], &["verification_expired"]].concat());
    expect(
        &resent,
        &[
            &start[..],
            &[
                "code_resent",
                "sms_sent",
                "code_checked:correct:1",
                "verification_approved",
            ],
        ]
        .concat(),
    );

    let blocked = clickhouse.rows("SELECT reason, outcome, country, number_prefix FROM events WHERE event_type = 'verification_blocked'").await;
    assert_eq!(
        blocked,
        vec![
            json!({"reason": "premium_rate_number", "outcome": "blocked", "country": "DE", "number_prefix": "+49900"})
        ]
    );
    assert_eq!(
        sequences.len(),
        6,
        "five verifications and one blocked start: {sequences:#?}"
    );
    // Each sequence was checked step by step above; together they are every event, once.
    let total: usize = sequences.values().map(Vec::len).sum();
    let raw_rows = clickhouse.number("SELECT count() FROM events").await;
    assert_eq!(
        raw_rows, total as u64,
        "no duplicate rows, even before merges"
    );
    let funnel = clickhouse
        .rows(
            "SELECT sum(starts) AS starts, sum(sends) AS sends, sum(approvals) AS approvals, sum(aborts) AS aborts, \
             sum(expiries) AS expiries, sum(locks) AS locks, sum(blocks) AS blocks, sum(checks) AS checks, \
             sum(wrong_checks) AS wrong FROM funnel_hourly WHERE brand = 'nordwind'",
        )
        .await;
    let expected = [
        ("starts", 5),
        ("sends", 6),
        ("approvals", 2),
        ("aborts", 1),
        ("expiries", 1),
        ("locks", 1),
        ("blocks", 1),
        ("checks", 8),
        ("wrong", 6),
    ];
    for (column, count) in expected {
        let value = &funnel[0][column];
        let value = value
            .as_str()
            .and_then(|s| s.parse().ok())
            .or(value.as_u64());
        assert_eq!(
            value,
            Some(count),
            "funnel_hourly.{column} adds up the same events"
        );
    }
    let metrics = app.metrics().await;
    let shipped = format!("orderguard_events_shipped_total{{sink=\"clickhouse\"}} {total}");
    assert!(metrics.contains(&shipped), "{shipped} missing:\n{metrics}");
}

async fn no_raw_personal_data_reaches_clickhouse(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| ship_to(&clickhouse, s)).await;
    let customer = "customer-4711-anna.example@mail.test";
    let ip = "203.0.113.77";
    let mut body = start_body();
    body["customer_reference"] = json!(customer);
    body["client_ip"] = json!(ip);
    body["user_agent"] = json!(
        "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36"
    );
    let started = app.start(&body).await;
    assert_eq!(started.status, 201, "{started:#?}");
    let id = started.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.check(&id, &app.latest_code(&id).await).await.status,
        200
    );
    let mut blocked = body.clone();
    blocked["phone"] = json!("+46 70 123 45 67");
    app.start(&blocked)
        .await
        .assert_problem(422, "country_not_allowed");
    app.wait_for_outbox_drained(30).await;

    let rows = clickhouse.rows("SELECT * FROM events").await;
    assert_eq!(
        rows.len(),
        5,
        "started, sms_sent, code_checked, approved, blocked: {rows:#?}"
    );
    let forbidden = [PHONE, &PHONE[1..], &PHONE[3..], "701234567", customer, ip];
    for row in &rows {
        for (column, value) in row.as_object().expect("object") {
            if let Value::String(text) = value {
                for raw in forbidden {
                    assert!(!text.contains(raw), "column {column} holds {raw:?}: {row}");
                }
            }
        }
    }
    let first = &rows
        .iter()
        .find(|r| r["event_type"] == "verification_started")
        .expect("started");
    assert_eq!(
        first["phone_pseudonym"].as_str().map(str::len),
        Some(32),
        "a keyed hash, not empty"
    );
    assert_eq!(first["customer_pseudonym"].as_str().map(str::len), Some(32));
    assert_eq!(first["ip_pseudonym"].as_str().map(str::len), Some(32));
    assert_eq!(
        (&first["number_prefix"], &first["country"]),
        (&json!("+49151"), &json!("DE"))
    );
    assert_eq!(first["user_agent_family"], "Chrome Mobile");
    let pseudonyms: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["customer_pseudonym"].as_str())
        .collect();
    assert_eq!(
        pseudonyms.len(),
        1,
        "the same customer, the same pseudonym, in every event"
    );
    let _ = DEV_KEY;
}

both_backends!(
    lost_acknowledgements_are_retried_as_the_same_batch_and_counted_once_everywhere,
    a_bad_batch_is_dead_lettered_and_later_events_still_arrive,
    clickhouse_errors_are_retried_until_it_answers,
    events_older_than_the_retention_disappear,
    without_clickhouse_events_go_to_rotated_json_lines_files,
    delivery_receipts_and_failed_sends_become_events,
    a_relay_that_keeps_up_claims_once_a_period,
);

/// A complete event row, for tests that write to the outbox directly.
pub(crate) fn synthetic_event(event_type: &str, ts: i64) -> orderguard::events::Event {
    orderguard::events::Event {
        event_id: uuid::Uuid::now_v7(),
        ts,
        brand: "nordwind".to_owned(),
        event_type: event_type.to_owned(),
        verification_id: uuid::Uuid::now_v7(),
        order_id: uuid::Uuid::nil(),
        channel: "sms".to_owned(),
        country: "DE".to_owned(),
        number_prefix: "+49151".to_owned(),
        phone_pseudonym: String::new(),
        customer_pseudonym: String::new(),
        ip_pseudonym: String::new(),
        attempt: 0,
        outcome: String::new(),
        reason: String::new(),
        amount_minor: 100,
        currency: "EUR".to_owned(),
        ms_since_start: 0,
        sms_provider: String::new(),
        sms_segments: 0,
        locale: String::new(),
        user_agent_family: String::new(),
        instance: "test".to_owned(),
        rule: String::new(),
        key_type: String::new(),
        flags: Vec::new(),
    }
}

async fn insert_event(app: &crate::helpers::TestApp, event: &orderguard::events::Event) {
    app.insert_outbox_row(
        &event.event_id.to_string(),
        &serde_json::to_string(event).expect("json"),
    )
    .await;
}

/// Starts and cancels `count` verifications, `parallel` at a time: three events each.
async fn start_and_cancel(app: &crate::helpers::TestApp, count: usize, parallel: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let flows = chunk.iter().map(|_| async {
            let id = app.start_ok().await;
            assert_eq!(app.cancel(&id).await.status, 200);
        });
        futures_util::future::join_all(flows).await;
    }
}

async fn a_bad_batch_is_dead_lettered_and_later_events_still_arrive(backend: Backend) {
    let mut clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| ship_to(&clickhouse, s)).await;
    app.wait_for_outbox_drained(30).await; // the schema exists

    // One batch holding good events around a bad one: ClickHouse refuses the whole insert.
    clickhouse.stop();
    start_and_cancel(&app, 2, 2).await;
    let bad = synthetic_event("not_an_event_type", orderguard::domain::now_millis());
    insert_event(&app, &bad).await;
    app.insert_outbox_row("undecodable", "{\"this is\": \"not an event\"}")
        .await;
    start_and_cancel(&app, 2, 2).await;
    clickhouse.restart().await;
    app.wait_for_outbox_drained(60).await;

    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        12,
        "every good event arrived"
    );
    assert_eq!(
        clickhouse
            .number(&format!(
                "SELECT count() FROM events WHERE event_id = '{}'",
                bad.event_id
            ))
            .await,
        0
    );
    assert_eq!(app.db_number("SELECT COUNT(*) FROM dead_letter").await, 2);
    let refused = app
        .db_number("SELECT COUNT(*) FROM dead_letter WHERE error LIKE '%VIOLATED_CONSTRAINT%'")
        .await;
    assert_eq!(refused, 1, "ClickHouse's refusal is kept with the event");
    let undecodable = app
        .db_number("SELECT COUNT(*) FROM dead_letter WHERE error = 'payload is not a valid event'")
        .await;
    assert_eq!(undecodable, 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_events_dead_lettered_total{sink="clickhouse"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"orderguard_clickhouse_errors_total{kind="rejected"}"#),
        "{metrics}"
    );

    // The pipeline moved on: later events still arrive.
    start_and_cancel(&app, 1, 1).await;
    app.wait_for_outbox_drained(30).await;
    assert_eq!(clickhouse.number("SELECT count() FROM events").await, 15);
}

async fn clickhouse_errors_are_retried_until_it_answers(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        s.clickhouse.timeout_ms = 500;
    })
    .await;
    // Slow: the first inserts take longer than the timeout, and are given up and retried.
    clickhouse.slow_next(1_500, 2).await;
    start_and_cancel(&app, 1, 1).await;
    app.wait_for_outbox_drained(30).await;
    assert_eq!(
        clickhouse.number("SELECT count() FROM events FINAL").await,
        3
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_clickhouse_errors_total{kind="unavailable"}"#),
        "the slow answers counted as failures:\n{metrics}"
    );
    // Answering 5xx.
    app.wait_for_outbox_drained(30).await;
    clickhouse.fail_next(503, 4).await;
    start_and_cancel(&app, 3, 3).await;
    app.wait_for_outbox_drained(30).await;
    assert_eq!(
        clickhouse.number("SELECT count() FROM events FINAL").await,
        12
    );
    assert_eq!(
        app.db_number("SELECT COUNT(*) FROM dead_letter").await,
        0,
        "an outage is not bad data"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_clickhouse_errors_total{kind="unavailable"}"#),
        "{metrics}"
    );
}

async fn events_older_than_the_retention_disappear(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        s.clickhouse.retention_months = 2;
    })
    .await;
    let day = 86_400_000;
    let now = orderguard::domain::now_millis();
    let old = synthetic_event("verification_started", now - 95 * day);
    let recent = synthetic_event("verification_started", now - 20 * day);
    insert_event(&app, &old).await;
    insert_event(&app, &recent).await;
    app.wait_for_outbox_drained(30).await;

    clickhouse.execute("OPTIMIZE TABLE events FINAL").await;
    clickhouse
        .execute("OPTIMIZE TABLE funnel_hourly FINAL")
        .await;
    let count = |id: uuid::Uuid| format!("SELECT count() FROM events WHERE event_id = '{id}'");
    assert_eq!(
        clickhouse.number(&count(old.event_id)).await,
        0,
        "older than 2 months: removed"
    );
    assert_eq!(
        clickhouse.number(&count(recent.event_id)).await,
        1,
        "within the retention: kept"
    );
    let ttl = clickhouse.rows("SELECT engine_full FROM system.tables WHERE database = 'orderguard' AND name = 'events'").await;
    assert!(
        ttl[0]["engine_full"]
            .as_str()
            .is_some_and(|e| e.contains("toIntervalMonth(2)")),
        "{ttl:?}"
    );
}

async fn without_clickhouse_events_go_to_rotated_json_lines_files(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |s| {
        s.events.period_ms = 50;
        s.events.batch_rows = 2;
        s.events.jsonl_rotate_bytes = 3_000;
    })
    .await;
    start_and_cancel(&app, 4, 2).await;
    app.wait_for_outbox_drained(30).await;

    let mut files: Vec<_> = std::fs::read_dir(&app.data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rotated by size: {files:?}");
    let mut events = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        assert!(
            !text.contains(&PHONE[1..]),
            "{file:?} holds the phone number"
        );
        for line in text.lines() {
            events.push(
                serde_json::from_str::<orderguard::events::Event>(line)
                    .expect("each line is an event"),
            );
        }
    }
    assert_eq!(events.len(), 12, "three events per verification, each once");
    let mut ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    let aborted = events
        .iter()
        .filter(|e| e.event_type == "verification_aborted")
        .count();
    assert_eq!(aborted, 4);
}

use crate::helpers::sign_receipt as sign;

async fn delivery_receipts_and_failed_sends_become_events(backend: Backend) {
    use crate::helpers::{GatewayBehaviour, SmsGateway};
    let clickhouse = TestClickHouse::start().await;
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let refusing = SmsGateway::start(GatewayBehaviour::Status(400)).await;
    let provider = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        s.sms.providers = vec![provider];
        s.sms.receipt_secret = Some("receipt-secret-for-tests".to_owned().into());
    })
    .await;
    let delivered = app.start_ok().await;
    let undelivered = app.start_ok().await;
    let references: Vec<String> = gateway
        .received
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, body)| body["reference"].as_str().expect("reference").to_owned())
        .collect();

    let now = orderguard::domain::now_millis() / 1000;
    let ok = json!({"reference": references[0], "status": "delivered"}).to_string();
    let answer = app
        .post_http_receipt(&ok, &sign("receipt-secret-for-tests", now, &ok))
        .await;
    assert_eq!(
        (answer.status, &answer.body["result"]),
        (200, &json!("recorded")),
        "{answer:#?}"
    );
    let again = app
        .post_http_receipt(&ok, &sign("receipt-secret-for-tests", now, &ok))
        .await;
    assert_eq!(
        again.body["result"], "duplicate",
        "a repeated receipt changes nothing"
    );
    let failed =
        json!({"reference": references[1], "status": "failed", "error": "absent subscriber"})
            .to_string();
    let answer = app
        .post_http_receipt(&failed, &sign("receipt-secret-for-tests", now, &failed))
        .await;
    assert_eq!(answer.status, 200, "{answer:#?}");

    for (body, signature, status, kind) in [
        (
            ok.clone(),
            sign("wrong-secret", now, &ok),
            401,
            "invalid_signature",
        ),
        (
            ok.clone(),
            sign("receipt-secret-for-tests", now - 3_600, &ok),
            401,
            "invalid_signature",
        ),
        (ok.clone(), "t=1,v1=zz".to_owned(), 401, "invalid_signature"),
    ] {
        app.post_http_receipt(&body, &signature)
            .await
            .assert_problem(status, kind);
    }
    let unknown = json!({"reference": "nope", "status": "delivered"}).to_string();
    app.post_http_receipt(&unknown, &sign("receipt-secret-for-tests", now, &unknown))
        .await
        .assert_problem(404, "unknown_message");

    // A send no provider accepted.
    let failing = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        s.sms.providers = vec![refusing.provider("strict", 2_000)];
    })
    .await;
    let refused = failing.start(&start_body()).await;
    refused.assert_problem(502, "sms_delivery_failed");
    let failed_id = refused.body["verification_id"]
        .as_str()
        .expect("id")
        .to_owned();

    app.wait_for_outbox_drained(30).await;
    failing.wait_for_outbox_drained(30).await;
    let sequences = sequences(&clickhouse).await;
    assert_eq!(
        sequences[&delivered],
        ["verification_started", "sms_sent", "sms_delivered"]
    );
    assert_eq!(
        sequences[&undelivered],
        ["verification_started", "sms_sent", "sms_undelivered"]
    );
    assert_eq!(
        sequences[&failed_id],
        ["verification_started", "sms_failed"]
    );
    let reasons = clickhouse
        .rows("SELECT event_type, sms_provider, reason FROM events WHERE event_type IN ('sms_undelivered', 'sms_failed') ORDER BY event_type")
        .await;
    assert_eq!(reasons[0]["sms_provider"], "strict");
    assert!(
        reasons[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("400")),
        "{reasons:?}"
    );
    assert_eq!(
        (&reasons[1]["sms_provider"], &reasons[1]["reason"]),
        (&json!("gateway"), &json!("absent subscriber"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_during_two_thousand_verifications_loses_and_doubles_nothing() {
    let mut clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(Backend::Postgres, |s| {
        ship_to(&clickhouse, s);
        s.database.max_connections = 20;
    })
    .await;
    start_and_cancel(&app, 500, 32).await;
    clickhouse.stop();
    start_and_cancel(&app, 1_000, 32).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_clickhouse_errors_total{kind="unavailable"}"#),
        "{metrics}"
    );
    assert!(
        app.outbox_len().await > 0,
        "events wait in the outbox while ClickHouse is down"
    );
    // The relay refreshes the gauges as it retries: wait for the backlog and its age to show.
    let gauge = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    crate::helpers::eventually("the backlog and its age in the metrics", 10, async || {
        let metrics = app.metrics().await;
        gauge(&metrics, "orderguard_outbox_pending ") > 0.0
            && gauge(&metrics, "orderguard_outbox_oldest_age_seconds ") >= 1.0
    })
    .await;
    clickhouse.restart().await;
    start_and_cancel(&app, 500, 32).await;
    app.wait_for_outbox_drained(180).await;

    // Every state change recorded in the database, once in ClickHouse.
    let verifications = app
        .db_number("SELECT COUNT(*) FROM verification WHERE status = 'aborted'")
        .await;
    let sent = app.db_number("SELECT COUNT(*) FROM sms_message").await;
    assert_eq!((verifications, sent), (2_000, 2_000));
    let expected = (verifications * 2 + sent) as u64; // started + aborted, and sms_sent
    assert_eq!(
        clickhouse.number("SELECT count() FROM events FINAL").await,
        expected
    );
    assert_eq!(
        clickhouse
            .number("SELECT uniqExact(event_id) FROM events")
            .await,
        expected
    );
    let raw = clickhouse.number("SELECT count() FROM events").await;
    assert!(raw >= expected, "raw rows {raw}");
    println!("events: {expected} expected, {raw} rows before merges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_one_postgres_ship_one_outbox_without_duplicates() {
    let mut clickhouse = TestClickHouse::start().await;
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = |s: &mut orderguard::settings::Settings| {
        ship_to(&clickhouse, s);
        s.database.url = Some(database.clone());
        s.events.batch_rows = 25;
    };
    let first = spawn_app_with(Backend::Postgres, configure).await;
    let second = spawn_app_with(Backend::Postgres, configure).await;
    first.wait_for_outbox_drained(30).await;

    // A backlog both relays race for once ClickHouse is back.
    clickhouse.stop();
    start_and_cancel(&first, 150, 16).await;
    start_and_cancel(&second, 150, 16).await;
    clickhouse.restart().await;
    first.wait_for_outbox_drained(120).await;

    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        900,
        "no row twice, not even before merges"
    );
    assert_eq!(
        clickhouse
            .number("SELECT uniqExact(event_id) FROM events")
            .await,
        900
    );
    let shipped = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("orderguard_events_shipped_total{sink=\"clickhouse\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (a, b) = (
        shipped(&first.metrics().await),
        shipped(&second.metrics().await),
    );
    assert_eq!(a + b, 900, "each event shipped by exactly one instance");
    assert!(a > 0 && b > 0, "both instances shipped: {a} and {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shipped_twice_is_counted_once_by_the_exact_queries() {
    use orderguard::events::relay::EventSink;
    let clickhouse = TestClickHouse::start().await;
    let settings = orderguard::settings::ClickHouseSettings::default();
    let sink = orderguard::events::clickhouse::ClickHouseSink::new(&clickhouse.url(), &settings);
    let now = orderguard::domain::now_millis();
    let events: Vec<_> = (0..10)
        .map(|_| synthetic_event("verification_started", now))
        .collect();

    // The acknowledgement of the first write is "lost": the relay sends the same batch again.
    sink.write(&events).await.expect("first write");
    sink.write(&events).await.expect("the same batch again");
    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        10,
        "the deduplication token drops the repeat"
    );
    let funnel = "SELECT sum(starts) FROM funnel_hourly";
    assert_eq!(
        clickhouse.number(funnel).await,
        10,
        "the materialized view is deduplicated too"
    );

    // A repeat in another batch composition gets past the token: only the exact patterns hold.
    sink.write(&events[..4]).await.expect("a re-composed batch");
    assert_eq!(
        clickhouse.number("SELECT count() FROM events FINAL").await,
        10,
        "FINAL collapses the repeat"
    );
    assert_eq!(
        clickhouse
            .number("SELECT uniqExact(event_id) FROM events")
            .await,
        10
    );
    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        14,
        "plain count() is not exact before merges"
    );
    let funnel_after = clickhouse.number(funnel).await;
    assert_eq!(
        funnel_after, 14,
        "the funnel counts a re-composed repeat: it is not an exact count"
    );
    clickhouse.execute("OPTIMIZE TABLE events FINAL").await;
    assert_eq!(
        clickhouse.number("SELECT count() FROM events").await,
        10,
        "merges remove the repeat"
    );
}

/// Events arriving as fast as four writers can add them, for 1.5 s: a relay that claimed
/// again at once after every partial batch would find new events at every claim and ship them
/// in hundreds of small batches, each claim walking the outbox's index. It claims again at
/// once only after a full batch, else once a period.
async fn a_relay_that_keeps_up_claims_once_a_period(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, |s| s.events.period_ms = 250).await;
    let began = std::time::Instant::now();
    let until = began + std::time::Duration::from_millis(1500);
    let writer = || async {
        let mut written = 0;
        while std::time::Instant::now() < until {
            let ts = orderguard::domain::now_millis();
            insert_event(&app, &synthetic_event("verification_started", ts)).await;
            written += 1;
        }
        written
    };
    let (a, b, c, d) = tokio::join!(writer(), writer(), writer(), writer());
    let written = a + b + c + d;
    app.wait_for_outbox_drained(30).await;
    let counter = |metrics: &str, name: &str| -> u64 {
        let line = format!("orderguard_{name}{{sink=\"jsonl\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    // The relay counts a batch just after deleting it from the outbox.
    crate::helpers::eventually("every event counted as shipped", 10, async || {
        counter(&app.metrics().await, "events_shipped_total") == written
    })
    .await;
    let metrics = app.metrics().await;
    let counter = |name: &str| counter(&metrics, name);
    let batches = counter("event_batches_total");
    // At most one claim a period (plus the first and the draining ones), however long a busy
    // machine took to write and drain; a relay claiming in a tight loop made 36–39 here.
    let periods = began.elapsed().as_millis() as u64 / 250;
    assert!(
        (1..=periods + 3).contains(&batches),
        "{batches} batches for {written} events over {periods} periods of 250 ms"
    );
}

/// ClickHouse commits three inserts and loses their answers while starts keep coming: the
/// relay retries exactly the batch it gave up (same rows, same deduplication token), never a
/// batch re-composed with newer rows, so the raw table and the rollup both count each event
/// once (round 1 saw +104 starts in `funnel_hourly` from this fault).
async fn lost_acknowledgements_are_retried_as_the_same_batch_and_counted_once_everywhere(
    backend: Backend,
) {
    let clickhouse = TestClickHouse::start().await;
    let app = crate::helpers::spawn_app_with(backend, |s| {
        crate::helpers::ship_to(&clickhouse, s);
        s.events.batch_rows = 40;
    })
    .await;
    start_and_cancel(&app, 20, 4).await;
    app.wait_for_outbox_drained(30).await;
    clickhouse.drop_next_acks(3).await;
    start_and_cancel(&app, 300, 8).await;
    app.wait_for_outbox_drained(60).await;

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_clickhouse_errors_total{kind="unavailable"}"#),
        "the lost answers were seen as failures: {metrics}"
    );
    let started = "event_type = 'verification_started'";
    let exact = clickhouse
        .number(&format!(
            "SELECT uniqExact(event_id) FROM events WHERE {started}"
        ))
        .await;
    assert_eq!(exact, 320);
    assert_eq!(
        clickhouse
            .number(&format!("SELECT count() FROM events WHERE {started}"))
            .await,
        320,
        "no repeat reached the raw table"
    );
    assert_eq!(
        clickhouse
            .number("SELECT sum(starts) FROM funnel_hourly")
            .await,
        320,
        "nor the rollup"
    );
}

/// The number's pseudonym and prefix are computed once, at start, and stored with the
/// verification: when the number is later blanked (the retention purge), the events that
/// follow still carry the same pseudonym and prefix, so trends do not break.
async fn events_keep_the_pseudonym_and_prefix_stored_at_start(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let app = spawn_app_with(backend, |s| ship_to(&clickhouse, s)).await;
    let id = app.start_ok().await;
    app.db_execute(&format!(
        "UPDATE verification SET phone_e164 = '+4917000000000' WHERE verification_id = '{id}'"
    ))
    .await;
    assert_eq!(app.cancel(&id).await.status, 200);
    app.wait_for_outbox_drained(30).await;
    let rows = clickhouse
        .rows(&format!(
            "SELECT event_type, phone_pseudonym, number_prefix FROM events FINAL \
             WHERE toString(verification_id) = '{id}' ORDER BY ts"
        ))
        .await;
    let kinds: Vec<_> = rows.iter().map(|r| r["event_type"].clone()).collect();
    assert_eq!(
        kinds,
        [
            json!("verification_started"),
            json!("sms_sent"),
            json!("verification_aborted")
        ]
    );
    for row in &rows {
        assert_eq!(
            row["phone_pseudonym"], rows[0]["phone_pseudonym"],
            "{rows:#?}"
        );
        assert_eq!(row["number_prefix"], json!("+49151"), "{rows:#?}");
    }
}
