//! Databases.

use sqlx::Connection;

/// The PostgreSQL server the tests use; `ORDERGUARD_TEST_POSTGRES_URL` overrides it.
pub fn postgres_admin_url() -> String {
    std::env::var("ORDERGUARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database for one test and returns its URL. Never skips: no server, no pass.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for the tests and did not answer at {admin}: {e}. Run the README's test command, which starts it.")
    });
    // The prefix names this checkout (tests/run.sh sets it), so a run drops only the databases
    // its own earlier runs left, never those of a run going on beside it.
    let prefix = std::env::var("ORDERGUARD_TEST_DB_PREFIX")
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or_else(|| "og_test_".to_owned());
    let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base)
        .to_owned();
    format!("{base}/{name}")
}
