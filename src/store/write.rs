//! How each backend writes: the beat's transactions, its batch writes of
//! plans, and edits, with who makes them.

use super::edits::Actor;
use super::models::{format_timestamp, NewRun, Plan};
use chrono::{DateTime, Utc};
#[cfg(feature = "mysql")]
use diesel::connection::SimpleConnection;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::result::QueryResult;
use diesel::sql_types::{Array, Bool, Integer, Nullable, Text, Timestamp};
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;

/// What differs between backends in how the beat writes.
pub(super) trait WriteTransaction: Connection {
    /// Begins the transaction the beat writes in (see
    /// `RoutineStore::begin_claim`): on SQLite `BEGIN IMMEDIATE`, which
    /// takes the write lock at once, so two beats cannot both read a due
    /// row before either writes it.
    fn begin_write(&mut self) -> QueryResult<()>;

    /// Writes planned rows with `statement` (`Sql::write_planned`).
    fn write_planned(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()>;

    /// Writes fired rows with `statement` (`Sql::write_fired`).
    fn write_fired(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()>;

    /// Records `runs`, dispatched at `at` by `beat` (`HistorySql::insert_runs`).
    fn write_runs(
        &mut self,
        statement: &str,
        runs: &[NewRun],
        at: DateTime<Utc>,
        beat: Option<&str>,
    ) -> QueryResult<()>;

    /// Within the open transaction, runs `statement` (`Sql::end_routines`)
    /// on the routines `ids` (a JSON array) as `by`'s edit, which the
    /// triggers and the audit trail see as such; then the transaction is
    /// the beat's again.
    fn end_routines(&mut self, statement: &str, ids: &str, by: &Actor) -> QueryResult<()>;

    /// Runs `f` in a write transaction that no other beat runs at the same
    /// time, as `by` (the start-up sync of declared routines: two beats
    /// starting together take turns, instead of racing or deadlocking on
    /// the unique names).
    fn one_at_a_time<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T>;

    /// Runs `f` in a write transaction as `by`'s edit: one the edit
    /// triggers see, and the audit trail records as `by`'s (see each
    /// backend's way of saying who).
    fn acting_as<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T>;
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

        fn write_runs(
            &mut self,
            statement: &str,
            runs: &[NewRun],
            at: DateTime<Utc>,
            beat: Option<&str>,
        ) -> QueryResult<()> {
            diesel::sql_query(statement)
                .bind::<Text, _>(format_timestamp(at))
                .bind::<Nullable<Text>, _>(beat)
                .bind::<Text, _>(plans_json(runs)?)
                .execute(self)
                .map(drop)
        }
    };
}

/// The key of the advisory lock (PostgreSQL) or named lock (MySQL) that
/// makes beats take turns at their start-up sync.
const SYNC_LOCK: i64 = 0x0063_646b_5f73_796e;

impl WriteTransaction for PgConnection {
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction(self)
    }

    fn one_at_a_time<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.acting_as(by, |conn| {
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({SYNC_LOCK})"))
                .execute(conn)?;
            f(conn)
        })
    }

    /// Who acts is in two settings local to the transaction, which the
    /// audit trigger reads (`current_setting`); they end with it.
    fn acting_as<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.transaction(|conn| {
            diesel::sql_query(
                "SELECT set_config('celery_diesel_kit.actor', $1, true), \
                 set_config('celery_diesel_kit.via', $2, true)",
            )
            .bind::<Text, _>(by.name())
            .bind::<Text, _>(by.via().as_str())
            .execute(conn)?;
            f(conn)
        })
    }

    fn end_routines(&mut self, statement: &str, ids: &str, by: &Actor) -> QueryResult<()> {
        let say = "SELECT set_config('celery_diesel_kit.actor', $1, true), \
                   set_config('celery_diesel_kit.via', $2, true)";
        diesel::sql_query(say)
            .bind::<Text, _>(by.name())
            .bind::<Text, _>(by.via().as_str())
            .execute(self)?;
        diesel::sql_query(statement)
            .bind::<Text, _>(ids)
            .execute(self)?;
        diesel::sql_query(say)
            .bind::<Text, _>("")
            .bind::<Text, _>("")
            .execute(self)
            .map(drop)
    }

    // PostgreSQL takes the batch as arrays, in its binary protocol: parsing
    // a JSON batch cost a third of a claim.
    fn write_planned(&mut self, statement: &str, plans: &[Plan]) -> QueryResult<()> {
        let columns = Columns::of(plans);
        diesel::sql_query(statement)
            .bind::<Array<Text>, _>(columns.locators)
            .bind::<Array<Nullable<Timestamp>>, _>(columns.next_run_at)
            .bind::<Array<Nullable<Timestamp>>, _>(columns.next_due_at)
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
            .bind::<Array<Nullable<Timestamp>>, _>(columns.next_due_at)
            .bind::<Array<Nullable<Text>>, _>(columns.last_error)
            .execute(self)
            .map(drop)
    }

    fn write_runs(
        &mut self,
        statement: &str,
        runs: &[NewRun],
        at: DateTime<Utc>,
        beat: Option<&str>,
    ) -> QueryResult<()> {
        let text = |f: fn(&NewRun) -> &str| runs.iter().map(f).collect::<Vec<&str>>();
        diesel::sql_query(statement)
            .bind::<Array<Text>, _>(text(|r| &r.routine_id))
            .bind::<Array<Text>, _>(text(|r| &r.routine))
            .bind::<Array<Text>, _>(text(|r| &r.task))
            .bind::<Array<Timestamp>, _>(
                runs.iter()
                    .map(|r| r.due_at.naive_utc())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Text>, _>(text(|r| &r.task_id))
            .bind::<Array<Text>, _>(text(|r| r.target.as_str()))
            .bind::<Array<Bool>, _>(runs.iter().map(|r| r.on_demand != 0).collect::<Vec<_>>())
            .bind::<Array<Bool>, _>(runs.iter().map(|r| r.backfill != 0).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(text(|r| r.outcome.as_str()))
            .bind::<Array<Nullable<Text>>, _>(
                runs.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>(),
            )
            .bind::<Text, _>(format_timestamp(at))
            .bind::<Nullable<Text>, _>(beat)
            .execute(self)
            .map(drop)
    }
}

/// A batch of plans, column by column.
struct Columns<'a> {
    locators: Vec<&'a str>,
    last_run_at: Vec<Option<chrono::NaiveDateTime>>,
    fired: Vec<i32>,
    next_run_at: Vec<Option<chrono::NaiveDateTime>>,
    next_due_at: Vec<Option<chrono::NaiveDateTime>>,
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
            next_due_at: plans
                .iter()
                .map(|p| p.next_due_at.map(|t| t.naive_utc()))
                .collect(),
            last_error: plans.iter().map(|p| p.last_error.as_deref()).collect(),
        }
    }
}

#[cfg(feature = "mysql")]
impl WriteTransaction for diesel::mysql::MysqlConnection {
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction(self)
    }

    json_plan_writes!();

    /// MySQL's named locks belong to the session, not the transaction: it
    /// is released after the commit, whatever happened.
    fn one_at_a_time<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.batch_execute(&format!("DO GET_LOCK('celery_diesel_kit_{SYNC_LOCK}', 60)"))?;
        let result = self.acting_as(by, f);
        let released =
            self.batch_execute(&format!("DO RELEASE_LOCK('celery_diesel_kit_{SYNC_LOCK}')"));
        let value = result?;
        released?;
        Ok(value)
    }

    fn end_routines(&mut self, statement: &str, ids: &str, by: &Actor) -> QueryResult<()> {
        diesel::sql_query("SET @celery_beat = NULL, @cdk_actor = ?, @cdk_via = ?")
            .bind::<Text, _>(by.name())
            .bind::<Text, _>(by.via().as_str())
            .execute(self)?;
        let ended = diesel::sql_query(statement)
            .bind::<Text, _>(ids)
            .execute(self);
        self.batch_execute("SET @celery_beat = 1, @cdk_actor = NULL, @cdk_via = NULL")?;
        ended.map(drop)
    }

    /// The beat's connections carry `@celery_beat`, which the edit trigger
    /// skips; an edit clears it for its own statements, says who acts in
    /// `@cdk_actor` and `@cdk_via` (which the audit triggers read), and
    /// restores all three whatever happened, so that the connection goes
    /// back to the pool as the beat's.
    fn acting_as<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        diesel::sql_query("SET @celery_beat = NULL, @cdk_actor = ?, @cdk_via = ?")
            .bind::<Text, _>(by.name())
            .bind::<Text, _>(by.via().as_str())
            .execute(self)?;
        let result = self.transaction(f);
        let restored =
            self.batch_execute("SET @celery_beat = 1, @cdk_actor = NULL, @cdk_via = NULL");
        let value = result?;
        restored?;
        Ok(value)
    }
}

impl WriteTransaction for SqliteConnection {
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction_sql(self, "BEGIN IMMEDIATE")
    }

    /// `BEGIN IMMEDIATE` already lets one writer in at a time.
    fn one_at_a_time<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.acting_as(by, f)
    }

    fn end_routines(&mut self, statement: &str, ids: &str, by: &Actor) -> QueryResult<()> {
        diesel::sql_query("INSERT INTO routine_edit_actor (actor, via) VALUES (?, ?)")
            .bind::<Text, _>(by.name())
            .bind::<Text, _>(by.via().as_str())
            .execute(self)?;
        diesel::sql_query(statement)
            .bind::<Text, _>(ids)
            .execute(self)?;
        diesel::sql_query("DELETE FROM routine_edit_actor")
            .execute(self)
            .map(drop)
    }

    /// SQLite has no session settings: who acts is the one row of
    /// `routine_edit_actor`, written in the edit's own transaction and
    /// deleted before its commit (or gone with its rollback). SQLite lets
    /// one writer in at a time, so no other connection ever sees it.
    fn acting_as<T>(
        &mut self,
        by: &Actor,
        f: impl FnOnce(&mut Self) -> QueryResult<T>,
    ) -> QueryResult<T> {
        self.immediate_transaction(|conn| {
            diesel::sql_query("INSERT INTO routine_edit_actor (actor, via) VALUES (?, ?)")
                .bind::<Text, _>(by.name())
                .bind::<Text, _>(by.via().as_str())
                .execute(conn)?;
            let value = f(conn)?;
            diesel::sql_query("DELETE FROM routine_edit_actor").execute(conn)?;
            Ok(value)
        })
    }

    json_plan_writes!();
}

/// Plans (and runs) travel as one JSON array, bound once: one statement per
/// batch.
fn plans_json<T: serde::Serialize>(plans: &[T]) -> Result<String, diesel::result::Error> {
    serde_json::to_string(plans).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}
