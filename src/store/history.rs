//! The run history (`routine_runs`): its rows, and every statement that
//! reads or writes it (the beats' registry is `beats`).
//!
//! Runs are inserted in the claim's own transaction (see `ClaimTx`); everything here runs in short transactions
//! of its own: outcome updates, heartbeats, marking a dead beat's runs
//! lost, and pruning, which deletes by primary key in small batches so that
//! it never holds locks a claim could wait on.

use super::models::{format_timestamp, parse_timestamp, NewRun, RunOutcome};
use super::pool::Pools;
use super::sql::history::millis;
use super::write::WriteTransaction;
use super::{RoutineStore, StoreError};
use crate::metrics::Target;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl};

use std::collections::HashSet;
use std::time::Duration;

/// One run as `routine_runs` records it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunRow {
    /// The record's number (newer runs have larger ones).
    pub id: i64,
    /// The routine's id.
    pub routine_id: String,
    /// The routine's name when it ran.
    pub routine: String,
    /// The task it ran.
    pub task: String,
    /// The due time the run stands for (for an on-demand run, when it was
    /// asked for); naive UTC.
    pub due_at: Option<NaiveDateTime>,
    /// When it was dispatched (naive UTC).
    pub dispatched_at: Option<NaiveDateTime>,
    /// The Celery task id (in-process runs have one too).
    pub task_id: String,
    /// Where it went: `celery` (published to the broker), `in_process` (a
    /// beat's worker pool), or `none` (a run on demand of a routine that
    /// cannot run).
    pub target: Target,
    /// Run by `beat send`, not by the schedule.
    pub on_demand: bool,
    /// Run by `beat backfill`, for a due time in the past.
    pub backfill: bool,
    /// The beat that dispatched it (`None`: published by `beat send`).
    pub beat_id: Option<String>,
    /// What became of it.
    pub outcome: RunOutcome,
    /// Attempts made (in-process runs).
    pub attempts: Option<i32>,
    /// The last error.
    pub error: Option<String>,
    /// When an in-process run started (naive UTC).
    pub started_at: Option<NaiveDateTime>,
    /// When an in-process run ended (naive UTC).
    pub finished_at: Option<NaiveDateTime>,
}

#[derive(QueryableByName)]
struct RawRun {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    routine_id: String,
    #[diesel(sql_type = Text)]
    routine: String,
    #[diesel(sql_type = Text)]
    task: String,
    #[diesel(sql_type = Nullable<Text>)]
    due_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    dispatched_at: Option<String>,
    #[diesel(sql_type = Text)]
    task_id: String,
    #[diesel(sql_type = Text)]
    target: String,
    #[diesel(sql_type = Bool)]
    on_demand: bool,
    #[diesel(sql_type = Bool)]
    backfill: bool,
    #[diesel(sql_type = Nullable<Text>)]
    beat_id: Option<String>,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = Nullable<Integer>)]
    attempts: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    started_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    finished_at: Option<String>,
}

pub(super) fn time(text: Option<String>) -> Option<NaiveDateTime> {
    text.as_deref().and_then(parse_timestamp)
}

impl From<RawRun> for RunRow {
    fn from(raw: RawRun) -> Self {
        RunRow {
            id: raw.id,
            routine_id: raw.routine_id,
            routine: raw.routine,
            task: raw.task,
            due_at: time(raw.due_at),
            dispatched_at: time(raw.dispatched_at),
            task_id: raw.task_id,
            target: Target::from_name(&raw.target),
            on_demand: raw.on_demand,
            backfill: raw.backfill,
            beat_id: raw.beat_id,
            outcome: RunOutcome::from_name(&raw.outcome),
            attempts: raw.attempts,
            error: raw.error,
            started_at: time(raw.started_at),
            finished_at: time(raw.finished_at),
        }
    }
}

/// A change to an in-process run of this beat's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunUpdate {
    pub(crate) routine_id: String,
    pub(crate) task_id: String,
    pub(crate) outcome: RunOutcome,
    pub(crate) attempts: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    /// The run has ended and history is off: its row goes (it was kept
    /// only so that no other beat overlapped it).
    pub(crate) forget: bool,
}

/// Which runs to list (`beat history`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Runs of this routine id.
    pub routine_id: Option<String>,
    /// Runs recorded under this routine name (for a routine since deleted).
    pub routine: Option<String>,
    /// Only runs that did not succeed: `failed`, `lost` or `abandoned`.
    pub failed: bool,
    /// Only runs dispatched at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// A row every backend reads by column name.
#[cfg(not(feature = "mysql"))]
pub(super) trait ByName:
    QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static
{
}
#[cfg(not(feature = "mysql"))]
impl<T> ByName for T where
    T: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static
{
}
/// A row every backend reads by column name.
#[cfg(feature = "mysql")]
pub(super) trait ByName:
    QueryableByName<diesel::pg::Pg>
    + QueryableByName<diesel::sqlite::Sqlite>
    + QueryableByName<diesel::mysql::Mysql>
    + 'static
{
}
#[cfg(feature = "mysql")]
impl<T> ByName for T where
    T: QueryableByName<diesel::pg::Pg>
        + QueryableByName<diesel::sqlite::Sqlite>
        + QueryableByName<diesel::mysql::Mysql>
        + 'static
{
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
pub(super) struct TextRow {
    #[diesel(sql_type = Text)]
    pub(super) value: String,
}

/// The run history (`routine_runs`), from [`RoutineStore::runs`].
#[derive(Debug, Clone, Copy)]
pub struct Runs<'s>(&'s RoutineStore);

impl RoutineStore {
    /// The run history (`routine_runs`).
    pub fn runs(&self) -> Runs<'_> {
        Runs(self)
    }
}

impl Runs<'_> {
    /// Ends as `lost` the unfinished runs of beats that stopped or have
    /// been silent for `dead_after`. Returns how many.
    pub(crate) fn mark_lost(
        &self,
        own_id: &str,
        dead_after: Duration,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let now = format_timestamp(now);
        with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.mark_lost)
                .bind::<Text, _>(&now)
                .bind::<Text, _>(own_id)
                .bind::<BigInt, _>(millis(dead_after))
                .execute(conn)
                .map_err(|e| StoreError::query("mark_lost", e))
        })
    }

    /// Writes what became of this beat's in-process runs, in one
    /// transaction.
    pub(crate) fn update(&self, beat_id: &str, updates: &[RunUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        with_history_conn!(self.0, |conn, sql| {
            let update = &sql.update_run;
            let delete = &sql.delete_run;
            conn.transaction(|conn| {
                for u in updates {
                    if u.forget {
                        diesel::sql_query(delete)
                            .bind::<Text, _>(&u.routine_id)
                            .bind::<Text, _>(&u.task_id)
                            .bind::<Text, _>(beat_id)
                            .execute(conn)?;
                        continue;
                    }
                    diesel::sql_query(update)
                        .bind::<Text, _>(u.outcome.as_str())
                        .bind::<Nullable<Integer>, _>(u.attempts)
                        .bind::<Nullable<Text>, _>(u.error.as_deref())
                        .bind::<Nullable<Text>, _>(u.started_at.map(format_timestamp))
                        .bind::<Nullable<Text>, _>(u.finished_at.map(format_timestamp))
                        .bind::<Text, _>(&u.routine_id)
                        .bind::<Text, _>(&u.task_id)
                        .bind::<Text, _>(beat_id)
                        .execute(conn)?;
                }
                Ok(())
            })
            .map_err(|e| StoreError::query("update_runs", e))
        })
    }

    /// Deletes the runs dispatched before `before` among the `batch` oldest.
    /// Returns how many went (fewer than `batch`: no more are due to go).
    pub(crate) fn prune_aged(
        &self,
        before: DateTime<Utc>,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let before = format_timestamp(before);
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let ids: Vec<IdRow> = with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.aged_runs)
                .bind::<BigInt, _>(batch)
                .bind::<Text, _>(&before)
                .load(conn)
                .map_err(|e| StoreError::query("prune_aged", e))?
        });
        self.delete_runs(&ids)
    }

    /// Deletes up to `batch` runs of `routine_ids` beyond each routine's
    /// newest `keep`. Returns how many went.
    pub(crate) fn prune_excess(
        &self,
        routine_ids: &[String],
        keep: usize,
        batch: usize,
    ) -> Result<usize, StoreError> {
        if routine_ids.is_empty() {
            return Ok(0);
        }
        let ids_json = serde_json::Value::from(routine_ids.to_vec()).to_string();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let ids: Vec<IdRow> = with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.excess_runs)
                .bind::<Text, _>(&ids_json)
                .bind::<BigInt, _>(keep)
                .bind::<BigInt, _>(batch)
                .load(conn)
                .map_err(|e| StoreError::query("prune_excess", e))?
        });
        self.delete_runs(&ids)
    }

    /// Deletes runs by id (each a primary-key lookup: no range locks).
    fn delete_runs(&self, ids: &[IdRow]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let json =
            serde_json::Value::from(ids.iter().map(|r| r.id).collect::<Vec<_>>()).to_string();
        with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(sql.json_ids_delete)
                .bind::<Text, _>(&json)
                .execute(conn)
                .map_err(|e| StoreError::query("delete_runs", e))
        })
    }

    /// Recorded runs matching `filter`, newest first.
    pub fn list(&self, filter: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        let statement = self.0.history.dialect.runs(
            filter.routine_id.is_some(),
            filter.routine.is_some(),
            filter.failed,
            filter.since.is_some(),
        );
        let texts = [filter.routine_id.clone(), filter.routine.clone()]
            .into_iter()
            .chain([filter.since.map(format_timestamp)])
            .flatten()
            .collect();
        let rows: Vec<RawRun> = self.0.newest("runs", &statement, texts, filter.limit)?;
        Ok(rows.into_iter().map(RunRow::from).collect())
    }

    /// The task ids of the runs of routine `routine_id` due from `from` to
    /// `to` (both included) that were dispatched: published, or handed to
    /// a worker, whatever became of them; not `skipped` nor `missed` (what
    /// `beat backfill` dispatches). Read outside any transaction (a
    /// preview); `ClaimTx::dispatched_between` reads it under the
    /// routine's lock.
    pub fn dispatched_between(
        &self,
        routine_id: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<HashSet<String>, StoreError> {
        let (from, to) = (format_timestamp(from), format_timestamp(to));
        let rows: Vec<TextRow> = with_history_conn!(self.0, |conn, sql| {
            diesel::sql_query(&sql.dispatched_between)
                .bind::<Text, _>(routine_id)
                .bind::<Text, _>(&from)
                .bind::<Text, _>(&to)
                .load(conn)
                .map_err(|e| StoreError::query("dispatched_between", e))?
        });
        Ok(rows.into_iter().map(|r| r.value).collect())
    }

    /// Records runs dispatched outside a claim: on demand, by beat `beat`
    /// (`None`: `beat send` publishing to Celery itself).
    pub(crate) fn record(
        &self,
        runs: &[NewRun],
        dispatched_at: DateTime<Utc>,
        beat: Option<&str>,
    ) -> Result<(), StoreError> {
        with_history_conn!(self.0, |conn, sql| {
            conn.write_runs(sql.insert_runs, runs, dispatched_at, beat)
                .map_err(|e| StoreError::query("record_runs", e))
        })
    }
}

impl RoutineStore {
    /// The rows of `statement` (see `Dialect::newest`), with `texts` bound
    /// in order, then the limit (at least 1).
    pub(super) fn newest<R: ByName>(
        &self,
        what: &'static str,
        statement: &str,
        texts: Vec<String>,
        limit: usize,
    ) -> Result<Vec<R>, StoreError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        with_history_conn!(self, |conn, _sql| {
            let mut query = diesel::sql_query(statement).into_boxed();
            for text in texts {
                query = query.bind::<Text, _>(text);
            }
            query
                .bind::<BigInt, _>(limit)
                .load(conn)
                .map_err(|e| StoreError::query(what, e))
        })
    }
}
