//! The Helm chart (`helm/orderguard`) and the container image: rendered and linted by the Helm
//! v4 SDK, every manifest validated against Kubernetes' schemas (`tests/helm/check.py`); then
//! the real binary starts with exactly what the chart renders — its environment, its
//! orderguard.toml, its brands folder rebuilt from the ConfigMap — with Kubernetes' service-link
//! variables present, as they are where `enableServiceLinks` is left on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::helpers::{
    Running, free_port, fresh_postgres_database, orderguard, production_secrets, wait_until_ready,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn python() -> String {
    std::env::var("ORDERGUARD_TEST_PYTHON").unwrap_or_else(|_| {
        root()
            .join("target/chdb-venv/bin/python")
            .display()
            .to_string()
    })
}

fn object<'a>(objects: &'a [Value], kind: &str, suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} *{suffix} in the rendering"))
}

/// What Kubernetes injects into every pod for a Service named `orderguard` (port 80) when
/// service links are on.
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("ORDERGUARD_SERVICE_HOST", "10.96.0.17"),
    ("ORDERGUARD_SERVICE_PORT", "80"),
    ("ORDERGUARD_SERVICE_PORT_HTTP", "80"),
    ("ORDERGUARD_PORT", "tcp://10.96.0.17:80"),
    ("ORDERGUARD_PORT_80_TCP", "tcp://10.96.0.17:80"),
    ("ORDERGUARD_PORT_80_TCP_PROTO", "tcp"),
    ("ORDERGUARD_PORT_80_TCP_PORT", "80"),
    ("ORDERGUARD_PORT_80_TCP_ADDR", "10.96.0.17"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_renders_valid_manifests_and_the_binary_runs_on_what_it_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rendered = dir.path().join("rendered.json");
    let output = tokio::task::spawn_blocking({
        let rendered = rendered.clone();
        move || {
            std::process::Command::new(python())
                .arg(root().join("tests/helm/check.py"))
                .arg(root().join("helm/orderguard"))
                .arg(root().join("tests/helm/production-values.yaml"))
                .arg(&rendered)
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run tests/helm/check.py");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the chart's checks failed:\n{report}"
    );
    assert!(report.contains("\n0 failures"), "{report}");

    let objects: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&rendered).expect("rendering"))
            .expect("JSON");
    let deployment = object(&objects, "Deployment", "orderguard");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The brands folder, rebuilt from the ConfigMap as the kubelet mounts it.
    let brands_map = object(&objects, "ConfigMap", "-brands");
    let brands = dir.path().join("brands");
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "brands")
        .expect("brands volume");
    for item in volume["configMap"]["items"].as_array().expect("items") {
        let path = brands.join(item["path"].as_str().expect("path"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let key = item["key"].as_str().expect("key");
        std::fs::write(&path, brands_map["data"][key].as_str().expect("data")).expect("write");
    }
    let checked = orderguard(dir.path())
        .args(["brands", "check"])
        .arg(&brands)
        .output()
        .expect("brands check");
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success(),
        "the chart's brands folder: {said}"
    );
    for brand in ["acme", "nordwind", "fjallnet"] {
        assert!(brands.join(brand).join("brand.toml").exists(), "{brand}");
    }

    // The environment the chart sets, with the test's own folders and ports.
    let config_file = dir.path().join("orderguard.toml");
    std::fs::write(
        &config_file,
        object(&objects, "ConfigMap", "-config")["data"]["orderguard.toml"]
            .as_str()
            .expect("orderguard.toml"),
    )
    .expect("write config");
    let (port, admin_port) = (free_port(), free_port());
    let mut env: BTreeMap<String, String> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(env["ORDERGUARD_MODE"], "production");
    env.remove("ORDERGUARD_CLICKHOUSE__URL");
    for (name, value) in [
        ("ORDERGUARD_CONFIG", config_file.display().to_string()),
        ("ORDERGUARD_BRANDS_DIR", brands.display().to_string()),
        (
            "ORDERGUARD_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("ORDERGUARD_HTTP__HOST", "127.0.0.1".to_owned()),
        ("ORDERGUARD_HTTP__PORT", port.to_string()),
        ("ORDERGUARD_HTTP__ADMIN_PORT", admin_port.to_string()),
        (
            "ORDERGUARD_EVENTS__INSTANCE",
            "orderguard-7c9f-abcde".to_owned(),
        ),
    ] {
        env.insert(name.to_owned(), value);
    }
    let database = fresh_postgres_database().await;
    let mut secret = production_secrets(&database);
    // The first provider's credential (its auth_header is in orderguard.toml).
    secret.push((
        "ORDERGUARD_SMS__PROVIDERS__0__AUTH_VALUE",
        "Bearer gateway-secret".to_owned(),
    ));

    // A typo among them is refused, naming it.
    let typo = orderguard(dir.path())
        .arg("serve")
        .envs(&env)
        .envs(secret.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(SERVICE_LINKS.iter().copied())
        .env("ORDERGUARD_HTTP__PROT", "8080")
        .output()
        .expect("run");
    assert!(!typo.status.success());
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("prot"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );

    let log = dir.path().join("service.log");
    let child = orderguard(dir.path())
        .arg("serve")
        .envs(&env)
        .envs(secret.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(SERVICE_LINKS.iter().copied())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut running = Running(child);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&client, &base, &mut running.0).await;
    let ready: Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["brands_loaded"], 3, "{ready}");
    let metrics = client
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200, "metrics on the admin port");
    let public = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(public.status(), 404, "never on the buyers' port");
    let logged = std::fs::read_to_string(&log).expect("log");
    let ignoring: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("service-link variables"))
        .collect();
    assert_eq!(ignoring.len(), 1, "one info line: {logged}");
    assert!(
        ignoring[0].contains("\"level\":\"INFO\"")
            && ignoring[0].contains("ORDERGUARD_PORT_80_TCP"),
        "{}",
        ignoring[0]
    );
}

/// The image cannot be built here (no Docker engine); what can be checked is that every path
/// its build copies exists, that it runs as a non-root user, and that it ships `_base` and the
/// migrations.
#[test]
fn every_path_the_dockerfile_copies_exists_and_it_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut copied = Vec::new();
    let mut stages = 0;
    let mut user = None;
    for line in dockerfile.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"FROM") => stages += 1,
            Some(&"USER") => user = words.get(1).map(|u| (*u).to_owned()),
            Some(&"COPY") if !words.iter().any(|w| w.starts_with("--from=")) => {
                let paths: Vec<&str> = words[1..]
                    .iter()
                    .filter(|w| !w.starts_with("--"))
                    .copied()
                    .collect();
                for source in &paths[..paths.len() - 1] {
                    copied.push((*source).to_owned());
                }
            }
            _ => {}
        }
    }
    assert!(stages >= 2, "a multi-stage build");
    for source in &copied {
        assert!(
            root().join(source).exists(),
            "the Dockerfile copies {source}, which does not exist"
        );
    }
    for needed in ["brands/_base", "migrations", "Cargo.lock", "src"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} is copied");
    }
    let user = user.expect("a USER");
    assert!(
        !user.starts_with("0") && user != "root",
        "runs as a non-root user, not {user}"
    );
}

/// The cluster variant of the ClickHouse schema (ReplicatedMergeTree behind Distributed tables,
/// `ON CLUSTER`): the test ClickHouse has no Keeper and no cluster, so each statement is
/// parsed there (`EXPLAIN AST`), as the service would send it for a cluster named
/// `orderguard_cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_cluster_schema_parses_on_a_real_clickhouse() {
    let clickhouse = crate::helpers::TestClickHouse::start().await;
    let created = reqwest::Client::new()
        .post(clickhouse.url())
        .body("CREATE DATABASE IF NOT EXISTS orderguard")
        .send()
        .await
        .expect("create the database");
    assert!(created.status().is_success());
    let mut parsed = 0;
    for (_, name, statements) in
        orderguard::events::clickhouse::migration_statements(Some("orderguard_cluster"))
    {
        for statement in statements {
            let ast = clickhouse.rows(&format!("EXPLAIN AST {statement}")).await;
            assert!(!ast.is_empty(), "{name}: {statement}");
            parsed += 1;
        }
    }
    assert_eq!(parsed, 11, "every statement of the four cluster migrations");
    // A statement the engine cannot parse fails the same way, so the check means something.
    let response = reqwest::Client::new()
        .post(format!("{}/?database=orderguard", clickhouse.url()))
        .body("EXPLAIN AST CREATE TABLE broken ON CLUSTER c ENGINE = ( FORMAT JSONEachRow")
        .send()
        .await
        .expect("query");
    assert!(!response.status().is_success());
}

/// A ConfigMap volume as the kubelet lays it out: the files in a timestamped folder, `..data`
/// a symlink to it, every top-level entry a symlink through `..data`; an update writes a new
/// folder and swaps `..data` in one rename. The service's hot reload sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_of_the_brands_is_hot_reloaded() {
    use std::os::unix::fs::symlink;
    let mounted = tempfile::tempdir().expect("tempdir");
    let volume = mounted.path().join("brands");
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.brands_reload_interval_ms = 100;
        let first = volume.join("..2026_12_03_10_00_00.000000001");
        crate::helpers::copy_dir(&s.brands_dir, &first);
        symlink(first.file_name().expect("name"), volume.join("..data")).expect("..data");
        for entry in std::fs::read_dir(&first).expect("read").flatten() {
            let name = entry.file_name();
            symlink(Path::new("..data").join(&name), volume.join(&name)).expect("link");
        }
        s.brands_dir = volume.clone();
    })
    .await;
    assert!(
        app.page("/assets/nordwind/theme.css")
            .await
            .2
            .contains("#0b2545")
    );
    let second = volume.join("..2026_12_03_10_01_00.000000002");
    crate::helpers::copy_dir(&volume.join("..data"), &second);
    let brand = second.join("nordwind/brand.toml");
    let text = std::fs::read_to_string(&brand).expect("brand.toml");
    std::fs::write(&brand, text.replace("#0b2545", "#7a1fa2")).expect("write");
    symlink(second.file_name().expect("name"), volume.join("..data_tmp")).expect("link");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    crate::helpers::eventually("the ConfigMap's new colour", 10, async || {
        app.page("/assets/nordwind/theme.css")
            .await
            .2
            .contains("#7a1fa2")
    })
    .await;
}
