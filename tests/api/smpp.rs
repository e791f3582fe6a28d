//! The SMPP provider against an SMSC we did not write: the npm package `smpp`'s server
//! (tests/smpp/server.js), counting on the server what arrived, how, and how often.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{
    Backend, DEV_KEY, GatewayBehaviour, SMSC_PASSWORD, SmsGateway, Smsc, TestApp, TestClickHouse,
    eventually, ship_to, spawn_app_with,
};

fn body(phone: &str, reference: &str) -> Value {
    json!({"phone": phone, "order_reference": reference, "amount": "49.90", "currency": "EUR"})
}

/// German mobile numbers far apart (no number walk for the fraud rules to see).
fn spread_number(n: usize) -> String {
    let prefix = ["151", "152", "157", "159"][n % 4];
    format!("+49{prefix}{}", 10_000_000 + (n * 12_345_679) % 89_999_999)
}

/// The code in a code SMS: the WebOTP line `@host #123456` ends it.
fn code_in(text: &str) -> String {
    text.rsplit('#')
        .next()
        .expect("a WebOTP line")
        .trim()
        .to_owned()
}

/// The SMSC's submits as whole messages: concatenated parts joined in order, by reference.
fn messages(submits: &[Value]) -> Vec<(String, Vec<Value>)> {
    let mut whole: Vec<(String, Vec<Value>)> = Vec::new();
    let mut parts: BTreeMap<(String, u64), Vec<Value>> = BTreeMap::new();
    for submit in submits {
        match submit["udh"].as_object() {
            None => whole.push((
                submit["text"].as_str().expect("text").to_owned(),
                vec![submit.clone()],
            )),
            Some(udh) => {
                let key = (
                    submit["destination"]
                        .as_str()
                        .expect("destination")
                        .to_owned(),
                    udh["reference"].as_u64().expect("reference"),
                );
                let list = parts.entry(key.clone()).or_default();
                list.push(submit.clone());
                let total = udh["total"].as_u64().expect("total") as usize;
                if list.len() == total {
                    let mut list = parts.remove(&key).expect("parts");
                    list.sort_by_key(|part| part["udh"]["part"].as_u64());
                    let text = list
                        .iter()
                        .map(|p| p["text"].as_str().expect("text"))
                        .collect();
                    whole.push((text, list));
                }
            }
        }
    }
    whole
}

async fn smpp_app(
    backend: Backend,
    smsc: &Smsc,
    clickhouse: Option<&TestClickHouse>,
    more: Vec<orderguard::settings::ProviderSettings>,
) -> TestApp {
    let provider = smsc.provider("smsc", SMSC_PASSWORD);
    spawn_app_with(backend, |s| {
        if let Some(clickhouse) = clickhouse {
            ship_to(clickhouse, s);
        }
        let mut providers = vec![provider];
        providers.extend(more);
        s.sms.providers = providers;
        // Nordwind may send two segments here, so a long text goes concatenated.
        let path = s.brands_dir.join("nordwind/brand.toml");
        let mut text = std::fs::read_to_string(&path).expect("brand.toml");
        text.push_str("\n[sms]\nmax_segments = 2\n");
        std::fs::write(&path, text).expect("write brand.toml");
    })
    .await
}

async fn smpp_sends_gsm7_ucs2_and_concatenated_texts_and_receipts_become_events(backend: Backend) {
    let smsc = Smsc::start();
    let clickhouse = TestClickHouse::start().await;
    let app = smpp_app(backend, &smsc, Some(&clickhouse), vec![]).await;
    let long = format!("LONG-{}", "X".repeat(55));
    let cases = [
        ("+4915123456701", "A-1001".to_owned(), 0u64, false),
        ("+4915123456702", "Ж-1002".to_owned(), 8, true),
        ("+4915123456703", long.clone(), 0, true),
        ("+4915123456799", "A-1004".to_owned(), 0, false),
    ];
    let mut ids = Vec::new();
    for (phone, reference, _, _) in &cases {
        let started = app
            .post("/v1/verifications", DEV_KEY, &body(phone, reference))
            .await;
        assert_eq!(started.status, 201, "{started:#?}");
        ids.push(started.body["id"].as_str().expect("id").to_owned());
    }
    let submits = smsc.submits().await;
    let whole = messages(&submits);
    assert_eq!(whole.len(), 4, "{submits:#?}");
    for ((phone, reference, data_coding, concatenated), id) in cases.iter().zip(&ids) {
        let destination = phone.trim_start_matches('+');
        let (text, parts) = whole
            .iter()
            .find(|(_, parts)| parts[0]["destination"] == destination)
            .unwrap_or_else(|| panic!("nothing for {destination}: {submits:#?}"));
        assert!(text.contains(reference.as_str()), "intact: {text}");
        assert!(text.starts_with("Nordwind Mobil: Code "), "{text}");
        for part in parts {
            assert_eq!(part["data_coding"], *data_coding, "{part}");
            assert_eq!(
                (
                    part["destination_ton"].as_u64(),
                    part["destination_npi"].as_u64()
                ),
                (Some(1), Some(1))
            );
            assert_eq!(part["source"], "Nordwind");
            assert_eq!(part["source_ton"], 5, "an alphanumeric sender");
            assert_eq!(part["registered_delivery"], 1);
            assert_eq!(part["answered"], true);
        }
        assert_eq!(parts.len() > 1, *concatenated, "{parts:#?}");
        if !*concatenated {
            assert_eq!(parts[0]["esm_class"], 0, "default mode, no UDH");
        }
        if *concatenated {
            assert!(
                parts
                    .iter()
                    .all(|p| p["esm_class"].as_u64().unwrap_or(0) & 0x40 != 0),
                "UDHI"
            );
        }
        // The text the phone shows carries the code that approves its verification.
        let checked = app.check(id, &code_in(text)).await;
        assert_eq!(checked.body["status"], "approved", "{checked:#?}");
    }

    // Every receipt applied and every deliver_sm answered.
    eventually("every receipt answered", 30, async || {
        let state = smsc.state().await;
        state["receipts_sent"].as_u64() >= Some(whole.len() as u64)
            && state["receipts_sent"] == state["receipts_answered"]
    })
    .await;
    eventually("the keep-alive ran", 30, async || {
        smsc.state().await["enquire_links"].as_u64() > Some(0)
    })
    .await;
    app.wait_for_outbox_drained(30).await;
    let mut outcomes = BTreeMap::new();
    eventually("the receipts' events", 30, async || {
        app.wait_for_outbox_drained(30).await;
        let rows = clickhouse
            .rows("SELECT toString(verification_id) AS id, event_type, sms_provider, reason FROM events FINAL \
                   WHERE event_type IN ('sms_delivered', 'sms_undelivered')")
            .await;
        outcomes = rows
            .iter()
            .map(|row| {
                let field = |name: &str| row[name].as_str().expect(name).to_owned();
                (field("id"), (field("event_type"), field("sms_provider"), field("reason")))
            })
            .collect();
        outcomes.len() == ids.len()
    })
    .await;
    for (index, id) in ids.iter().enumerate() {
        let expected = if index == 3 {
            ("sms_undelivered", "stat:UNDELIV err:001")
        } else {
            ("sms_delivered", "")
        };
        assert_eq!(
            outcomes[id],
            (
                expected.0.to_owned(),
                "smsc".to_owned(),
                expected.1.to_owned()
            ),
            "{outcomes:#?}"
        );
    }
    let metrics = app.metrics().await;
    for line in [
        r#"orderguard_smpp_session_up{provider="smsc"} 1"#,
        r#"orderguard_smpp_binds_total{provider="smsc",result="ok"} 1"#,
        r#"orderguard_smpp_submits_total{outcome="ok",provider="smsc"} 6"#,
        r#"orderguard_smpp_receipt_lag_seconds_count{provider="smsc"} 4"#,
        r#"orderguard_sms_receipts_total{provider="smpp",result="recorded"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    // The two concatenated messages' second parts have receipts of their own, for ids not
    // kept (the first part's is): each is tried again for a while, and counted once.
    let unknown = r#"orderguard_sms_receipts_total{provider="smpp",result="unknown_message"} 2"#;
    assert!(metrics.contains(unknown), "{metrics}");
}

crate::both_backends!(smpp_sends_gsm7_ucs2_and_concatenated_texts_and_receipts_become_events);

/// A throttling SMSC is retried on the session; one that keeps throttling is failed over.
#[tokio::test]
async fn a_throttling_smsc_is_retried_then_failed_over() {
    let smsc = Smsc::start();
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let app = smpp_app(
        Backend::Sqlite,
        &smsc,
        None,
        vec![gateway.provider("gateway", 2_000)],
    )
    .await;
    smsc.configure(json!({"throttle": 1})).await;
    let first = app
        .post("/v1/verifications", DEV_KEY, &body("+4915123456711", "T-1"))
        .await;
    assert_eq!(first.status, 201, "{first:#?}");
    let state = smsc.state().await;
    assert_eq!(state["throttled"], 1);
    assert_eq!(
        smsc.submits().await.len(),
        1,
        "accepted once, after the retry"
    );
    assert!(gateway.received.lock().expect("lock").is_empty());

    smsc.configure(json!({"throttle": 100})).await;
    let second = app
        .post("/v1/verifications", DEV_KEY, &body("+4915123456712", "T-2"))
        .await;
    assert_eq!(second.status, 201, "{second:#?}");
    assert_eq!(
        smsc.state().await["throttled"],
        4,
        "three tries, then the next provider"
    );
    assert_eq!(
        smsc.submits().await.len(),
        1,
        "nothing more accepted by the SMSC"
    );
    assert_eq!(
        gateway.received.lock().expect("lock").len(),
        1,
        "the gateway sent it"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_smpp_submits_total{outcome="throttled",provider="smsc"} 4"#),
        "{metrics}"
    );
}

/// The SMSC cuts every session in the middle of a load: the provider reconnects, nothing is
/// submitted twice, and every start is either sent (and its receipt recorded) or reported
/// failed to the shop.
#[tokio::test]
async fn a_session_cut_mid_load_reconnects_and_sends_nothing_twice() {
    let smsc = Smsc::start();
    let clickhouse = TestClickHouse::start().await;
    let app = smpp_app(Backend::Postgres, &smsc, Some(&clickhouse), vec![]).await;
    smsc.configure(json!({"drop_after": 12})).await;
    let total = 40;
    let mut answers = Vec::new();
    for batch in 0..(total / 8) {
        let starts = (0..8).map(|i| {
            let n = batch * 8 + i;
            let body = body(&spread_number(n), &format!("D-{n}"));
            let app = &app;
            async move { (n, app.post("/v1/verifications", DEV_KEY, &body).await) }
        });
        answers.extend(futures_util::future::join_all(starts).await);
    }
    let sent: Vec<usize> = answers
        .iter()
        .filter(|(_, a)| a.status == 201)
        .map(|(n, _)| *n)
        .collect();
    let failed: Vec<usize> = answers
        .iter()
        .filter(|(_, a)| a.status == 502 && a.problem() == "sms_delivery_failed")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(sent.len() + failed.len(), total, "{answers:#?}");
    assert!(!failed.is_empty(), "the cut failed some sends");

    eventually("the provider bound again", 30, async || {
        smsc.state().await["binds"].as_u64() >= Some(2)
    })
    .await;
    assert!(smsc.state().await["dropped_sessions"].as_u64() >= Some(1));
    // Counted on the SMSC: no order's SMS arrived twice; each sent one arrived and was
    // answered.
    let submits = smsc.submits().await;
    let mut by_reference: BTreeMap<usize, Vec<&Value>> = BTreeMap::new();
    for submit in &submits {
        let text = submit["text"].as_str().expect("text");
        let n: usize = text
            .split("D-")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("a reference in {text}"));
        by_reference.entry(n).or_default().push(submit);
    }
    assert!(
        by_reference.values().all(|list| list.len() == 1),
        "sent twice: {by_reference:#?}"
    );
    for n in &sent {
        assert_eq!(by_reference[n][0]["answered"], true, "D-{n}");
    }
    // A failed one arrived at most once (above); the SMSC may have taken it with its answer
    // lost in the cut: the shop was told it failed, and the buyer may resend.
    // The reconnected session sends again, and every sent message's receipt is an event.
    let after = app
        .post(
            "/v1/verifications",
            DEV_KEY,
            &body("+4915123499999", "D-after"),
        )
        .await;
    assert_eq!(after.status, 201, "{after:#?}");
    eventually("every sent message's receipt recorded", 60, async || {
        app.wait_for_outbox_drained(30).await;
        clickhouse
            .number("SELECT count() FROM events FINAL WHERE event_type IN ('sms_delivered', 'sms_undelivered')")
            .await
            >= (sent.len() + 1) as u64
    })
    .await;
    let delivered = clickhouse
        .number("SELECT count() FROM events FINAL WHERE event_type IN ('sms_delivered', 'sms_undelivered')")
        .await;
    assert_eq!(
        delivered,
        (sent.len() + 1) as u64,
        "one receipt event per sent message"
    );
    let failed_events = clickhouse
        .number("SELECT count() FROM events FINAL WHERE event_type = 'sms_failed'")
        .await;
    assert_eq!(
        failed_events,
        failed.len() as u64,
        "one failure event per failed send"
    );
}

/// A wrong password is a clear error in the log and the metrics; the service stays ready
/// while another provider works, and is not ready while no provider can send.
#[tokio::test]
async fn a_wrong_password_is_a_clear_error_and_readiness_follows_the_providers() {
    let smsc = Smsc::start();
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let wrong = smsc.provider("smsc", "wrong");
    let fallback = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(Backend::Sqlite, |s| s.sms.providers = vec![wrong, fallback]).await;
    eventually("the bind refused", 20, async || {
        app.metrics()
            .await
            .contains(r#"orderguard_smpp_binds_total{provider="smsc",result="EsmeRinvpaswd"}"#)
    })
    .await;
    assert!(
        crate::helpers::captured_logs().contains("the SMSC refused the password (EsmeRinvpaswd)"),
        "a clear error in the log"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_smpp_session_up{provider="smsc"} 0"#),
        "{metrics}"
    );
    let ready = app.get_public("/readyz").await;
    assert_eq!(
        (ready.status, &ready.body["sms"]),
        (200, &json!("available")),
        "{ready:#?}"
    );
    let started = app
        .post("/v1/verifications", DEV_KEY, &body("+4915123456721", "W-1"))
        .await;
    assert_eq!(started.status, 201, "{started:#?}");
    assert_eq!(
        gateway.received.lock().expect("lock").len(),
        1,
        "sent by the gateway"
    );
    assert!(smsc.submits().await.is_empty());
    assert_eq!(smsc.state().await["binds"], 0);

    // Only the SMSC: ready while bound, not ready while it refuses every bind, ready again.
    let only = smsc.provider("smsc", SMSC_PASSWORD);
    let app = spawn_app_with(Backend::Sqlite, |s| s.sms.providers = vec![only]).await;
    smsc.configure(json!({"refuse_bind": true, "drop_now": true}))
        .await;
    eventually("not ready without a session", 20, async || {
        let ready = app.get_public("/readyz").await;
        ready.status == 503 && ready.body["sms"] == "no_provider_available"
    })
    .await;
    let refused = app
        .post("/v1/verifications", DEV_KEY, &body("+4915123456722", "W-2"))
        .await;
    refused.assert_problem(502, "sms_delivery_failed");
    smsc.configure(json!({"refuse_bind": false})).await;
    eventually("ready again once bound", 20, async || {
        app.get_public("/readyz").await.status == 200
    })
    .await;
    let sent = app
        .post("/v1/verifications", DEV_KEY, &body("+4915123456723", "W-3"))
        .await;
    assert_eq!(sent.status, 201, "{sent:#?}");
}

/// rusmppc handles five queued calls per poll of its connection and is polled again only by
/// the socket or its keep-alive: a burst of concurrent submits (and the receipts' answers) must
/// not wait for the next `enquire_link`, here an hour away (so a stalled call fails the test by
/// nextest's per-test bound, not by a clock of ours). The sends go to the provider itself, all
/// at once (through HTTP a debug build spaces them out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_sends_does_not_wait_for_the_keep_alive() {
    use orderguard::sms::{SmppProvider, SmsMessage, SmsProvider};
    let smsc = Smsc::start();
    let mut settings = smsc.provider("smsc", SMSC_PASSWORD);
    if let orderguard::settings::ProviderSettings::Smpp {
        enquire_link_ms,
        window,
        submit_timeout_ms,
        ..
    } = &mut settings
    {
        *enquire_link_ms = 3_600_000;
        *window = 64;
        *submit_timeout_ms = 3_600_000;
    }
    let (receipts, mut received) = tokio::sync::mpsc::unbounded_channel();
    let metrics = std::sync::Arc::new(orderguard::metrics::Metrics::new().expect("metrics"));
    let provider = SmppProvider::start(&settings, receipts, metrics).expect("provider");
    eventually("bound", 20, async || provider.is_bound()).await;
    let messages: Vec<SmsMessage> = (0..64)
        .map(|n| SmsMessage {
            message_id: uuid::Uuid::now_v7(),
            verification_id: orderguard::domain::VerificationId::new(),
            to: orderguard::domain::PhoneNumber::parse_valid(&spread_number(n), None)
                .expect("number")
                .0,
            sender: "Nordwind".to_owned(),
            text: format!("Nordwind: code {n:06}\n\n@localhost #{n:06}"),
        })
        .collect();
    let sent = futures_util::future::join_all(messages.iter().map(|m| provider.send(m))).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    // All receipts held, then answered at once: 64 calls queued on a quiet socket, the case
    // that stalled (the first five went out, the rest waited for the keep-alive).
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(received.recv().await.expect("a receipt"));
    }
    futures_util::future::join_all(held.into_iter().map(|r| r.acknowledge())).await;
    eventually("every receipt answered", 10, async || {
        smsc.state().await["receipts_answered"] == 64
    })
    .await;
    assert_eq!(smsc.state().await["binds"], 1, "all on the one session");
}
