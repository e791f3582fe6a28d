//! The fraud rules through the API, against a real database: rate limits, the SMS-pumping
//! guard, the brand-wide conversion guard, SIM swap against a local CAMARA server, monitor
//! mode, and the operators' block routes. Windows and cool-downs pass on the fraud clock
//! (`TestApp::clock`), never by waiting.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Answer, Backend, DEV_KEY, PHONE, TestApp, read, serve, set_fraud_rules, spawn_app_with,
    start_body,
};

both_backends!(
    a_number_is_refused_past_its_limit_and_served_again_after_the_window,
    fifty_parallel_starts_to_one_number_never_exceed_its_limit,
    an_ip_limit_counts_only_starts_that_never_converted,
    a_walker_is_refused_by_its_range_while_the_rest_of_its_prefix_is_served,
    a_prefix_that_never_converts_is_blocked_serves_known_good_and_doubles_its_cooldown,
    slow_pumping_over_many_prefixes_trips_the_brand_conversion_guard,
    a_slow_pumper_in_prefixes_the_buyers_do_not_use_gets_the_new_prefix_budget_only,
    a_busy_shop_without_a_history_serves_a_slow_pumper_little_and_its_new_buyers_all,
    a_monitored_rule_serves_and_records_what_it_would_have_refused,
    rules_turned_off_neither_count_nor_refuse_but_the_deny_list_holds,
    a_busy_new_prefix_is_served_while_a_walker_beside_it_is_stopped,
    a_flood_of_one_number_does_not_hide_a_walk_beside_it,
    buyers_who_type_slowly_are_judged_only_after_the_brands_usual_typing_time,
    a_burst_just_before_the_window_turns_is_not_judged_before_its_codes_are_typed,
    a_range_whose_starts_never_convert_is_refused_while_a_busy_nat_is_served,
);

const OPERATOR_TOKEN: &str = "og_operator_fraud_team_token_1234";
const PRIVACY_TOKEN: &str = "og_operator_privacy_token_5678";

/// An app whose nordwind brand has `rules` (TOML over `_base`) and two operators.
async fn app_with_rules(backend: Backend, rules: &str) -> TestApp {
    let rules = rules.to_owned();
    spawn_app_with(backend, move |s| {
        set_fraud_rules(&s.brands_dir, "nordwind", &rules);
        s.admin.tokens = vec![
            orderguard::settings::OperatorToken {
                actor: "fraud-team".to_owned(),
                scope: "fraud".to_owned(),
                hash: orderguard::brands::api_key_hash(OPERATOR_TOKEN),
            },
            orderguard::settings::OperatorToken {
                actor: "dpo".to_owned(),
                scope: "privacy".to_owned(),
                hash: orderguard::brands::api_key_hash(PRIVACY_TOKEN),
            },
        ];
    })
    .await
}

fn start_for(phone: &str) -> Value {
    let mut body = start_body();
    body["phone"] = json!(phone);
    body["order_reference"] = json!(format!(
        "R-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    body
}

/// A start to `phone` from the buyer's address `ip`, as the shop passes it.
fn start_from(phone: &str, ip: &str) -> Value {
    let mut body = start_for(phone);
    body["client_ip"] = json!(ip);
    body
}

/// A German mobile number in prefix `+49151` (or another three-digit prefix).
fn number(prefix: &str, n: u64) -> String {
    format!("{prefix}{:08}", n % 100_000_000)
}

/// The verification_blocked events written so far (the JSON-lines sink).
async fn blocked_events(app: &TestApp) -> Vec<Value> {
    app.wait_for_outbox_drained(30).await;
    let text = std::fs::read_to_string(app.data_dir.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("event"))
        .filter(|event| event["event_type"] == "verification_blocked")
        .collect()
}

async fn approve(app: &TestApp, id: &str) {
    let code = app.latest_code(id).await;
    let checked = app.check(id, &code).await;
    assert_eq!(checked.status, 200, "{checked:#?}");
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, token: Option<&str>) -> Answer {
    let base = app
        .admin_address
        .clone()
        .unwrap_or_else(|| app.address.clone());
    let mut request = app.client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read(request.send().await.expect("admin request")).await
}

/// The blocks in force, as the fraud team's operator lists them.
async fn list_blocks(app: &TestApp) -> Answer {
    admin(
        app,
        reqwest::Method::GET,
        "/v1/admin/blocks",
        Some(OPERATOR_TOKEN),
    )
    .await
}

/// The fraud team's operator lifts nordwind's block on +49151.
async fn lift_walked_prefix(app: &TestApp) -> Answer {
    let path = "/v1/admin/blocks/nordwind/%2B49151";
    admin(app, reqwest::Method::DELETE, path, Some(OPERATOR_TOKEN)).await
}

async fn a_number_is_refused_past_its_limit_and_served_again_after_the_window(backend: Backend) {
    let app = app_with_rules(
        backend,
        "[fraud.rate_limits]\nphone = [\"3/10m\", \"5/1d\"]\n",
    )
    .await;
    for attempt in 1..=3 {
        let answer = app.start(&start_for(PHONE)).await;
        assert_eq!(answer.status, 201, "start {attempt}: {answer:#?}");
    }
    let refused = app.start(&start_for(PHONE)).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(
        (&refused.body["rule"], &refused.body["key_type"]),
        (&json!("rate_limit"), &json!("phone"))
    );
    let retry = refused.retry_after();
    assert!((1..=600).contains(&retry), "{retry}");
    assert_eq!(app.sms_count().await, 3, "no SMS for the refused start");
    // Another number is not affected.
    let other = app.start(&start_for("+4915123456780")).await;
    assert_eq!(other.status, 201, "{other:#?}");

    // The 10-minute window passes; the day's window (5) still has room for two.
    app.clock.advance(10 * 60_000 + 1);
    assert_eq!(app.start(&start_for(PHONE)).await.status, 201);
    assert_eq!(app.start(&start_for(PHONE)).await.status, 201);
    let daily = app.start(&start_for(PHONE)).await;
    daily.assert_problem(429, "rate_limited");
    // Both windows live on one counter row: the refusal waits for the day's window, and the
    // next 10-minute window does not lift it.
    let retry = daily.retry_after();
    assert!(retry > 23 * 3_600, "the day's window: {retry}");
    app.clock.advance(10 * 60_000 + 1);
    app.start(&start_for(PHONE))
        .await
        .assert_problem(429, "rate_limited");
    app.clock.advance(24 * 3_600_000);
    assert_eq!(app.start(&start_for(PHONE)).await.status, 201, "a new day");

    let blocked = blocked_events(&app).await;
    assert_eq!(blocked.len(), 3, "one event per refusal: {blocked:#?}");
    for event in &blocked {
        assert_eq!(
            (&event["rule"], &event["key_type"], &event["outcome"]),
            (&json!("rate_limit"), &json!("phone"), &json!("blocked"))
        );
        assert!(
            !event.to_string().contains(&PHONE[1..]),
            "no raw number in the event"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"orderguard_fraud_refusals_total{brand="nordwind",mode="enforce",rule="rate_limit"} 3"#
        ),
        "{metrics}"
    );
}

async fn fifty_parallel_starts_to_one_number_never_exceed_its_limit(backend: Backend) {
    // The limit binding in the row's first window, then in its second (the day's, on the same
    // counter row): either way exactly the limit is served, never more and never fewer.
    for rules in [
        "[fraud.rate_limits]\nphone = [\"5/10m\"]\n",
        "[fraud.rate_limits]\nphone = [\"1000/10m\", \"5/1d\"]\n",
    ] {
        let app = Arc::new(app_with_rules(backend, rules).await);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                app.start(&start_for(PHONE)).await.status
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.expect("join"));
        }
        let served = statuses.iter().filter(|s| **s == 201).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((served, refused), (5, 45), "{rules}: {statuses:?}");
        assert_eq!(app.sms_count().await, 5, "{rules}");
    }
}

async fn an_ip_limit_counts_only_starts_that_never_converted(backend: Backend) {
    // Twenty buyers behind one carrier-grade NAT address, each confirming: all served, though
    // the IP's limit is 5, because a converted start is given back.
    let app = app_with_rules(
        backend,
        "[fraud.rate_limits]\nip = [\"5/10m\"]\nip_range = [\"8/10m\"]\n",
    )
    .await;
    let nat = "100.64.1.1";
    for n in 0..20 {
        let mut body = start_for(&number("+49151", 1_000 + n));
        body["client_ip"] = json!(nat);
        let answer = app.start(&body).await;
        assert_eq!(answer.status, 201, "buyer {n}: {answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
    }
    // Five starts that never convert fill the IP's budget; the sixth is refused by IP.
    for n in 0..5 {
        let mut body = start_for(&number("+49152", 2_000 + n * 1_234_567));
        body["client_ip"] = json!(nat);
        let answer = app.start(&body).await;
        assert_eq!(answer.status, 201, "unconverted {n}: {answer:#?}");
    }
    let mut body = start_for(&number("+49152", 3_000));
    body["client_ip"] = json!(nat);
    let refused = app.start(&body).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(refused.body["key_type"], "ip");
    // The same range, another address: three more unconverted fit the range's 8.
    for n in 0..3 {
        let mut body = start_for(&number("+49152", 4_000 + n * 7_654_321));
        body["client_ip"] = json!(format!("100.64.1.{}", 10 + n));
        assert_eq!(app.start(&body).await.status, 201, "range {n}");
    }
    let mut body = start_for(&number("+49152", 5_000));
    body["client_ip"] = json!("100.64.1.99");
    let refused = app.start(&body).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(refused.body["key_type"], "ip_range");
}

const PUMPING: &str = "[fraud.pumping]\nmin_starts = 10\nmin_approval_ratio = 0.35\n\
    window_seconds = 600\ncooldown_seconds = 300\nmax_cooldown_seconds = 43200\nbrand_min_starts = 0\n";

/// A pumper that never converts, spread over its prefix (no walk): `n` starts to random
/// numbers in `prefix`, one every `step_ms` on the fraud clock. The SMS it got out.
async fn pump_randomly(app: &TestApp, prefix: &str, n: u64, step_ms: i64, seed: u64) -> usize {
    let before = app.sms_count().await;
    let mut x = seed;
    for _ in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let answer = app
            .start(&start_for(&number(prefix, (x >> 24) % 100_000_000)))
            .await;
        if answer.status == 429 {
            assert_eq!(answer.problem(), "prefix_blocked", "{answer:#?}");
        }
        app.clock.advance(step_ms);
    }
    app.sms_count().await - before
}

/// A walker (numbers one after the other, never confirming) is refused by its range after a
/// handful of SMS; the rest of its prefix is served, first-time buyers included, and so is a
/// known-good buyer right next to the walk.
async fn a_walker_is_refused_by_its_range_while_the_rest_of_its_prefix_is_served(backend: Backend) {
    let app = app_with_rules(backend, PUMPING).await;
    let regular = number("+49151", 42);
    let first = app.start(&start_for(&regular)).await;
    approve(&app, first.body["id"].as_str().expect("id")).await;
    app.clock.advance(24 * 3_600_000);

    let before = app.sms_count().await;
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..1_000 {
        let answer = app.start(&start_for(&number("+49151", 1_000 + n))).await;
        *statuses
            .entry(format!("{} {}", answer.status, answer.body["rule"]))
            .or_default() += 1;
        app.clock.advance(40);
    }
    let pumped = app.sms_count().await - before;
    assert!(pumped <= 6, "{pumped} SMS to the walk ({statuses:?})");
    assert_eq!(
        statuses.get("429 \"number_walk\""),
        Some(&(1_000 - pumped)),
        "{statuses:?}"
    );
    assert_eq!(
        app.start(&start_for(&regular)).await.status,
        201,
        "known-good, beside the walk"
    );
    for n in 0..10u64 {
        let buyer = number("+49151", 20_000_000 + n * 3_333_331);
        let answer = app.start(&start_for(&buyer)).await;
        assert_eq!(answer.status, 201, "first-time buyer {n}: {answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
    }
    app.start(&start_for(&number("+49151", 2_500)))
        .await
        .assert_problem(429, "prefix_blocked");
    let blocks = list_blocks(&app).await;
    assert_eq!(
        blocks.body["blocks"],
        json!([]),
        "no prefix block: {blocks:#?}"
    );
    // Two minutes later the walk is forgotten.
    app.clock.advance(120_001);
    assert_eq!(
        app.start(&start_for(&number("+49151", 2_501))).await.status,
        201
    );
}

/// The attacker's cover: between the walk's steps, a flood of one number in the same prefix
/// (refused by its own limit after five), more starts than the walk memory keeps per prefix.
/// The flood must not push the walk's numbers out: the walk is still refused by its range.
async fn a_flood_of_one_number_does_not_hide_a_walk_beside_it(backend: Backend) {
    let app = app_with_rules(backend, PUMPING).await;
    let flood = start_for(&number("+49151", 99_000_000));
    let before = app.sms_count().await;
    let mut walk_statuses = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..30 {
        for _ in 0..33 {
            let answer = app.start(&flood).await;
            assert!(matches!(answer.status, 201 | 429), "the flood: {answer:#?}");
        }
        let answer = app.start(&start_for(&number("+49151", 1_000 + n))).await;
        *walk_statuses
            .entry(format!("{} {}", answer.status, answer.body["rule"]))
            .or_default() += 1;
        app.clock.advance(40);
    }
    // Five SMS to the flooded number (its limit), at most six to the walk.
    let sent = app.sms_count().await - before;
    assert!(sent <= 5 + 6, "{sent} SMS ({walk_statuses:?})");
    assert!(
        walk_statuses.get("429 \"number_walk\"") >= Some(&24),
        "{walk_statuses:?}"
    );
}

/// A prefix whose starts never convert (a pumper over random numbers of one prefix) is
/// blocked once enough of its starts are old enough to have converted; known-good buyers pass
/// the block, first-time buyers do not; operators list and lift it; once its cool-down passes
/// it is served again, and tripping again doubles the cool-down.
async fn a_prefix_that_never_converts_is_blocked_serves_known_good_and_doubles_its_cooldown(
    backend: Backend,
) {
    let app = app_with_rules(backend, PUMPING).await;
    // Simulated time only: a busy machine's real seconds would make starts old enough to judge
    // sooner than the pump's 2 s steps say.
    app.clock.freeze();
    // A buyer in the prefix approved 91 days ago: past `known_good_days` (90) at the block.
    let lapsed = number("+49151", 43);
    let old = app.start(&start_for(&lapsed)).await;
    approve(&app, old.body["id"].as_str().expect("id")).await;
    app.clock.advance(90 * 24 * 3_600_000);
    // A real buyer in the prefix, approved yesterday: known-good from now on, and so is the
    // customer behind it.
    let regular = number("+49151", 42);
    let mut body = start_for(&regular);
    body["customer_reference"] = json!("C-regular");
    let first = app.start(&body).await;
    approve(&app, first.body["id"].as_str().expect("id")).await;
    app.clock.advance(24 * 3_600_000);

    // One start every 2 s for two minutes: 10 starts older than 30 s are there after 50 s
    // (the 25th start).
    let pumped = pump_randomly(&app, "+49151", 60, 2_000, 1).await;
    assert!(
        (24..=27).contains(&pumped),
        "blocked once 10 starts had the time to convert: {pumped} of 60 sent"
    );

    // Normal traffic in another prefix, converting, is served throughout.
    for n in 0..20 {
        let answer = app
            .start(&start_for(&number("+49160", n * 4_999_999)))
            .await;
        assert_eq!(answer.status, 201, "normal buyer {n}: {answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
    }
    // The known-good buyer in the blocked prefix is served; a first-time buyer there is not.
    assert_eq!(
        app.start(&start_for(&regular)).await.status,
        201,
        "known-good"
    );
    app.start(&start_for(&number("+49151", 99_999_999)))
        .await
        .assert_problem(429, "prefix_blocked");
    app.start(&start_for(&lapsed))
        .await
        .assert_problem(429, "prefix_blocked");
    // The known-good customer with a new number in the blocked prefix is served.
    let mut body = start_for(&number("+49151", 77_777_777));
    body["customer_reference"] = json!("C-regular");
    assert_eq!(app.start(&body).await.status, 201, "known-good customer");

    // The operators see the block.
    admin(&app, reqwest::Method::GET, "/v1/admin/blocks", None)
        .await
        .assert_problem(401, "unauthorized");
    admin(
        &app,
        reqwest::Method::GET,
        "/v1/admin/blocks",
        Some(PRIVACY_TOKEN),
    )
    .await
    .assert_problem(403, "wrong_scope");
    let blocks = list_blocks(&app).await;
    assert_eq!(blocks.status, 200, "{blocks:#?}");
    let block = &blocks.body["blocks"][0];
    assert_eq!(
        (
            &block["brand"],
            &block["prefix"],
            &block["level"],
            &block["cooldown_seconds"]
        ),
        (&json!("nordwind"), &json!("+49151"), &json!(1), &json!(300))
    );
    assert!(
        block["conversion"].as_f64().is_some_and(|c| c < 0.35),
        "{block}"
    );

    // The cool-down passes: the prefix is served again (judged on what comes after the block
    // only), trips again, and the second block lasts twice as long.
    let blocked_until = block["released_at"].clone();
    app.clock.advance(300_001);
    assert_eq!(
        app.start(&start_for(&number("+49151", 50_000_000)))
            .await
            .status,
        201,
        "released (the block ended {blocked_until})"
    );
    pump_randomly(&app, "+49151", 60, 2_000, 2).await;
    let blocks = list_blocks(&app).await;
    assert_eq!(
        (
            &blocks.body["blocks"][0]["level"],
            &blocks.body["blocks"][0]["cooldown_seconds"]
        ),
        (&json!(2), &json!(600)),
        "{blocks:#?}"
    );

    // An operator lifts it: served at once, and the lift is an event naming the operator.
    let lifted = lift_walked_prefix(&app).await;
    assert_eq!(lifted.status, 204, "{lifted:#?}");
    assert_eq!(
        app.start(&start_for(&number("+49151", 70_000_000)))
            .await
            .status,
        201
    );
    lift_walked_prefix(&app)
        .await
        .assert_problem(404, "not_found");
    app.wait_for_outbox_drained(30).await;
    let text = std::fs::read_to_string(app.data_dir.join("events.jsonl")).unwrap_or_default();
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("event"))
        .collect();
    let kinds = |kind: &str| {
        events
            .iter()
            .filter(|e| e["event_type"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let placed = kinds("prefix_block_placed");
    assert_eq!(placed.len(), 2, "{placed:#?}");
    assert_eq!(
        (
            &placed[0]["number_prefix"],
            &placed[0]["attempt"],
            &placed[1]["attempt"]
        ),
        (&json!("+49151"), &json!(1), &json!(2))
    );
    let lifts = kinds("prefix_block_lifted");
    assert_eq!(lifts.len(), 1);
    assert!(
        lifts[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fraud-team")),
        "{lifts:#?}"
    );
    assert!(
        kinds("verification_blocked")
            .iter()
            .all(|e| e["rule"] == "pumping" && e["key_type"] == "prefix"),
        "every refusal names its rule"
    );
}

async fn slow_pumping_over_many_prefixes_trips_the_brand_conversion_guard(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        set_fraud_rules(
            &s.brands_dir,
            "nordwind",
            "[fraud.pumping]\nmin_starts = 1000\nbrand_min_starts = 40\nbrand_min_approval_ratio = 0.6\n",
        );
        // Prefixes of five national digits (+4915100): many small prefixes.
        s.prefix.by_country.insert("DE".to_owned(), 5);
    })
    .await;
    // Real buyers in four busy prefixes, converting; a slow pumper over 100 other prefixes
    // (+4915200 … +4915299), never converting. Interleaved 1 : 2.
    let busy = ["+4915100", "+4915101", "+4915102", "+4915103"];
    let mut real = (0, 0);
    let mut pumping = (0, 0);
    for round in 0..150u64 {
        let buyer = format!("{}{:06}", busy[(round % 4) as usize], round);
        let answer = app.start(&start_for(&buyer)).await;
        real.0 += 1;
        if answer.status == 201 {
            real.1 += 1;
            approve(&app, answer.body["id"].as_str().expect("id")).await;
        }
        // Four seconds a round on the fraud clock: the brand's window becomes old enough to
        // judge after 30 rounds (its first two minutes are not: codes are still being typed).
        app.clock.advance(4_000);
        for k in 0..2 {
            let sub = (round * 2 + k) % 100;
            let answer = app
                .start(&start_for(&format!("+49152{sub:02}{:06}", round * 2 + k)))
                .await;
            pumping.0 += 1;
            if answer.status == 201 {
                pumping.1 += 1;
            } else {
                assert_eq!(answer.problem(), "prefix_blocked", "{answer:#?}");
            }
        }
    }
    assert_eq!(
        real.1, real.0,
        "every real buyer in a converting prefix served"
    );
    assert!(
        pumping.1 * 100 / pumping.0 < 30,
        "most slow pumping refused: {} of {} sent",
        pumping.1,
        pumping.0
    );
    let blocked = blocked_events(&app).await;
    assert!(
        blocked
            .iter()
            .all(|e| e["rule"] == "brand_conversion" && e["key_type"] == "brand"),
        "{:#?}",
        blocked.first()
    );
}

/// The example brand's default rules. A shop that runs converts in its buyers' prefixes; a slow
/// pumper spread over the country's other mobile prefixes (too few starts in each for the prefix
/// guard, too few overall to pull the brand's conversion down) is served only the brand's
/// new-prefix budget (10 per window), from its first start on, while real buyers in their
/// prefixes are served. The budget is given again when the window ends, and a prefix where a
/// buyer converts is open from then on.
async fn a_slow_pumper_in_prefixes_the_buyers_do_not_use_gets_the_new_prefix_budget_only(
    backend: Backend,
) {
    // The example brand's defaults, but for the history the budget waits for (2,000 approvals),
    // shortened to 100 to keep the test short.
    let app = app_with_rules(backend, "[fraud.pumping]\nnew_prefix_min_approvals = 100\n").await;
    let mut rng = Lcg(7);
    let busy = ["+49151", "+49160", "+49170", "+49175"];
    let unused = ["+49150", "+49155", "+49156", "+49157", "+49158"];
    // The shop has a history: 100 buyers approved in its four prefixes over the last days.
    for n in 0..100u64 {
        let phone = number(busy[(n % 4) as usize], rng.next());
        let answer = app.start(&start_for(&phone)).await;
        assert_eq!(answer.status, 201, "{answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
        app.clock.advance(3_600_000);
    }
    // 150 s: a real buyer a second in the busy prefixes, a pumper at 2/s over the other five.
    let (mut real, mut pumped, mut pumped_sent) = (0, 0, 0);
    for round in 0..150u64 {
        let phone = number(busy[(round % 4) as usize], rng.next());
        let answer = app.start(&start_for(&phone)).await;
        assert_eq!(answer.status, 201, "a real buyer: {answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
        real += 1;
        for _ in 0..2 {
            let phone = number(unused[(rng.next() % 5) as usize], rng.next());
            let answer = app.start(&start_for(&phone)).await;
            pumped += 1;
            if answer.status == 201 {
                pumped_sent += 1;
            } else {
                assert_eq!(answer.status, 429, "{answer:#?}");
                assert_eq!(answer.problem(), "prefix_blocked", "{answer:#?}");
                let retry = answer.retry_after();
                assert!((1..=600).contains(&retry), "{answer:#?}");
            }
        }
        app.clock.advance(1_000);
    }
    assert_eq!(real, 150);
    assert_eq!(pumped_sent, 10, "the budget, of {pumped} pumped starts");
    // In +49159, which nobody pumped but where no buyer converted either, a first-time buyer
    // is refused while the budget is spent.
    let first_time = app.start(&start_for(&number("+49159", 12_121_212))).await;
    assert_eq!(first_time.problem(), "prefix_blocked", "{first_time:#?}");
    assert_eq!(first_time.body["rule"], "new_prefix", "{first_time:#?}");
    let blocked = blocked_events(&app).await;
    assert_eq!(blocked.len() as u64, pumped - 10 + 1);
    // The budget refuses from the pumper's 11th start on; once a pumped prefix has its 15
    // mature starts, its own guard blocks it too.
    assert_eq!(blocked[0]["rule"], "new_prefix", "{:#?}", blocked[0]);
    let rules: std::collections::BTreeSet<&str> = blocked
        .iter()
        .map(|e| e["rule"].as_str().unwrap_or_default())
        .collect();
    assert!(
        rules.is_subset(&["new_prefix", "pumping"].into()),
        "{rules:?}"
    );
    assert!(blocked.iter().all(|e| e["key_type"] == "prefix"));
    // A new window gives the budget again; a buyer it serves in +49159 converts, and the
    // prefix is open past the budget from then on.
    app.clock.advance(600_000);
    let answer = app.start(&start_for(&number("+49159", 31_313_131))).await;
    assert_eq!(answer.status, 201, "the next window's budget: {answer:#?}");
    approve(&app, answer.body["id"].as_str().expect("id")).await;
    app.clock.advance(1_000);
    for n in 0..15u64 {
        let answer = app.start(&start_for(&number("+49159", rng.next()))).await;
        assert_eq!(
            answer.status, 201,
            "a converting prefix is open ({n}): {answer:#?}"
        );
    }
}

/// The example brand's defaults, with the new-prefix budget turned on for a shop without a
/// history (a new shop, a fresh database) once it has 50 approvals in the pumping window
/// (`new_prefix_recent_approvals = 50`; the example brands wait for a history). A burst of
/// first-time buyers in a prefix none of them converted in yet is served whole (their starts
/// are not judged before they could have typed their codes); a slow pumper spread over six
/// prefixes nobody converts in (too thin for the prefix guard, too few to pull the brand's
/// conversion down) is served for the first half minute and the budget, then refused, and
/// still refused after the window's turn.
async fn a_busy_shop_without_a_history_serves_a_slow_pumper_little_and_its_new_buyers_all(
    backend: Backend,
) {
    let app = app_with_rules(
        backend,
        "[fraud.pumping]\nnew_prefix_recent_approvals = 50\n",
    )
    .await;
    app.clock.freeze();
    let mut rng = Lcg(11);
    let busy = ["+49151", "+49160", "+49170", "+49175"];
    let unused = ["+49150", "+49155", "+49156", "+49157", "+49158", "+49159"];
    let buyer = |rng: &mut Lcg| number(busy[(rng.next() % 4) as usize], rng.next());
    // A minute of buyers, one a second, each confirming: 60 approvals, no history.
    for _ in 0..60 {
        let answer = app.start(&start_for(&buyer(&mut rng))).await;
        assert_eq!(answer.status, 201, "{answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
        app.clock.advance(1_000);
    }
    // Fifteen first-time buyers in +49176 within 15 s, typing their codes 20 s later, beside
    // the buyers of the busy prefixes and a pumper at one start a second over the six others.
    let mut pending: Vec<(u64, String)> = Vec::new();
    let (mut new_buyers_served, mut pumped_sent) = (0, 0);
    let mut refusals = std::collections::BTreeSet::new();
    for round in 0..90u64 {
        let answer = app.start(&start_for(&buyer(&mut rng))).await;
        assert_eq!(answer.status, 201, "a buyer of a busy prefix: {answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
        if round < 15 {
            let answer = app.start(&start_for(&number("+49176", rng.next()))).await;
            if answer.status == 201 {
                new_buyers_served += 1;
                pending.push((
                    round + 20,
                    answer.body["id"].as_str().expect("id").to_owned(),
                ));
            }
        }
        let pumped = number(unused[(round % 6) as usize], rng.next());
        let answer = app.start(&start_for(&pumped)).await;
        if answer.status == 201 {
            pumped_sent += 1;
        } else {
            assert_eq!(answer.problem(), "prefix_blocked", "{answer:#?}");
            refusals.insert(answer.body["rule"].as_str().unwrap_or_default().to_owned());
        }
        for (_, id) in pending.iter().filter(|(at, _)| *at == round) {
            approve(&app, id).await;
        }
        app.clock.advance(1_000);
    }
    println!("new buyers served {new_buyers_served} of 15; pumper sent {pumped_sent} of 90");
    assert_eq!(new_buyers_served, 15, "every first-time buyer of +49176");
    // Nothing is judged in the first 30 s; then the 10 of the budget that did not convert.
    assert!(
        (10..=50).contains(&pumped_sent),
        "the pumper: {pumped_sent} of 90 sent"
    );
    assert_eq!(
        refusals,
        ["new_prefix".to_owned()].into(),
        "refused by the new-prefix budget"
    );
    // The next window: the pumper that spent the last one's budget finds none, in a prefix
    // it had not pumped either (those it pumped are blocked by now: their starts of the window
    // before are all old enough to judge).
    app.clock.advance(600_000);
    let answer = app.start(&start_for(&buyer(&mut rng))).await;
    assert_eq!(answer.status, 201, "{answer:#?}");
    let pumped = app.start(&start_for(&number("+49177", rng.next()))).await;
    assert_eq!(pumped.problem(), "prefix_blocked", "{pumped:#?}");
    assert_eq!(pumped.body["rule"], "new_prefix", "{pumped:#?}");
}

async fn a_monitored_rule_serves_and_records_what_it_would_have_refused(backend: Backend) {
    let app = app_with_rules(
        backend,
        "[fraud.rate_limits]\nmode = \"monitor\"\nphone = [\"1/10m\"]\n",
    )
    .await;
    assert_eq!(app.start(&start_for(PHONE)).await.status, 201);
    let second = app.start(&start_for(PHONE)).await;
    assert_eq!(second.status, 201, "monitor mode serves: {second:#?}");
    assert_eq!(app.sms_count().await, 2);
    let blocked = blocked_events(&app).await;
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(
        (&blocked[0]["outcome"], &blocked[0]["rule"]),
        (&json!("monitored"), &json!("rate_limit"))
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"orderguard_fraud_refusals_total{brand="nordwind",mode="monitor",rule="rate_limit"} 1"#
        ),
        "{metrics}"
    );
}

/// The range guard (default `range_min_starts = 10`): a pumper whose starts come from one IP
/// range and spread over many prefixes (no prefix guard sees it) is refused once more than 10
/// of its starts were served, none approved, and 3 are old enough to have converted; known-good
/// numbers from the range pass; one approval from the range opens it again, and so does the
/// end of the `ip_range` window. Buyers behind a carrier NAT, a burst still typing its codes
/// and then converting, are never refused.
async fn a_range_whose_starts_never_convert_is_refused_while_a_busy_nat_is_served(
    backend: Backend,
) {
    let app = app_with_rules(
        backend,
        "[fraud.pumping]\nmin_starts = 1000\nbrand_min_starts = 0\n",
    )
    .await;
    app.clock.freeze();
    // Numbers spread over many prefixes, far apart: no prefix or walk guard sees them.
    let prefixes = ["+49151", "+49160", "+49170", "+49175", "+49152", "+49162"];
    let mut drawn = 0u64;
    let mut spread = || {
        drawn += 1;
        number(prefixes[(drawn % 6) as usize], drawn * 7_777_777)
    };
    // A buyer approved yesterday (from elsewhere): known-good.
    let regular = number("+49172", 42);
    let first = app.start(&start_from(&regular, "192.0.2.200")).await;
    approve(&app, first.body["id"].as_str().expect("id")).await;
    app.clock.advance(24 * 3_600_000);

    // Fifteen buyers behind one NAT address in 15 s, none has typed a code yet: served.
    let nat = "100.64.9.9";
    let mut nat_ids = Vec::new();
    for n in 0..15 {
        let answer = app.start(&start_from(&spread(), nat)).await;
        assert_eq!(answer.status, 201, "NAT buyer {n}: {answer:#?}");
        nat_ids.push(answer.body["id"].as_str().expect("id").to_owned());
        app.clock.advance(1_000);
    }
    // Four of them type their codes 20 s after their starts; then 15 more buyers come.
    app.clock.advance(5_000);
    for id in &nat_ids[..4] {
        approve(&app, id).await;
    }
    app.clock.advance(25_000);
    for n in 0..15 {
        let answer = app.start(&start_from(&spread(), nat)).await;
        assert_eq!(answer.status, 201, "NAT buyer {}: {answer:#?}", 15 + n);
        app.clock.advance(1_000);
    }

    // A pumper on 203.0.113.0/24: eleven starts in 11 s, then one more at once; none is old
    // enough to judge yet.
    let mut pumped_ids = Vec::new();
    for n in 0..12u8 {
        let answer = app
            .start(&start_from(&spread(), &format!("203.0.113.{}", 1 + n)))
            .await;
        assert_eq!(answer.status, 201, "pumper {n}: {answer:#?}");
        pumped_ids.push(answer.body["id"].as_str().expect("id").to_owned());
        if n < 10 {
            app.clock.advance(1_000);
        }
    }
    // 30 s after its third start: refused, by range.
    app.clock.advance(22_000);
    let sent = app.sms_count().await;
    let refused = app.start(&start_from(&spread(), "203.0.113.99")).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(
        (&refused.body["rule"], &refused.body["key_type"]),
        (&json!("range_conversion"), &json!("ip_range"))
    );
    let retry = refused.retry_after();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(app.sms_count().await, sent, "no SMS for the refused start");
    let event = blocked_events(&app)
        .await
        .pop()
        .expect("the refusal's event");
    assert_eq!(
        (&event["rule"], &event["key_type"]),
        (&json!("range_conversion"), &json!("ip_range"))
    );
    assert!(
        !event.to_string().contains("203.0.113"),
        "no address in the event: {event}"
    );
    // The same range keeps being refused; a known-good number from it passes; another range
    // is served.
    app.start(&start_from(&spread(), "203.0.113.100"))
        .await
        .assert_problem(429, "rate_limited");
    let known = app.start(&start_from(&regular, "203.0.113.101")).await;
    assert_eq!(known.status, 201, "known-good: {known:#?}");
    let other = app.start(&start_from(&spread(), "198.51.100.1")).await;
    assert_eq!(other.status, 201, "another range: {other:#?}");
    // Another brand's buyer from the same range: its counters are the brand's own.
    let elsewhere = app
        .post(
            "/v1/verifications",
            FJALLNET_KEY,
            &start_from("+46701234567", "203.0.113.104"),
        )
        .await;
    assert_eq!(elsewhere.status, 201, "another brand: {elsewhere:#?}");

    // One start from the range converts (a real buyer among them, typing late): it is open
    // once the instance's memory of the refusal (5 s, which answers without counting) passes.
    approve(&app, &pumped_ids[0]).await;
    app.start(&start_from(&spread(), "203.0.113.103"))
        .await
        .assert_problem(429, "rate_limited");
    app.clock.advance(5_000);
    let opened = app.start(&start_from(&spread(), "203.0.113.102")).await;
    assert_eq!(opened.status, 201, "after an approval: {opened:#?}");

    // Another pumper's range, refused 30 s after its third start, is served again once the
    // ip_range window (10 minutes) that counted its starts ends.
    for n in 0..11u8 {
        let answer = app
            .start(&start_from(&spread(), &format!("192.0.2.{}", 1 + n)))
            .await;
        assert_eq!(answer.status, 201, "second pumper {n}: {answer:#?}");
        app.clock.advance(1_000);
    }
    app.clock.advance(22_000);
    app.start(&start_from(&spread(), "192.0.2.99"))
        .await
        .assert_problem(429, "rate_limited");
    app.clock.advance(600_000 - 33_000);
    let released = app.start(&start_from(&spread(), "192.0.2.98")).await;
    assert_eq!(released.status, 201, "a new window: {released:#?}");
}

/// The first seconds of a busy prefix look like pumping: many starts, no approval yet (codes
/// take a while to type). Judged on starts old enough to have converted, a busy prefix on a
/// fresh instance (10 buyers a second, numbers spread over the prefix, each confirming 20 s
/// later) is served throughout, while a walker at the same rate beside it (numbers one after
/// the other, never confirming) is stopped after a handful of SMS.
async fn a_busy_new_prefix_is_served_while_a_walker_beside_it_is_stopped(backend: Backend) {
    let app = app_with_rules(backend, "").await;
    // The buyers' 20 s of typing in simulated time only: a busy machine's real seconds would
    // stretch it towards the 30 s after which a start is judged.
    app.clock.freeze();
    let mut x: u64 = 7;
    let mut pending: Vec<(i64, String)> = Vec::new();
    let (mut buyers_refused, mut walker_sent) = (Vec::new(), 0);
    for tick in 0..600i64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let buyer = number("+49151", (x >> 24) % 100_000_000);
        let answer = app.start(&start_for(&buyer)).await;
        if answer.status == 201 {
            let id = answer.body["id"].as_str().expect("id").to_owned();
            pending.push((tick + 200, id));
        } else {
            buyers_refused.push((tick, answer.problem().to_owned()));
        }
        let walked = app
            .start(&start_for(&number("+49152", 4_000_000 + tick as u64)))
            .await;
        if walked.status == 201 {
            walker_sent += 1;
        } else {
            assert_eq!(walked.problem(), "prefix_blocked", "{walked:#?}");
        }
        // 100 ms a tick: the buyers who started 20 s ago type their code.
        app.clock.advance(100);
        approve_due(&app, &mut pending, tick).await;
    }
    assert_eq!(
        buyers_refused,
        Vec::new(),
        "every buyer of the busy prefix served"
    );
    assert!(
        walker_sent <= 8,
        "the walker is stopped after a handful: {walker_sent} of 600 sent"
    );
    let blocked = blocked_events(&app).await;
    assert!(
        blocked
            .iter()
            .all(|e| e["rule"] == "number_walk" || e["rule"] == "pumping"),
        "{:#?}",
        blocked.first()
    );
}

/// Starts `phone` of nordwind and returns its verification's id, asserting it was served.
async fn served(app: &TestApp, phone: &str, what: &str) -> String {
    let answer = app.start(&start_for(phone)).await;
    assert_eq!(answer.status, 201, "{what}: {answer:#?}");
    answer.body["id"].as_str().expect("id").to_owned()
}

/// Approves the verifications of `pending` due by `now` (a tick or a time, as `pending` counts).
async fn approve_due(app: &TestApp, pending: &mut Vec<(i64, String)>, now: i64) {
    let due: Vec<String> = pending
        .iter()
        .filter(|(at, _)| *at <= now)
        .map(|(_, id)| id.clone())
        .collect();
    pending.retain(|(at, _)| *at > now);
    for id in due {
        approve(app, &id).await;
    }
}

/// A brand whose buyers take 70 s to confirm (the SMS, then the typing): the guards learn it
/// from the brand's approvals and judge a start only once it is that old, so first-time buyers
/// in a new prefix, one every 2 s, are all served. Judged after the shortest lag (30 s), their
/// prefix was blocked once 15 of its starts were 30 s old, and the 30th buyer on refused.
async fn buyers_who_type_slowly_are_judged_only_after_the_brands_usual_typing_time(
    backend: Backend,
) {
    let app = app_with_rules(backend, "").await;
    app.clock.freeze();
    const TYPING_MS: i64 = 70_000;
    let mut pending: Vec<(i64, String)> = Vec::new();
    // The brand's buyers so far, spread over five prefixes (none near a guard's threshold),
    // one every 4 s, each confirming 70 s later.
    let prefixes = ["+49160", "+49162", "+49163", "+49170", "+49171"];
    for n in 0..25u64 {
        let phone = number(prefixes[n as usize % 5], 11_111_111 * (n + 1));
        let id = served(&app, &phone, "an earlier buyer").await;
        pending.push((app.clock.now() + TYPING_MS, id));
        app.clock.advance(4_000);
        approve_due(&app, &mut pending, app.clock.now()).await;
    }
    app.clock.advance(TYPING_MS);
    approve_due(&app, &mut pending, app.clock.now()).await;
    assert!(pending.is_empty());

    // Now a new prefix gets a first-time buyer every 2 s, each confirming 70 s later.
    for n in 0..60u64 {
        let phone = number("+49176", 1_234_567 * (n + 1));
        let id = served(&app, &phone, &format!("first-time buyer {n} in +49176")).await;
        pending.push((app.clock.now() + TYPING_MS, id));
        app.clock.advance(2_000);
        approve_due(&app, &mut pending, app.clock.now()).await;
    }
    let blocked = blocked_events(&app).await;
    assert!(blocked.is_empty(), "{blocked:#?}");
}

/// A window begins at its first start; when it ends, the next one counts the window before's
/// starts as old enough to judge only once they are: a burst of buyers in the last seconds
/// before the turn, still typing their codes (20 s) as it turns, does not block their prefix.
/// Counted whole at the turn, the burst's 20 unconfirmed starts blocked it.
async fn a_burst_just_before_the_window_turns_is_not_judged_before_its_codes_are_typed(
    backend: Backend,
) {
    let app = app_with_rules(backend, "").await;
    app.clock.freeze();
    const TYPING_MS: i64 = 20_000;
    let mut pending: Vec<(i64, String)> = Vec::new();
    // The prefix's window begins with this buyer.
    let first = served(&app, &number("+49176", 1), "the window's first buyer").await;
    approve(&app, &first).await;
    // 15 s before the window (600 s) ends, 20 buyers within 10 s.
    app.clock.advance(585_000);
    for n in 0..20u64 {
        let id = served(
            &app,
            &number("+49176", 4_999_999 * (n + 1)),
            "a burst buyer",
        )
        .await;
        pending.push((app.clock.now() + TYPING_MS, id));
        app.clock.advance(500);
    }
    // Past the turn, a buyer a second, while the burst's buyers type their codes.
    for n in 0..60u64 {
        let phone = number("+49176", 3_333_333 * (n + 1) + 7);
        let id = served(&app, &phone, &format!("buyer {n} after the turn")).await;
        pending.push((app.clock.now() + TYPING_MS, id));
        app.clock.advance(1_000);
        approve_due(&app, &mut pending, app.clock.now()).await;
    }
    let blocked = blocked_events(&app).await;
    assert!(blocked.is_empty(), "{blocked:#?}");
}

/// `mode = "off"` (a shop that runs its own rules, or the bench measuring what the rules
/// cost): nothing is counted, nothing refused, no counter row written, no approval signal
/// recorded; the deny-list, which costs nothing, still refuses.
async fn rules_turned_off_neither_count_nor_refuse_but_the_deny_list_holds(backend: Backend) {
    let app = app_with_rules(
        backend,
        "[fraud]\ndeny_prefixes = [\"+49160\"]\n[fraud.rate_limits]\nmode = \"off\"\nphone = [\"1/10m\"]\n\
         [fraud.pumping]\nmode = \"off\"\nmin_starts = 1\n",
    )
    .await;
    for attempt in 1..=4 {
        let answer = app.start(&start_for(PHONE)).await;
        assert_eq!(answer.status, 201, "start {attempt}: {answer:#?}");
        if attempt == 1 {
            approve(&app, answer.body["id"].as_str().expect("id")).await;
        }
    }
    app.start(&start_for("+4916012345678"))
        .await
        .assert_problem(403, "number_blocked");
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .expect("database");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fraud_counter")
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(rows, 0, "no counter written");
    let blocked = blocked_events(&app).await;
    assert_eq!(blocked.len(), 1, "only the deny-list refused: {blocked:#?}");
    assert_eq!(blocked[0]["rule"], json!("deny_list"));
}

/// A shop behind a dual-stack socket passes its IPv4 buyers as IPv4-mapped IPv6 addresses
/// (`::ffff:203.0.113.7`): each is counted under its IPv4 address and its /24, as when it
/// arrives as IPv4, never with every other mapped address under one IPv6 /64 (which would
/// put all of the shop's buyers behind one range limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_addresses_count_as_their_ipv4_address_and_range() {
    let app = app_with_rules(
        Backend::Sqlite,
        "[fraud.rate_limits]\nip = [\"1/10m\"]\nip_range = [\"1/10m\"]\n",
    )
    .await;
    for (n, ip) in ["::ffff:203.0.113.7", "::FFFF:198.51.100.7"]
        .into_iter()
        .enumerate()
    {
        let answer = app
            .start(&start_from(
                &number("+49151", 1_111_111 * (n as u64 + 1)),
                ip,
            ))
            .await;
        assert_eq!(answer.status, 201, "{ip}: {answer:#?}");
    }
    // The first buyer's address written as IPv4: the same address, past its limit of one.
    let refused = app
        .start(&start_from(&number("+49160", 3_333_333), "203.0.113.7"))
        .await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(refused.body["key_type"], json!("ip"));
}

/// The settings of one instance of several over `database`, nordwind with `rules`. Replicas
/// share their keys, as in production: the pseudonyms the counters are keyed by, the codes' MAC.
fn replica_of(database: &str, rules: &'static str) -> impl Fn(&mut orderguard::settings::Settings) {
    let database = database.to_owned();
    move |s| {
        set_fraud_rules(&s.brands_dir, "nordwind", rules);
        s.database.url = Some(database.clone());
        s.secrets.event_pepper = Some(
            "a-shared-event-pepper-of-32-chars-at-least"
                .to_owned()
                .into(),
        );
        s.secrets.code_key = Some(
            "a-shared-code-key-of-32-characters-at-least"
                .to_owned()
                .into(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_one_postgres_share_one_limit() {
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = replica_of(&database, "[fraud.rate_limits]\nphone = [\"4/10m\"]\n");
    let first = spawn_app_with(Backend::Postgres, &configure).await;
    let second = spawn_app_with(Backend::Postgres, &configure).await;
    for (n, app) in [&first, &second, &first, &second].into_iter().enumerate() {
        assert_eq!(app.start(&start_for(PHONE)).await.status, 201, "start {n}");
    }
    first
        .start(&start_for(PHONE))
        .await
        .assert_problem(429, "rate_limited");
    second
        .start(&start_for(PHONE))
        .await
        .assert_problem(429, "rate_limited");
}

/// The range guard behind a load balancer: a pumper's range alternating between two instances
/// over one PostgreSQL is refused by both once more than 10 of its starts were served in all
/// and each instance served 3 that are old enough to have converted; an approval checked on
/// one instance opens the range on the other (its memory of the refusal passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_ranges_starts_and_its_approvals() {
    let database = crate::helpers::fresh_postgres_database().await;
    let configure = replica_of(
        &database,
        "[fraud.pumping]\nmin_starts = 1000\nbrand_min_starts = 0\n",
    );
    let first = spawn_app_with(Backend::Postgres, &configure).await;
    let second = spawn_app_with(Backend::Postgres, &configure).await;
    let both = [&first, &second];
    for app in both {
        app.clock.freeze();
    }
    let advance = |ms: i64| {
        for app in both {
            app.clock.advance(ms);
        }
    };
    // Start `n` of the pumper: numbers spread over three prefixes, addresses over one range.
    let pumped = |n: u64| {
        let prefix = ["+49151", "+49160", "+49170"][(n % 3) as usize];
        start_from(
            &number(prefix, n * 7_777_777),
            &format!("203.0.113.{}", 1 + n % 250),
        )
    };
    let mut ids = Vec::new();
    for n in 0..12u64 {
        let app = both[(n % 2) as usize];
        let answer = app.start(&pumped(n)).await;
        assert_eq!(answer.status, 201, "start {n}: {answer:#?}");
        ids.push(answer.body["id"].as_str().expect("id").to_owned());
        advance(1_000);
    }
    // 30 s after the sixth start: each instance served three that are as old.
    advance(25_000);
    for (n, app) in both.into_iter().enumerate() {
        let refused = app.start(&pumped(100 + n as u64)).await;
        refused.assert_problem(429, "rate_limited");
        assert_eq!(
            refused.body["rule"],
            json!("range_conversion"),
            "instance {n}"
        );
    }
    // A start served by the first instance is approved through the second.
    let code = first.latest_code(&ids[0]).await;
    assert_eq!(second.check(&ids[0], &code).await.status, 200);
    advance(5_000);
    let opened = first.start(&pumped(200)).await;
    assert_eq!(
        opened.status, 201,
        "opened by an approval elsewhere: {opened:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_live_on_the_admin_listener_when_it_is_set() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.http.admin_port = Some(0);
        s.admin.tokens = vec![orderguard::settings::OperatorToken {
            actor: "fraud-team".to_owned(),
            scope: "fraud".to_owned(),
            hash: orderguard::brands::api_key_hash(OPERATOR_TOKEN),
        }];
    })
    .await;
    let admin_address = app.admin_address.clone().expect("admin listener");
    let on = |base: &str, path: &str| format!("{base}{path}");
    let buyers = app
        .client
        .get(on(&app.address, "/v1/admin/blocks"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(buyers.status(), 404, "not on the buyers' listener");
    let metrics = app
        .client
        .get(on(&app.address, "/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(metrics.status(), 404, "metrics not on the buyers' listener");
    let listed = app
        .client
        .get(on(&admin_address, "/v1/admin/blocks"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(listed.status(), 200);
    let metrics = app
        .client
        .get(on(&admin_address, "/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(metrics.status(), 200);
    let start = app
        .client
        .post(on(&admin_address, "/v1/verifications"))
        .bearer_auth(DEV_KEY)
        .json(&start_body())
        .send()
        .await
        .expect("send");
    assert_eq!(
        start.status(),
        404,
        "buyers' routes are not on the admin listener"
    );
}

/// A local server implementing CAMARA SIM Swap v2's check endpoint: records each request
/// and answers as told.
struct SimSwapServer {
    url: String,
    requests: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>>,
}

#[derive(Clone, Copy)]
enum SwapReply {
    Swapped(bool),
    Status(u16),
}

impl SimSwapServer {
    async fn start(reply: SwapReply) -> Self {
        let requests: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>> = Arc::default();
        let log = requests.clone();
        let handler = move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().expect("lock").push((headers, body.0));
                match reply {
                    SwapReply::Swapped(swapped) => (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({"swapped": swapped})),
                    ),
                    SwapReply::Status(status) => (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        axum::Json(
                            json!({"status": status, "code": "UNAVAILABLE", "message": "down"}),
                        ),
                    ),
                }
            }
        };
        let router = axum::Router::new().route("/sim-swap/v2/check", axum::routing::post(handler));
        Self {
            url: serve(router).await,
            requests,
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

async fn sim_swap_app(server: &SimSwapServer, on_swap: &str, on_error: &str) -> TestApp {
    let rules = format!(
        "[fraud]\ndeny_prefixes = [\"+49176\"]\n[fraud.sim_swap]\nbase_url = \"{}\"\ntoken_secret = \"operator_token\"\n\
         max_age_hours = 240\non_swap = \"{on_swap}\"\non_error = \"{on_error}\"\ntimeout_ms = 1500\n",
        server.url
    );
    spawn_app_with(Backend::Sqlite, move |s| {
        set_fraud_rules(&s.brands_dir, "nordwind", &rules);
        s.brand_secrets
            .insert("operator_token".into(), "camara-bearer".to_owned().into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_sim_swap_refuses_or_flags_as_the_brand_says() {
    let swapped = SimSwapServer::start(SwapReply::Swapped(true)).await;
    let app = sim_swap_app(&swapped, "refuse", "allow").await;
    let refused = app.start(&start_body()).await;
    refused.assert_problem(403, "sim_swap_recent");
    assert_eq!(app.sms_count().await, 0, "no SMS to a swapped SIM");
    let (headers, body) = swapped.requests.lock().expect("lock")[0].clone();
    assert_eq!(
        body,
        json!({"phoneNumber": PHONE, "maxAge": 240}),
        "CAMARA's body"
    );
    assert_eq!(headers["authorization"], "Bearer camara-bearer");
    let correlator = headers["x-correlator"].to_str().expect("x-correlator");
    assert!(
        !correlator.is_empty()
            && correlator.len() <= 256
            && correlator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:;./<>{}".contains(c)),
        "the spec's pattern: {correlator}"
    );
    // Not asked when a cheaper rule refused already (the deny-list).
    app.start(&start_for("+4917612345678"))
        .await
        .assert_problem(403, "number_blocked");
    assert_eq!(swapped.count(), 1, "the SIM swap API was not called");

    let flagging = sim_swap_app(&swapped, "flag", "allow").await;
    let flagged = flagging.start(&start_body()).await;
    assert_eq!(flagged.status, 201, "{flagged:#?}");
    flagging.wait_for_outbox_drained(30).await;
    let text = std::fs::read_to_string(flagging.data_dir.join("events.jsonl")).unwrap_or_default();
    let started: Value = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("event"))
        .find(|e| e["event_type"] == "verification_started")
        .expect("started");
    assert_eq!(started["flags"], json!(["sim_swap_flagged"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sim_swap_api_is_allowed_or_denied_as_the_brand_says() {
    let failing = SimSwapServer::start(SwapReply::Status(503)).await;
    let allowing = sim_swap_app(&failing, "refuse", "allow").await;
    assert_eq!(allowing.start(&start_body()).await.status, 201);
    let denying = sim_swap_app(&failing, "refuse", "deny").await;
    let refused = denying.start(&start_body()).await;
    refused.assert_problem(503, "sim_swap_unavailable");
    assert!(refused.header("retry-after").is_some());
    // A static token the operator refuses: an error after one request (only an OAuth2 token
    // is fetched anew and tried again).
    let unauthorized = SimSwapServer::start(SwapReply::Status(401)).await;
    sim_swap_app(&unauthorized, "refuse", "deny")
        .await
        .start(&start_body())
        .await
        .assert_problem(503, "sim_swap_unavailable");
    assert_eq!(unauthorized.count(), 1, "asked once");
    // A server that never answers in time counts as an error too.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", hanging.local_addr().expect("addr"));
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let silent = SimSwapServer {
        url,
        requests: Arc::default(),
    };
    let timing_out = sim_swap_app(&silent, "refuse", "deny").await;
    timing_out
        .start(&start_body())
        .await
        .assert_problem(503, "sim_swap_unavailable");
    let metrics = timing_out.metrics().await;
    assert!(
        metrics.contains(r#"orderguard_sim_swap_checks_total{brand="nordwind",outcome="error"} 1"#),
        "{metrics}"
    );
}

/// An operator's OAuth2 token endpoint (client credentials) beside its CAMARA check, which
/// accepts only the tokens it issued and has not revoked.
#[derive(Default)]
struct Operator {
    /// Each token request: its Authorization header and form body.
    token_requests: Vec<(String, String)>,
    /// Each check: the bearer token it carried.
    checks: Vec<String>,
    valid: Vec<String>,
    expires_in: u64,
}

async fn oauth_operator(expires_in: u64) -> (String, Arc<Mutex<Operator>>) {
    let operator = Arc::new(Mutex::new(Operator {
        expires_in,
        ..Operator::default()
    }));
    let (tokens, checks) = (operator.clone(), operator.clone());
    let token = move |headers: axum::http::HeaderMap, body: String| {
        let operator = tokens.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut operator = operator.lock().expect("lock");
            operator.token_requests.push((auth.clone(), body.clone()));
            // RFC 6749 §2.3.1: the client authenticates with HTTP Basic.
            let expected = format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    "og-client:operator-client-secret"
                )
            );
            if auth != expected || body != "grant_type=client_credentials" {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid_client"})),
                );
            }
            let issued = format!("tok-{}", operator.token_requests.len());
            operator.valid.push(issued.clone());
            let answer = json!({"access_token": issued, "token_type": "Bearer",
                                "expires_in": operator.expires_in});
            (axum::http::StatusCode::OK, axum::Json(answer))
        }
    };
    let check = move |headers: axum::http::HeaderMap, _: axum::Json<Value>| {
        let operator = checks.clone();
        async move {
            let bearer = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let mut operator = operator.lock().expect("lock");
            operator.checks.push(bearer.clone());
            if operator.valid.contains(&bearer) {
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"swapped": false})),
                )
            } else {
                let answer = json!({"status": 401, "code": "UNAUTHENTICATED",
                                    "message": "Request not authenticated"});
                (axum::http::StatusCode::UNAUTHORIZED, axum::Json(answer))
            }
        }
    };
    let router = axum::Router::new()
        .route("/oauth/token", axum::routing::post(token))
        .route("/sim-swap/v2/check", axum::routing::post(check));
    (serve(router).await, operator)
}

async fn oauth_app(url: &str, secret: &str) -> TestApp {
    let rules = format!(
        "[fraud.sim_swap]\nbase_url = \"{url}\"\ntoken_url = \"{url}/oauth/token\"\n\
         client_id = \"og-client\"\nclient_secret = \"operator_client\"\nmax_age_hours = 240\n\
         on_swap = \"refuse\"\non_error = \"deny\"\ntimeout_ms = 1500\n"
    );
    let secret = secret.to_owned();
    spawn_app_with(Backend::Sqlite, move |s| {
        set_fraud_rules(&s.brands_dir, "nordwind", &rules);
        s.brand_secrets
            .insert("operator_client".into(), secret.into());
    })
    .await
}

/// The OAuth2 client-credentials token: fetched once with HTTP Basic, used as the bearer of
/// every check until it expires, renewed after; a token the operator revoked (401) is replaced
/// at once and the check asked again; a refused client is an error (`on_error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_swap_oauth2_token_is_fetched_cached_renewed_and_replaced_when_revoked() {
    let (url, operator) = oauth_operator(3_600).await;
    let app = oauth_app(&url, "operator-client-secret").await;
    for n in 0..3 {
        let answer = app.start(&start_for(&format!("+4915123456{n:03}"))).await;
        assert_eq!(answer.status, 201, "{answer:#?}");
    }
    {
        let operator = operator.lock().expect("lock");
        assert_eq!(
            operator.token_requests.len(),
            1,
            "one token for three checks"
        );
        assert_eq!(operator.checks, ["tok-1", "tok-1", "tok-1"]);
    }
    // The operator revokes it: the next check's 401 brings a new token and one more try.
    operator.lock().expect("lock").valid.clear();
    let answer = app.start(&start_for("+4915123456100")).await;
    assert_eq!(answer.status, 201, "served with a fresh token: {answer:#?}");
    {
        let operator = operator.lock().expect("lock");
        assert_eq!(operator.token_requests.len(), 2);
        assert_eq!(operator.checks[3..], ["tok-1", "tok-2"]);
    }
    // A client the token endpoint refuses (a wrong secret): an error, denied as configured.
    let (url, operator) = oauth_operator(3_600).await;
    let wrong = oauth_app(&url, "not-the-secret").await;
    wrong
        .start(&start_for("+4915123456200"))
        .await
        .assert_problem(503, "sim_swap_unavailable");
    assert!(
        operator.lock().expect("lock").checks.is_empty(),
        "no check without a token"
    );

    // A token for 31 s is renewed 30 s early: after 1 s it is fetched again.
    let (url, operator) = oauth_operator(31).await;
    let short = oauth_app(&url, "operator-client-secret").await;
    assert_eq!(short.start(&start_for("+4915123456300")).await.status, 201);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(short.start(&start_for("+4915123456301")).await.status, 201);
    let operator = operator.lock().expect("lock");
    assert_eq!(operator.token_requests.len(), 2, "renewed once expired");
    assert_eq!(operator.checks, ["tok-1", "tok-2"]);
}

const FJALLNET_KEY: &str = "og_dev_fjallnet_8d3a6c1e5f2b7094";

/// A small deterministic generator, so the replay is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// A public-looking IPv4 address.
    fn ip(&mut self) -> String {
        let (a, b, c, d) = (self.next(), self.next(), self.next(), self.next());
        format!("{}.{}.{}.{}", 1 + a % 220, b % 256, c % 256, 1 + d % 250)
    }

    /// A number in a mobile prefix of Nordwind's Germany or Fjällnät's Sweden, with the API
    /// key of its brand.
    fn buyer(&mut self, german: bool) -> (&'static str, String) {
        if german {
            let prefix = self.pick(DE_PREFIXES);
            (DEV_KEY, format!("{prefix}{:08}", self.next() % 100_000_000))
        } else {
            let prefix = self.pick(SE_PREFIXES);
            (
                FJALLNET_KEY,
                format!("{prefix}{:07}", self.next() % 10_000_000),
            )
        }
    }
}

const DE_PREFIXES: &[&str] = &[
    "+49151", "+49152", "+49160", "+49162", "+49163", "+49170", "+49171", "+49172", "+49173",
    "+49174", "+49175", "+49176", "+49177", "+49178", "+49179",
];
const SE_PREFIXES: &[&str] = &["+4670", "+4672", "+4673", "+4676", "+4679"];

/// The traffic the issue measures against, replayed on the fraud clock with the example
/// brands' default rules: over 90 s, real buyers at 10/s across both brands (distinct
/// numbers, many IP ranges, some behind one carrier NAT address, 85 % confirm about 20 s
/// later), a walker at 25 starts/s through one prefix, and a slow pumper at 5 starts/s over
/// the mobile prefixes of the allowed countries and many IPs; neither pumper ever checks a
/// code. Known-good buyers of the walked prefix (approved the day before) come back during
/// the attack.
/// The buyer of verification `id` (a brand of API key `key`) types the right code.
async fn confirm(app: &TestApp, key: &str, id: &str) {
    confirm_code(app, key, id, &app.latest_code(id).await).await;
}

/// The buyer of verification `id` types `code`, the right one.
async fn confirm_code(app: &TestApp, key: &str, id: &str, code: &str) {
    let checked = app
        .client
        .post(app.url(&format!("/v1/verifications/{id}/check")))
        .bearer_auth(key)
        .json(&json!({"code": code}))
        .send()
        .await
        .expect("check");
    assert_eq!(checked.status(), 200);
}

/// What the replay measured.
#[derive(Debug)]
struct Replay {
    real: u64,
    real_refused: u64,
    regular_refused: u64,
    /// First-time buyers in the walked prefix, and how many of them were served.
    walked_first: u64,
    walked_first_served: u64,
    walker: u64,
    walker_served: u64,
    slow: u64,
    slow_served: u64,
    /// The slow pumper's refusals by problem type.
    slow_refusals: std::collections::BTreeMap<String, u64>,
}

impl Replay {
    /// What every replay keeps: known-good buyers and first-time buyers of the walked prefix
    /// served, at most 1 % of the walker's starts sent, fewer than 0.1 % of real buyers refused.
    fn assert_buyers_served_and_walker_stopped(&self) {
        assert_eq!(
            self.regular_refused, 0,
            "known-good buyers in the walked prefix are served: {self:?}"
        );
        assert_eq!(
            self.walked_first_served, self.walked_first,
            "first-time buyers in the walked prefix are served: {self:?}"
        );
        assert!(
            self.walker_served * 100 <= self.walker,
            "≤ 1 % of the walker's starts sent: {self:?}"
        );
        assert!(
            self.real_refused * 1000 < self.real,
            "fewer than 0.1 % of real buyers refused: {self:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walker_is_stopped_while_real_buyers_are_served() {
    replay(0, Slow::LikeBuyers)
        .await
        .assert_buyers_served_and_walker_stopped();
}

/// The full mix, slow pumper included: the walker is stopped, known-good buyers are served and
/// no real buyer is refused. The slow pumper draws its numbers, addresses and order fields
/// from the same distributions as the real buyers and differs only in never typing a code:
/// nothing about one of its starts tells it apart before the SMS is sent, so what it sends is
/// printed (see the README), not hidden, and no rule refuses real buyers to catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_stops_the_walker_and_serves_every_real_buyer() {
    let replay = replay(5, Slow::LikeBuyers).await;
    replay.assert_buyers_served_and_walker_stopped();
    assert_eq!(replay.slow, 450);
}

/// The full mix with buyers who take anywhere from 10 to 60 s to type their codes (the
/// shop's earlier buyers too): the guards judge a start only once the brand's buyers have
/// usually typed theirs (here about 55 s), so no real buyer is refused and the first-time
/// buyers of the walked prefix are all served. Judged after 30 s, the walked prefix was blocked
/// on its buyers' unconfirmed starts (14 of 30 served) and 1 of 900 buyers was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_with_buyers_slow_to_type_serves_every_real_buyer() {
    let replay = replay_with(5, Slow::LikeBuyers, "", Typing::From10To60s).await;
    replay.assert_buyers_served_and_walker_stopped();
    assert_eq!(replay.real_refused, 0, "{replay:?}");
    assert_eq!(replay.slow, 450);
}

/// The full mix, for a shop with a history (300 approvals per brand, and the budget waiting for
/// 300 instead of 2,000 to keep the test short), with the slow pumper over the German mobile
/// prefixes its buyers do not use (`+49150`, `+49155` … `+49158`): the new-prefix budget serves
/// it 10 starts per window, so with the walker at most 1 % of all pumping starts send an SMS,
/// and no real buyer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_in_prefixes_buyers_do_not_use_sends_at_most_one_percent() {
    let replay = replay(5, Slow::UnusedPrefixesWithHistory).await;
    replay.assert_buyers_served_and_walker_stopped();
    assert_eq!(replay.real_refused, 0, "{replay:?}");
    assert_eq!(replay.slow, 450);
    assert!(
        (replay.walker_served + replay.slow_served) * 100 <= replay.walker + replay.slow,
        "≤ 1 % of all pumping starts sent: {replay:?}"
    );
}

/// The full mix for a shop without a history, with the slow pumper over every mobile prefix
/// of each brand's allowed countries (most of which its buyers do not use): what the rules
/// stop of it is printed for the README; the walker is stopped, and no real buyer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_with_the_slow_pumper_over_the_allowed_countries() {
    let replay = replay(5, Slow::AllowedCountries).await;
    replay.assert_buyers_served_and_walker_stopped();
    assert_eq!(replay.slow, 450);
    // Every number it drew is a valid mobile number: what refused it were the fraud rules.
    assert!(
        replay
            .slow_refusals
            .keys()
            .all(|problem| problem == "rate_limited" || problem == "prefix_blocked"),
        "{replay:?}"
    );
}

/// The same for a shop that turned on the new-prefix budget without a history
/// (`new_prefix_recent_approvals = 50`; the example brands wait for a history): the busy
/// shop's budget runs from its window of ordinary buyers, and the pumper's starts to prefixes
/// no buyer converted in are served for the first 30 s (none is old enough to judge before)
/// and the budget's 10, then refused; those to the buyers' own prefixes are served. Its price,
/// printed for the README: first-time buyers in a prefix of the buyers none of them converted
/// in yet are refused while the budget is spent (none on 2026-12-07, with the replay's buyers
/// typing after 20 s; 1 of 900 when a busy machine stretched that to about 40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_over_the_allowed_countries_with_the_busy_shop_budget() {
    let replay = replay_with(
        5,
        Slow::AllowedCountries,
        "[fraud.pumping]\nnew_prefix_recent_approvals = 50\n",
        Typing::After20s,
    )
    .await;
    assert_eq!(replay.regular_refused, 0, "{replay:?}");
    assert_eq!(
        replay.walked_first_served, replay.walked_first,
        "{replay:?}"
    );
    assert!(replay.walker_served * 100 <= replay.walker, "{replay:?}");
    assert_eq!(replay.slow, 450);
    assert!(
        replay.slow_served * 100 <= replay.slow * 75,
        "the starts to prefixes no buyer converted in refused after the first 30 s: {replay:?}"
    );
    assert_eq!(replay.real_refused, 0, "{replay:?}");
}

/// The full mix with the slow pumper's starts like the buyers' (numbers in their prefixes, a
/// shop without a history), but sent from ten rented /24 ranges: the range guard refuses each
/// range once more than 10 of its starts per brand were served and none converted, 30 s after
/// its first (what it sent is printed for the README); no real buyer is refused, those behind
/// the carrier NAT included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_attack_mix_with_the_slow_pumper_on_ten_rented_ranges() {
    let replay = replay(5, Slow::LikeBuyersFromTenRanges).await;
    replay.assert_buyers_served_and_walker_stopped();
    assert_eq!(replay.real_refused, 0, "{replay:?}");
    assert_eq!(replay.slow, 450);
    // 222 of 450 sent on 2026-12-07 (450 without the guard): bounded with room, not pinned.
    assert!(
        replay.slow_served * 10 <= replay.slow * 6,
        "at most 60 % of it sent: {replay:?}"
    );
    assert!(
        replay.slow_refusals.get("rate_limited") >= Some(&(replay.slow - replay.slow_served)),
        "refused by the range guard: {replay:?}"
    );
}

/// German mobile prefixes no buyer of the replay uses.
const DE_UNUSED_PREFIXES: &[&str] = &["+49150", "+49155", "+49156", "+49157", "+49158"];

/// Where the slow pumper draws its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// From the buyers' own prefixes: nothing tells its starts from a first-time buyer's.
    LikeBuyers,
    /// From the German mobile prefixes no buyer uses, for a shop with a history.
    UnusedPrefixesWithHistory,
    /// From every mobile prefix of each brand's allowed countries (Nordwind: Germany and
    /// Austria; Fjällnät: Sweden, Norway and Finland), for a shop without a history.
    AllowedCountries,
    /// From the buyers' own prefixes, like [`Slow::LikeBuyers`], but from the addresses of ten
    /// rented /24 ranges (a proxy provider's) instead of many: the range guard's ground.
    LikeBuyersFromTenRanges,
}

/// Mobile number starts of Nordwind's allowed countries, each with the digits that follow.
const NORDWIND_MOBILE: &[(&str, u32)] = &[
    ("+49150", 8),
    ("+49151", 8),
    ("+49152", 8),
    ("+49155", 8),
    ("+49156", 8),
    ("+49157", 8),
    ("+49159", 8),
    ("+49160", 8),
    ("+49162", 8),
    ("+49163", 8),
    ("+49170", 8),
    ("+49171", 8),
    ("+49172", 8),
    ("+49173", 8),
    ("+49174", 8),
    ("+49175", 8),
    ("+49176", 8),
    ("+49177", 8),
    ("+49178", 8),
    ("+49179", 8),
    ("+43650", 7),
    ("+43660", 7),
    ("+43664", 7),
    ("+43676", 7),
    ("+43680", 7),
    ("+43681", 7),
    ("+43688", 7),
    ("+43699", 7),
];

/// Mobile number starts of Fjällnät's allowed countries.
const FJALLNET_MOBILE: &[(&str, u32)] = &[
    ("+4670", 7),
    ("+4672", 7),
    ("+4673", 7),
    ("+4676", 7),
    ("+4679", 7),
    ("+474", 7),
    ("+479", 7),
    ("+35840", 7),
    ("+35841", 7),
    ("+35844", 7),
    ("+35845", 7),
    ("+35846", 7),
    ("+35850", 7),
];

async fn replay(slow_per_second: u64, slow_from: Slow) -> Replay {
    replay_with(slow_per_second, slow_from, "", Typing::After20s).await
}

/// How long after the SMS the replay's buyers type their code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typing {
    After20s,
    /// Anywhere from 10 to 60 s, evenly.
    From10To60s,
}

impl Typing {
    fn seconds(self, rng: &mut Lcg) -> u64 {
        match self {
            Self::After20s => 20,
            Self::From10To60s => 10 + rng.next() % 51,
        }
    }
}

/// A served start whose buyer types `code` at `due` (seconds on the replay's count).
struct Typed {
    due: u64,
    key: &'static str,
    id: String,
    code: String,
}

impl Typed {
    /// The buyer of `answer` (a served start) will type its code `typing` from `now`. The code
    /// is read at once: the dev inbox keeps only the last 500 messages.
    async fn new(app: &TestApp, key: &'static str, answer: &Answer, now: u64, typing: u64) -> Self {
        let id = answer.body["id"].as_str().expect("id").to_owned();
        let code = app.latest_code(&id).await;
        Self {
            due: now + typing,
            key,
            id,
            code,
        }
    }

    /// The buyers of `pending` whose time has come by `now` type their codes.
    async fn confirm_due(app: &TestApp, pending: &mut Vec<Self>, now: u64) {
        let (due, waiting): (Vec<Self>, Vec<Self>) = std::mem::take(pending)
            .into_iter()
            .partition(|p| p.due <= now);
        *pending = waiting;
        for typed in due {
            confirm_code(app, typed.key, &typed.id, &typed.code).await;
        }
    }
}

/// [`replay`] with `rules` (TOML over the example brands' own) for both brands, and buyers
/// who type their codes as `typing` says (the shop's earlier buyers too).
async fn replay_with(
    slow_per_second: u64,
    slow_from: Slow,
    rules: &'static str,
    typing: Typing,
) -> Replay {
    let with_history = slow_from == Slow::UnusedPrefixesWithHistory;
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        // The example brands' own defaults; with a history, the budget waits for 300
        // approvals instead of 2,000, to keep the replay short: its history is 300 approvals
        // per brand.
        let rules = if with_history {
            format!("{rules}\n[fraud.pumping]\nnew_prefix_min_approvals = 300\n")
        } else {
            rules.to_owned()
        };
        for brand in ["nordwind", "fjallnet"] {
            set_fraud_rules(&s.brands_dir, brand, &rules);
        }
    })
    .await;
    // Simulated seconds only: on a busy machine the real ones would stretch the buyers' 20 s
    // of typing past the 30 s after which a start is judged.
    app.clock.freeze();
    let mut rng = Lcg(20_261_201);
    let start = |key: &'static str, phone: String, ip: String| {
        let app = &app;
        async move {
            let body = json!({"phone": phone, "order_reference": format!("R-{}", uuid::Uuid::now_v7().simple()),
                              "amount": "19.90", "currency": "EUR", "client_ip": ip});
            app.post("/v1/verifications", key, &body).await
        }
    };
    // Known-good buyers in the walked prefix, approved the day before the attack.
    let walked = "+49159";
    let mut regulars = Vec::new();
    for n in 0..20u64 {
        let phone = format!("{walked}{:08}", 90_000_000 + n);
        let answer = start(DEV_KEY, phone.clone(), format!("198.51.{}.{}", n, 10)).await;
        assert_eq!(answer.status, 201, "{answer:#?}");
        approve(&app, answer.body["id"].as_str().expect("id")).await;
        regulars.push(phone);
    }
    app.clock.advance(24 * 3_600_000);
    if with_history {
        // A shop with a history: 300 approvals per brand over the days before, in its
        // buyers' prefixes (what the new-prefix budget waits for).
        for n in 0..600u64 {
            let (key, phone) = rng.buyer(n % 2 == 0);
            let answer = start(key, phone, format!("192.0.{}.{}", n % 200, 1 + n % 250)).await;
            assert_eq!(answer.status, 201, "history {n}: {answer:#?}");
            confirm(&app, key, answer.body["id"].as_str().expect("id")).await;
            app.clock.advance(600_000);
        }
    }
    // A shop that has been running: one window of ordinary buyers before the attack, typing
    // their codes as the replay's buyers do.
    let mut pending: Vec<Typed> = Vec::new();
    for n in 0..200u64 {
        let (key, phone) = rng.buyer(n % 2 == 0);
        let answer = start(key, phone, format!("192.0.{}.{}", n % 200, 1 + n % 250)).await;
        assert_eq!(answer.status, 201, "warm-up {n}: {answer:#?}");
        if n % 100 < 85 {
            let typing = typing.seconds(&mut rng);
            pending.push(Typed::new(&app, key, &answer, n * 3, typing).await);
        }
        Typed::confirm_due(&app, &mut pending, n * 3).await;
        app.clock.advance(3_000);
    }
    // The attack's seconds count from 0: what is still being typed is due that much earlier.
    for typed in &mut pending {
        typed.due = typed.due.saturating_sub(600);
    }

    let (mut real, mut real_refused, mut regular_refused) = (0u64, 0u64, 0u64);
    let (mut walker, mut walker_served) = (0u64, 0u64);
    let (mut slow, mut slow_served) = (0u64, 0u64);
    let (mut walked_first, mut walked_first_served) = (0u64, 0u64);
    let mut walk = 0u64;
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    let mut slow_refusals = std::collections::BTreeMap::<String, u64>::new();
    for second in 0..90u64 {
        for n in 0..10u64 {
            let (key, phone) = rng.buyer(n % 2 == 0);
            let ip = if rng.next() % 10 == 0 {
                "100.64.7.7".to_owned()
            } else {
                rng.ip()
            };
            let answer = start(key, phone, ip).await;
            real += 1;
            match answer.status {
                201 => {
                    if rng.next() % 100 < 85 {
                        let typing = typing.seconds(&mut rng);
                        pending.push(Typed::new(&app, key, &answer, second, typing).await);
                    }
                }
                _ => {
                    real_refused += 1;
                    *reasons
                        .entry(format!(
                            "{} {}",
                            answer.body["rule"], answer.body["key_type"]
                        ))
                        .or_default() += 1;
                }
            }
        }
        for _ in 0..25 {
            walk += 1;
            let ip = format!("203.0.{}.{}", rng.next() % 256, 1 + rng.next() % 250);
            let answer = start(DEV_KEY, format!("{walked}{:08}", walk), ip).await;
            walker += 1;
            if answer.status == 201 {
                walker_served += 1;
            }
        }
        for k in 0..slow_per_second {
            let (key, phone) = match slow_from {
                Slow::UnusedPrefixesWithHistory => {
                    let prefix = rng.pick(DE_UNUSED_PREFIXES);
                    (DEV_KEY, format!("{prefix}{:08}", rng.next() % 100_000_000))
                }
                Slow::LikeBuyers | Slow::LikeBuyersFromTenRanges => rng.buyer(k % 2 == 0),
                Slow::AllowedCountries => {
                    let (key, starts) = if k % 2 == 0 {
                        (DEV_KEY, NORDWIND_MOBILE)
                    } else {
                        (FJALLNET_KEY, FJALLNET_MOBILE)
                    };
                    let (start, digits) = starts[(rng.next() % starts.len() as u64) as usize];
                    let n = rng.next() % 10u64.pow(digits);
                    (key, format!("{start}{n:0width$}", width = digits as usize))
                }
            };
            let ip = if slow_from == Slow::LikeBuyersFromTenRanges {
                format!("45.86.{}.{}", 10 + rng.next() % 10, 1 + rng.next() % 250)
            } else {
                rng.ip()
            };
            let answer = start(key, phone, ip).await;
            slow += 1;
            if answer.status == 201 {
                slow_served += 1;
            } else {
                *slow_refusals
                    .entry(answer.problem().to_owned())
                    .or_default() += 1;
            }
        }
        if second % 3 == 1 {
            // A first-time buyer in the walked prefix, anywhere in it but next to the walk.
            let phone = format!("{walked}{:08}", 10_000_000 + rng.next() % 89_000_000);
            let answer = start(DEV_KEY, phone, rng.ip()).await;
            walked_first += 1;
            if answer.status == 201 {
                walked_first_served += 1;
                let typing = typing.seconds(&mut rng);
                pending.push(Typed::new(&app, DEV_KEY, &answer, second, typing).await);
            } else {
                *reasons
                    .entry(format!("walked prefix: {}", answer.body["rule"]))
                    .or_default() += 1;
            }
        }
        if second % 10 == 5 {
            // A regular of the walked prefix buys again.
            let phone = regulars[(second / 10) as usize].clone();
            let answer = start(DEV_KEY, phone, "198.51.100.10".to_owned()).await;
            if answer.status != 201 {
                regular_refused += 1;
            }
        }
        // The buyers whose typing is done type their codes.
        Typed::confirm_due(&app, &mut pending, second).await;
        app.clock.advance(1_000);
    }
    // The blocks the guards placed, for the README's account of the replay.
    app.wait_for_outbox_drained(30).await;
    for line in std::fs::read_to_string(app.data_dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
    {
        let event: Value = serde_json::from_str(line).expect("event");
        if event["event_type"] == "prefix_block_placed" {
            println!(
                "prefix block: {} {}: {}",
                event["brand"], event["number_prefix"], event["reason"]
            );
        }
    }
    let pumping = walker + slow;
    let pumping_served = walker_served + slow_served;
    println!(
        "replay: real {real} (refused {real_refused}); walker {walker} (sent {walker_served}); \
         slow {slow} (sent {slow_served}); pumping sent {pumping_served} of {pumping} \
         ({:.2} %); regulars refused {regular_refused}; first-time buyers in the walked prefix \
         served {walked_first_served} of {walked_first}; buyers refused by {reasons:?}; \
         slow pumper refused by {slow_refusals:?}",
        pumping_served as f64 * 100.0 / pumping as f64
    );
    Replay {
        real,
        real_refused,
        regular_refused,
        walked_first,
        walked_first_served,
        walker,
        walker_served,
        slow,
        slow_served,
        slow_refusals,
    }
}

/// The code page's resend comes from the buyer's browser: behind `http.trusted_proxies` its
/// address is the `X-Forwarded-For` hop the proxy saw, and it counts toward the IP limit (here
/// 2 per 10 minutes); a peer that is not a trusted proxy cannot choose the address it is
/// counted under by writing the header itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_pages_resend_counts_the_buyers_address_behind_trusted_proxies() {
    const RULES: &str = "[fraud.rate_limits]\nphone = [\"100000/1m\"]\ncustomer = [\"100000/1m\"]\n\
        ip = [\"2/10m\"]\nip_range = [\"100000/1m\"]\norder_reference = [\"100000/1m\"]\n\
        brand = [\"1000000/1m\"]\n[fraud.pumping]\nmin_starts = 1000000\nbrand_min_starts = 0\n";
    // (trusted proxy?, the X-Forwarded-For of each of three resends, resends refused)
    let cases = [
        (true, ["203.0.113.7"; 3], 1),
        (true, ["203.0.113.7", "198.51.100.8", "192.0.2.9"], 0),
        (false, ["203.0.113.7", "198.51.100.8", "192.0.2.9"], 1),
    ];
    for (trusted, forwarded_for, refused) in cases {
        let app = spawn_app_with(Backend::Sqlite, move |s| {
            set_fraud_rules(&s.brands_dir, "nordwind", RULES);
            if trusted {
                s.http.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
            }
        })
        .await;
        for hop in forwarded_for {
            // Started by the shop without a client_ip: only the page's resend counts the IP.
            let started = app.start(&start_body()).await;
            assert_eq!(started.status, 201, "{started:#?}");
            let id = started.body["id"].as_str().expect("id").to_owned();
            let url = started.body["widget_url"].as_str().expect("widget_url");
            let t = url
                .split("t=")
                .nth(1)
                .and_then(|rest| rest.split('&').next())
                .expect("token")
                .to_owned();
            app.travel(&id, 31_000).await;
            let page = app
                .client
                .post(app.url(&format!("/w/{id}/resend")))
                .header("x-forwarded-for", hop)
                .form(&[("t", t.as_str())])
                .send()
                .await
                .expect("resend");
            assert_eq!(page.status(), 200);
        }
        let metrics = app.metrics().await;
        let counted = metrics
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"orderguard_fraud_refusals_total{brand="nordwind",mode="enforce",rule="rate_limit"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |v| v.parse::<u64>().expect("count"));
        assert_eq!(
            counted, refused,
            "trusted proxy: {trusted}, X-Forwarded-For {forwarded_for:?}"
        );
    }
}
