//! The tests' SMSC: `tests/smpp/server.js`, the npm package `smpp`'s server run with the
//! machine's Node.js (tests/run.sh installs it under target/npm).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use orderguard::settings::ProviderSettings;

pub const SMSC_SYSTEM_ID: &str = "orderguard";
pub const SMSC_PASSWORD: &str = "s3cret";

pub struct Smsc {
    pub port: u16,
    control: String,
    child: Child,
    client: reqwest::Client,
}

impl Drop for Smsc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smsc {
    pub fn start() -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let modules = crate::helpers::node_modules();
        let mut child = Command::new("node")
            .arg(format!("{root}/tests/smpp/server.js"))
            .arg(json!({"system_id": SMSC_SYSTEM_ID, "password": SMSC_PASSWORD}).to_string())
            .env("NODE_PATH", modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the test SMSC (tests/run.sh installs the npm package smpp)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the SMSC prints its ports");
        let ports: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the SMSC's first line {line:?}: {e}"));
        Self {
            port: u16::try_from(ports["smpp"].as_u64().expect("smpp port")).expect("port"),
            control: format!("http://127.0.0.1:{}", ports["control"]),
            child,
            client: reqwest::Client::new(),
        }
    }

    /// What the SMSC saw (see tests/smpp/server.js).
    pub async fn state(&self) -> Value {
        self.client
            .get(format!("{}/state", self.control))
            .send()
            .await
            .expect("SMSC state")
            .json()
            .await
            .expect("json")
    }

    /// Changes how the SMSC behaves from now on.
    pub async fn configure(&self, config: Value) {
        let status = self
            .client
            .post(format!("{}/config", self.control))
            .json(&config)
            .send()
            .await
            .expect("SMSC config")
            .status();
        assert!(status.is_success());
    }

    /// The submits the SMSC received.
    pub async fn submits(&self) -> Vec<Value> {
        self.state().await["submits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A provider bound to this SMSC with `password`.
    pub fn provider(&self, name: &str, password: &str) -> ProviderSettings {
        ProviderSettings::Smpp {
            name: name.to_owned(),
            host: "127.0.0.1".to_owned(),
            port: self.port,
            system_id: SMSC_SYSTEM_ID.to_owned(),
            password: password.to_owned().into(),
            system_type: String::new(),
            source_addr: None,
            source_ton: None,
            source_npi: None,
            window: 10,
            submit_timeout_ms: 3_000,
            enquire_link_ms: 300,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 1_000,
            delivery_receipts: true,
        }
    }
}
