//! The API description against real peers: `openapi-spec-validator` reads the document a live
//! instance serves, and schemathesis (property-based, every check, stateful phase included)
//! drives that instance on each backend from the document alone. Any 5xx, any answer the
//! document does not describe, or a schema-valid request refused as malformed fails the test
//! (`tests/schemathesis/hooks.py`); domain refusals (`invalid_phone`, `invalid_code`, ...) are
//! allowed (`tests/schemathesis/schemathesis.toml`).

use std::path::PathBuf;
use std::process::Command;

use crate::both_backends;
use crate::helpers::{Backend, DEV_KEY, Reply, ScriptedServer, spawn_app_with};

both_backends!(the_served_api_description_is_valid_and_the_service_keeps_to_it,);

/// Generated cases per operation; `ORDERGUARD_SCHEMATHESIS_EXAMPLES` overrides.
const EXAMPLES: &str = "200";
/// A fixed seed keeps CI repeatable; `ORDERGUARD_SCHEMATHESIS_SEED` explores others.
const SEED: &str = "20261201";

/// A tool installed beside the test Python (tests/clickhouse/setup.sh).
fn tool(name: &str) -> PathBuf {
    let python = std::env::var("ORDERGUARD_TEST_PYTHON")
        .expect("ORDERGUARD_TEST_PYTHON: run the tests through tests/run.sh");
    PathBuf::from(python)
        .parent()
        .expect("the venv's bin")
        .join(name)
}

async fn the_served_api_description_is_valid_and_the_service_keeps_to_it(backend: Backend) {
    let upstream = ScriptedServer::start(vec![], Reply::Status(201)).await;
    let url = upstream.url.clone();
    let app = spawn_app_with(backend, move |s| {
        // Gate mode configured, so /v1/orders can be held and followed.
        let path = s.brands_dir.join("nordwind/brand.toml");
        let mut text = std::fs::read_to_string(&path).expect("brand.toml");
        text.push_str(&format!(
            "\n[upstream]\nurl = \"{url}/orders\"\ntimeout_ms = 2000\n\n[webhooks]\nsecret = \"nordwind_webhooks\"\n"
        ));
        std::fs::write(&path, text).expect("write brand.toml");
        s.brand_secrets
            .insert("nordwind_webhooks".into(), "webhook-secret".to_owned().into());
        // Schemathesis sends thousands of starts in little time; nothing here may shed them.
        s.http.max_in_flight = 1_000;
    })
    .await;
    // The validator reads files: the document exactly as served.
    let served = app.get_public("/openapi.json").await;
    assert_eq!(served.status, 200);
    let spec = app.data_dir.join("openapi.json");
    std::fs::write(&spec, served.body.to_string()).expect("write the document");
    let root = env!("CARGO_MANIFEST_DIR");

    let validated = Command::new(tool("openapi-spec-validator"))
        .arg(&spec)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let examples =
        std::env::var("ORDERGUARD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| EXAMPLES.to_owned());
    let seed = std::env::var("ORDERGUARD_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let report = app.data_dir.join("schemathesis");
    let address = app.address.clone();
    let seed_used = seed.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(tool("schemathesis"))
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", format!("{root}/tests/schemathesis"))
            .args([
                "--no-color",
                "--config-file",
                &format!("{root}/tests/schemathesis/schemathesis.toml"),
                "run",
                &format!("{address}/openapi.json"),
                "--header",
                &format!("Authorization: Bearer {DEV_KEY}"),
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-examples",
                &examples,
                "--seed",
                &seed,
                "--workers",
                "2",
                "--generation-database",
                "none",
                "--report-dir",
                &report.display().to_string(),
            ])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("join");
    let output = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found failures (seed {seed_used}):\n{output}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        output.contains("✅ Stateful"),
        "the stateful phase ran:\n{output}"
    );
    // The stateful phase followed the links from a start to a check: codes were checked on
    // verifications schemathesis itself started.
    let checked = app
        .db_number("SELECT COUNT(*) FROM verification WHERE checks_used > 0")
        .await;
    assert!(checked > 0, "no verification was ever checked:\n{output}");
}
