//! Test support: the real service on port 0 over a fresh database, request helpers, a real
//! local SMS gateway, and the log audit every test runs when its app is dropped.

mod app;
mod binary;
mod clickhouse;
mod databases;
mod logs;
mod proxy;
mod scripted;
mod sms_gateway;
mod smsc;
mod twilio;

pub use app::*;
pub use binary::*;
pub use clickhouse::*;
pub use databases::*;
pub use logs::*;
pub use proxy::*;
pub use scripted::*;
pub use sms_gateway::*;
pub use smsc::*;
pub use twilio::*;

use std::time::Duration;

/// The example brand's development key, as printed in the README.
pub const DEV_KEY: &str = "og_dev_nordwind_4f1c8e2a9b7d4e6f";
/// A second brand that exists only in tests, to prove brands are isolated.
pub const OTHER_KEY: &str = "og_test_otherbrand_0123456789abcdef";
/// A German mobile number (libphonenumber's example).
pub const PHONE: &str = "+4915123456789";

/// Where tests/run.sh installed the tests' npm packages (smpp, axe-core).
pub fn node_modules() -> String {
    std::env::var("ORDERGUARD_TEST_NODE_MODULES")
        .unwrap_or_else(|_| format!("{}/target/npm/node_modules", env!("CARGO_MANIFEST_DIR")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per backend: `both_backends!(name, …)` makes `name::sqlite` and
/// `name::postgres` from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Serves `router` on a free loopback port until the test ends; its base URL
/// (`http://127.0.0.1:<port>`).
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

/// How long a test waits for a condition that takes `seconds` on a quiet machine: five times
/// as long, so two busy cores never fail a test that is merely slow. Only a test that fails
/// waits that long; the others go on as soon as the condition holds.
pub fn patience(seconds: u64) -> Duration {
    Duration::from_secs(seconds * 5)
}

/// Polls `ready` every 50 ms until it holds; fails after `patience(seconds)`.
pub async fn eventually(what: &str, seconds: u64, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + patience(seconds);
    loop {
        if ready().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
