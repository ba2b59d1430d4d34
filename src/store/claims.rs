//! The scheduler's statements on `routines` outside its claims (those are
//! `claim`): the start-up sync of declared routines, the periodic
//! re-checks, and the earliest due time.

use super::edits::Actor;
use super::models::{self, NewRoutine};
use super::pool::Pools;
use super::write::WriteTransaction;
use super::{RoutineStore, StoreError};
use crate::routine::Routine;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Bool, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};

/// The beat a store claims for: its runs are recorded under its id, and a
/// routine with an in-process run going on another live beat is busy.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) beat_id: String,
    /// A beat silent for longer is dead.
    pub(crate) dead_after: std::time::Duration,
}

/// What a sync of declared routines did, by name (in name order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Synced {
    /// Declared, not in the table: inserted.
    pub inserted: Vec<String>,
    /// Declared and in the table: the table's version stays.
    pub kept: Vec<String>,
    /// In the table, not declared (nor kept): deleted.
    pub deleted: Vec<String>,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct TimeRow {
    #[diesel(sql_type = Nullable<Text>)]
    at: Option<String>,
}

impl RoutineStore {
    /// The kit's source-of-truth rules for declared routines, as `by`'s
    /// edits (a beat's, or an operator's `beat sync`), in one transaction
    /// that beats starting together take in turns: declared but missing →
    /// inserted; present → kept as the table has it (inactive rows stay
    /// inactive); neither declared nor in `keep` → deleted. `keep` names
    /// routines the code means but that were refused (a schedule the beat
    /// cannot represent): their rows are left alone. With nothing declared,
    /// nothing is touched.
    pub(crate) fn sync_declared(
        &self,
        by: &Actor,
        declared: &[Routine],
        keep: &[String],
    ) -> Result<Synced, StoreError> {
        if declared.is_empty() {
            return Ok(Synced::default());
        }
        let names: Vec<&str> = declared
            .iter()
            .map(Routine::name)
            .chain(keep.iter().map(String::as_str))
            .collect();
        let names_json = serde_json::Value::from(names).to_string();
        // In name order, so that concurrent inserts of the same names (the
        // kit's, or plain SQL's) cannot wait on each other in a circle.
        let mut rows: Vec<NewRoutine> = declared.iter().map(NewRoutine::from).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        // Beats take turns here; someone else (the kit, plain SQL) may still
        // take a name between our look and our insert: look again, twice.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = with_conn!(self, |conn, sql| {
                conn.one_at_a_time(by, |conn| {
                    let existing: Vec<NameRow> = diesel::sql_query(&sql.existing_names)
                        .bind::<Text, _>(&names_json)
                        .load(conn)?;
                    let existing: std::collections::HashSet<String> =
                        existing.into_iter().map(|r| r.name).collect();
                    let mut synced = Synced::default();
                    for row in &rows {
                        if existing.contains(&row.name) {
                            synced.kept.push(row.name.clone());
                        } else {
                            insert_row!(conn, sql.insert, row)?;
                            synced.inserted.push(row.name.clone());
                        }
                    }
                    let undeclared: Vec<NameRow> = diesel::sql_query(&sql.undeclared_names)
                        .bind::<Text, _>(&names_json)
                        .load(conn)?;
                    diesel::sql_query(&sql.delete_undeclared)
                        .bind::<Text, _>(&names_json)
                        .execute(conn)?;
                    synced.deleted = undeclared.into_iter().map(|r| r.name).collect();
                    Ok(synced)
                })
            });
            match result {
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                )) if attempt < 3 => continue,
                other => return other.map_err(|e| StoreError::query("sync_declared", e)),
            }
        }
    }

    /// Marks rows with a recorded error for another look: code deployed
    /// since may have fixed them (a task now registered, say).
    pub(crate) fn recheck_failed(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_failed)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_failed", e))
        })
    }

    /// Marks active rows whose next run vanished without an edit the
    /// triggers saw (e.g. `next_run_at` set to NULL by hand). This is the
    /// periodic full check; edits are found by the plan (`ClaimTx::lock_edited`).
    pub(crate) fn recheck_unplanned(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_unplanned)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_unplanned", e))
        })
    }

    /// The earliest next run of any schedulable routine; with `tasks` (a
    /// JSON array of task names), of the routines running those tasks.
    pub(crate) fn earliest_due(
        &self,
        tasks: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<TimeRow> = match tasks {
                None => diesel::sql_query(sql.earliest_due).load(conn),
                Some(tasks) => diesel::sql_query(&sql.earliest_due_of_tasks)
                    .bind::<Text, _>(tasks)
                    .load(conn),
            }
            .map_err(|e| StoreError::query("earliest_due", e))?;
            // A value no time can be is nothing to wait for: one that sorts
            // before now ('-infinity', MySQL's zero date) is claimed, and
            // becomes its row's error, in the same pass.
            Ok(rows
                .into_iter()
                .next()
                .and_then(|r| r.at)
                .and_then(|text| models::parse_timestamp(&text))
                .map(|t| t.and_utc()))
        })
    }
}
