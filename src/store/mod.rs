//! The `routines` table: every statement the beat issues, as one small
//! function each.
//!
//! The store knows rows, not schedules: the scheduler hands it closures that
//! decide each row's fate, and the store runs them inside the transaction
//! that holds the rows' locks. Concurrency safety comes from the database:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL/MariaDB, `BEGIN
//! IMMEDIATE` on SQLite.

mod models;
mod pool;
mod sql;

pub use models::{NewRoutine, Plan, RoutineRow};
pub use pool::Backend;

use crate::config::redact_url;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::{Connection, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::result::QueryResult;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel::sqlite::SqliteConnection;
use diesel::{QueryableByName, RunQueryDsl};
use pool::Pools;
use sql::Sql;

/// A failure to talk to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `scheduler_db_uri` names no supported database.
    #[error("unsupported scheduler_db_uri {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached at start.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The driver's reason, password masked.
        reason: String,
    },
    /// No pooled connection became available (the database is down or
    /// overloaded).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("{statement}: {source}")]
    Query {
        /// Which statement.
        statement: &'static str,
        /// Diesel's error.
        source: diesel::result::Error,
    },
    /// The schema could not be created or upgraded.
    #[error("migrating the routines table failed: {0}")]
    Migration(String),
    /// The table exists without the beat's columns and `create_table` is off.
    #[error("table routines is missing the beat's columns ({0}); run `diesel migration run` or set create_table = true")]
    NotMigrated(String),
}

impl StoreError {
    fn checkout(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }

    fn query(statement: &'static str, source: diesel::result::Error) -> Self {
        StoreError::Query { statement, source }
    }
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

/// What differs between backends in how the beat writes.
trait WriteTransaction: Connection {
    /// The transaction the beat writes in: on SQLite `BEGIN IMMEDIATE`,
    /// which takes the write lock at once, so two beats cannot both read a
    /// due row before either writes it.
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>;

    /// Writes planned rows with `statement` (`Sql::write_planned`).
    fn write_planned(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()>;

    /// Writes fired rows with `statement` (`Sql::write_fired`).
    fn write_fired(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()>;
}

/// SQLite and MySQL read a batch as one JSON array.
macro_rules! json_plan_writes {
    () => {
        fn write_planned(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()> {
            diesel::sql_query(statement)
                .bind::<Text, _>(plans_json(plans)?)
                .execute(self)
                .map(drop)
        }

        fn write_fired(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()> {
            diesel::sql_query(statement)
                .bind::<Text, _>(plans_json(plans)?)
                .execute(self)
                .map(drop)
        }
    };
}

impl WriteTransaction for PgConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.transaction(f)
    }

    // PostgreSQL takes the batch as arrays, in its binary protocol: parsing
    // a JSON batch cost a third of a claim.
    fn write_planned(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()> {
        let columns = Columns::of(plans);
        diesel::sql_query(statement)
            .bind::<Array<Text>, _>(columns.locators)
            .bind::<Array<Nullable<Timestamp>>, _>(columns.next_run_at)
            .bind::<Array<Nullable<Text>>, _>(columns.last_error)
            .execute(self)
            .map(drop)
    }

    fn write_fired(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()> {
        let columns = Columns::of(plans);
        diesel::sql_query(statement)
            .bind::<Array<Text>, _>(columns.locators)
            .bind::<Array<Nullable<Timestamp>>, _>(columns.last_run_at)
            .bind::<Array<Integer>, _>(columns.fired)
            .bind::<Array<Nullable<Timestamp>>, _>(columns.next_run_at)
            .bind::<Array<Nullable<Text>>, _>(columns.last_error)
            .execute(self)
            .map(drop)
    }
}

/// A batch of plans, column by column.
struct Columns<'a> {
    locators: Vec<&'a str>,
    last_run_at: Vec<Option<NaiveDateTime>>,
    fired: Vec<i32>,
    next_run_at: Vec<Option<NaiveDateTime>>,
    last_error: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(plans: &'a [Plan]) -> Self {
        Columns {
            locators: plans.iter().map(|p| p.locator.as_str()).collect(),
            last_run_at: plans
                .iter()
                .map(|p| p.last_run_at.map(|t| t.naive_utc()))
                .collect(),
            fired: plans.iter().map(|p| p.fired).collect(),
            next_run_at: plans
                .iter()
                .map(|p| p.next_run_at.map(|t| t.naive_utc()))
                .collect(),
            last_error: plans.iter().map(|p| p.last_error.as_deref()).collect(),
        }
    }
}

#[cfg(feature = "mysql")]
impl WriteTransaction for diesel::mysql::MysqlConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.transaction(f)
    }

    json_plan_writes!();
}

impl WriteTransaction for SqliteConnection {
    fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.immediate_transaction(f)
    }

    json_plan_writes!();
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct TimeRow {
    #[diesel(sql_type = Nullable<Timestamp>)]
    at: Option<NaiveDateTime>,
}

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

/// The `routines` table in one database.
pub struct RoutineStore {
    backend: Backend,
    pools: Pools,
    sql: Sql,
    url: String,
}

impl std::fmt::Debug for RoutineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutineStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RoutineStore {
    /// Connects to `scheduler_db_uri` (nothing is created yet).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let (backend, target) = pool::parse_url(url)?;
        let pools = pool::open(backend, &target, url)?;
        let sql = match backend {
            Backend::Postgres => sql::postgres(),
            Backend::Sqlite => sql::sqlite(),
            #[cfg(feature = "mysql")]
            Backend::Mysql => sql::mysql(),
        };
        Ok(RoutineStore {
            backend,
            pools,
            sql,
            url: redact_url(url),
        })
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
        pool::migrate(&self.pools)
    }

    /// Checks that the table has the beat's columns (for `create_table = false`).
    pub fn check_schema(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn, _sql| {
            conn.batch_execute(
                "SELECT next_run_at, needs_sync, last_error FROM routines WHERE 1 = 0",
            )
            .map_err(|e| StoreError::NotMigrated(e.to_string()))
        })
    }

    /// Runs SQL as an operator would (tests and tools; the beat never does).
    pub fn execute(&self, sql_text: &str) -> Result<(), StoreError> {
        #[cfg(feature = "mysql")]
        if self.backend == Backend::Mysql {
            // An operator's edit: the trigger must see it (see MysqlSetup).
            let statements = sql_text.trim().trim_end_matches(';');
            let wrapped = format!("SET @celery_beat = NULL; {statements}; SET @celery_beat = 1");
            return with_conn!(self, |conn, _sql| {
                conn.batch_execute(&wrapped)
                    .map_err(|e| StoreError::query("execute", e))
            });
        }
        with_conn!(self, |conn, _sql| {
            conn.batch_execute(sql_text)
                .map_err(|e| StoreError::query("execute", e))
        })
    }

    /// Every routine, ordered by name.
    pub fn routines(&self) -> Result<Vec<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(&sql.all)
                .load(conn)
                .map_err(|e| StoreError::query("all", e))
        })
    }

    /// The routine called `name`, if any.
    pub fn routine(&self, name: &str) -> Result<Option<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<RoutineRow> = diesel::sql_query(&sql.by_name)
                .bind::<Text, _>(name)
                .load(conn)
                .map_err(|e| StoreError::query("by_name", e))?;
            Ok(rows.into_iter().next())
        })
    }

    /// Inserts a routine; the beat plans it at its next look at the table.
    pub fn insert(&self, routine: &NewRoutine) -> Result<(), StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.insert)
                .bind::<Text, _>(routine.id.to_string())
                .bind::<Text, _>(&routine.name)
                .bind::<Text, _>(&routine.task)
                .bind::<Text, _>(&routine.schedule)
                .bind::<Text, _>(&routine.kwargs)
                .bind::<Text, _>(&routine.options)
                .bind::<Bool, _>(routine.active)
                .execute(conn)
                .map(drop)
                .map_err(|e| StoreError::query("insert", e))
        })
    }

    /// The kit's source-of-truth rules for declared routines, in one
    /// transaction: declared but missing → inserted; present → kept as the
    /// table has it; not declared → deleted. Returns the names inserted and
    /// the number deleted. With nothing declared, nothing is touched.
    pub fn sync_declared(
        &self,
        declared: &[NewRoutine],
    ) -> Result<(Vec<String>, usize), StoreError> {
        if declared.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let names: Vec<&str> = declared.iter().map(|r| r.name.as_str()).collect();
        let names_json = serde_json::Value::from(names).to_string();
        with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let existing: Vec<NameRow> = diesel::sql_query(&sql.existing_names)
                    .bind::<Text, _>(&names_json)
                    .load(conn)?;
                let existing: std::collections::HashSet<String> =
                    existing.into_iter().map(|r| r.name).collect();
                let mut inserted = Vec::new();
                for routine in declared.iter().filter(|r| !existing.contains(&r.name)) {
                    diesel::sql_query(sql.insert)
                        .bind::<Text, _>(routine.id.to_string())
                        .bind::<Text, _>(&routine.name)
                        .bind::<Text, _>(&routine.task)
                        .bind::<Text, _>(&routine.schedule)
                        .bind::<Text, _>(&routine.kwargs)
                        .bind::<Text, _>(&routine.options)
                        .bind::<Bool, _>(routine.active)
                        .execute(conn)?;
                    inserted.push(routine.name.clone());
                }
                let deleted = diesel::sql_query(&sql.delete_undeclared)
                    .bind::<Text, _>(&names_json)
                    .execute(conn)?;
                Ok((inserted, deleted))
            })
            .map_err(|e| StoreError::query("sync_declared", e))
        })
    }

    /// Marks rows with a recorded error for another look: code deployed
    /// since may have fixed them (a task now registered, say).
    pub fn recheck_failed(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_failed)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_failed", e))
        })
    }

    /// Marks active rows whose next run vanished without an edit the
    /// triggers saw (e.g. `next_run_at` set to NULL by hand). This is the
    /// periodic full check; edits are found by [`Self::plan_edited`].
    pub fn recheck_unplanned(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_unplanned)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_unplanned", e))
        })
    }

    /// Locks up to `limit` edited (or new) rows, has `plan` decide each
    /// one's next run or error, and writes the plans. Returns how many rows
    /// were planned. Rows another beat is planning are skipped.
    pub fn plan_edited<E>(
        &self,
        limit: usize,
        plan: impl FnOnce(Vec<RoutineRow>) -> Result<Vec<Plan>, E>,
    ) -> Result<usize, E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RoutineRow> = diesel::sql_query(&sql.lock_edited)
                    .bind::<BigInt, _>(limit)
                    .load(conn)?;
                let plans = plan(rows).map_err(TxError::Caller)?;
                if !plans.is_empty() {
                    conn.write_planned(sql.write_planned, &plans)?;
                }
                Ok(plans.len())
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
    /// task names) only rows running those tasks are claimed. Returns
    /// `fire`'s value.
    pub fn claim_due<T, E>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        tasks: Option<&str>,
        fire: impl FnOnce(Vec<RoutineRow>) -> Result<(Vec<Plan>, T), E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = models::format_timestamp(now);
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RoutineRow> = match tasks {
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
                let (plans, value) = fire(rows).map_err(TxError::Caller)?;
                if !plans.is_empty() {
                    conn.write_fired(sql.write_fired, &plans)?;
                }
                Ok(value)
            })
        });
        result.map_err(|e| match e {
            TxError::Db(e) => E::from(StoreError::query("claim_due", e)),
            TxError::Caller(e) => e,
        })
    }

    /// The earliest next run of any schedulable routine.
    pub fn earliest_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<TimeRow> = diesel::sql_query(sql.earliest_due)
                .load(conn)
                .map_err(|e| StoreError::query("earliest_due", e))?;
            Ok(rows
                .into_iter()
                .next()
                .and_then(|r| r.at)
                .map(|t| t.and_utc()))
        })
    }
}

/// Plans travel as one JSON array, bound once: one statement per batch.
fn plans_json(plans: &[Plan]) -> Result<String, diesel::result::Error> {
    serde_json::to_string(plans).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}
