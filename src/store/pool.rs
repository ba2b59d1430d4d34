//! Connections: which backend a URL names, pools, and the embedded
//! migrations.

use super::StoreError;
use crate::config::{redact_message, redact_url};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, ManageConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// How long a query waits for a pooled connection (and so how soon an
/// outage is reported).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// An arbitrary key for PostgreSQL's advisory lock around migrations, so
/// that beats starting together do not migrate twice.
const MIGRATION_LOCK_KEY: i64 = 0x0063_646b_5f6d_6967;

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite://path`, `sqlite:path` or a plain file path.
    Sqlite,
    /// `mysql://` or `mariadb://` (MySQL 8, MariaDB 10.6 or later).
    #[cfg(feature = "mysql")]
    Mysql,
}

pub(super) enum Pools {
    Postgres(Pool<ConnectionManager<PgConnection>>),
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    #[cfg(feature = "mysql")]
    Mysql(Pool<ConnectionManager<diesel::mysql::MysqlConnection>>),
}

/// Reads `scheduler_db_uri`: the backend, and what to hand to it. The
/// kit's SQLAlchemy URLs name a Python driver after a `+`
/// (`postgresql+psycopg2://`, `mysql+pymysql://`): it is dropped. Not from
/// SQLite's: SQLAlchemy reads `sqlite:///x.db` as a relative path, the
/// beat as `/x.db`, so `sqlite+pysqlite://` is refused rather than misread.
pub(super) fn parse_url(url: &str) -> Result<(Backend, String), StoreError> {
    let without_driver;
    let url = match url.split_once("://") {
        Some((scheme, rest)) if scheme.contains('+') => {
            let base = scheme.split('+').next().unwrap_or_default();
            if ["postgres", "postgresql", "mysql", "mariadb"]
                .iter()
                .any(|b| base.eq_ignore_ascii_case(b))
            {
                without_driver = format!("{base}://{rest}");
                without_driver.as_str()
            } else {
                url
            }
        }
        _ => url,
    };
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
        #[cfg(feature = "mysql")]
        return Ok((
            Backend::Mysql,
            format!("mysql://{}", &url[url.find("://").unwrap_or(0) + 3..]),
        ));
        #[cfg(not(feature = "mysql"))]
        return Err(StoreError::UnsupportedUrl(format!(
            "{}: this build has no MySQL/MariaDB support; build with the `mysql` feature \
             (`cargo build --features mysql`, which needs the MariaDB client library, \
             e.g. `apt-get install libmariadb-dev`)",
            redact_url(url)
        )));
    }
    let path = if lower.starts_with("sqlite:") {
        let rest = &url["sqlite:".len()..];
        rest.strip_prefix("//").unwrap_or(rest)
    } else if url.contains("://") {
        return Err(StoreError::UnsupportedUrl(format!(
            "{}: expected postgres://, mysql://, sqlite:// or a file path",
            redact_url(url)
        )));
    } else {
        url
    };
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::UnsupportedUrl(format!(
            "{url:?}: SQLite needs a file (an in-memory database is not shared between connections)"
        )));
    }
    Ok((Backend::Sqlite, path.to_owned()))
}

/// Sets up every SQLite connection: WAL so readers never block the beat,
/// and a busy timeout so several writers (beats, operators) take turns.
#[derive(Debug)]
struct SqliteSetup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL;"
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// r2d2 reports each failed connection attempt here. The scheduler logs
/// outages once per change of state; this only leaves a debug trace, with
/// the password masked.
#[derive(Debug)]
struct QuietErrors {
    url: String,
}

impl r2d2::HandleError<diesel::r2d2::Error> for QuietErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        log::debug!(
            "database connection attempt failed: {}",
            redact_message(&error.to_string(), &self.url)
        );
    }
}

/// Bounds every PostgreSQL session by the database timeout: a statement,
/// a wait for a lock, and a transaction left idle (a beat frozen or cut off
/// mid-claim, whose locked rows every other beat skips) all end within it.
#[derive(Debug)]
struct PostgresSetup {
    timeout_ms: u128,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PostgresSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&postgres_limits(self.timeout_ms))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The session settings that bound a PostgreSQL connection (0: no bound).
fn postgres_limits(timeout_ms: u128) -> String {
    format!(
        "SET statement_timeout = {timeout_ms}; SET lock_timeout = {timeout_ms}; \
         SET idle_in_transaction_session_timeout = {timeout_ms};"
    )
}

/// libpq's connection parameters for a beat: TCP keepalives and a
/// user timeout, so that a connection whose peer vanished (the network cut,
/// not closed) fails within the database timeout instead of the kernel's
/// quarter of an hour; and `application_name`, so that `pg_stat_activity`
/// says which beat a session is. Parameters the URL sets are kept.
fn postgres_target(url: &str, timeout: Duration) -> String {
    let seconds = timeout.as_secs().max(1);
    let name = format!("celery-diesel-kit beat pid {}", std::process::id()).replace(' ', "%20");
    let wanted = [
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", seconds.div_ceil(3).to_string()),
        (
            "keepalives_interval",
            seconds.div_ceil(6).max(1).to_string(),
        ),
        ("keepalives_count", "3".to_owned()),
        ("tcp_user_timeout", (seconds * 1000).to_string()),
        ("connect_timeout", seconds.min(10).to_string()),
        ("application_name", name),
    ];
    let query_start = url.find('?');
    let present = |key: &str| {
        query_start.is_some_and(|q| {
            url[q + 1..]
                .split('&')
                .any(|p| p.split('=').next() == Some(key))
        })
    };
    let mut target = url.to_owned();
    let mut separator = if query_start.is_some() { '&' } else { '?' };
    for (key, value) in wanted.iter().filter(|(key, _)| !present(key)) {
        target.push(separator);
        target.push_str(key);
        target.push('=');
        target.push_str(value);
        separator = '&';
    }
    target
}

/// Sets up every MySQL connection: READ COMMITTED, so that locking reads
/// take no gap locks (two beats claiming side by side would otherwise
/// deadlock), UTC for anything the server itself timestamps,
/// `@celery_beat`, which tells the edit trigger that the beat is writing,
/// and the database timeout on lock waits, statements and idle
/// transactions (MariaDB's `idle_transaction_timeout`; MySQL has none, so
/// there the idle session's `wait_timeout` bounds a frozen beat).
#[cfg(feature = "mysql")]
#[derive(Debug)]
struct MysqlSetup {
    timeout_s: u64,
}

#[cfg(feature = "mysql")]
impl CustomizeConnection<diesel::mysql::MysqlConnection, diesel::r2d2::Error> for MysqlSetup {
    fn on_acquire(
        &self,
        conn: &mut diesel::mysql::MysqlConnection,
    ) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; SET time_zone = '+00:00'; \
             SET @celery_beat = 1;",
        )
        .map_err(diesel::r2d2::Error::QueryError)?;
        let t = self.timeout_s;
        conn.batch_execute(&mysql_limits(t, true))
            .or_else(|_| conn.batch_execute(&mysql_limits(t, false)))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The session settings that bound a MariaDB (or MySQL) connection.
#[cfg(feature = "mysql")]
fn mysql_limits(timeout_s: u64, mariadb: bool) -> String {
    if mariadb {
        format!(
            "SET SESSION innodb_lock_wait_timeout = {t}, max_statement_time = {t}, \
             idle_transaction_timeout = {t}",
            t = timeout_s.max(1)
        )
    } else {
        format!(
            "SET SESSION innodb_lock_wait_timeout = {t}, max_execution_time = {ms}, \
             wait_timeout = {t}",
            t = timeout_s.max(1),
            ms = timeout_s.max(1) * 1000
        )
    }
}

/// How many connections a pool keeps open while idle: a beat keeps one; a
/// short-lived command keeps none, so that no connection is being opened
/// in the background when it exits (OpenSSL's exit handler and a libpq
/// connection attempt on another thread crash the process together).
#[derive(Debug, Clone, Copy)]
pub(super) enum Idle {
    One,
    None,
}

pub(super) fn open(
    backend: Backend,
    target: &str,
    url: &str,
    timeout: Duration,
    idle: Idle,
) -> Result<Pools, StoreError> {
    Ok(match backend {
        Backend::Postgres => Pools::Postgres(pool::<PgConnection>(
            &postgres_target(target, timeout),
            url,
            Some(Box::new(PostgresSetup {
                timeout_ms: timeout.as_millis().max(1),
            })),
            idle,
        )?),
        Backend::Sqlite => Pools::Sqlite(pool(target, url, Some(Box::new(SqliteSetup)), idle)?),
        #[cfg(feature = "mysql")]
        Backend::Mysql => Pools::Mysql(pool(
            target,
            url,
            Some(Box::new(MysqlSetup {
                timeout_s: timeout.as_secs().max(1),
            })),
            idle,
        )?),
    })
}

/// A pool of connections to `target`. One connection is made first, so
/// that a database that is down or refuses us fails the start at once, in
/// the driver's own words (a pool would only time out).
fn pool<C>(
    target: &str,
    url: &str,
    setup: Option<Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>>,
    idle: Idle,
) -> Result<Pool<ConnectionManager<C>>, StoreError>
where
    C: diesel::r2d2::R2D2Connection + 'static,
{
    let manager = ConnectionManager::<C>::new(target);
    let mut first = manager.connect().map_err(|e| StoreError::Connect {
        url: redact_url(url),
        reason: redact_message(&e.to_string(), url),
    })?;
    if let Some(setup) = &setup {
        setup
            .on_acquire(&mut first)
            .map_err(|e| StoreError::Connect {
                url: redact_url(url),
                reason: redact_message(&e.to_string(), url),
            })?;
    }
    drop(first);
    let mut builder = Pool::builder()
        .max_size(5)
        .min_idle(Some(match idle {
            Idle::One => 1,
            Idle::None => 0,
        }))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .error_handler(Box::new(QuietErrors {
            url: url.to_owned(),
        }));
    if let Some(setup) = setup {
        builder = builder.connection_customizer(setup);
    }
    Ok(builder.build_unchecked(manager))
}

/// A migration run's failure inside a transaction of ours.
enum Migrating {
    Failed(Box<dyn std::error::Error + Send + Sync>),
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for Migrating {
    fn from(e: diesel::result::Error) -> Self {
        Migrating::Db(e)
    }
}

pub(super) fn migrate(pools: &Pools, timeout: Duration) -> Result<(), StoreError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    match pools {
        Pools::Postgres(pool) => {
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
            // A migration may rewrite a large table: no bound while it runs
            // (the connection goes back to the pool with its bounds).
            conn.batch_execute(&postgres_limits(0))
                .map_err(|e| StoreError::query("migration settings", e))?;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(conn)
                .map_err(|e| StoreError::query("migration lock", e))?;
            let result = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(drop)
                .map_err(failed);
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(conn)
                .map_err(|e| StoreError::query("migration unlock", e))?;
            conn.batch_execute(&postgres_limits(timeout.as_millis().max(1)))
                .map_err(|e| StoreError::query("migration settings", e))?;
            result
        }
        Pools::Sqlite(pool) => {
            // One writer at a time: beats starting together on one file take
            // turns, and the later ones find nothing pending.
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
            conn.immediate_transaction(|conn| {
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(drop)
                    .map_err(Migrating::Failed)
            })
            .map_err(|e| match e {
                Migrating::Failed(e) => failed(e),
                Migrating::Db(e) => StoreError::Migration(e.to_string()),
            })
        }
        #[cfg(feature = "mysql")]
        Pools::Mysql(pool) => {
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
            // No statement bound while a migration rewrites the table.
            conn.batch_execute(
                "SET SESSION max_statement_time = 0, innodb_lock_wait_timeout = 3600",
            )
            .or_else(|_| {
                conn.batch_execute(
                    "SET SESSION max_execution_time = 0, innodb_lock_wait_timeout = 3600",
                )
            })
            .map_err(|e| StoreError::query("migration settings", e))?;
            diesel::sql_query("SELECT GET_LOCK('celery_diesel_kit_migrations', 60)")
                .execute(conn)
                .map_err(|e| StoreError::query("migration lock", e))?;
            let result = conn
                .run_pending_migrations(MYSQL_MIGRATIONS)
                .map(drop)
                .map_err(failed);
            diesel::sql_query("SELECT RELEASE_LOCK('celery_diesel_kit_migrations')")
                .execute(conn)
                .map_err(|e| StoreError::query("migration unlock", e))?;
            let t = timeout.as_secs().max(1);
            conn.batch_execute(&mysql_limits(t, true))
                .or_else(|_| conn.batch_execute(&mysql_limits(t, false)))
                .map_err(|e| StoreError::query("migration settings", e))?;
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_the_backend() {
        assert_eq!(parse_url("postgres://u@h/db").unwrap().0, Backend::Postgres);
        assert_eq!(
            parse_url("postgresql://u@h/db").unwrap().0,
            Backend::Postgres
        );
        assert_eq!(
            parse_url("postgresql+psycopg2://u:p@h/db").unwrap(),
            (Backend::Postgres, "postgresql://u:p@h/db".into())
        );
        assert!(parse_url("oracle+cx_oracle://h/db").is_err());
        assert!(parse_url("sqlite+pysqlite:///x.db").is_err());
        assert_eq!(
            parse_url("sqlite://beat.db").unwrap(),
            (Backend::Sqlite, "beat.db".into())
        );
        assert_eq!(
            parse_url("sqlite:///tmp/b.db").unwrap(),
            (Backend::Sqlite, "/tmp/b.db".into())
        );
        assert_eq!(
            parse_url("beat.db").unwrap(),
            (Backend::Sqlite, "beat.db".into())
        );
        assert!(parse_url("sqlite://:memory:").is_err());
        let err = parse_url("oracle://scott:tiger@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("oracle://scott:***@h/db") && !err.contains("tiger"),
            "{err}"
        );
    }
}
