//! Health, readiness, metrics and the OpenAPI document.

use std::collections::BTreeSet;

use crate::both_backends;
use crate::helpers::{Backend, DEV_KEY, read, spawn_app, start_body};

both_backends!(
    health_and_readiness_report_the_database_and_brands,
    metrics_count_requests_by_route_verifications_and_sms,
    the_openapi_document_lists_every_route_and_every_listed_route_exists,
    every_response_carries_a_request_id,
    bad_query_parameters_get_a_problem,
);

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let generated = app.get_public("/healthz").await;
    assert!(
        generated.header("strict-transport-security").is_none(),
        "HSTS is for production (a dev service on http://localhost would pin itself)"
    );
    let id = generated.header("x-request-id").expect("x-request-id");
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "a generated UUID, got {id}"
    );
    let problem = app.get("/v1/verifications/x", DEV_KEY).await;
    assert!(
        problem.header("x-request-id").is_some(),
        "problems carry it too"
    );
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "shop-req-42")
        .send()
        .await
        .expect("send");
    assert_eq!(
        given.headers()["x-request-id"],
        "shop-req-42",
        "a caller's id is kept"
    );
    // Ids a caller could use to forge log lines or smuggle PII into them are replaced.
    let unsafe_ids = [
        "x\" level=error msg=\"forged".to_owned(),
        "+4915123456789 Max Mustermann".to_owned(),
        "a".repeat(129),
        "<script>".to_owned(),
        "id%0Aforged".to_owned(),
    ];
    for unsafe_id in &unsafe_ids {
        crate::helpers::must_not_be_logged(unsafe_id);
        let answer = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", unsafe_id)
            .send()
            .await
            .expect("send");
        let id = answer.headers()["x-request-id"].to_str().expect("ascii");
        assert!(
            uuid::Uuid::parse_str(id).is_ok(),
            "{unsafe_id:?} replaced by a generated id, got {id}"
        );
    }
}

async fn bad_query_parameters_get_a_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    app.get_public("/dev/inbox?colour=red")
        .await
        .assert_problem(400, "invalid_query");
}

async fn health_and_readiness_report_the_database_and_brands(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.get_public("/healthz").await;
    assert_eq!(
        (health.status, &health.body["status"]),
        (200, &serde_json::json!("ok"))
    );
    let ready = app.get_public("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:#?}");
    assert_eq!(ready.body["database"], "ok");
    assert_eq!(
        ready.body["brands_loaded"], 3,
        "nordwind, fjallnet and the test brand"
    );
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(ready.body["backend"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app(Backend::Postgres).await;
    let name = app
        .database_url
        .rsplit('/')
        .next()
        .expect("name")
        .to_owned();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&crate::helpers::postgres_admin_url())
            .await
            .expect("admin");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop");

    let ready = app.get_public("/readyz").await;
    assert_eq!(
        (ready.status, &ready.body["database"]),
        (503, &serde_json::json!("unreachable")),
        "{ready:#?}"
    );
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        health.status(),
        200,
        "liveness does not depend on the database"
    );
}

async fn metrics_count_requests_by_route_verifications_and_sms(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let code = app.latest_code(&id).await;
    assert_eq!(app.check(&id, &code).await.status, 200);
    app.get("/v1/verifications/does-not-exist", DEV_KEY).await;

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain")
    );
    let metrics = response.text().await.expect("text");
    for expected in [
        r#"orderguard_http_requests_total{method="POST",route="/v1/verifications",status="201"} 1"#,
        r#"orderguard_http_requests_total{method="POST",route="/v1/verifications/{id}/check",status="200"} 1"#,
        r#"orderguard_http_requests_total{method="GET",route="/v1/verifications/{id}",status="404"} 1"#,
        r#"orderguard_http_request_duration_seconds_count{method="POST",route="/v1/verifications"} 1"#,
        r#"orderguard_verifications_started_total{brand="nordwind"} 1"#,
        r#"orderguard_verifications_finished_total{brand="nordwind",status="approved"} 1"#,
        r#"orderguard_sms_sends_total{provider="log",result="sent"} 1"#,
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("does-not-exist"),
        "raw paths never become labels"
    );
}

async fn the_openapi_document_lists_every_route_and_every_listed_route_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let spec = app.get_public("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );

    let mut listed = BTreeSet::new();
    for (path, item) in spec.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            listed.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /v1/verifications",
        "GET /v1/verifications/{id}",
        "POST /v1/verifications/{id}/check",
        "POST /v1/verifications/{id}/resend",
        "POST /v1/verifications/{id}/cancel",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /dev/inbox",
        "POST /v1/callbacks/sms/twilio",
        "POST /v1/callbacks/sms/{provider}",
        "GET /w/{id}",
        "POST /w/{id}/check",
        "POST /w/{id}/resend",
        "POST /w/{id}/cancel",
        "GET /assets/{brand}/{file}",
        "GET /demo/{brand}",
        "POST /v1/orders",
        "GET /v1/orders/{id}",
        "GET /.well-known/jwks.json",
        "GET /v1/admin/blocks",
        "DELETE /v1/admin/blocks/{brand}/{prefix}",
        "POST /v1/admin/privacy/erasure",
        "POST /v1/admin/privacy/access",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(listed, expected);

    // Every documented operation is routed: none falls through to the unknown-route problem.
    for operation in &listed {
        let (method, path) = operation.split_once(' ').expect("method and path");
        let url = app.url(
            &path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{provider}", "http")
                .replace("{brand}", "nordwind")
                .replace("{file}", "style.css")
                .replace("{prefix}", "%2B49151"),
        );
        let request = app
            .client
            .request(method.parse().expect("method"), url)
            .bearer_auth(DEV_KEY);
        let answer = read(
            request
                .json(&serde_json::json!({}))
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert!(
            !matches!(answer.problem(), "unknown_route" | "method_not_allowed"),
            "{operation} is documented but not routed: {answer:#?}"
        );
    }
    let schemas = spec.body["components"]["schemas"]
        .as_object()
        .expect("schemas");
    assert!(schemas.contains_key("StartVerification") && schemas.contains_key("Verification"));
}

/// The database cut off (through a proxy we stop) and its connections terminated by the
/// server (SQLSTATE 57P01): every request answers, and none with a 500. Starts and checks get a
/// retryable 503 `service_unavailable` with `Retry-After`, `/readyz` says so within its one
/// second, and the service works again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_faults_answer_503_with_retry_after_never_500() {
    use crate::helpers::{TcpProxy, eventually};
    let database = crate::helpers::fresh_postgres_database().await;
    let admin = crate::helpers::postgres_admin_url();
    let host = admin
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port")
        .to_owned();
    let mut proxy = TcpProxy::to(&host).await;
    let proxied = database.replacen(&host, &format!("127.0.0.1:{}", proxy.port), 1);
    let url = proxied.clone();
    let app = crate::helpers::spawn_app_with(Backend::Postgres, move |s| {
        s.database.url = Some(url);
    })
    .await;
    let pending = app.start_ok().await;
    let wrong = app.wrong_code(&pending).await;
    let no_500 = |answer: &crate::helpers::Answer| {
        assert_ne!(answer.status, 500, "{answer:#?}");
        if answer.status == 503 {
            assert_eq!(answer.problem(), "service_unavailable", "{answer:#?}");
            assert!(answer.header("retry-after").is_some(), "{answer:#?}");
        }
    };

    // Cut off: connections refused.
    proxy.stop();
    let start = app.start(&start_body()).await;
    start.assert_problem(503, "service_unavailable");
    no_500(&start);
    let check = app.check(&pending, &wrong).await;
    check.assert_problem(503, "service_unavailable");
    no_500(&check);
    let ready = app.get_public("/readyz").await;
    assert_eq!(
        (ready.status, &ready.body["database"]),
        (503, &serde_json::json!("unreachable"))
    );

    // Back: the service recovers by itself.
    proxy.start().await;
    eventually("starts succeed again", 20, async || {
        app.start(&start_body()).await.status == 201
    })
    .await;

    // Every connection of the service terminated by the server (a restart, an operator).
    let name = database.rsplit('/').next().expect("name").to_owned();
    let mut admin_connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("admin");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
    )
    .bind(&name)
    .fetch_one(&mut admin_connection)
    .await
    .expect("terminate");
    assert!(terminated > 0, "the service had connections to terminate");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..10 {
        let start = app.start(&start_body()).await;
        no_500(&start);
        *statuses.entry(start.status).or_default() += 1;
        let check = app.check(&pending, &wrong).await;
        no_500(&check);
        *statuses.entry(check.status).or_default() += 1;
    }
    assert!(
        statuses.contains_key(&201),
        "the service reconnects: {statuses:?}"
    );
    assert!(
        statuses.contains_key(&503),
        "a request met a terminated connection (57P01) and was told to retry: {statuses:?}"
    );
}
