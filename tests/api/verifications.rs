//! The verification lifecycle through the API, on both backends.

use serde_json::json;
use sha2::Digest;

use crate::both_backends;
use crate::helpers::{Backend, DEV_KEY, OTHER_KEY, PHONE, spawn_app, start_body};

both_backends!(
    a_correct_code_approves_the_verification,
    the_sms_names_brand_and_amount_and_ends_with_the_webotp_line,
    wrong_codes_count_down_and_the_last_allowed_one_locks,
    resend_sends_a_new_code_and_the_old_one_stops_working,
    resend_within_the_cooldown_is_refused_with_retry_after,
    resend_beyond_the_send_limit_is_refused,
    cancel_aborts_and_later_actions_are_refused,
    an_overdue_verification_is_expired_and_refuses_codes,
    the_sweeper_expires_overdue_verifications_by_itself,
    numbers_are_refused_with_a_problem_type_per_cause,
    a_national_number_is_normalised_with_the_brands_country,
    invalid_order_fields_are_refused_with_the_field_named,
    a_brand_cannot_see_or_touch_another_brands_verification,
    requests_without_a_valid_key_are_unauthorized,
    a_brands_limits_override_the_defaults,
    the_sms_is_in_the_locale_given_at_start,
    codes_are_stored_only_as_keyed_hashes,
);

async fn a_correct_code_approves_the_verification(backend: Backend) {
    let app = spawn_app(backend).await;

    let started = app.start(&start_body()).await;
    assert_eq!(started.status, 201, "{started:#?}");
    let id = started.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        started.header("location"),
        Some(format!("/v1/verifications/{id}").as_str())
    );
    assert_eq!(started.body["status"], "pending");
    assert_eq!(
        started.body["phone"], "+491********89",
        "the number is masked"
    );
    assert_eq!(started.body["country"], "DE");
    assert_eq!(
        (
            &started.body["order_reference"],
            &started.body["amount"],
            &started.body["currency"]
        ),
        (&json!("A-1001"), &json!("49.90"), &json!("EUR"))
    );
    assert_eq!(
        (
            &started.body["attempts_remaining"],
            &started.body["sends_remaining"]
        ),
        (&json!(5), &json!(2))
    );

    let code = app.latest_code(&id).await;
    let checked = app.check(&id, &code).await;
    assert_eq!(checked.status, 200, "{checked:#?}");
    assert_eq!(checked.body["status"], "approved");
    assert!(checked.body["finished_at"].is_string());

    let read = app.status(&id).await;
    assert_eq!(
        (read.status, &read.body["status"]),
        (200, &json!("approved"))
    );
    assert_eq!(read.body["order_reference"], "A-1001");
    let again = app.check(&id, &code).await;
    again.assert_problem(409, "verification_already_approved");
}

async fn the_sms_names_brand_and_amount_and_ends_with_the_webotp_line(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let inbox = app
        .get_public(&format!("/dev/inbox?verification_id={id}"))
        .await;
    let message = &inbox.body["messages"][0];
    let code = message["code"].as_str().expect("code");
    crate::helpers::must_not_be_logged(code);
    let text = message["text"].as_str().expect("text");
    assert_eq!(message["to"], PHONE);
    assert_eq!(message["sender"], "Nordwind");
    // Nordwind's default locale is German: its text, its amount format.
    assert!(
        text.contains("Nordwind Mobil") && text.contains("49,90 €") && text.contains("A-1001"),
        "{text}"
    );
    assert!(text.contains("bestätigt"), "German by default: {text}");
    assert!(
        text.ends_with(&format!("\n\n@localhost #{code}")),
        "WebOTP line missing: {text:?}"
    );
    assert_eq!(code.len(), 6);
}

async fn wrong_codes_count_down_and_the_last_allowed_one_locks(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let wrong = app.wrong_code(&id).await;

    for remaining in (1..=4).rev() {
        let answer = app.check(&id, &wrong).await;
        answer.assert_problem(422, "invalid_code");
        assert_eq!(answer.body["attempts_remaining"], remaining);
    }
    app.check(&id, &wrong)
        .await
        .assert_problem(409, "verification_locked");

    let right = app.latest_code(&id).await;
    app.check(&id, &right)
        .await
        .assert_problem(409, "verification_locked");
    assert_eq!(app.status(&id).await.body["status"], "locked");
}

async fn resend_sends_a_new_code_and_the_old_one_stops_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let first = app.latest_code(&id).await;
    app.travel(&id, 31_000).await;

    let resent = app.resend(&id).await;
    assert_eq!(resent.status, 200, "{resent:#?}");
    assert_eq!(resent.body["sends_remaining"], 1);
    let codes = app.codes(&id).await;
    assert_eq!(codes.len(), 2, "two SMS were sent");
    let second = codes[0].clone();

    // A fresh code collides with the old one once in a million; then there is nothing to prove.
    if second != first {
        app.check(&id, &first)
            .await
            .assert_problem(422, "invalid_code");
    }
    let approved = app.check(&id, &second).await;
    assert_eq!(
        (approved.status, &approved.body["status"]),
        (200, &json!("approved")),
        "{approved:#?}"
    );
}

async fn resend_within_the_cooldown_is_refused_with_retry_after(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;

    let answer = app.resend(&id).await;
    answer.assert_problem(429, "resend_cooldown");
    let retry_after = answer.retry_after();
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    assert!(
        answer.body["resend_available_at"].is_string(),
        "{answer:#?}"
    );
    assert_eq!(app.codes(&id).await.len(), 1, "no second SMS");
}

async fn resend_beyond_the_send_limit_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    for _ in 0..2 {
        app.travel(&id, 31_000).await;
        assert_eq!(app.resend(&id).await.status, 200);
    }
    app.travel(&id, 31_000).await;
    app.resend(&id)
        .await
        .assert_problem(409, "send_limit_reached");
    assert_eq!(app.codes(&id).await.len(), 3, "exactly max_sends SMS");
}

async fn cancel_aborts_and_later_actions_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let code = app.latest_code(&id).await;

    let cancelled = app.cancel(&id).await;
    assert_eq!(
        (cancelled.status, &cancelled.body["status"]),
        (200, &json!("aborted")),
        "{cancelled:#?}"
    );
    app.check(&id, &code)
        .await
        .assert_problem(409, "verification_aborted");
    app.cancel(&id)
        .await
        .assert_problem(409, "verification_aborted");
    app.travel(&id, 31_000).await;
    app.resend(&id)
        .await
        .assert_problem(409, "verification_aborted");
}

async fn an_overdue_verification_is_expired_and_refuses_codes(backend: Backend) {
    let app = spawn_app_without_sweeper(backend).await;
    let id = app.start_ok().await;
    let code = app.latest_code(&id).await;
    app.travel(&id, 301_000).await;

    app.check(&id, &code)
        .await
        .assert_problem(410, "verification_expired");
    assert_eq!(app.status(&id).await.body["status"], "expired");
    app.cancel(&id)
        .await
        .assert_problem(410, "verification_expired");
}

async fn spawn_app_without_sweeper(backend: Backend) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(backend, |s| s.sweeper.interval_ms = 3_600_000).await
}

async fn the_sweeper_expires_overdue_verifications_by_itself(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    app.travel(&id, 301_000).await;

    // Read the row directly: a GET would expire it on its own.
    sqlx::any::install_default_drivers();
    let mut status = String::new();
    for _ in 0..50 {
        let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.database_url)
            .await
            .expect("connect");
        status = sqlx::query_scalar("SELECT status FROM verification WHERE verification_id = $1")
            .bind(&id)
            .fetch_one(&mut connection)
            .await
            .expect("row");
        if status == "expired" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, "expired",
        "the sweeper did not expire the verification within 5 s"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"orderguard_verifications_finished_total{brand="nordwind",status="expired"} 1"#
        ),
        "{metrics}"
    );
}

async fn numbers_are_refused_with_a_problem_type_per_cause(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (DEV_KEY, "12345", "invalid_phone"),
        (DEV_KEY, "+49 151 234", "invalid_phone"),
        // Letters would be keypad digits (…678a → an SMS to …6782); NUL, zero-width space,
        // `++`: all refused rather than repaired.
        (DEV_KEY, "+49 151 2345678a", "invalid_phone"),
        (DEV_KEY, "+49 151 2345678\0", "invalid_phone"),
        (DEV_KEY, "+49 151\u{200b}23456789", "invalid_phone"),
        (DEV_KEY, "++49 151 23456789", "invalid_phone"),
        (DEV_KEY, "+46 70 123 45 67", "country_not_allowed"),
        (DEV_KEY, "+49 900 1234567", "premium_rate_number"),
        (DEV_KEY, "+49 180 12345", "shared_cost_number"),
        (DEV_KEY, "+49 30 123456", "fixed_line_number"),
        (DEV_KEY, "+49 800 1234567890", "non_mobile_number"),
        (OTHER_KEY, "+44 56 1234 5678", "voip_number"),
    ];
    for (key, phone, expected) in cases {
        let mut body = start_body();
        body["phone"] = json!(phone);
        let answer = app.post("/v1/verifications", key, &body).await;
        assert_eq!(
            (answer.status, answer.problem()),
            (422, expected),
            "phone {phone}: {answer:#?}"
        );
    }
    let inbox = app.get_public("/dev/inbox").await;
    assert_eq!(
        inbox.body["messages"].as_array().map(Vec::len),
        Some(0),
        "no SMS for refused numbers"
    );
}

async fn a_national_number_is_normalised_with_the_brands_country(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = start_body();
    body["phone"] = json!("0151 2345 6789");
    let answer = app.start(&body).await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    assert_eq!(
        (&answer.body["phone"], &answer.body["country"]),
        (&json!("+491********89"), &json!("DE"))
    );
    let id = answer.body["id"].as_str().expect("id");
    let inbox = app
        .get_public(&format!("/dev/inbox?verification_id={id}"))
        .await;
    assert_eq!(
        inbox.body["messages"][0]["to"], PHONE,
        "sent to the E.164 form"
    );
}

async fn invalid_order_fields_are_refused_with_the_field_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        ("amount", json!("49,90")),
        ("amount", json!("-1")),
        ("currency", json!("euro")),
        ("order_reference", json!("")),
        ("order_reference", json!("x".repeat(65))),
        ("locale", json!("d")),
    ];
    for (field, value) in cases {
        let mut body = start_body();
        body[field] = value.clone();
        let answer = app.start(&body).await;
        answer.assert_problem(422, "invalid_request");
        assert_eq!(answer.body["field"], field, "{field}={value}: {answer:#?}");
    }
}

async fn a_brand_cannot_see_or_touch_another_brands_verification(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let code = app.latest_code(&id).await;
    let base = format!("/v1/verifications/{id}");

    app.get(&base, OTHER_KEY)
        .await
        .assert_problem(404, "not_found");
    app.post(&format!("{base}/check"), OTHER_KEY, &json!({"code": code}))
        .await
        .assert_problem(404, "not_found");
    app.post(&format!("{base}/cancel"), OTHER_KEY, &json!({}))
        .await
        .assert_problem(404, "not_found");
    app.travel(&id, 31_000).await;
    app.post(&format!("{base}/resend"), OTHER_KEY, &json!({}))
        .await
        .assert_problem(404, "not_found");

    let own = app.status(&id).await;
    assert_eq!(
        (&own.body["status"], &own.body["attempts_remaining"]),
        (&json!("pending"), &json!(5)),
        "untouched"
    );
    assert_eq!(
        app.codes(&id).await.len(),
        1,
        "no SMS sent by the other brand"
    );
    assert_eq!(
        app.check(&id, &code).await.status,
        200,
        "the owner can still approve"
    );
}

async fn requests_without_a_valid_key_are_unauthorized(backend: Backend) {
    let app = spawn_app(backend).await;
    let no_key = crate::helpers::read(
        app.client
            .post(app.url("/v1/verifications"))
            .json(&start_body())
            .send()
            .await
            .expect("request"),
    )
    .await;
    no_key.assert_problem(401, "unauthorized");
    assert_eq!(no_key.header("www-authenticate"), Some("Bearer"));
    app.post("/v1/verifications", "og_dev_nordwind_wrong", &start_body())
        .await
        .assert_problem(401, "unauthorized");
    let id = app.start_ok().await;
    app.get(&format!("/v1/verifications/{id}"), "")
        .await
        .assert_problem(401, "unauthorized");
}

async fn a_brands_limits_override_the_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    // otherbrand sets max_checks = 3 and code_length = 8 in its brand.toml.
    let started = app
        .post("/v1/verifications", OTHER_KEY, &start_body())
        .await;
    assert_eq!(
        (started.status, &started.body["attempts_remaining"]),
        (201, &json!(3)),
        "{started:#?}"
    );
    let id = started.body["id"].as_str().expect("id").to_owned();
    let code = app.latest_code(&id).await;
    assert_eq!(code.len(), 8, "eight-digit codes");
    let path = format!("/v1/verifications/{id}/check");
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    app.post(&path, OTHER_KEY, &json!({"code": wrong}))
        .await
        .assert_problem(422, "invalid_code");
    app.post(&path, OTHER_KEY, &json!({"code": wrong}))
        .await
        .assert_problem(422, "invalid_code");
    app.post(&path, OTHER_KEY, &json!({"code": wrong}))
        .await
        .assert_problem(409, "verification_locked");
}

async fn codes_are_stored_only_as_keyed_hashes(backend: Backend) {
    use sqlx::{Column, Row};
    let app = spawn_app(backend).await;
    let id = app.start_ok().await;
    let code = app.latest_code(&id).await;

    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .expect("connect");
    let row = sqlx::query("SELECT * FROM verification WHERE verification_id = $1")
        .bind(&id)
        .fetch_one(&mut connection)
        .await
        .expect("row");
    let numeric_code: i64 = code.parse().expect("digits");
    for column in row.columns() {
        let name = column.name();
        if let Ok(Some(text)) = row.try_get::<Option<String>, _>(name) {
            assert!(!text.contains(&code), "column {name} holds the code");
        } else if let Ok(Some(bytes)) = row.try_get::<Option<Vec<u8>>, _>(name) {
            assert_eq!(bytes.len(), 32, "column {name}: an HMAC-SHA256");
            assert!(
                !bytes.windows(code.len()).any(|w| w == code.as_bytes()),
                "column {name} holds the code"
            );
            let plain: [u8; 32] = sha2::Sha256::digest(code.as_bytes()).into();
            assert_ne!(
                bytes,
                plain.to_vec(),
                "column {name}: an unkeyed hash of the code"
            );
        } else if let Ok(Some(number)) = row.try_get::<Option<i64>, _>(name) {
            assert_ne!(
                number, numeric_code,
                "column {name} holds the code as a number"
            );
        }
    }
}

async fn the_sms_is_in_the_locale_given_at_start(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = start_body();
    body["locale"] = json!("en");
    let started = app.start(&body).await;
    assert_eq!(started.status, 201, "{started:#?}");
    let id = started.body["id"].as_str().expect("id");
    let inbox = app
        .get_public(&format!("/dev/inbox?verification_id={id}"))
        .await;
    let text = inbox.body["messages"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    crate::helpers::must_not_be_logged(inbox.body["messages"][0]["code"].as_str().expect("code"));
    assert!(
        text.contains("€49.90") && text.contains("confirms order A-1001"),
        "English: {text}"
    );
    assert!(
        started.body["widget_url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("/w/{id}?t="))),
        "{started:#?}"
    );
}

/// Round 1: a 64-emoji order reference made a 4-segment SMS for a brand budgeted at one, and
/// a `{code}` inside the reference was replaced with the real code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sms_keeps_the_brands_segment_budget_and_never_fills_buyer_placeholders() {
    let app = spawn_app(Backend::Sqlite).await;
    let cases = [
        ("64 emoji", "😀".repeat(64)),
        ("64 GSM-7 characters", "R".repeat(64)),
        ("placeholders", "A-{code}-{brand}-{amount}".to_owned()),
    ];
    for (case, reference) in cases {
        let mut body = start_body();
        body["order_reference"] = json!(reference);
        let answer = app.start(&body).await;
        assert_eq!(answer.status, 201, "{case}: {answer:#?}");
        assert_eq!(
            answer.body["order_reference"],
            json!(reference),
            "{case}: the page and API keep the whole reference"
        );
        let id = answer.body["id"].as_str().expect("id");
        let text = app.sms_text(id).await;
        let segments = orderguard::sms::segments::count(&text).segments;
        assert_eq!(segments, 1, "{case}: {text}");
        let code = app.latest_code(id).await;
        assert_eq!(
            text.matches(&code).count(),
            2,
            "{case}: the code appears in the text and the WebOTP line only: {text}"
        );
    }
    let inbox = app.get_public("/dev/inbox").await;
    let placeholder_text = inbox.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .find(|t| t.contains("A-{code}"))
        .map(str::to_owned);
    assert!(
        placeholder_text.is_some_and(|t| t.contains("A-{code}-{brand}-{amount}")),
        "the buyer's braces stay literal"
    );
}
