//! The load tool's smoke test: every scenario runs with small counts against the real service
//! and its outcomes are checked — correctness, never speed.

use std::collections::BTreeMap;

use orderguard::bench::load::{Flow, LoadOptions, LoadReport, Model, run_with};
use orderguard::bench::sink::{SmsSink, Upstream};
use orderguard::settings::ProviderSettings;

use crate::helpers::{Backend, TestApp, spawn_app_with};

const BENCH_KEY: &str = "og_bench_key_for_the_smoke_test";

/// The bench brand's fraud rules: the defaults, past the bench's rate and the mixed
/// scenario's deliberate expiries and aborts in one prefix.
const BENCH_RULES: &str = "[fraud.rate_limits]\nbrand = [\"10000000/1m\"]\n\
    [fraud.pumping]\nmin_starts = 1000000\nbrand_min_starts = 0\n";

/// An app whose SMS go to `sink` and whose bench brand forwards orders to `upstream`.
async fn bench_app(sink: &SmsSink, upstream: &Upstream) -> TestApp {
    bench_app_with(sink, upstream, 5, BENCH_RULES).await
}

/// A bench app whose codes live `ttl` seconds and whose brand has the fraud `rules`.
async fn bench_app_with(sink: &SmsSink, upstream: &Upstream, ttl: u32, rules: &str) -> TestApp {
    let rules = rules.to_owned();
    let (sms, orders) = (sink.url(), upstream.url());
    spawn_app_with(Backend::Sqlite, move |settings| {
        settings.sms.providers = vec![ProviderSettings::Http {
            name: "bench".to_owned(),
            url: sms,
            timeout_ms: 5_000,
            auth_header: None,
            auth_value: None,
            body_template: None,
        }];
        settings.gate.poll_interval_ms = 50;
        let folder = settings.brands_dir.join("bench");
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(
            folder.join("brand.toml"),
            format!(
                "display_name = \"Bench\"\nsms_sender = \"Bench\"\nallowed_countries = [\"DE\"]\n\
                 [limits]\nttl_seconds = {ttl}\nresend_cooldown_seconds = 0\n\
                 [upstream]\nurl = \"{orders}\"\ntimeout_ms = 5000\n\
                 {rules}\
                 [[api_keys]]\nid = \"bench\"\nhash = \"{}\"\n",
                orderguard::brands::api_key_hash(BENCH_KEY)
            ),
        )
        .expect("write bench brand");
    })
    .await
}

fn options(app: &TestApp, model: Model, flows: u64) -> LoadOptions {
    LoadOptions {
        target: app.address.clone(),
        key: BENCH_KEY.to_owned(),
        sms_sink: "127.0.0.1:0".to_owned(),
        upstream: "127.0.0.1:0".to_owned(),
        model,
        concurrency: 4,
        rate: 40.0,
        duration: 30,
        flows,
        phone_prefix: "+49151".to_owned(),
        pid: Some(std::process::id()),
        expiry_wait: 0,
        pump_rate: 0.0,
        pump_prefix: "+49159".to_owned(),
        pump_concurrency: 0,
        pump_spread: false,
        json: false,
    }
}

fn assert_clean(report: &LoadReport) {
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert_eq!(report.flows_completed, report.flows_started, "{report:#?}");
    assert!(report.calls.contains_key("flow"), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_every_flow_ends_as_intended() {
    let sink = SmsSink::bind("127.0.0.1:0").await.expect("sink");
    let upstream = Upstream::bind("127.0.0.1:0").await.expect("upstream");
    let app = bench_app(&sink, &upstream).await;

    let verify = run_with(
        Flow::Verify,
        options(&app, Model::Closed, 24),
        sink.clone(),
        None,
    )
    .await
    .expect("verify");
    assert_clean(&verify);
    assert_eq!(
        verify.outcomes,
        BTreeMap::from([("approved".to_owned(), 24)])
    );
    assert!(
        verify.calls["start"].count == 24 && verify.calls["check"].count == 24,
        "{verify:#?}"
    );
    assert!(
        verify.service.as_ref().is_some_and(|s| s.peak_rss_mb > 0.0),
        "the process was sampled"
    );

    let mut open = options(&app, Model::Open, 0);
    open.duration = 1;
    open.rate = 20.0;
    open.phone_prefix = "+49152".to_owned();
    let open = run_with(Flow::Verify, open, sink.clone(), None)
        .await
        .expect("open");
    assert_clean(&open);
    assert_eq!(
        open.flows_completed, 20,
        "20 arrivals in one second at 20/s: {open:#?}"
    );

    let mut gate = options(&app, Model::Closed, 12);
    gate.phone_prefix = "+49155".to_owned();
    let gate = run_with(Flow::Gate, gate, sink.clone(), Some(upstream.clone()))
        .await
        .expect("gate");
    assert_clean(&gate);
    assert_eq!(
        gate.orders_forwarded,
        Some(12),
        "every approved order reached the upstream once"
    );

    let mut mixed = options(&app, Model::Closed, 40);
    mixed.phone_prefix = "+49157".to_owned();
    mixed.expiry_wait = 7;
    let mixed = run_with(Flow::Mixed, mixed, sink.clone(), None)
        .await
        .expect("mixed");
    assert_clean(&mixed);
    let expected: BTreeMap<String, u64> = [
        ("approved", 24),
        ("wrong_then_approved", 6),
        ("resent_then_approved", 4),
        ("aborted", 4),
        ("abandoned", 2),
        ("expired", 2),
    ]
    .into_iter()
    .map(|(path, count)| (path.to_owned(), count))
    .collect();
    assert_eq!(mixed.outcomes, expected, "{mixed:#?}");
    assert_eq!(mixed.calls["resend"].count, 4);
}

/// A bench app under the default fraud rules, only the brand-wide ceiling raised, with the SMS
/// sink and upstream it sends to.
async fn attack_app() -> (SmsSink, Upstream, TestApp) {
    let sink = SmsSink::bind("127.0.0.1:0").await.expect("sink");
    let upstream = Upstream::bind("127.0.0.1:0").await.expect("upstream");
    let app = bench_app_with(
        &sink,
        &upstream,
        300,
        "[fraud.rate_limits]\nbrand = [\"10000000/1m\"]\n",
    )
    .await;
    (sink, upstream, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attack_scenario_reports_what_the_default_rules_refuse() {
    let (sink, _upstream, app) = attack_app().await;
    let mut attack = options(&app, Model::Closed, 4);
    attack.flows = 0;
    attack.duration = 3;
    // Slow enough that a busy machine answers every start (the bench measures the rates).
    attack.pump_rate = 20.0;
    let report = run_with(Flow::Attack, attack, sink.clone(), None)
        .await
        .expect("attack");
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert_eq!(report.flows_completed, report.flows_started, "{report:#?}");
    let pump = report.pumping.as_ref().expect("pumping report");
    assert_eq!(pump.starts, 60, "20/s for 3 s: {pump:?}");
    assert_eq!(pump.errors, 0, "{pump:?}");
    assert!(
        pump.sent < 20,
        "at most min_starts - 1 pumped SMS: {pump:?}"
    );
    assert_eq!(pump.sent + pump.refused, pump.starts);
    assert!(report.calls.contains_key("pump_start"), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_pumpers_are_refused_when_walking_and_served_when_spread() {
    // The refusal-cost runs of the bench: 4 pumpers each starting again once answered, a walk
    // (refused by the default rules) and numbers spread as buyers' are (served).
    let (sink, _upstream, app) = attack_app().await;
    for spread in [false, true] {
        let mut attack = options(&app, Model::Open, 0);
        attack.rate = 0.1;
        attack.duration = 2;
        attack.pump_concurrency = 4;
        attack.pump_spread = spread;
        attack.pump_prefix = if spread { "+49160" } else { "+49177" }.to_owned();
        let report = run_with(Flow::Attack, attack, sink.clone(), None)
            .await
            .expect("attack");
        let pump = report.pumping.as_ref().expect("pumping report");
        assert_eq!(pump.errors, 0, "spread {spread}: {pump:?}");
        assert!(pump.starts >= 4, "spread {spread}: {pump:?}");
        assert_eq!(pump.sent + pump.refused, pump.starts, "{pump:?}");
        if spread {
            // Spread numbers are buyers' to the rules: served until the prefix guard has
            // mature starts to judge (30 s), which a 2 s run never reaches.
            assert_eq!(pump.refused, 0, "spread: {pump:?}");
        } else {
            // A walk: refused once the walk shows (six unconverted close numbers), however
            // many starts the machine fitted in.
            assert!(pump.sent <= 10, "walk: {pump:?}");
            assert!(pump.refused + 10 >= pump.starts, "walk: {pump:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_scenario_ships_every_event_once() {
    let clickhouse = crate::helpers::TestClickHouse::start().await;
    let options = orderguard::bench::relay::RelayOptions {
        database_url: crate::helpers::fresh_postgres_database().await,
        clickhouse_url: clickhouse.url(),
        events: 3_000,
        batch_rows: 1_000,
        relays: 2,
        json: false,
    };
    let report = orderguard::bench::relay::run(options)
        .await
        .expect("relay scenario");
    assert_eq!(
        (report.rows_in_clickhouse, report.distinct_in_clickhouse),
        (3_000, 3_000)
    );
    assert!(report.events_per_second > 0.0);
}
