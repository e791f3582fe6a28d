//! The generic HTTP SMS provider against real local gateways, and failover.

use std::time::Duration;

use crate::both_backends;
use crate::helpers::{Backend, GatewayBehaviour, PHONE, SmsGateway, spawn_app_with};

both_backends!(
    the_http_provider_posts_the_message_with_its_credential,
    a_failing_gateway_fails_over_to_the_next,
    a_hanging_gateway_times_out_and_fails_over,
    a_refusing_gateway_does_not_fail_over_and_the_start_says_so,
    a_custom_body_template_shapes_the_gateway_request,
    a_request_slower_than_the_limit_gets_a_timeout_problem,
    an_sms_outage_does_not_use_up_the_buyers_sends,
    a_timed_out_send_uses_up_a_send,
);

async fn the_http_provider_posts_the_message_with_its_credential(backend: Backend) {
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let provider = gateway.provider("gateway", 2_000);
    let app = spawn_app_with(backend, move |s| s.sms.providers = vec![provider]).await;

    let id = app.start_ok().await;
    assert_eq!(gateway.count(), 1);
    let (headers, body) = gateway.received.lock().expect("lock")[0].clone();
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some("Bearer gateway-secret")
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(
        (&body["to"], &body["from"]),
        (&serde_json::json!(PHONE), &serde_json::json!("Nordwind"))
    );
    assert!(body["reference"].as_str().is_some_and(|r| !r.is_empty()));
    let code = gateway.last_code();
    let approved = app.check(&id, &code).await;
    assert_eq!(approved.status, 200, "{approved:#?}");
    let inbox = app.get_public("/dev/inbox").await;
    assert_eq!(
        inbox.body["messages"].as_array().map(Vec::len),
        Some(0),
        "the log provider was not used"
    );
}

async fn a_failing_gateway_fails_over_to_the_next(backend: Backend) {
    let broken = SmsGateway::start(GatewayBehaviour::Status(503)).await;
    let working = SmsGateway::start(GatewayBehaviour::Accept).await;
    let providers = vec![
        broken.provider("primary", 2_000),
        working.provider("secondary", 2_000),
    ];
    let app = spawn_app_with(backend, move |s| s.sms.providers = providers).await;

    let id = app.start_ok().await;
    assert_eq!((broken.count(), working.count()), (1, 1), "tried in order");
    assert_eq!(app.check(&id, &working.last_code()).await.status, 200);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_sms_sends_total{provider="primary",result="error"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"orderguard_sms_sends_total{provider="secondary",result="sent"} 1"#),
        "{metrics}"
    );
}

async fn a_hanging_gateway_times_out_and_fails_over(backend: Backend) {
    let hanging = SmsGateway::start(GatewayBehaviour::Hang).await;
    let working = SmsGateway::start(GatewayBehaviour::Accept).await;
    let providers = vec![
        hanging.provider("slow", 300),
        working.provider("backup", 2_000),
    ];
    let app = spawn_app_with(backend, move |s| s.sms.providers = providers).await;

    let started = tokio::time::timeout(Duration::from_secs(25), app.start_ok())
        .await
        .expect("start returns");
    assert_eq!(working.count(), 1);
    assert_eq!(app.check(&started, &working.last_code()).await.status, 200);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_sms_sends_total{provider="slow",result="timeout"} 1"#),
        "{metrics}"
    );
}

async fn a_refusing_gateway_does_not_fail_over_and_the_start_says_so(backend: Backend) {
    let refusing = SmsGateway::start(GatewayBehaviour::Status(400)).await;
    let working = SmsGateway::start(GatewayBehaviour::Accept).await;
    let providers = vec![
        refusing.provider("strict", 2_000),
        working.provider("backup", 2_000),
    ];
    let app = spawn_app_with(backend, move |s| s.sms.providers = providers).await;

    let answer = app.start(&crate::helpers::start_body()).await;
    answer.assert_problem(502, "sms_delivery_failed");
    assert_eq!(
        (refusing.count(), working.count()),
        (1, 0),
        "a 4xx is final"
    );
    let id = answer.body["verification_id"]
        .as_str()
        .expect("the verification id is given");
    let status = app.status(id).await;
    assert_eq!(
        (status.status, &status.body["status"]),
        (200, &serde_json::json!("pending")),
        "{status:#?}"
    );
}

async fn a_custom_body_template_shapes_the_gateway_request(backend: Backend) {
    let gateway = SmsGateway::start(GatewayBehaviour::Accept).await;
    let mut provider = gateway.provider("custom", 2_000);
    if let orderguard::settings::ProviderSettings::Http { body_template, .. } = &mut provider {
        *body_template =
            Some(r#"{"msisdn":"{to}","sender":"{from}","message":{"body":"{text}"}}"#.to_owned());
    }
    let app = spawn_app_with(backend, move |s| s.sms.providers = vec![provider]).await;

    let id = app.start_ok().await;
    let body = gateway.received.lock().expect("lock")[0].1.clone();
    assert_eq!(
        (&body["msisdn"], &body["sender"]),
        (&serde_json::json!(PHONE), &serde_json::json!("Nordwind"))
    );
    let text = body["message"]["body"]
        .as_str()
        .expect("templated text")
        .to_owned();
    let code = text.rsplit_once(" #").expect("WebOTP line").1.to_owned();
    crate::helpers::must_not_be_logged(&code);
    assert_eq!(app.check(&id, &code).await.status, 200);
}

async fn a_request_slower_than_the_limit_gets_a_timeout_problem(backend: Backend) {
    let hanging = SmsGateway::start(GatewayBehaviour::Hang).await;
    let provider = hanging.provider("slow", 10_000);
    let app = spawn_app_with(backend, move |s| {
        s.sms.providers = vec![provider];
        s.http.request_timeout_ms = 300;
    })
    .await;
    app.start(&crate::helpers::start_body())
        .await
        .assert_problem(408, "request_timeout");
}

/// Starts a verification whose first SMS fails (502); returns its id.
async fn start_without_sms(app: &crate::helpers::TestApp) -> String {
    let started = app.start(&crate::helpers::start_body()).await;
    started.assert_problem(502, "sms_delivery_failed");
    started.body["verification_id"]
        .as_str()
        .expect("verification_id")
        .to_owned()
}

/// Every provider refusing outright (here 503) cannot have delivered the code: the buyer may
/// resend as often as the cooldown allows, and the sends are still all there afterwards.
async fn an_sms_outage_does_not_use_up_the_buyers_sends(backend: Backend) {
    let down = SmsGateway::start(GatewayBehaviour::Status(503)).await;
    let provider = down.provider("gateway", 2_000);
    let app = spawn_app_with(backend, move |s| s.sms.providers = vec![provider]).await;

    let id = start_without_sms(&app).await;
    // Twice the send limit (3), each after the cooldown: never send_limit_reached.
    for _ in 0..6 {
        app.travel(&id, 31_000).await;
        app.resend(&id)
            .await
            .assert_problem(502, "sms_delivery_failed");
    }
    assert_eq!(down.count(), 7, "every send reached the gateway");
    let status = app.status(&id).await;
    assert_eq!(status.body["sends_remaining"], 3, "{status:#?}");
    assert_eq!(status.body["status"], "pending");
}

/// A send that timed out may have reached the phone: it counts.
async fn a_timed_out_send_uses_up_a_send(backend: Backend) {
    let hanging = SmsGateway::start(GatewayBehaviour::Hang).await;
    let provider = hanging.provider("gateway", 200);
    let app = spawn_app_with(backend, move |s| s.sms.providers = vec![provider]).await;

    let id = start_without_sms(&app).await;
    for _ in 0..2 {
        app.travel(&id, 31_000).await;
        app.resend(&id)
            .await
            .assert_problem(502, "sms_delivery_failed");
    }
    app.travel(&id, 31_000).await;
    app.resend(&id)
        .await
        .assert_problem(409, "send_limit_reached");
    assert_eq!(hanging.count(), 3);
}
