//! Malformed requests get clear problems; idempotency keys make retries safe.

use serde_json::json;

use crate::both_backends;
use crate::helpers::{Backend, DEV_KEY, OTHER_KEY, read, spawn_app, start_body};

both_backends!(
    malformed_requests_get_a_problem_each,
    the_same_idempotency_key_and_body_replays_the_first_response,
    the_same_idempotency_key_with_another_body_is_refused,
    idempotency_keys_of_different_brands_do_not_meet,
    a_start_cut_off_by_its_timeout_is_resumed_by_a_retry_with_its_key,
    unknown_routes_and_methods_are_problems,
);

async fn malformed_requests_get_a_problem_each(backend: Backend) {
    let app = spawn_app(backend).await;
    let post = |body: String, content_type: &'static str| {
        app.client
            .post(app.url("/v1/verifications"))
            .bearer_auth(DEV_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    read(
        post("{\"phone\": ".into(), "application/json")
            .await
            .expect("send"),
    )
    .await
    .assert_problem(400, "malformed_json");

    let mut unknown = start_body();
    unknown["coupon"] = json!("FREE");
    let answer = read(
        post(unknown.to_string(), "application/json")
            .await
            .expect("send"),
    )
    .await;
    answer.assert_problem(422, "invalid_request");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("coupon")),
        "{answer:#?}"
    );

    let answer = read(
        post(
            json!({"phone": "+4915123456789"}).to_string(),
            "application/json",
        )
        .await
        .expect("send"),
    )
    .await;
    answer.assert_problem(422, "invalid_request");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("order_reference")),
        "{answer:#?}"
    );

    read(
        post(start_body().to_string(), "text/plain")
            .await
            .expect("send"),
    )
    .await
    .assert_problem(415, "unsupported_media_type");

    let mut huge = start_body();
    huge["order_reference"] = json!("x".repeat(70_000));
    read(
        post(huge.to_string(), "application/json")
            .await
            .expect("send"),
    )
    .await
    .assert_problem(413, "payload_too_large");

    app.get("/v1/verifications/not-a-uuid", DEV_KEY)
        .await
        .assert_problem(404, "not_found");
    app.get(
        &format!("/v1/verifications/{}", uuid::Uuid::now_v7()),
        DEV_KEY,
    )
    .await
    .assert_problem(404, "not_found");
    let inbox = app.get_public("/dev/inbox").await;
    assert_eq!(
        inbox.body["messages"].as_array().map(Vec::len),
        Some(0),
        "nothing was started"
    );
}

async fn start_with_key(
    app: &crate::helpers::TestApp,
    api_key: &str,
    key: &str,
    body: &serde_json::Value,
) -> crate::helpers::Answer {
    read(
        app.client
            .post(app.url("/v1/verifications"))
            .bearer_auth(api_key)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("send"),
    )
    .await
}

async fn the_same_idempotency_key_and_body_replays_the_first_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = start_with_key(&app, DEV_KEY, "order-A-1001", &start_body()).await;
    assert_eq!(first.status, 201, "{first:#?}");
    let second = start_with_key(&app, DEV_KEY, "order-A-1001", &start_body()).await;
    assert_eq!(second.status, 201, "{second:#?}");
    assert_eq!(second.body, first.body, "the same response");
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let id = first.body["id"].as_str().expect("id");
    assert_eq!(app.codes(id).await.len(), 1, "one SMS only");

    // Refusals are replayed too: same key, same (invalid) body, same problem.
    let mut bad = start_body();
    bad["phone"] = json!("12");
    start_with_key(&app, DEV_KEY, "bad-1", &bad)
        .await
        .assert_problem(422, "invalid_phone");
    let replay = start_with_key(&app, DEV_KEY, "bad-1", &bad).await;
    replay.assert_problem(422, "invalid_phone");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
}

async fn the_same_idempotency_key_with_another_body_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        start_with_key(&app, DEV_KEY, "k-1", &start_body())
            .await
            .status,
        201
    );
    let mut other = start_body();
    other["amount"] = json!("99.00");
    start_with_key(&app, DEV_KEY, "k-1", &other)
        .await
        .assert_problem(422, "idempotency_key_reused");
    let mut spaced = start_body();
    spaced["amount"] = json!("49.90");
    assert_eq!(
        start_with_key(&app, DEV_KEY, "k-1", &spaced).await.status,
        201,
        "same body, other formatting"
    );
}

async fn idempotency_keys_of_different_brands_do_not_meet(backend: Backend) {
    let app = spawn_app(backend).await;
    let mine = start_with_key(&app, DEV_KEY, "shared-key", &start_body()).await;
    let theirs = start_with_key(&app, OTHER_KEY, "shared-key", &start_body()).await;
    assert_eq!((mine.status, theirs.status), (201, 201));
    assert_ne!(mine.body["id"], theirs.body["id"]);
    assert_eq!(theirs.body["brand"], "otherbrand");
    assert!(theirs.header("idempotent-replayed").is_none());
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    app.get("/v2/nothing", DEV_KEY)
        .await
        .assert_problem(404, "unknown_route");
    let answer = read(
        app.client
            .delete(app.url("/v1/verifications"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    answer.assert_problem(405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_requests_are_shed_with_a_retryable_503() {
    use crate::helpers::{GatewayBehaviour, SmsGateway};
    let hanging = SmsGateway::start(GatewayBehaviour::Hang).await;
    let provider = hanging.provider("slow", 5_000);
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, move |s| {
        s.sms.providers = vec![provider];
        s.http.max_in_flight = 1;
    })
    .await;
    let client = app.client.clone();
    let url = app.url("/v1/verifications");
    // The first start holds the only slot while its SMS gateway hangs.
    let first = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(DEV_KEY)
            .json(&start_body())
            .send()
            .await
    });
    crate::helpers::eventually("the first request in flight", 10, async || {
        hanging.count() == 1
    })
    .await;
    assert_eq!(
        app.get_public("/healthz").await.status,
        200,
        "liveness is never shed"
    );
    let shed = app.get_public("/readyz").await;
    shed.assert_problem(503, "overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    first.abort();
}

/// The SMS gateway hangs, the service's own request timeout answers 408 and drops the request
/// after the verification was stored: its key is not stuck. Once the claim's lease is over, a
/// retry with the key answers with that same verification and sends its code (none was
/// recorded), and later repeats replay that answer.
async fn a_start_cut_off_by_its_timeout_is_resumed_by_a_retry_with_its_key(backend: Backend) {
    use crate::helpers::{Reply, ScriptedServer, eventually};
    let gateway = ScriptedServer::start(vec![Reply::Hang(60_000)], Reply::Status(200)).await;
    let url = format!("{}/send", gateway.url);
    let app = crate::helpers::spawn_app_with(backend, move |s| {
        s.http.request_timeout_ms = 2_000;
        s.sms.providers = vec![orderguard::settings::ProviderSettings::Http {
            name: "gateway".to_owned(),
            url,
            timeout_ms: 50_000,
            auth_header: None,
            auth_value: None,
            body_template: None,
        }];
    })
    .await;
    start_with_key(&app, DEV_KEY, "cut-1", &start_body())
        .await
        .assert_problem(408, "request_timeout");
    assert_eq!(gateway.count(), 1, "the dead attempt reached the gateway");

    let mut resumed = None;
    eventually("the key is free again", 20, async || {
        let answer = start_with_key(&app, DEV_KEY, "cut-1", &start_body()).await;
        if answer.status == 409 {
            answer.assert_problem(409, "idempotency_key_in_use");
            return false;
        }
        resumed = Some(answer);
        true
    })
    .await;
    let resumed = resumed.expect("answer");
    assert_eq!(resumed.status, 201, "{resumed:#?}");
    let id = resumed.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.db_number("SELECT COUNT(*) FROM verification").await,
        1,
        "the retry answered with the verification the dead attempt stored"
    );
    assert_eq!(gateway.count(), 2, "its code sent once more");
    let body: serde_json::Value = serde_json::from_str(&gateway.requests()[1].1).expect("sms json");
    let text = body["text"].as_str().expect("text");
    let code = text.rsplit_once(" #").expect("WebOTP line").1;
    crate::helpers::must_not_be_logged(code);
    assert_eq!(app.check(&id, code).await.status, 200);

    let replay = start_with_key(&app, DEV_KEY, "cut-1", &start_body()).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["id"], json!(id));
}
