//! A database of the test's own on each backend, and what tests ask of a
//! database beyond the library's API (its sessions, its overdue rows).

use super::{reachable, skip, sql, unique};
use celery_diesel_kit::{Config, RoutineStore};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CDK_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned())
}

/// The MySQL/MariaDB server tests create their databases on.
pub fn mysql_admin_url() -> String {
    std::env::var("CDK_TEST_MYSQL_URL").unwrap_or_else(|_| MYSQL_ADMIN_URL.to_owned())
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

/// A database of the test's own, dropped at the end.
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    name: String,
    dir: Option<PathBuf>,
}

impl TestDb {
    /// A fresh SQLite file.
    pub fn sqlite(test: &str) -> TestDb {
        let name = unique(test);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}", dir.join("beat.sqlite3").display());
        TestDb {
            kind: Kind::Sqlite,
            url,
            name,
            dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (skipped) without a server.
    pub fn postgres(test: &str) -> Option<TestDb> {
        TestDb::on_server(Kind::Postgres, &postgres_admin_url(), "PostgreSQL", test)
    }

    /// A fresh MySQL/MariaDB database, or `None` (skipped) without a server.
    pub fn mysql(test: &str) -> Option<TestDb> {
        TestDb::on_server(Kind::Mysql, &mysql_admin_url(), "MySQL/MariaDB", test)
    }

    fn on_server(kind: Kind, admin: &str, server: &str, test: &str) -> Option<TestDb> {
        if !reachable(admin) {
            skip(test, &format!("{server} not reachable at {admin}"));
            return None;
        }
        let name = unique(test);
        sql::execute(admin, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
        Some(TestDb {
            kind,
            url: format!("{base}/{name}"),
            name,
            dir: None,
        })
    }

    pub fn of(kind: Kind, test: &str) -> Option<TestDb> {
        match kind {
            Kind::Sqlite => Some(TestDb::sqlite(test)),
            Kind::Postgres => TestDb::postgres(test),
            Kind::Mysql => TestDb::mysql(test),
        }
    }

    /// A configuration for a beat on this database, tuned for tests:
    /// edits are looked for every 100 ms and failed tasks retried at once.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.scheduler_db_uri = self.url.clone();
        config.scheduler_watch_interval = Duration::from_millis(100);
        config.celery_retry_delay = Duration::ZERO;
        config.worker_concurrency = 2;
        config.shutdown_timeout = Duration::from_secs(10);
        config
    }

    /// A store on this database (schema created).
    pub fn store(&self) -> RoutineStore {
        let store = RoutineStore::connect(&self.url).expect("connect");
        store.migrate().expect("migrate");
        store
    }

    /// Runs SQL as an operator would.
    pub fn exec(&self, statements: &str) {
        sql::execute(&self.url, statements).unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// The number `query` returns (one row, one BIGINT column named `n`).
    pub fn number(&self, query: &str) -> i64 {
        sql::number(&self.url, query).unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    /// SQL for a timestamp literal.
    pub fn timestamp(&self, t: DateTime<Utc>) -> String {
        format!("'{}'", t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f"))
    }

    /// Whether the process `pid` holds a transaction with rows locked in
    /// it (its sessions are told from others by their client ports).
    pub fn locked_by(&self, pid: u32) -> bool {
        let ports = super::tcp_ports(pid);
        if ports.is_empty() {
            return false;
        }
        let list = |f: &dyn Fn(&u16) -> String| ports.iter().map(f).collect::<Vec<_>>().join(", ");
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*)::bigint AS n FROM pg_stat_activity \
                 WHERE client_port IN ({}) AND state = 'idle in transaction'",
                list(&|p| p.to_string())
            ),
            Kind::Mysql => format!(
                "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t \
                 JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id \
                 WHERE p.HOST IN ({}) AND t.trx_rows_locked > 0",
                list(&|p| format!("'127.0.0.1:{p}'"))
            ),
            Kind::Sqlite => unreachable!("SQLite has no sessions to tell apart"),
        };
        self.number(&query) > 0
    }

    /// Routines due more than `seconds` ago, by the database's clock: on a
    /// busy healthy beat, none (PostgreSQL and MySQL/MariaDB).
    pub fn overdue(&self, seconds: f64) -> i64 {
        let micros = (seconds * 1e6) as i64;
        let query = match self.kind {
            Kind::Postgres => format!(
                "SELECT COUNT(*)::bigint AS n FROM routines \
                 WHERE next_run_at < (now() AT TIME ZONE 'UTC') - interval '{micros} microseconds'"
            ),
            Kind::Mysql => format!(
                "SELECT COUNT(*) AS n FROM routines \
                 WHERE next_run_at < UTC_TIMESTAMP(6) - INTERVAL {micros} MICROSECOND"
            ),
            Kind::Sqlite => unreachable!("not needed on SQLite"),
        };
        self.number(&query)
    }

    /// Transactions this PostgreSQL database has seen (committed or
    /// rolled back).
    pub fn transactions(&self) -> i64 {
        assert_eq!(
            self.kind,
            Kind::Postgres,
            "pg_stat_database is PostgreSQL's"
        );
        self.number(
            "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database \
             WHERE datname = current_database()",
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self.kind {
            Kind::Postgres => {
                let _ = sql::execute(
                    &postgres_admin_url(),
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                );
            }
            Kind::Mysql => {
                let _ = sql::execute(
                    &mysql_admin_url(),
                    &format!("DROP DATABASE IF EXISTS {}", self.name),
                );
            }
            Kind::Sqlite => {
                if let Some(dir) = &self.dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }
}

/// One test per backend from one body: `backend_tests! { fn name(db) { ... } }`
/// makes `name::sqlite`, `name::postgres` and `name::mysql`.
#[macro_export]
macro_rules! backend_tests {
    ($(fn $name:ident($db:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($db: &$crate::common::TestDb) $body
                #[test]
                fn sqlite() {
                    let db = $crate::common::TestDb::sqlite(concat!(stringify!($name), "_sqlite"));
                    body(&db);
                }
                #[test]
                fn postgres() {
                    if let Some(db) = $crate::common::TestDb::postgres(concat!(stringify!($name), "_pg")) {
                        body(&db);
                    }
                }
                #[cfg(feature = "mysql")]
                #[test]
                fn mysql() {
                    if let Some(db) = $crate::common::TestDb::mysql(concat!(stringify!($name), "_my")) {
                        body(&db);
                    }
                }
            }
        )*
    };
}
