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
use sqlx::{Any, AnyConnection, Arguments, Encode, Type};

use super::sql::Backend;
use crate::events::Event;

/// Rows per multi-row outbox INSERT; well under both backends' parameter limits.
const EVENTS_PER_INSERT: usize = 200;

pub(super) struct Batch<'q> {
    backend: Backend,
    statements: Vec<String>,
    args: AnyArguments<'q>,
    bound: usize,
    /// SQLite: `BEGIN IMMEDIATE` first and/or `COMMIT` last, in the same query.
    pub(super) begin: bool,
    pub(super) commit: bool,
}

impl<'q> Batch<'q> {
    pub(super) fn new(backend: Backend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
            args: AnyArguments::default(),
            bound: 0,
            begin: false,
            commit: false,
        }
    }

    /// Binds `value` and returns its placeholder (`$n`).
    pub(super) fn bind<T>(&mut self, value: T) -> anyhow::Result<String>
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.args
            .add(value)
            .map_err(|e| anyhow::anyhow!("binding a value: {e}"))?;
        self.bound += 1;
        Ok(format!("${}", self.bound))
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
                    self.bind(event.event_id.to_string())?,
                    self.bind(event.ts)?,
                    self.bind(payload)?
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

    pub(super) fn is_empty(&self) -> bool {
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
        // `fetch_all`, not `fetch_optional`: on SQLite the later statements run only while
        // the results are read to the end.
        sqlx::query_with(&sql, self.args)
            .fetch_all(conn)
            .await
            .context("writing a change with its events")
    }
}
