//! The real `orderguard` binary, run as operators run it.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Kills the child if the test ends early.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn orderguard(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderguard"));
    command.current_dir(dir).env("RUST_LOG", "info");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ORDERGUARD_")) {
        command.env_remove(name);
    }
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub async fn wait_until_ready(client: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = std::time::Instant::now() + crate::helpers::patience(20);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("orderguard exited early with {status}:\n{stderr}");
        }
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                // Ready means the phone-number metadata is loaded: no buyer's first start
                // pays for parsing it.
                let body: serde_json::Value = response.json().await.expect("readyz body");
                assert_eq!(body["phone_metadata"], "loaded", "{body}");
                assert_eq!(body["workers_down"], serde_json::json!([]), "{body}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "orderguard did not become ready within {:?}",
        crate::helpers::patience(20)
    );
}

/// What a Secret of the operator's would hold: the database, the keys, the approval key.
pub fn production_secrets(database: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ORDERGUARD_DATABASE__URL", database.to_owned()),
        (
            "ORDERGUARD_SECRETS__CODE_KEY",
            "a-production-key-of-at-least-32-characters".to_owned(),
        ),
        (
            "ORDERGUARD_SECRETS__EVENT_PEPPER",
            "a-production-pepper-of-at-least-32-chars".to_owned(),
        ),
        (
            "ORDERGUARD_SECRETS__WIDGET_KEY",
            "a-production-widget-key-of-32-characters".to_owned(),
        ),
        (
            "ORDERGUARD_APPROVAL__KEYS",
            r#"[{kid = "prod-1", private_key = "0101010101010101010101010101010101010101010101010101010101010101"}]"#
                .to_owned(),
        ),
    ]
}
