//! The scheduler's statements on `routines`: the start-up sync of
//! declared routines, the periodic re-checks, planning edited rows,
//! claiming due ones (recording their runs in the same transaction), and
//! the earliest due time. Each runs the caller's judgement of the rows
//! inside the transaction that holds their locks.

use super::edits::Actor;
use super::history::TextRow;
use super::models::{self, NewRoutine, NewRun, Plan, RawRow, RoutineRow};
use super::pool::Pools;
use super::write::WriteTransaction;
use super::{RoutineStore, StoreError};
use crate::routine::Routine;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};
use std::collections::HashSet;

/// What a claim (or a plan) writes besides the rows' plans, and what it
/// hands back.
pub(crate) struct Claim<T> {
    pub(crate) plans: Vec<Plan>,
    /// Runs to record in the same transaction.
    pub(crate) runs: Vec<NewRun>,
    pub(crate) value: T,
}

/// The beat a store claims for: its runs are recorded under its id, and a
/// routine with an in-process run going on another live beat is busy.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) beat_id: String,
    /// A beat silent for longer is dead.
    pub(crate) dead_after: std::time::Duration,
}

/// The outcome of a transaction whose rows were judged by a caller.
#[derive(Debug)]
enum TxError<E> {
    Db(diesel::result::Error),
    Caller(E),
}

impl<E> From<diesel::result::Error> for TxError<E> {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Db(e)
    }
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
    /// edits (a beat's), in one
    /// transaction that beats starting together take in turns: declared
    /// but missing → inserted; present → kept as the table has it; not
    /// declared → deleted. Returns the names inserted and the number
    /// deleted. With nothing declared, nothing is touched.
    pub(crate) fn sync_declared(
        &self,
        by: &Actor,
        declared: &[Routine],
    ) -> Result<(Vec<String>, usize), StoreError> {
        if declared.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let names: Vec<&str> = declared.iter().map(Routine::name).collect();
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
                    let mut inserted = Vec::new();
                    for row in rows.iter().filter(|r| !existing.contains(&r.name)) {
                        insert_row!(conn, sql.insert, row)?;
                        inserted.push(row.name.clone());
                    }
                    let deleted = diesel::sql_query(&sql.delete_undeclared)
                        .bind::<Text, _>(&names_json)
                        .execute(conn)?;
                    Ok((inserted, deleted))
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
    /// periodic full check; edits are found by [`Self::plan_edited`].
    pub(crate) fn recheck_unplanned(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_unplanned)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_unplanned", e))
        })
    }

    /// Locks up to `limit` edited (or new) rows, has `plan` decide each
    /// one's next run or error, and writes the plans. Returns how many rows
    /// were planned. Rows another beat is planning are skipped.
    pub(crate) fn plan_edited<T, E>(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        plan: impl FnOnce(Vec<RoutineRow>) -> Result<Claim<T>, E>,
    ) -> Result<(usize, T), E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let beat_id = self.claimant.as_ref().map(|c| c.beat_id.as_str());
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RawRow> = diesel::sql_query(&sql.lock_edited)
                    .bind::<BigInt, _>(limit)
                    .load(conn)?;
                let rows = rows.into_iter().map(RoutineRow::from).collect();
                let claim = plan(rows).map_err(TxError::Caller)?;
                if !claim.plans.is_empty() {
                    conn.write_planned(sql.write_planned, &claim.plans)?;
                }
                if !claim.runs.is_empty() {
                    conn.write_runs(self.history.insert_runs, &claim.runs, now, beat_id)?;
                }
                Ok((claim.plans.len(), claim.value))
            })
        });
        result.map_err(|e| match e {
            TxError::Db(e) => E::from(StoreError::query("plan_edited", e)),
            TxError::Caller(e) => e,
        })
    }

    /// Locks up to `limit` rows due at `now` (earliest first), has `fire`
    /// dispatch them and decide their next runs, and writes the outcome in
    /// the same transaction. If `fire` fails, nothing is written: the rows
    /// stay due and are claimed again later. With `tasks` (a JSON array of
    /// task names) only rows running those tasks are claimed. `fire` is
    /// also told which of the rows whose task `is_local` have a run going
    /// on another live beat; the runs it returns are recorded in the
    /// transaction. Returns `fire`'s value.
    pub(crate) fn claim_due<T, E>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        tasks: Option<&str>,
        is_local: impl Fn(&str) -> bool,
        fire: impl FnOnce(Vec<RoutineRow>, &HashSet<String>) -> Result<Claim<T>, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let dispatched_at = now;
        let now = models::format_timestamp(now);
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RawRow> = match tasks {
                    None => diesel::sql_query(&sql.lock_due)
                        .bind::<Text, _>(&now)
                        .bind::<BigInt, _>(limit)
                        .load(conn)?,
                    Some(tasks) => diesel::sql_query(&sql.lock_due_of_tasks)
                        .bind::<Text, _>(&now)
                        .bind::<Text, _>(tasks)
                        .bind::<BigInt, _>(limit)
                        .load(conn)?,
                };
                let rows: Vec<RoutineRow> = rows.into_iter().map(RoutineRow::from).collect();
                let busy = match &self.claimant {
                    Some(claimant) => {
                        let local: Vec<&str> = rows
                            .iter()
                            .filter(|r| is_local(&r.task))
                            .map(|r| r.id.as_str())
                            .collect();
                        if local.is_empty() {
                            HashSet::new()
                        } else {
                            let busy: Vec<TextRow> = diesel::sql_query(&self.history.busy)
                                .bind::<Text, _>(serde_json::Value::from(local).to_string())
                                .bind::<Text, _>(&claimant.beat_id)
                                .bind::<BigInt, _>(
                                    i64::try_from(claimant.dead_after.as_millis())
                                        .unwrap_or(i64::MAX),
                                )
                                .load(conn)?;
                            busy.into_iter().map(|r| r.value).collect()
                        }
                    }
                    None => HashSet::new(),
                };
                let claim = fire(rows, &busy).map_err(TxError::Caller)?;
                if !claim.plans.is_empty() {
                    conn.write_fired(sql.write_fired, &claim.plans)?;
                }
                if !claim.runs.is_empty() {
                    let beat_id = self.claimant.as_ref().map(|c| c.beat_id.as_str());
                    conn.write_runs(
                        self.history.insert_runs,
                        &claim.runs,
                        dispatched_at,
                        beat_id,
                    )?;
                }
                Ok(claim.value)
            })
        });
        result.map_err(|e| match e {
            TxError::Db(e) => E::from(StoreError::query("claim_due", e)),
            TxError::Caller(e) => e,
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
