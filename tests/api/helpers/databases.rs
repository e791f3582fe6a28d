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

/// Every text value (and blob, as lossy text) in every table of the database at `url`, as
/// `(table, column, value)`: what a scan for personal data reads.
pub async fn every_value(url: &str) -> Vec<(String, String, String)> {
    use sqlx::{Column, Row};
    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    let tables: Vec<String> = if url.starts_with("sqlite") {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
        )
        .fetch_all(&mut connection)
        .await
        .expect("tables")
    } else {
        sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND tablename NOT LIKE '\\_sqlx%'",
        )
        .fetch_all(&mut connection)
        .await
        .expect("tables")
    };
    assert!(tables.len() >= 8, "{tables:?}");
    let mut values = Vec::new();
    for table in tables {
        // PostgreSQL: each row as JSON text (the Any driver reads no timestamptz); SQLite
        // stores only text, integers and blobs.
        let sql = if url.starts_with("sqlite") {
            format!("SELECT * FROM {table}")
        } else {
            format!("SELECT row_to_json(t)::text AS row_json FROM {table} t")
        };
        let rows = sqlx::query(&sql)
            .fetch_all(&mut connection)
            .await
            .expect("rows");
        for row in rows {
            for column in row.columns() {
                let name = column.name();
                let text = if let Ok(Some(text)) = row.try_get::<Option<String>, _>(name) {
                    text
                } else if let Ok(Some(bytes)) = row.try_get::<Option<Vec<u8>>, _>(name) {
                    String::from_utf8_lossy(&bytes).into_owned()
                } else if let Ok(Some(number)) = row.try_get::<Option<i64>, _>(name) {
                    number.to_string()
                } else {
                    continue;
                };
                values.push((table.clone(), name.to_owned(), text));
            }
        }
    }
    values
}
