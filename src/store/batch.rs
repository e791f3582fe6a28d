//! Writes that belong together — a state change and the events it causes — sent to the
//! database in one round trip.
//!
//! On PostgreSQL the statements become one statement of data-modifying CTEs: atomic by itself,
//! so it needs no transaction around it when it is all there is to write. SQLite has no
//! data-modifying CTEs; there the statements go as one multi-statement query (sqlx binds each
//! `$n` across the statements), and a [`super::conn::Tx`] carries its `BEGIN` and `COMMIT` in
//! the same query.
//!
//! Every statement runs, whatever the first one matched: callers that write only if the first
//! statement changed something hold the row lock (or roll back).

use anyhow::Context;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments};

use super::sql::Backend;
use crate::domain::Event;

/// Rows per multi-row outbox INSERT; well under both backends' parameter limits.
const EVENTS_PER_INSERT: usize = 200;

/// A bound value; owned, so that a batch can wait in a queue (see [`super::conn::Combiner`]).
#[derive(Debug, Clone)]
pub(super) enum Value {
    Int(i64),
    Text(Option<String>),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::Text(Some(value))
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::Text(Some(value.to_owned()))
    }
}

impl From<Option<&str>> for Value {
    fn from(value: Option<&str>) -> Self {
        Self::Text(value.map(str::to_owned))
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Self {
        Self::Blob(value.to_vec())
    }
}

#[derive(Debug, Clone)]
pub(super) struct Batch {
    backend: Backend,
    statements: Vec<String>,
    values: Vec<Value>,
    /// SQLite: `BEGIN IMMEDIATE` first and/or `COMMIT` last, in the same query.
    pub(super) begin: bool,
    pub(super) commit: bool,
}

impl Batch {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
            values: Vec::new(),
            begin: false,
            commit: false,
        }
    }

    /// Binds `value` and returns its placeholder (`$n`).
    pub(super) fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }

    /// The number of values bound.
    pub(super) fn values(&self) -> usize {
        self.values.len()
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) fn statements(&self) -> &[String] {
        &self.statements
    }

    /// Appends `other`'s statements and values, its placeholders renumbered after ours.
    pub(super) fn append(&mut self, other: &Batch) {
        let offset = self.values.len();
        self.statements.extend(
            other
                .statements
                .iter()
                .map(|statement| shift_placeholders(statement, offset)),
        );
        self.values.extend(other.values.iter().cloned());
    }

    /// Adds a statement; its placeholders come from [`Batch::bind`]. Only the first statement
    /// may return rows.
    pub(super) fn push(&mut self, statement: String) {
        self.statements.push(statement);
    }

    /// Adds the outbox rows for `events`.
    pub(super) fn events(&mut self, events: &[Event]) -> anyhow::Result<()> {
        for chunk in events.chunks(EVENTS_PER_INSERT) {
            let mut sql =
                String::from("INSERT INTO outbox (event_id, created_at, payload) VALUES ");
            for (i, event) in chunk.iter().enumerate() {
                let payload = serde_json::to_string(event).context("encoding an event")?;
                let row = format!(
                    "({}, {}, {})",
                    self.bind(event.event_id.to_string()),
                    self.bind(event.ts),
                    self.bind(payload)
                );
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&row);
            }
            self.push(sql);
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    fn sql(&self) -> String {
        match self.backend {
            // `WITH w1 AS (second), w2 AS (third) first`: the first statement's RETURNING is
            // the statement's result; the others run once each, referenced or not.
            Backend::Postgres => match self.statements.split_first() {
                Some((first, [])) => first.clone(),
                Some((first, rest)) => {
                    let ctes: Vec<String> = rest
                        .iter()
                        .enumerate()
                        .map(|(i, statement)| format!("w{} AS ({statement})", i + 1))
                        .collect();
                    format!("WITH {} {first}", ctes.join(", "))
                }
                None => String::new(),
            },
            Backend::Sqlite => {
                let begin = self.begin.then_some("BEGIN IMMEDIATE");
                let commit = self.commit.then_some("COMMIT");
                begin
                    .into_iter()
                    .chain(self.statements.iter().map(String::as_str))
                    .chain(commit)
                    .collect::<Vec<_>>()
                    .join(";\n")
            }
        }
    }

    /// Runs every statement; the rows the first one returned.
    pub(super) async fn run(self, conn: &mut AnyConnection) -> anyhow::Result<Vec<AnyRow>> {
        if self.is_empty() && !self.begin && !self.commit {
            return Ok(Vec::new());
        }
        let sql = self.sql();
        let mut args = AnyArguments::default();
        for value in self.values {
            let added = match value {
                Value::Int(value) => args.add(value),
                Value::Text(value) => args.add(value),
                Value::Blob(value) => args.add(value),
            };
            added.map_err(|e| anyhow::anyhow!("binding a value: {e}"))?;
        }
        // `fetch_all`, not `fetch_optional`: on SQLite the later statements run only while
        // the results are read to the end.
        sqlx::query_with(&sql, args)
            .fetch_all(conn)
            .await
            .context("writing a change with its events")
    }
}

/// `statement` with every `$n` raised by `offset`. Our statements carry no `$` but in
/// placeholders: every value is bound.
fn shift_placeholders(statement: &str, offset: usize) -> String {
    let mut shifted = String::with_capacity(statement.len() + 8);
    let mut rest = statement;
    while let Some(at) = rest.find('$') {
        shifted.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => shifted.push_str(&(n + offset).to_string()),
            Err(_) => shifted.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    shifted.push_str(rest);
    shifted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_batches_keep_their_values_in_step_with_their_placeholders() {
        let mut first = Batch::new(Backend::Sqlite);
        let (a, b) = (first.bind(1_i64), first.bind("x"));
        first.push(format!("INSERT INTO t VALUES ({a}, {b})"));
        let mut second = Batch::new(Backend::Sqlite);
        let (c, d) = (second.bind(2_i64), second.bind(None::<&str>));
        second.push(format!("UPDATE t SET a = {c} WHERE b = {d} OR b = {c}"));
        first.append(&second);
        assert_eq!(
            first.sql(),
            "INSERT INTO t VALUES ($1, $2);\nUPDATE t SET a = $3 WHERE b = $4 OR b = $3"
        );
        assert!(matches!(first.values[2], Value::Int(2)));
        assert!(matches!(first.values[3], Value::Text(None)));
    }
}
