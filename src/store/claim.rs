//! The scheduler's write transaction: a handle with the few statements a
//! claim (or a plan) needs, which the scheduler drives from top to bottom
//! (lock the rows, decide, publish, record, advance, commit) without the
//! store ever calling back into it. Dropped without [`ClaimTx::commit`],
//! it rolls back, and the rows stay as they were.

use super::edits::Actor;
use super::history::TextRow;
use super::models::{self, NewRun, Plan, RawRow, RoutineRow};
use super::pool::Pools;
use super::write::WriteTransaction;
use super::{RoutineStore, StoreError};
use chrono::{DateTime, Utc};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;
use std::collections::HashSet;

/// A pooled connection of any backend.
enum Conn {
    Postgres(PooledConnection<ConnectionManager<PgConnection>>),
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    #[cfg(feature = "mysql")]
    Mysql(PooledConnection<ConnectionManager<diesel::mysql::MysqlConnection>>),
}

/// Runs `$body` with `$c` bound to the connection, whatever its backend.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Postgres(pooled) => {
                let $c = &mut **pooled;
                $body
            }
            Conn::Sqlite(pooled) => {
                let $c = &mut **pooled;
                $body
            }
            #[cfg(feature = "mysql")]
            Conn::Mysql(pooled) => {
                let $c = &mut **pooled;
                $body
            }
        }
    };
}

/// An open write transaction of the scheduler's (see the module).
pub(crate) struct ClaimTx<'s> {
    store: &'s RoutineStore,
    conn: Conn,
    committed: bool,
}

impl RoutineStore {
    /// Begins the scheduler's write transaction: on SQLite `BEGIN
    /// IMMEDIATE`, which takes the write lock at once, so that two beats
    /// cannot both read a due row before either writes it.
    pub(crate) fn begin_claim(&self) -> Result<ClaimTx<'_>, StoreError> {
        let mut conn = match &self.pools {
            Pools::Postgres(pool) => Conn::Postgres(pool.get().map_err(StoreError::checkout)?),
            Pools::Sqlite(pool) => Conn::Sqlite(pool.get().map_err(StoreError::checkout)?),
            #[cfg(feature = "mysql")]
            Pools::Mysql(pool) => Conn::Mysql(pool.get().map_err(StoreError::checkout)?),
        };
        on_conn!(&mut conn, |c| c.begin_write())
            .map_err(|e| StoreError::query("begin claim", e))?;
        Ok(ClaimTx {
            store: self,
            conn,
            committed: false,
        })
    }
}

impl ClaimTx<'_> {
    /// Locks up to `limit` rows due at `now`, earliest first, skipping
    /// rows another beat holds. With `tasks` (a JSON array of task names)
    /// only rows running those tasks.
    pub(crate) fn lock_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        tasks: Option<&str>,
    ) -> Result<Vec<RoutineRow>, StoreError> {
        let sql = &self.store.sql;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = models::format_timestamp(now);
        let rows: Vec<RawRow> = on_conn!(&mut self.conn, |c| match tasks {
            None => diesel::sql_query(&sql.lock_due)
                .bind::<Text, _>(&now)
                .bind::<BigInt, _>(limit)
                .load(c),
            Some(tasks) => diesel::sql_query(&sql.lock_due_of_tasks)
                .bind::<Text, _>(&now)
                .bind::<Text, _>(tasks)
                .bind::<BigInt, _>(limit)
                .load(c),
        })
        .map_err(|e| StoreError::query("lock due", e))?;
        Ok(rows.into_iter().map(RoutineRow::from).collect())
    }

    /// Locks up to `limit` edited (or new) rows (`needs_sync`), skipping
    /// rows another beat is planning.
    pub(crate) fn lock_edited(&mut self, limit: usize) -> Result<Vec<RoutineRow>, StoreError> {
        let sql = &self.store.sql;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<RawRow> = on_conn!(&mut self.conn, |c| diesel::sql_query(&sql.lock_edited)
            .bind::<BigInt, _>(limit)
            .load(c))
        .map_err(|e| StoreError::query("lock edited", e))?;
        Ok(rows.into_iter().map(RoutineRow::from).collect())
    }

    /// Which of the routines `ids` have an in-process run going on another
    /// live beat (none, for a store that claims for no beat).
    pub(crate) fn busy_elsewhere(&mut self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        let Some(claimant) = &self.store.claimant else {
            return Ok(HashSet::new());
        };
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let statement = &self.store.history.busy;
        let dead_after = i64::try_from(claimant.dead_after.as_millis()).unwrap_or(i64::MAX);
        let busy: Vec<TextRow> = on_conn!(&mut self.conn, |c| diesel::sql_query(statement)
            .bind::<Text, _>(serde_json::Value::from(ids).to_string())
            .bind::<Text, _>(&claimant.beat_id)
            .bind::<BigInt, _>(dead_after)
            .load(c))
        .map_err(|e| StoreError::query("busy elsewhere", e))?;
        Ok(busy.into_iter().map(|r| r.value).collect())
    }

    /// Reads the routine of id `id` and locks its row until the
    /// transaction ends (on SQLite the transaction itself is exclusive):
    /// `beat backfill`'s check, publish and record, which another backfill
    /// of the routine waits for. `None` if it is gone.
    pub(crate) fn lock_routine(&mut self, id: &str) -> Result<Option<RoutineRow>, StoreError> {
        let statement = &self.store.history.lock_routine;
        let rows: Vec<RawRow> = on_conn!(&mut self.conn, |c| diesel::sql_query(statement)
            .bind::<Text, _>(id)
            .load(c))
        .map_err(|e| StoreError::query("lock routine", e))?;
        Ok(rows.into_iter().next().map(RoutineRow::from))
    }

    /// As `Runs::dispatched_between`, in this transaction.
    pub(crate) fn dispatched_between(
        &mut self,
        routine_id: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<HashSet<String>, StoreError> {
        let statement = &self.store.history.dispatched_between;
        let (from, to) = (models::format_timestamp(from), models::format_timestamp(to));
        let rows: Vec<TextRow> = on_conn!(&mut self.conn, |c| diesel::sql_query(statement)
            .bind::<Text, _>(routine_id)
            .bind::<Text, _>(&from)
            .bind::<Text, _>(&to)
            .load(c))
        .map_err(|e| StoreError::query("dispatched between", e))?;
        Ok(rows.into_iter().map(|r| r.value).collect())
    }

    /// Records `runs`, dispatched at `at` by the store's beat.
    pub(crate) fn record(&mut self, runs: &[NewRun], at: DateTime<Utc>) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let statement = self.store.history.insert_runs;
        let beat = self.store.claimant.as_ref().map(|c| c.beat_id.as_str());
        on_conn!(&mut self.conn, |c| c.write_runs(statement, runs, at, beat))
            .map_err(|e| StoreError::query("record runs", e))
    }

    /// Advances fired rows: their run count, `last_run_at`, next run and
    /// error, as `plans` say.
    pub(crate) fn advance(&mut self, plans: &[Plan]) -> Result<(), StoreError> {
        if plans.is_empty() {
            return Ok(());
        }
        let statement = self.store.sql.write_fired;
        on_conn!(&mut self.conn, |c| c.write_fired(statement, plans))
            .map_err(|e| StoreError::query("advance", e))
    }

    /// Writes planned rows: their next run or error, and `needs_sync`
    /// cleared.
    pub(crate) fn plan(&mut self, plans: &[Plan]) -> Result<(), StoreError> {
        if plans.is_empty() {
            return Ok(());
        }
        let statement = self.store.sql.write_planned;
        on_conn!(&mut self.conn, |c| c.write_planned(statement, plans))
            .map_err(|e| StoreError::query("plan", e))
    }

    /// Makes the routines `ids` inactive, as this beat's edit (the audit
    /// trail says so): one-off routines that ran, routines past their end.
    pub(crate) fn end(&mut self, ids: &[&str]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let statement = self.store.sql.end_routines.as_str();
        let by = Actor::beat(
            self.store
                .claimant
                .as_ref()
                .map_or("beat", |c| c.beat_id.as_str()),
        );
        let ids = serde_json::Value::from(ids.to_vec()).to_string();
        on_conn!(&mut self.conn, |c| c.end_routines(statement, &ids, &by))
            .map_err(|e| StoreError::query("end routines", e))
    }

    /// Commits: the rows' locks are released, and what was written stands.
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        self.committed = true;
        on_conn!(&mut self.conn, |c| {
            AnsiTransactionManager::commit_transaction(c)
        })
        .map_err(|e| StoreError::query("commit claim", e))
    }
}

impl Drop for ClaimTx<'_> {
    /// Not committed (an error, a failed publish): rolled back. A
    /// connection whose rollback failed is still in its transaction, and
    /// the pool discards it.
    fn drop(&mut self) {
        if !self.committed {
            let _ = on_conn!(&mut self.conn, |c| {
                AnsiTransactionManager::rollback_transaction(c)
            });
        }
    }
}
