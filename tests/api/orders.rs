//! Gate mode against real local servers: the upstream order API, the shop's webhook receiver
//! and the customer directory.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Backend, DEV_KEY, PHONE, Reply, ScriptedServer, TestApp, eventually, spawn_app_with,
};

const WEBHOOK_SECRET: &str = "webhook-secret-of-nordwind";

both_backends!(
    an_approved_order_reaches_upstream_once_with_its_key_and_a_verifiable_token,
    an_upstream_503_twice_then_201_is_forwarded_once_after_retries,
    an_upstream_400_is_final_and_never_retried,
    a_hanging_upstream_times_out_and_is_retried,
    aborted_locked_and_expired_orders_are_never_forwarded,
    a_webhook_receiver_that_is_down_is_retried,
    the_customer_directory_gives_the_number_on_file,
    an_order_whose_sms_failed_is_named_by_the_problem_and_can_be_resent,
    a_retry_ten_minutes_away_is_made_when_the_clock_gets_there,
);

/// Appends gate configuration to the test copy of Nordwind's brand.toml.
fn configure_gate(
    settings: &mut orderguard::settings::Settings,
    upstream: &str,
    directory: Option<&str>,
) {
    let path = settings.brands_dir.join("nordwind/brand.toml");
    let mut text = std::fs::read_to_string(&path).expect("brand.toml");
    text.push_str(&format!(
        "\n[upstream]\nurl = \"{upstream}/orders\"\nauth_header = \"Authorization\"\nauth_secret = \"nordwind_upstream\"\ntimeout_ms = 500\n\n[webhooks]\nsecret = \"nordwind_webhooks\"\n"
    ));
    if let Some(directory) = directory {
        text.push_str(&format!(
            "\n[customer_directory]\nkind = \"http\"\nurl = \"{directory}/customers/{{customer_reference}}\"\nphone_pointer = \"/contact/mobile\"\ntimeout_ms = 500\n"
        ));
    }
    std::fs::write(&path, text).expect("write brand.toml");
    settings.brand_secrets.insert(
        "nordwind_upstream".into(),
        "Bearer upstream-secret".to_owned().into(),
    );
    settings
        .brand_secrets
        .insert("nordwind_webhooks".into(), WEBHOOK_SECRET.to_owned().into());
    settings.gate.poll_interval_ms = 50;
    settings.gate.retry_initial_ms = 50;
    settings.gate.retry_max_ms = 200;
    settings.gate.lease_ms = 2_000;
}

async fn gate_app(backend: Backend, upstream: &ScriptedServer) -> TestApp {
    let url = upstream.url.clone();
    spawn_app_with(backend, move |s| configure_gate(s, &url, None)).await
}

fn order_body(callback: Option<&str>) -> Value {
    let mut body = json!({
        "payload": {"items": [{"sku": "SIM-PREPAID-25", "quantity": 1}], "customer": "c-1"},
        "order_reference": "A-2001",
        "amount": "49.90",
        "currency": "EUR",
        "phone": PHONE,
    });
    if let Some(url) = callback {
        body["callback_url"] = json!(url);
    }
    body
}

/// Holds an order; returns (order id, verification id).
async fn hold(app: &TestApp, callback: Option<&str>) -> (String, String) {
    let answer = app.post("/v1/orders", DEV_KEY, &order_body(callback)).await;
    assert_eq!(answer.status, 202, "{answer:#?}");
    assert_eq!(answer.body["status"], "awaiting_verification");
    assert!(
        answer.body["widget_url"]
            .as_str()
            .is_some_and(|u| u.contains("/w/"))
    );
    let order = answer.body["id"].as_str().expect("id").to_owned();
    (
        order,
        answer.body["verification_id"]
            .as_str()
            .expect("verification")
            .to_owned(),
    )
}

async fn order(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/orders/{id}"), DEV_KEY).await.body
}

async fn wait_for_status(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(&format!("order {id} {status}"), 15, async || {
        order(app, id).await["status"] == status
    })
    .await;
    order(app, id).await
}

async fn approve(app: &TestApp, verification: &str) {
    let code = app.latest_code(verification).await;
    let checked = app.check(verification, &code).await;
    assert_eq!(checked.status, 200, "{checked:#?}");
}

/// Verifies a compact JWS with the service's JWKS and returns its claims.
async fn verify_token(app: &TestApp, token: &str) -> Value {
    let jwks = app.get_public("/.well-known/jwks.json").await.body;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("header");
    assert_eq!(header["alg"], "EdDSA");
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in the JWKS {jwks}", header["kid"]));
    assert_eq!(
        (&key["kty"], &key["crv"]),
        (&json!("OKP"), &json!("Ed25519"))
    );
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(key["x"].as_str().expect("x"))
        .expect("b64")
        .try_into()
        .expect("32 bytes");
    let signature =
        Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("b64")).expect("signature");
    VerifyingKey::from_bytes(&x)
        .expect("key")
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the token verifies against the JWKS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("claims")
}

/// The events of `order` written (through the outbox) to the JSON-lines sink, in order.
async fn order_events(app: &TestApp, order: &str) -> Vec<String> {
    app.wait_for_outbox_drained(15).await;
    let text = std::fs::read_to_string(app.data_dir.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("event"))
        .filter(|event| event["order_id"] == order)
        .map(|event| event["event_type"].as_str().expect("type").to_owned())
        .collect()
}

fn verify_webhook(headers: &axum::http::HeaderMap, body: &str) {
    let signature = headers
        .get("orderguard-signature")
        .and_then(|v| v.to_str().ok())
        .expect("signature header");
    let now = orderguard::domain::now_millis() / 1000;
    assert!(
        orderguard::signature::verify(WEBHOOK_SECRET.as_bytes(), signature, body.as_bytes(), now),
        "{signature}"
    );
}

async fn an_approved_order_reaches_upstream_once_with_its_key_and_a_verifiable_token(
    backend: Backend,
) {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(vec![], Reply::Status(200)).await;
    let app = gate_app(backend, &upstream).await;
    let (id, verification) = hold(&app, Some(&format!("{}/hooks", receiver.url))).await;
    assert_eq!(upstream.count(), 0, "nothing is forwarded before approval");

    approve(&app, &verification).await;
    let forwarded = wait_for_status(&app, &id, "forwarded").await;
    assert_eq!(
        (
            &forwarded["upstream_status"],
            &forwarded["forward_attempts"]
        ),
        (&json!(201), &json!(1))
    );
    assert!(
        forwarded["upstream_body"]
            .as_str()
            .is_some_and(|b| b.contains("U-1"))
    );

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "exactly once");
    let (headers, body) = &requests[0];
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("idempotency-key"), id);
    assert_eq!(header("authorization"), "Bearer upstream-secret");
    assert_eq!(
        serde_json::from_str::<Value>(body).expect("json"),
        order_body(None)["payload"],
        "the payload as held"
    );
    let claims = verify_token(&app, &header("orderguard-approval")).await;
    assert_eq!(
        (
            &claims["brand"],
            &claims["sub"],
            &claims["order_reference"],
            &claims["amount"],
            &claims["currency"]
        ),
        (
            &json!("nordwind"),
            &json!(verification),
            &json!("A-2001"),
            &json!("49.90"),
            &json!("EUR")
        )
    );
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

    // API mode sees the same token on the verification.
    let status = app.status(&verification).await;
    assert_eq!(
        status.body["approval_token"],
        json!(header("orderguard-approval"))
    );

    eventually("the webhook", 10, async || receiver.count() == 1).await;
    let (headers, body) = &receiver.requests()[0];
    verify_webhook(headers, body);
    let hook: Value = serde_json::from_str(body).expect("json");
    assert_eq!(
        (&hook["type"], &hook["order_id"], &hook["upstream_status"]),
        (&json!("order.forwarded"), &json!(id), &json!(201))
    );
    // The order is final (forwarded): nothing can claim it again.
    assert_eq!(upstream.count(), 1, "still once");
    assert_eq!(
        order_events(&app, &id).await,
        ["order_held", "order_forwarded"]
    );
}

async fn an_upstream_503_twice_then_201_is_forwarded_once_after_retries(backend: Backend) {
    let upstream = ScriptedServer::start(
        vec![Reply::Status(503), Reply::Status(503)],
        Reply::Status(201),
    )
    .await;
    let app = gate_app(backend, &upstream).await;
    let (id, verification) = hold(&app, None).await;
    approve(&app, &verification).await;
    let forwarded = wait_for_status(&app, &id, "forwarded").await;
    assert_eq!(forwarded["forward_attempts"], 3);
    assert_eq!(upstream.count(), 3);
    assert_eq!(
        upstream.idempotency_keys().into_iter().collect::<Vec<_>>(),
        vec![id],
        "one key: one order upstream"
    );
}

async fn an_upstream_400_is_final_and_never_retried(backend: Backend) {
    let upstream = ScriptedServer::start(vec![Reply::Status(400)], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(vec![], Reply::Status(200)).await;
    let app = gate_app(backend, &upstream).await;
    let (id, verification) = hold(&app, Some(&receiver.url)).await;
    approve(&app, &verification).await;
    let rejected = wait_for_status(&app, &id, "rejected_upstream").await;
    assert_eq!(rejected["upstream_status"], 400);
    // rejected_upstream is final: nothing can claim it again.
    assert_eq!(upstream.count(), 1, "a 4xx is final");
    eventually("the webhook", 10, async || receiver.count() == 1).await;
    assert!(receiver.requests()[0].1.contains("order.rejected_upstream"));
    assert_eq!(
        order_events(&app, &id).await,
        ["order_held", "order_forward_failed"]
    );
}

async fn a_hanging_upstream_times_out_and_is_retried(backend: Backend) {
    let upstream = ScriptedServer::start(vec![Reply::Hang(3_000)], Reply::Status(201)).await;
    let app = gate_app(backend, &upstream).await;
    let (id, verification) = hold(&app, None).await;
    approve(&app, &verification).await;
    let forwarded = wait_for_status(&app, &id, "forwarded").await;
    assert_eq!(
        forwarded["forward_attempts"], 2,
        "the timed-out attempt, then the answered one"
    );
    assert_eq!(upstream.idempotency_keys().len(), 1);
}

async fn aborted_locked_and_expired_orders_are_never_forwarded(backend: Backend) {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(vec![], Reply::Status(200)).await;
    let app = gate_app(backend, &upstream).await;

    let (aborted, verification) = hold(&app, Some(&receiver.url)).await;
    assert_eq!(app.cancel(&verification).await.status, 200);
    let (locked, verification) = hold(&app, Some(&receiver.url)).await;
    let wrong = app.wrong_code(&verification).await;
    for _ in 0..5 {
        app.check(&verification, &wrong).await;
    }
    let (expired, verification) = hold(&app, Some(&receiver.url)).await;
    app.travel(&verification, 301_000).await;

    wait_for_status(&app, &aborted, "aborted").await;
    wait_for_status(&app, &locked, "locked").await;
    wait_for_status(&app, &expired, "expired").await;
    eventually("three webhooks", 10, async || receiver.count() == 3).await;
    let types: std::collections::BTreeSet<String> = receiver
        .requests()
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).expect("json")["type"]
                .as_str()
                .expect("type")
                .to_owned()
        })
        .collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["order.aborted", "order.expired", "order.locked"]
    );
    // All three are final and were never approved: nothing can ever claim them.
    assert_eq!(upstream.count(), 0, "the upstream sees nothing");
}

async fn a_webhook_receiver_that_is_down_is_retried(backend: Backend) {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(
        vec![Reply::Status(503), Reply::Status(500)],
        Reply::Status(200),
    )
    .await;
    let app = gate_app(backend, &upstream).await;
    let (id, verification) = hold(&app, Some(&receiver.url)).await;
    approve(&app, &verification).await;
    wait_for_status(&app, &id, "forwarded").await;
    eventually("the third webhook attempt", 10, async || {
        receiver.count() == 3
    })
    .await;
    for (headers, body) in receiver.requests() {
        verify_webhook(&headers, &body);
    }
    eventually("the delivery recorded", 10, async || {
        app.db_number("SELECT COUNT(*) FROM webhook_delivery WHERE status = 'delivered'")
            .await
            == 1
    })
    .await;
    assert_eq!(receiver.count(), 3, "delivered: no more attempts");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_webhooks_total{brand="nordwind",result="delivered"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"orderguard_webhooks_total{brand="nordwind",result="retry"} 2"#),
        "{metrics}"
    );
}

/// A customer directory: `/customers/<ref>` answers its record or 404; 503 for everything
/// once `down` is set. (Stopping the server would not do: pooled keep-alive connections are
/// served by their own tasks.)
async fn directory(
    records: BTreeMap<&'static str, Value>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (String, tokio::task::JoinHandle<()>) {
    let handler = move |axum::extract::Path(reference): axum::extract::Path<String>| {
        let record = records.get(reference.as_str()).cloned();
        let down = down.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            match record {
                _ if down => (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": "down"})),
                ),
                Some(record) => (axum::http::StatusCode::OK, axum::Json(record)),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": "unknown"})),
                ),
            }
        }
    };
    let router = axum::Router::new().route("/customers/{reference}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind directory");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (
        url,
        tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("directory serves")
        }),
    )
}

async fn the_customer_directory_gives_the_number_on_file(backend: Backend) {
    let on_file = "+4915123456780";
    crate::helpers::must_not_be_logged(on_file);
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, _task) = directory(
        BTreeMap::from([("c-42", json!({"contact": {"mobile": on_file}}))]),
        down.clone(),
    )
    .await;
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let (upstream_url, directory_url) = (upstream.url.clone(), url.clone());
    let app = spawn_app_with(backend, move |s| {
        configure_gate(s, &upstream_url, Some(&directory_url))
    })
    .await;

    let mut body = order_body(None);
    body["customer_reference"] = json!("c-42");
    body["phone"] = json!("+4915199999999");
    let held = app.post("/v1/orders", DEV_KEY, &body).await;
    assert_eq!(held.status, 202, "{held:#?}");
    let verification = held.body["verification_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let inbox = app
        .get_public(&format!("/dev/inbox?verification_id={verification}"))
        .await;
    assert_eq!(
        inbox.body["messages"][0]["to"], on_file,
        "the number on file, not the typed one"
    );
    crate::helpers::must_not_be_logged(inbox.body["messages"][0]["code"].as_str().expect("code"));

    let mut unknown = order_body(None);
    unknown["customer_reference"] = json!("c-404");
    app.post("/v1/orders", DEV_KEY, &unknown)
        .await
        .assert_problem(422, "customer_unknown");

    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut down = order_body(None);
    down["customer_reference"] = json!("c-42");
    let answer = app.post("/v1/orders", DEV_KEY, &down).await;
    answer.assert_problem(503, "customer_directory_unavailable");
    assert!(answer.header("retry-after").is_some());
    let mut api_mode = crate::helpers::start_body();
    api_mode["customer_reference"] = json!("c-42");
    app.start(&api_mode)
        .await
        .assert_problem(503, "customer_directory_unavailable");
    let all = app.get_public("/dev/inbox").await;
    assert_eq!(
        all.body["messages"].as_array().map(Vec::len),
        Some(1),
        "no SMS without a number on file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_the_approval_forward_once() {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = |s: &mut orderguard::settings::Settings| {
        configure_gate(s, &upstream.url, None);
        s.database.url = Some(database.clone());
    };
    let first = spawn_app_with(Backend::Postgres, configure).await;
    let second = spawn_app_with(Backend::Postgres, configure).await;
    let (id, verification) = hold(&first, None).await;
    let code = first.latest_code(&verification).await;
    let (a, b) = tokio::join!(
        first.check(&verification, &code),
        second.check(&verification, &code)
    );
    let approvals = [a.status, b.status].iter().filter(|s| **s == 200).count();
    assert_eq!(approvals, 1, "{a:#?} {b:#?}");
    wait_for_status(&first, &id, "forwarded").await;
    // Forwarded is final, and a lease is renewed while its attempt runs: no other attempt
    // can be in flight.
    assert_eq!(upstream.count(), 1, "one forward between the two instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_refused_without_an_upstream_or_with_a_bad_payload_or_callback() {
    let plain = crate::helpers::spawn_app(Backend::Sqlite).await;
    plain
        .post("/v1/orders", DEV_KEY, &order_body(None))
        .await
        .assert_problem(422, "gate_not_configured");

    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let app = gate_app(Backend::Sqlite, &upstream).await;
    let mut huge = order_body(None);
    huge["payload"] = json!({"notes": "x".repeat(40_000)});
    app.post("/v1/orders", DEV_KEY, &huge)
        .await
        .assert_problem(413, "payload_too_large");
    let insecure = app
        .post(
            "/v1/orders",
            DEV_KEY,
            &order_body(Some("http://shop.example.com/hooks")),
        )
        .await;
    insecure.assert_problem(422, "invalid_request");
    assert_eq!(insecure.body["field"], "callback_url");
    app.get(&format!("/v1/orders/{}", uuid::Uuid::now_v7()), DEV_KEY)
        .await
        .assert_problem(404, "not_found");
    let all = app.get_public("/dev/inbox").await;
    assert_eq!(
        all.body["messages"].as_array().map(Vec::len),
        Some(0),
        "no refused order sent an SMS"
    );
}

/// The round-1 SSRF: `callback_url`s pointing into the service's own network. With the
/// production policy (loopback refused) every internal target is a 422 and nothing is sent;
/// a name resolving to loopback is refused too. The dev policy allows loopback only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_into_internal_networks_are_refused_and_never_called() {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(vec![], Reply::Status(200)).await;
    let url = upstream.url.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        configure_gate(s, &url, None);
        s.gate.allow_loopback_callbacks = Some(false);
    })
    .await;
    let port = receiver.url.rsplit(':').next().expect("port").to_owned();
    let internal = [
        "http://127.0.0.1:22/".to_owned(),
        "http://[::1]:6379/".to_owned(),
        "https://10.0.0.1/".to_owned(),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://100.64.1.1/".to_owned(),
        "https://[fd12::1]/".to_owned(),
        "https://[::ffff:127.0.0.1]/".to_owned(),
        format!("https://127.0.0.1:{port}/hooks"),
        format!("https://localhost:{port}/hooks"),
        format!("{}/hooks", receiver.url),
    ];
    for target in &internal {
        let answer = app
            .post("/v1/orders", DEV_KEY, &order_body(Some(target)))
            .await;
        answer.assert_problem(422, "invalid_request");
        assert_eq!(answer.body["field"], "callback_url", "{target}");
    }
    assert_eq!(receiver.count(), 0, "no webhook reached loopback");
    assert_eq!(app.sms_count().await, 0, "no refused order sent an SMS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_with_a_webhook_host_list_accepts_only_those_hosts() {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let url = upstream.url.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        configure_gate(s, &url, None);
        let path = s.brands_dir.join("nordwind/brand.toml");
        let text = std::fs::read_to_string(&path).expect("brand.toml");
        std::fs::write(
            &path,
            text.replace("[webhooks]\n", "[webhooks]\nhosts = [\"localhost\"]\n"),
        )
        .expect("write");
    })
    .await;
    let refused = app
        .post(
            "/v1/orders",
            DEV_KEY,
            &order_body(Some("http://127.0.0.1:9/hooks")),
        )
        .await;
    refused.assert_problem(422, "invalid_request");
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("allow-list")),
        "{refused:#?}"
    );
    let accepted = app
        .post(
            "/v1/orders",
            DEV_KEY,
            &order_body(Some("http://localhost:9/hooks")),
        )
        .await;
    assert_eq!(accepted.status, 202, "{accepted:#?}");
}

/// Round 1: the README's PyJWT snippet accepted one brand's token for another brand's order, and
/// a 20-digit ICCID reached the order API as `1.2345678901234568e+22`. The snippet now runs,
/// as the README prints it, in PyJWT against tokens this service issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_relying_party_accepts_a_token_only_for_its_brand_order_and_exact_payload() {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let app = gate_app(Backend::Sqlite, &upstream).await;
    let raw = r#"{"iccid": 89460000000000000001, "price": 49.900, "items":[{"sku":"SIM-25"}]}"#;
    let body = format!(
        r#"{{"payload": {raw}, "order_reference": "A-2001", "amount": "49.90", "currency": "EUR", "phone": "{PHONE}"}}"#
    );
    let held = crate::helpers::read(
        app.client
            .post(app.url("/v1/orders"))
            .bearer_auth(DEV_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(held.status, 202, "{held:#?}");
    let order_id = held.body["id"].as_str().expect("id").to_owned();
    let verification = held.body["verification_id"].as_str().expect("v").to_owned();
    approve(&app, &verification).await;
    wait_for_status(&app, &order_id, "forwarded").await;
    let (headers, forwarded) = upstream.requests().remove(0);
    assert_eq!(forwarded, raw, "forwarded byte for byte");
    let token = headers["orderguard-approval"]
        .to_str()
        .expect("token")
        .to_owned();
    let claims = verify_token(&app, &token).await;
    assert_eq!(
        (&claims["aud"], &claims["order_id"]),
        (&json!("nordwind"), &json!(order_id))
    );

    // Another brand's approval for the same reference, amount and currency (API mode).
    let other = app
        .post(
            "/v1/verifications",
            crate::helpers::OTHER_KEY,
            &json!({"phone": "+46701234567", "order_reference": "A-2001", "amount": "49.90", "currency": "EUR"}),
        )
        .await;
    assert_eq!(other.status, 201, "{other:#?}");
    let other_id = other.body["id"].as_str().expect("id").to_owned();
    let code = app.latest_code(&other_id).await;
    let approved = app
        .client
        .post(app.url(&format!("/v1/verifications/{other_id}/check")))
        .bearer_auth(crate::helpers::OTHER_KEY)
        .json(&json!({"code": code}))
        .send()
        .await
        .expect("check");
    let approved = crate::helpers::read(approved).await;
    let other_token = approved.body["approval_token"]
        .as_str()
        .expect("approval token")
        .to_owned();
    assert_eq!(
        approved.header("cache-control"),
        Some("no-store"),
        "a token is never cached"
    );

    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let gate = |token: &str, brand: &str, payload: &str| {
        json!({"token": token, "brand": brand, "ref": "A-2001", "amount": "49.90",
               "currency": "EUR", "order_id": order_id, "body_b64": b64(payload.as_bytes())})
    };
    let api = |token: &str, brand: &str| json!({"token": token, "brand": brand, "ref": "A-2001", "amount": "49.90", "currency": "EUR"});
    let tampered = raw.replace("89460000000000000001", "89460000000000000002");
    let cases = json!([
        gate(&token, "nordwind", raw),
        gate(&token, "nordwind", raw),
        gate(&token, "nordwind", &tampered),
        gate(&token, "otherbrand", raw),
        api(&other_token, "nordwind"),
        api(&other_token, "otherbrand"),
    ]);
    let results = run_relying_party(&app, &cases);
    assert_eq!(
        results,
        json!([
            "ok",
            "ValueError",
            "ValueError",
            "InvalidAudienceError",
            "InvalidAudienceError",
            "ok"
        ]),
        "accepted once; a replay, another payload and another brand are refused"
    );
}

/// Runs `tests/python/relying_party.py` (the README's snippet in PyJWT) over `cases`.
fn run_relying_party(app: &TestApp, cases: &Value) -> Value {
    use std::io::Write;
    let python = std::env::var("ORDERGUARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = std::process::Command::new(python)
        .arg(format!("{root}/tests/python/relying_party.py"))
        .arg(format!("{root}/README.md"))
        // The issuer is the public URL, which defaults to http://localhost:<port>.
        .arg(app.address.replace("127.0.0.1", "localhost"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python with PyJWT (tests/run.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cases.to_string().as_bytes())
        .expect("write cases");
    let output = child.wait_with_output().expect("relying party ran");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("results")
}

/// The SMS failed, but the order and its verification exist: the 502 names both, the shop reads
/// the order and resends once the gateway is back.
async fn an_order_whose_sms_failed_is_named_by_the_problem_and_can_be_resent(backend: Backend) {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let gateway = ScriptedServer::start(vec![Reply::Status(503)], Reply::Status(200)).await;
    let (url, sms) = (upstream.url.clone(), gateway.url.clone());
    let app = spawn_app_with(backend, move |s| {
        configure_gate(s, &url, None);
        s.sms.providers = vec![orderguard::settings::ProviderSettings::Http {
            name: "gateway".to_owned(),
            url: format!("{sms}/send"),
            timeout_ms: 2_000,
            auth_header: None,
            auth_value: None,
            body_template: None,
        }];
    })
    .await;
    let failed = app.post("/v1/orders", DEV_KEY, &order_body(None)).await;
    failed.assert_problem(502, "sms_delivery_failed");
    let id = failed.body["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    let verification = failed.body["verification_id"]
        .as_str()
        .expect("verification_id")
        .to_owned();
    let held = order(&app, &id).await;
    assert_eq!(
        (&held["status"], &held["verification_id"]),
        (&json!("awaiting_verification"), &json!(verification))
    );
    app.travel(&verification, 31_000).await;
    let resent = app.resend(&verification).await;
    assert_eq!(resent.status, 200, "{resent:#?}");
    assert_eq!(gateway.count(), 2);
}

/// An upstream slower than the lease, and a second instance polling: the holder renews its
/// lease while the attempt runs, so the other instance never claims the order and sends it
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_slower_than_its_lease_is_sent_once_between_two_instances() {
    let upstream = ScriptedServer::start(vec![], Reply::Hang(2_500)).await;
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = |s: &mut orderguard::settings::Settings| {
        configure_gate(s, &upstream.url, None);
        s.database.url = Some(database.clone());
        s.gate.lease_ms = 300;
        let path = s.brands_dir.join("nordwind/brand.toml");
        let text = std::fs::read_to_string(&path).expect("brand.toml");
        std::fs::write(
            &path,
            text.replace(
                "timeout_ms = 500\n\n[webhooks]",
                "timeout_ms = 60000\n\n[webhooks]",
            ),
        )
        .expect("write brand.toml");
    };
    let first = spawn_app_with(Backend::Postgres, configure).await;
    let second = spawn_app_with(Backend::Postgres, configure).await;
    let (id, verification) = hold(&first, None).await;
    approve(&first, &verification).await;
    let forwarded = wait_for_status(&second, &id, "forwarded").await;
    assert_eq!(forwarded["forward_attempts"], 1, "{forwarded:#}");
    assert_eq!(upstream.count(), 1, "sent once in eight leases");
}

/// A slow webhook receiver and two instances: a claimed batch is sent concurrently, each under
/// a renewed lease, so none is sent twice and the batch does not take the sum of the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_receiver_gets_each_webhook_once_from_two_instances() {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let receiver = ScriptedServer::start(vec![], Reply::Hang(2_000)).await;
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = |s: &mut orderguard::settings::Settings| {
        configure_gate(s, &upstream.url, None);
        s.database.url = Some(database.clone());
        s.gate.lease_ms = 500;
    };
    let first = spawn_app_with(Backend::Postgres, configure).await;
    let second = spawn_app_with(Backend::Postgres, configure).await;
    const ORDERS: i64 = 6;
    let mut held = Vec::new();
    for _ in 0..ORDERS {
        let (id, verification) = hold(&first, Some(&receiver.url)).await;
        held.push((id, verification));
    }
    for (_, verification) in &held {
        approve(&first, verification).await;
    }
    eventually("every webhook delivered", 15, async || {
        first
            .db_number("SELECT COUNT(*) FROM webhook_delivery WHERE status = 'delivered'")
            .await
            == ORDERS
    })
    .await;
    let ids: std::collections::BTreeSet<String> = receiver
        .requests()
        .iter()
        .filter_map(|(headers, _)| {
            headers
                .get("orderguard-webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(ids.len() as i64, ORDERS);
    assert_eq!(receiver.count() as i64, ORDERS, "each webhook once");
    assert!(
        receiver.max_in_flight() > 1,
        "webhooks are sent concurrently (at most {} at once)",
        receiver.max_in_flight()
    );
    drop(second);
}

/// The forwarder reads the application's clock: a retry scheduled ten minutes ahead happens
/// as soon as the clock is moved past it, without waiting.
async fn a_retry_ten_minutes_away_is_made_when_the_clock_gets_there(backend: Backend) {
    let upstream = ScriptedServer::start(vec![Reply::Status(503)], Reply::Status(201)).await;
    let url = upstream.url.clone();
    let app = spawn_app_with(backend, move |s| {
        configure_gate(s, &url, None);
        s.gate.retry_initial_ms = 600_000;
        s.gate.retry_max_ms = 600_000;
    })
    .await;
    let (id, verification) = hold(&app, None).await;
    approve(&app, &verification).await;
    eventually("the first attempt recorded", 15, async || {
        order(&app, &id).await["forward_attempts"] == 1
    })
    .await;
    assert_eq!(order(&app, &id).await["status"], "forwarding");
    app.clock.advance(601_000);
    let forwarded = wait_for_status(&app, &id, "forwarded").await;
    assert_eq!(forwarded["forward_attempts"], 2);
    assert_eq!(upstream.count(), 2);
}
