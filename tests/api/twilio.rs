//! The Twilio provider against a stand-in for Twilio's Messages endpoint that records the exact
//! request, and status callbacks signed by Twilio's own SDK (`twilio` from PyPI,
//! `RequestValidator`): our check of `X-Twilio-Signature` is tested against Twilio's code, not
//! against our idea of it.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, GatewayBehaviour, SmsGateway, TestApp, TestClickHouse, TwilioReply, TwilioRequest,
    TwilioServer, read, ship_to, spawn_app_with, start_body,
};
use orderguard::settings::ProviderSettings;

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "f3c2a9d8e7b6a5f4e3d2c1b0a9f8e7d6";
const RECEIPT_SECRET: &str = "receipt-secret-for-tests";

fn twilio(server: &TwilioServer, api_key: Option<(&str, &str)>) -> ProviderSettings {
    ProviderSettings::Twilio {
        name: "twilio".to_owned(),
        account_sid: ACCOUNT_SID.to_owned(),
        auth_token: AUTH_TOKEN.to_owned().into(),
        api_key_sid: api_key.map(|(sid, _)| sid.to_owned()),
        api_key_secret: api_key.map(|(_, secret)| secret.to_owned().into()),
        from: None,
        messaging_service_sid: None,
        base_url: server.base_url.clone(),
        timeout_ms: 2_000,
        status_callbacks: true,
    }
}

/// `X-Twilio-Signature` of each `(auth_token, url, params)` as Twilio's SDK computes it.
fn twilio_signatures(cases: &[(&str, &str, &BTreeMap<String, String>)]) -> Vec<String> {
    use std::io::Write;
    let python = std::env::var("ORDERGUARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let cases: Vec<Value> = cases
        .iter()
        .map(|(token, url, params)| json!({"auth_token": token, "url": url, "params": params}))
        .collect();
    let mut child = std::process::Command::new(python)
        .arg(format!("{root}/tests/python/twilio_sign.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python with the twilio package (tests/run.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::from(cases).to_string().as_bytes())
        .expect("write cases");
    let output = child.wait_with_output().expect("the signer ran");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("signatures")
}

/// The fields of a status callback for `sent` as Twilio posts them.
fn status_fields(
    sent: &TwilioRequest,
    status: &str,
    error: Option<&str>,
) -> BTreeMap<String, String> {
    let sid = sent.sid.clone().expect("accepted");
    let mut fields: BTreeMap<String, String> = [
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("From", sent.field("From").expect("From")),
        ("To", sent.field("To").expect("To")),
        ("MessageSid", &sid),
        ("SmsSid", &sid),
        ("MessageStatus", status),
        ("SmsStatus", status),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(code) = error {
        fields.insert("ErrorCode".to_owned(), code.to_owned());
    }
    fields
}

async fn post_callback(
    app: &TestApp,
    fields: &[(String, String)],
    signature: Option<&str>,
) -> crate::helpers::Answer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut request = app
        .client
        .post(app.url("/v1/callbacks/sms/twilio"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    read(request.send().await.expect("callback")).await
}

fn pairs(fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The code in a code SMS: the WebOTP line `@host #123456` ends it.
fn code_in(body: &str) -> String {
    body.rsplit('#')
        .next()
        .expect("a WebOTP line")
        .trim()
        .to_owned()
}

async fn twilio_gets_the_documented_form_and_its_signed_callbacks_become_events(backend: Backend) {
    let clickhouse = TestClickHouse::start().await;
    let server = TwilioServer::start(vec![], TwilioReply::Created).await;
    // An `http` gateway beside it, whose shared receipt secret must not settle Twilio's messages.
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let provider = twilio(&server, None);
    let fallback = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(backend, |s| {
        ship_to(&clickhouse, s);
        s.sms.providers = vec![provider, fallback];
        s.sms.receipt_secret = Some(RECEIPT_SECRET.to_owned().into());
    })
    .await;
    let ids = [
        app.start_ok().await,
        app.start_ok().await,
        app.start_ok().await,
    ];
    let sent = server.requests();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_eq!(
        gateway.received.lock().expect("lock").len(),
        0,
        "Twilio took them all"
    );
    let callback_url = app
        .url("/v1/callbacks/sms/twilio")
        .replace("127.0.0.1", "localhost");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    for request in &sent {
        assert_eq!(
            request.path,
            format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
        );
        assert_eq!(request.authorization, basic);
        assert_eq!(request.content_type, "application/x-www-form-urlencoded");
        let names: Vec<&str> = request.form.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["To", "Body", "From", "StatusCallback"],
            "{request:#?}"
        );
        assert_eq!(request.field("To"), Some(crate::helpers::PHONE));
        assert_eq!(
            request.field("From"),
            Some("Nordwind"),
            "the brand's sender"
        );
        assert_eq!(request.field("StatusCallback"), Some(callback_url.as_str()));
    }
    // The body arrived intact: its code approves the verification it was sent for.
    let approved = app
        .check(&ids[0], &code_in(sent[0].field("Body").expect("Body")))
        .await;
    assert_eq!(approved.body["status"], "approved", "{approved:#?}");

    // Callbacks signed by Twilio's SDK for the URL Twilio was given.
    let delivered = status_fields(&sent[0], "delivered", None);
    let in_transit = status_fields(&sent[1], "sent", None);
    let undelivered = status_fields(&sent[1], "undelivered", Some("30003"));
    let third = status_fields(&sent[2], "delivered", None);
    let failed_third = status_fields(&sent[2], "failed", Some("30008"));
    let other_token = "0000000000000000ffffffffffffffff";
    let signatures = twilio_signatures(&[
        (AUTH_TOKEN, &callback_url, &delivered),
        (AUTH_TOKEN, &callback_url, &in_transit),
        (AUTH_TOKEN, &callback_url, &undelivered),
        (AUTH_TOKEN, &callback_url, &third),
        (other_token, &callback_url, &failed_third),
        (
            AUTH_TOKEN,
            "https://attacker.example/v1/callbacks/sms/twilio",
            &failed_third,
        ),
        (AUTH_TOKEN, &callback_url, &failed_third),
    ]);

    let answer = post_callback(&app, &pairs(&delivered), Some(&signatures[0])).await;
    assert_eq!(
        (answer.status, &answer.body["result"]),
        (200, &json!("recorded")),
        "{answer:#?}"
    );
    let again = post_callback(&app, &pairs(&delivered), Some(&signatures[0])).await;
    assert_eq!(again.body["result"], "duplicate", "{again:#?}");
    let answer = post_callback(&app, &pairs(&in_transit), Some(&signatures[1])).await;
    assert_eq!(
        (answer.status, &answer.body["result"]),
        (200, &json!("ignored")),
        "not final"
    );
    let answer = post_callback(&app, &pairs(&undelivered), Some(&signatures[2])).await;
    assert_eq!(answer.body["result"], "recorded", "{answer:#?}");

    // What an attacker would post for the third message: each refused before anything is read.
    let mut tampered = pairs(&third);
    tampered.iter_mut().for_each(|(name, value)| {
        if name == "MessageStatus" || name == "SmsStatus" {
            *value = "failed".to_owned();
        }
    });
    let mut extra = pairs(&third);
    extra.push(("ErrorCode".to_owned(), "30008".to_owned()));
    let truncated = &signatures[3][..signatures[3].len() - 4];
    let mut one_byte = base64::engine::general_purpose::STANDARD
        .decode(&signatures[3])
        .expect("base64");
    one_byte.truncate(1);
    let one_byte = base64::engine::general_purpose::STANDARD.encode(one_byte);
    for (fields, signature, what) in [
        (pairs(&third), None, "unsigned"),
        (pairs(&third), Some(""), "an empty signature"),
        (tampered, Some(signatures[3].as_str()), "a changed status"),
        (extra, Some(signatures[3].as_str()), "an added field"),
        (pairs(&third), Some(truncated), "a truncated signature"),
        (pairs(&third), Some(one_byte.as_str()), "a one-byte tag"),
        (
            pairs(&failed_third),
            Some(signatures[4].as_str()),
            "another account's token",
        ),
        (
            pairs(&failed_third),
            Some(signatures[5].as_str()),
            "signed for another URL",
        ),
        (
            pairs(&failed_third),
            Some(signatures[0].as_str()),
            "another message's signature",
        ),
    ] {
        let answer = post_callback(&app, &fields, signature).await;
        assert_eq!(answer.status, 403, "{what}: {answer:#?}");
        answer.assert_problem(403, "invalid_signature");
    }
    // The shared secret of the `http` gateways cannot settle a Twilio message.
    let body = json!({"reference": sent[2].sid, "status": "failed"}).to_string();
    let now = orderguard::domain::now_millis() / 1000;
    let signature = crate::helpers::sign_receipt(RECEIPT_SECRET, now, &body);
    app.post_http_receipt(&body, &signature)
        .await
        .assert_problem(404, "unknown_message");
    // None of that changed anything: the real failure is still the first final status.
    let answer = post_callback(&app, &pairs(&failed_third), Some(&signatures[6])).await;
    assert_eq!(answer.body["result"], "recorded", "{answer:#?}");

    app.wait_for_outbox_drained(30).await;
    let rows = clickhouse
        .rows(
            "SELECT toString(verification_id) AS id, event_type, sms_provider, reason FROM events FINAL \
             WHERE event_type IN ('sms_delivered', 'sms_undelivered') ORDER BY ts, toString(event_id)",
        )
        .await;
    let seen: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|row| {
            let field = |name: &str| row[name].as_str().expect(name).to_owned();
            (
                field("id"),
                field("event_type"),
                field("sms_provider"),
                field("reason"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                ids[0].clone(),
                "sms_delivered".to_owned(),
                "twilio".to_owned(),
                String::new()
            ),
            (
                ids[1].clone(),
                "sms_undelivered".to_owned(),
                "twilio".to_owned(),
                "twilio error 30003 (unreachable handset)".to_owned()
            ),
            (
                ids[2].clone(),
                "sms_undelivered".to_owned(),
                "twilio".to_owned(),
                "twilio error 30008 (unknown error)".to_owned()
            ),
        ]
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_sms_receipts_total{provider="twilio",result="recorded"} 3"#),
        "{metrics}"
    );
}

crate::both_backends!(twilio_gets_the_documented_form_and_its_signed_callbacks_become_events);

/// 429 and 5xx fail over to the next provider; a refusal of the number (21211) is final and
/// named in the event. Sends authenticate with an API key when one is configured.
#[tokio::test]
async fn a_throttled_twilio_fails_over_and_a_refused_number_is_final() {
    let clickhouse = TestClickHouse::start().await;
    let server = TwilioServer::start(
        vec![
            TwilioReply::Error(429, 20429),
            TwilioReply::Error(503, 20500),
        ],
        TwilioReply::Error(400, 21211),
    )
    .await;
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let api_key = ("SK0123456789abcdef0123456789abcdef", "key-secret");
    let provider = twilio(&server, Some(api_key));
    let fallback = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(Backend::Sqlite, |s| {
        ship_to(&clickhouse, s);
        s.sms.providers = vec![provider, fallback];
    })
    .await;
    app.start_ok().await;
    app.start_ok().await;
    assert_eq!(
        gateway.received.lock().expect("lock").len(),
        2,
        "429 and 503 fail over"
    );
    let refused = app.start(&start_body()).await;
    refused.assert_problem(502, "sms_delivery_failed");
    assert_eq!(
        gateway.received.lock().expect("lock").len(),
        2,
        "a refused number is not tried elsewhere"
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", api_key.0, api_key.1))
    );
    let sent = server.requests();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter().all(|request| request.authorization == basic),
        "{sent:#?}"
    );
    app.wait_for_outbox_drained(30).await;
    let rows = clickhouse
        .rows("SELECT sms_provider, reason FROM events FINAL WHERE event_type = 'sms_failed'")
        .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["sms_provider"], "twilio");
    assert_eq!(
        rows[0]["reason"],
        "twilio: twilio error 21211 (invalid 'To' number) (400 Bad Request)"
    );
    let metrics = app.metrics().await;
    for line in [
        r#"orderguard_sms_sends_total{provider="twilio",result="error"} 2"#,
        r#"orderguard_sms_sends_total{provider="twilio",result="refused"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}
