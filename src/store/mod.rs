//! The beat's tables, one part each: `routines` (here, with `find`:
//! what operators read; their edits are the crate's, for `ops::Operator`),
//! the run history `routine_runs` ([`Runs`], in `history`), the registry
//! of beats ([`Beats`], in `beats`), the audit trail `routine_edits`
//! ([`Edits`], in `edits`), migrations and pools (`pool`), the scheduler's
//! claim transaction ([`ClaimTx`], in `claim`) and its other statements
//! (`claims`). Every statement, in each dialect, is in `sql`.
//!
//! The store knows rows, not schedules: the scheduler opens a claim
//! transaction, decides each row's fate itself, and has the store write
//! the outcome; the store never calls back into it. Concurrency safety
//! comes from the database: `FOR UPDATE SKIP LOCKED` on PostgreSQL and
//! MySQL/MariaDB, `BEGIN IMMEDIATE` on SQLite.

mod error;
mod models;
mod pool;
mod sql;
mod write;

pub(crate) use beats::BeatInfo;
pub use beats::{BeatRow, Beats};
pub use claims::Synced;
pub use edits::{Actor, EditAction, EditFilter, EditRow, Edits, FieldChange, Via};
pub use error::{DatabaseError, StoreError};
pub use find::{RoutineCounts, RoutineQuery, RoutineState};
pub(crate) use history::RunUpdate;
pub use history::{RunFilter, RunRow, Runs};
use models::RawRow;
pub(crate) use models::{NewRoutine, NewRun, Plan, LATEST_STORABLE};
pub use models::{RoutineRow, RunOutcome};
pub use pool::Backend;

use crate::config::redact_url;
use crate::routine::Routine;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::RunQueryDsl;
use pool::Pools;
use sql::Sql;
use write::WriteTransaction;

/// The newest migration, by Diesel's version (its directory's date and
/// number): a beat that does not create its tables needs it to have run.
const LATEST_MIGRATION: &str = "20261201000002";

/// Runs `$body` with `$conn` bound to a pooled connection of whichever
/// backend the store uses, and `$sql` to that backend's statements. The body
/// is compiled once per backend.
macro_rules! with_conn {
    ($store:expr, |$conn:ident, $sql:ident| $body:expr) => {
        match &$store.pools {
            Pools::Postgres(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
            Pools::Sqlite(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
            #[cfg(feature = "mysql")]
            Pools::Mysql(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
        }
    };
}

/// Inserts a row, unplanned (the beat plans it at its next look), on a
/// connection of any backend.
macro_rules! insert_row {
    ($conn:expr, $statement:expr, $row:expr) => {{
        let row: &NewRoutine = $row;
        diesel::sql_query($statement)
            .bind::<Text, _>(row.id.to_string())
            .bind::<Text, _>(&row.name)
            .bind::<Text, _>(&row.task)
            .bind::<Text, _>(&row.schedule)
            .bind::<Text, _>(&row.kwargs)
            .bind::<Text, _>(&row.options)
            .bind::<Bool, _>(row.active)
            .bind::<Nullable<Text>, _>(&row.args)
            .execute($conn)
    }};
}

/// Runs `$body` on a pooled connection of the store's backend, with `$sql`
/// its history statements.
macro_rules! with_history_conn {
    ($store:expr, |$conn:ident, $sql:ident| $body:expr) => {
        match &$store.pools {
            Pools::Postgres(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.history;
                $body
            }
            Pools::Sqlite(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.history;
                $body
            }
            #[cfg(feature = "mysql")]
            Pools::Mysql(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.history;
                $body
            }
        }
    };
}

mod beats;
mod claim;
mod claims;
mod edits;
mod find;
mod history;

pub(crate) use claims::Claimant;

/// The columns an edit replaces, as the table holds them; `None` keeps a
/// column.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RoutineEdit<'a> {
    pub(crate) task: Option<&'a str>,
    pub(crate) schedule: Option<&'a str>,
    pub(crate) kwargs: Option<&'a str>,
    pub(crate) options: Option<&'a str>,
    pub(crate) args: Option<&'a str>,
}

/// The beat's tables in one database: `routines` itself (read here;
/// changed through `ops::Operator`), and a handle for
/// each other table ([`Self::runs`], [`Self::beats`], [`Self::edits`]).
pub struct RoutineStore {
    backend: Backend,
    pools: Pools,
    sql: Sql,
    history: sql::history::HistorySql,
    url: String,
    timeout: std::time::Duration,
    claimant: Option<Claimant>,
}

impl std::fmt::Debug for RoutineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutineStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RoutineStore {
    /// Connects to `scheduler_db_uri` (nothing is created yet), with the
    /// default `scheduler_db_timeout`.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, crate::config::DEFAULT_DB_TIMEOUT)
    }

    /// Connects with every statement, lock wait and idle transaction of the
    /// beat's sessions bounded by `timeout` (`scheduler_db_timeout`).
    pub(crate) fn open(url: &str, timeout: std::time::Duration) -> Result<Self, StoreError> {
        Self::open_with(url, timeout, pool::Idle::One)
    }

    /// As [`Self::open`], for a short-lived process (a command): no
    /// connection is kept open, or opened, in the background.
    pub(crate) fn open_briefly(
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        Self::open_with(url, timeout, pool::Idle::None)
    }

    fn open_with(
        url: &str,
        timeout: std::time::Duration,
        idle: pool::Idle,
    ) -> Result<Self, StoreError> {
        let (backend, target) = pool::parse_url(url)?;
        let pools = pool::open(backend, &target, url, timeout, idle)?;
        let (sql, history) = match backend {
            Backend::Postgres => (sql::postgres(), sql::history::postgres()),
            Backend::Sqlite => (sql::sqlite(), sql::history::sqlite()),
            #[cfg(feature = "mysql")]
            Backend::Mysql => (sql::mysql(), sql::history::mysql()),
        };
        Ok(RoutineStore {
            backend,
            pools,
            sql,
            history,
            url: redact_url(url),
            timeout,
            claimant: None,
        })
    }

    /// This store claims for the beat `claimant`.
    pub(crate) fn claiming_for(mut self, claimant: Claimant) -> Self {
        self.claimant = Some(claimant);
        self
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates `routines`, or adopts the kit's table, and upgrades it to the
    /// current schema.
    pub fn migrate(&self) -> Result<(), StoreError> {
        pool::migrate(&self.pools, self.timeout)
    }

    /// Checks that the table has the beat's columns (for `create_table = false`).
    pub fn check_schema(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn, _sql| {
            conn.batch_execute(
                "SELECT next_run_at, needs_sync, last_error, name_unique, run_requested_at \
                 FROM routines WHERE 1 = 0; \
                 SELECT outcome, finished_at FROM routine_runs WHERE 1 = 0; \
                 SELECT heartbeat_at FROM beats WHERE 1 = 0; \
                 SELECT changes FROM routine_edits WHERE 1 = 0",
            )
            .map_err(|e| StoreError::NotMigrated(e.to_string()))?;
            // A migration that changes values, not columns, shows only in
            // Diesel's own record of what ran.
            let ran: Vec<history::TextRow> = diesel::sql_query(format!(
                "SELECT version AS value FROM __diesel_schema_migrations \
                 WHERE version = '{LATEST_MIGRATION}'"
            ))
            .load(conn)
            .map_err(|e| StoreError::NotMigrated(e.to_string()))?;
            match ran.is_empty() {
                true => Err(StoreError::NotMigrated(format!(
                    "migration {LATEST_MIGRATION} has not run"
                ))),
                false => Ok(()),
            }
        })
    }

    /// Every routine, ordered by name.
    pub fn routines(&self) -> Result<Vec<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<RawRow> = diesel::sql_query(&sql.all)
                .load(conn)
                .map_err(|e| StoreError::query("all", e))?;
            Ok(rows.into_iter().map(RoutineRow::from).collect())
        })
    }

    /// The routine called `name`, if any.
    pub fn routine(&self, name: &str) -> Result<Option<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<RawRow> = diesel::sql_query(&sql.by_name)
                .bind::<Text, _>(name)
                .load(conn)
                .map_err(|e| StoreError::query("by_name", e))?;
            Ok(rows.into_iter().next().map(RoutineRow::from))
        })
    }

    /// Up to `limit` routines after the one named `after` (name, id), in
    /// name and id order: a page of the table, read by its name index, so
    /// that listing a million routines never holds them all.
    pub fn routines_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RoutineRow>, StoreError> {
        let (name, id) = after.unwrap_or(("", ""));
        let id = match (self.backend, id) {
            (Backend::Postgres, "") => "00000000-0000-0000-0000-000000000000",
            (_, id) => id,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_conn!(self, |conn, sql| {
            let query = diesel::sql_query(&sql.page).bind::<Text, _>(name);
            #[cfg(feature = "mysql")]
            let query = query.into_boxed();
            #[cfg(feature = "mysql")]
            let query = match self.backend {
                Backend::Mysql => query.bind::<Text, _>(name),
                _ => query,
            };
            let rows: Vec<RawRow> = query
                .bind::<Text, _>(id)
                .bind::<BigInt, _>(limit)
                .load(conn)
                .map_err(|e| StoreError::query("page", e))?;
            Ok(rows.into_iter().map(RoutineRow::from).collect())
        })
    }

    /// Inserts `row`, as `by`'s edit, unless its name is taken. Returns
    /// whether it was.
    pub(crate) fn insert_new(&self, by: &Actor, row: &NewRoutine) -> Result<bool, StoreError> {
        let result = with_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| insert_row!(conn, sql.insert, row))
        });
        match result {
            Ok(_) => Ok(true),
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Ok(false),
            Err(e) => Err(StoreError::query("insert", e)),
        }
    }

    /// Replaces the given columns of the routine called `name`, as `by`'s
    /// edit (which the serving beats see within their watch interval).
    /// Returns whether it exists.
    pub(crate) fn edit(
        &self,
        by: &Actor,
        name: &str,
        edit: &RoutineEdit<'_>,
    ) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| {
                diesel::sql_query(sql.edit)
                    .bind::<Nullable<Text>, _>(edit.task)
                    .bind::<Nullable<Text>, _>(edit.schedule)
                    .bind::<Nullable<Text>, _>(edit.kwargs)
                    .bind::<Nullable<Text>, _>(edit.options)
                    .bind::<Nullable<Text>, _>(edit.args)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("edit", e))
        })
    }

    /// Writes `routine` to the table by its name, as `by`'s edit: a new row
    /// if there is none, else the row's task, schedule, kwargs, options,
    /// args and active flag replaced. An edit like any other: serving beats
    /// plan it within their watch interval (a changed schedule takes its
    /// next run after `last_run_at`, so it never fires early), and the
    /// audit trail (`routine_edits`) records it. Returns whether a row was inserted.
    pub(crate) fn upsert(&self, by: &Actor, routine: &Routine) -> Result<bool, StoreError> {
        let row = NewRoutine::from(routine);
        with_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| {
                let updated = diesel::sql_query(sql.update_by_name)
                    .bind::<Text, _>(&row.task)
                    .bind::<Text, _>(&row.schedule)
                    .bind::<Text, _>(&row.kwargs)
                    .bind::<Text, _>(&row.options)
                    .bind::<Nullable<Text>, _>(&row.args)
                    .bind::<Bool, _>(row.active)
                    .bind::<Text, _>(&row.name)
                    .execute(conn)?;
                if updated > 0 {
                    return Ok(false);
                }
                insert_row!(conn, sql.insert, &row)?;
                Ok(true)
            })
            .map_err(|e| StoreError::query("upsert", e))
        })
    }

    /// Enables or disables the routine called `name`, as `by`'s edit (which
    /// the serving beats see within their watch interval). Returns whether
    /// it exists.
    pub(crate) fn set_active(
        &self,
        by: &Actor,
        name: &str,
        active: bool,
    ) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| {
                diesel::sql_query(sql.set_active)
                    .bind::<Bool, _>(active)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("set_active", e))
        })
    }

    /// Asks the serving beats to run the routine called `name` now, for
    /// `by` (see `beat send`): an edit, seen within their watch interval.
    /// Returns whether the routine exists.
    pub(crate) fn request_run(&self, by: &Actor, name: &str) -> Result<bool, StoreError> {
        with_history_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| {
                diesel::sql_query(sql.mark_requested)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("request_run", e))
        })
    }

    /// Deletes the routine called `name`, as `by`'s edit. Returns whether
    /// it existed.
    pub(crate) fn remove(&self, by: &Actor, name: &str) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            conn.acting_as(by, |conn| {
                diesel::sql_query(sql.delete_by_name)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("remove", e))
        })
    }
}
