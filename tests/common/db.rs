//! A database of the test's own on each backend.

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

    /// SQL for a timestamp literal.
    pub fn timestamp(&self, t: DateTime<Utc>) -> String {
        format!("'{}'", t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f"))
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
