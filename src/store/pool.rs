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

/// Reads `scheduler_db_uri`: the backend, and what to hand to it.
pub(super) fn parse_url(url: &str) -> Result<(Backend, String), StoreError> {
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

/// Sets up every MySQL connection: READ COMMITTED, so that locking reads
/// take no gap locks (two beats claiming side by side would otherwise
/// deadlock), UTC for anything the server itself timestamps, and
/// `@celery_beat`, which tells the edit trigger that the beat is writing.
#[cfg(feature = "mysql")]
#[derive(Debug)]
struct MysqlSetup;

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
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub(super) fn open(backend: Backend, target: &str, url: &str) -> Result<Pools, StoreError> {
    Ok(match backend {
        Backend::Postgres => Pools::Postgres(pool::<PgConnection>(target, url, None)?),
        Backend::Sqlite => Pools::Sqlite(pool(target, url, Some(Box::new(SqliteSetup)))?),
        #[cfg(feature = "mysql")]
        Backend::Mysql => Pools::Mysql(pool(target, url, Some(Box::new(MysqlSetup)))?),
    })
}

/// A pool of connections to `target`. One connection is made first, so
/// that a database that is down or refuses us fails the start at once, in
/// the driver's own words (a pool would only time out).
fn pool<C>(
    target: &str,
    url: &str,
    setup: Option<Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>>,
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
        .min_idle(Some(1))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .error_handler(Box::new(QuietErrors {
            url: url.to_owned(),
        }));
    if let Some(setup) = setup {
        builder = builder.connection_customizer(setup);
    }
    Ok(builder.build_unchecked(manager))
}

pub(super) fn migrate(pools: &Pools) -> Result<(), StoreError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    match pools {
        Pools::Postgres(pool) => {
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
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
            result
        }
        Pools::Sqlite(pool) => {
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(drop)
                .map_err(failed)
        }
        #[cfg(feature = "mysql")]
        Pools::Mysql(pool) => {
            let conn = &mut *pool.get().map_err(StoreError::checkout)?;
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
