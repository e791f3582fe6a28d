//! The ClickHouse sink (RowBinary over HTTP with the `clickhouse` crate) and the schema
//! migrations under `migrations/clickhouse/`.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::Event;
use super::relay::{EventSink, SinkError};
use crate::settings::ClickHouseSettings;

/// The migrations, in order. A test checks that every file in the folder is listed here.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_events.sql",
        include_str!("../../migrations/clickhouse/0001_events.sql"),
    ),
    (
        2,
        "0002_funnel_hourly.sql",
        include_str!("../../migrations/clickhouse/0002_funnel_hourly.sql"),
    ),
    (
        3,
        "0003_fraud_rules.sql",
        include_str!("../../migrations/clickhouse/0003_fraud_rules.sql"),
    ),
    (
        4,
        "0004_privacy.sql",
        include_str!("../../migrations/clickhouse/0004_privacy.sql"),
    ),
];

/// The cluster variant (`clickhouse.cluster` set): local Replicated tables on every shard and
/// Distributed tables over them, `__CLUSTER__` standing for the cluster's name.
pub const CLUSTER_MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "cluster/0001_events.sql",
        include_str!("../../migrations/clickhouse/cluster/0001_events.sql"),
    ),
    (
        2,
        "cluster/0002_funnel_hourly.sql",
        include_str!("../../migrations/clickhouse/cluster/0002_funnel_hourly.sql"),
    ),
    (
        3,
        "cluster/0003_fraud_rules.sql",
        include_str!("../../migrations/clickhouse/cluster/0003_fraud_rules.sql"),
    ),
    (
        4,
        "cluster/0004_privacy.sql",
        include_str!("../../migrations/clickhouse/cluster/0004_privacy.sql"),
    ),
];

/// The statements of the migrations for `cluster` (none: a single server), in order, with
/// the cluster's name in place; `cluster` is checked at load to be a plain identifier.
pub fn migration_statements(cluster: Option<&str>) -> Vec<(u32, &'static str, Vec<String>)> {
    let migrations = if cluster.is_some() {
        CLUSTER_MIGRATIONS
    } else {
        MIGRATIONS
    };
    migrations
        .iter()
        .map(|(version, name, sql)| {
            let statements = statements(sql)
                .into_iter()
                .map(|statement| match cluster {
                    Some(cluster) => statement.replace("__CLUSTER__", cluster),
                    None => statement,
                })
                .collect();
            (*version, *name, statements)
        })
        .collect()
}

/// ClickHouse error codes that mean "this data is wrong": retrying cannot help.
const BAD_DATA_CODES: &[u32] = &[6, 26, 27, 33, 38, 41, 53, 69, 70, 72, 117, 131, 321, 469];

/// The table events go to.
pub const EVENTS_TABLE: &str = "events";

pub struct ClickHouseSink {
    url: String,
    client: clickhouse::Client,
    settings: ClickHouseSettings,
    /// Set once the migrations have been applied by this process.
    migrated: tokio::sync::OnceCell<()>,
}

impl ClickHouseSink {
    pub fn new(url: &str, settings: &ClickHouseSettings) -> Self {
        Self {
            url: url.to_owned(),
            client: client(url, settings).with_database(&settings.database),
            settings: settings.clone(),
            migrated: tokio::sync::OnceCell::new(),
        }
    }

    /// Applies the migrations once per process; until that succeeds every call tries again.
    pub async fn ensure_migrated(&self) -> anyhow::Result<()> {
        self.migrated
            .get_or_try_init(|| self.migrate())
            .await
            .map(|_| ())
    }

    /// Creates the database, applies pending migrations (tracked in `schema_migrations`) and
    /// sets the retention.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        client(&self.url, &self.settings)
            .query("CREATE DATABASE IF NOT EXISTS ?")
            .bind(clickhouse::sql::Identifier(&self.settings.database))
            .execute()
            .await
            .context("creating the ClickHouse database")?;
        self.client
            .query(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version UInt32, name String, applied_at DateTime DEFAULT now()) \
                 ENGINE = MergeTree ORDER BY version",
            )
            .execute()
            .await
            .context("creating schema_migrations")?;
        let applied: Vec<u32> = self
            .client
            .query("SELECT version FROM schema_migrations")
            .fetch_all()
            .await
            .context("reading applied ClickHouse migrations")?;
        let cluster = self.settings.cluster.as_deref();
        for (version, name, statements) in migration_statements(cluster) {
            if applied.contains(&version) {
                continue;
            }
            for statement in statements {
                self.client
                    .query(&statement)
                    .execute()
                    .await
                    .with_context(|| format!("applying ClickHouse migration {name}"))?;
            }
            self.client
                .query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
                .bind(version)
                .bind(name)
                .execute()
                .await
                .with_context(|| format!("recording ClickHouse migration {name}"))?;
            tracing::info!(migration = name, "ClickHouse migration applied");
        }
        // On a cluster the retention lives on every shard's local tables.
        let (suffix, on_cluster) = match cluster {
            Some(cluster) => ("_local", format!(" ON CLUSTER {cluster}")),
            None => ("", String::new()),
        };
        for (table, column) in [(EVENTS_TABLE, "toDateTime(ts)"), ("funnel_hourly", "hour")] {
            self.client
                .query(&format!(
                    "ALTER TABLE ?{on_cluster} MODIFY TTL {column} + toIntervalMonth(?)"
                ))
                .bind(clickhouse::sql::Identifier(&format!("{table}{suffix}")))
                .bind(self.settings.retention_months)
                .execute()
                .await
                .with_context(|| format!("setting the retention of {table}"))?;
        }
        Ok(())
    }

    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }
}

fn client(url: &str, settings: &ClickHouseSettings) -> clickhouse::Client {
    let mut client = clickhouse::Client::default().with_url(url);
    if let Some(user) = &settings.user {
        client = client.with_user(user);
    }
    if let Some(password) = &settings.password {
        client = client.with_password(password.expose_secret());
    }
    client
}

/// Splits a migration file into statements at `;` ending a line; `--` comment lines are dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                statements.push(statement);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

/// The same batch always gets the same token, so a batch shipped twice (its acknowledgement
/// lost) is deduplicated by ClickHouse.
fn deduplication_token(events: &[Event]) -> String {
    let mut hasher = Sha256::new();
    for event in events {
        hasher.update(event.event_id.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn classify(error: clickhouse::error::Error) -> SinkError {
    use clickhouse::error::Error;
    match &error {
        Error::BadResponse(message) => {
            let code = message
                .split("Code: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse::<u32>().ok());
            if code.is_some_and(|code| BAD_DATA_CODES.contains(&code)) {
                SinkError::Rejected(message.clone())
            } else {
                SinkError::Retryable(message.clone())
            }
        }
        _ => SinkError::Retryable(error.to_string()),
    }
}

#[async_trait]
impl EventSink for ClickHouseSink {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    async fn write(&self, events: &[Event]) -> Result<(), SinkError> {
        // One bound for the whole write: schema lookups and migrations have no timeout of
        // their own, and a hanging server must not stall the relay.
        let limit = Duration::from_millis(self.settings.timeout_ms);
        match tokio::time::timeout(limit, self.insert(events)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Retryable(format!(
                "no answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    async fn erase(&self, brand: &str, pseudonyms: &[String]) -> anyhow::Result<u64> {
        let found: u64 = self.count(brand, pseudonyms).await?.values().sum();
        if found == 0 {
            return Ok(0);
        }
        // A lightweight DELETE: the rows are gone for every query at once and from disk at
        // the next merge. On a cluster, on every shard's local table.
        let (table, on_cluster) = match &self.settings.cluster {
            Some(cluster) => (
                format!("{EVENTS_TABLE}_local"),
                format!(" ON CLUSTER {cluster}"),
            ),
            None => (EVENTS_TABLE.to_owned(), String::new()),
        };
        self.client
            .query(&format!(
                "DELETE FROM ?{on_cluster} WHERE brand = ? \
                 AND (has(?, phone_pseudonym) OR has(?, customer_pseudonym))"
            ))
            .bind(clickhouse::sql::Identifier(&table))
            .bind(brand)
            .bind(pseudonyms)
            .bind(pseudonyms)
            .with_setting("mutations_sync", "2")
            .execute()
            .await
            .context("erasing events from ClickHouse")?;
        Ok(found)
    }

    async fn count(
        &self,
        brand: &str,
        pseudonyms: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        self.ensure_migrated().await?;
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Count {
            event_type: String,
            n: u64,
        }
        let rows: Vec<Count> = self
            .client
            .query(
                "SELECT event_type, count() AS n FROM ? WHERE brand = ? \
                 AND (has(?, phone_pseudonym) OR has(?, customer_pseudonym)) GROUP BY event_type",
            )
            .bind(clickhouse::sql::Identifier(EVENTS_TABLE))
            .bind(brand)
            .bind(pseudonyms)
            .bind(pseudonyms)
            .fetch_all()
            .await
            .context("counting a person's events in ClickHouse")?;
        Ok(rows
            .into_iter()
            .map(|row| (row.event_type, row.n))
            .collect())
    }
}

impl ClickHouseSink {
    async fn insert(&self, events: &[Event]) -> Result<(), SinkError> {
        self.ensure_migrated()
            .await
            .map_err(|error| SinkError::Retryable(format!("{error:#}")))?;
        let timeout = Some(Duration::from_millis(self.settings.timeout_ms));
        let mut insert = self
            .client
            .insert::<Event>(EVENTS_TABLE)
            .await
            .map_err(classify)?
            .with_setting("insert_deduplication_token", deduplication_token(events))
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
            .with_timeouts(timeout, timeout);
        if self.settings.cluster.is_some() {
            // The Distributed table writes to the shards before it answers, so an
            // acknowledged batch is on its shard (and its deduplication token applies there).
            insert = insert.with_setting("distributed_foreground_insert", "1");
        }
        for event in events {
            insert.write(event).await.map_err(classify)?;
        }
        insert.end().await.map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/clickhouse")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|(_, name, _)| (*name).to_owned())
            .collect();
        assert_eq!(files, listed);
        for (index, (version, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, index + 1, "{name}");
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }

    #[test]
    fn the_cluster_variant_lists_every_file_and_names_the_cluster() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/clickhouse/cluster");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/clickhouse/cluster")
            .map(|e| {
                format!(
                    "cluster/{}",
                    e.expect("entry").file_name().to_string_lossy()
                )
            })
            .collect();
        files.sort();
        let listed: Vec<String> = CLUSTER_MIGRATIONS
            .iter()
            .map(|(_, name, _)| (*name).to_owned())
            .collect();
        assert_eq!(files, listed);
        assert_eq!(
            CLUSTER_MIGRATIONS.len(),
            MIGRATIONS.len(),
            "one variant per migration"
        );
        for (_, name, statements) in migration_statements(Some("orders_cluster")) {
            for statement in statements {
                assert!(!statement.contains("__CLUSTER__"), "{name}: {statement}");
                assert!(
                    statement.contains("ON CLUSTER orders_cluster"),
                    "{name}: every statement runs on the whole cluster: {statement}"
                );
            }
        }
    }

    #[test]
    fn statements_split_at_semicolons_and_skip_comments() {
        let sql = "-- a comment\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\nCREATE VIEW b AS SELECT 1;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x UInt8)\nENGINE = Memory",
                "CREATE VIEW b AS SELECT 1"
            ]
        );
    }

    #[test]
    fn refusals_of_the_data_are_told_apart_from_outages() {
        let rejected = classify(clickhouse::error::Error::BadResponse(
            "Code: 469. DB::Exception: Constraint `known_event_type` is violated. (VIOLATED_CONSTRAINT)".into(),
        ));
        assert!(matches!(rejected, SinkError::Rejected(_)));
        let retry = classify(clickhouse::error::Error::BadResponse(
            "Code: 241. DB::Exception: Memory limit".into(),
        ));
        assert!(matches!(retry, SinkError::Retryable(_)));
        assert!(matches!(
            classify(clickhouse::error::Error::TimedOut),
            SinkError::Retryable(_)
        ));
    }
}
