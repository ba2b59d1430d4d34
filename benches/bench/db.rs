//! The bench's databases: created and dropped per measurement, and seeded
//! inside the database itself (no rows cross the wire).

use super::{Backend, Options};
use crate::common::sql;
use celery_diesel_kit::RoutineStore;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::{Duration, Instant};

/// A database of the bench's own, dropped at the end.
pub(crate) struct Database {
    pub(crate) backend: Backend,
    pub(crate) url: String,
    admin: Option<(String, String)>,
}

impl Database {
    pub(crate) fn create(backend: Backend, o: &Options, label: &str) -> anyhow::Result<Database> {
        let name = format!("cdk_bench_{label}_{}", std::process::id());
        let admin_url = match backend {
            Backend::Postgres => &o.postgres,
            Backend::Mysql => &o.mysql,
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.sqlite3"));
                let _ = std::fs::remove_file(&path);
                return Ok(Database {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    admin: None,
                });
            }
        };
        sql::execute(admin_url, &format!("DROP DATABASE IF EXISTS {name}"))
            .map_err(anyhow::Error::msg)?;
        sql::execute(admin_url, &format!("CREATE DATABASE {name}")).map_err(anyhow::Error::msg)?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        Ok(Database {
            backend,
            url: format!("{base}/{name}"),
            admin: Some((admin_url.clone(), name)),
        })
    }

    pub(crate) fn store(&self) -> anyhow::Result<RoutineStore> {
        let store = RoutineStore::connect(&self.url)?;
        store.migrate()?;
        Ok(store)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        match &self.admin {
            Some((admin, name)) => {
                let force = if self.backend == Backend::Postgres {
                    " WITH (FORCE)"
                } else {
                    ""
                };
                let _ = sql::execute(admin, &format!("DROP DATABASE IF EXISTS {name}{force}"));
            }
            None => {
                let path = self.url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}

/// How the seeded routines are scheduled.
pub(crate) enum Seed {
    /// Mixed intervals (60..3660 s) and crontabs, planned 10 to 60 minutes
    /// ahead; `due_now` of them due at once.
    Mixed { due_now: usize },
    /// Every one due at `at`, then hourly.
    AllAt(DateTime<Utc>),
    /// Every second, phases spread evenly over the second from `from`.
    EverySecond(DateTime<Utc>),
    /// Every one on this schedule JSON, not yet planned (as a row an
    /// operator inserts): the beat plans each, jitter and all, as it starts.
    Unplanned(String),
}

fn ts(t: DateTime<Utc>) -> String {
    t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Inserts `n` planned routines in the database itself (no rows cross the
/// wire), sending to Redis list `queue`.
pub(crate) fn seed(db: &Database, n: usize, how: &Seed, queue: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let now = Utc::now();
    let b = db.backend;
    // SQL over the row number `g` (1..n), per dialect.
    let concat = |parts: &[&str]| match b {
        Backend::Mysql => format!("CONCAT({})", parts.join(", ")),
        _ => format!("({})", parts.join(" || ")),
    };
    let json = |expr: String| {
        if b == Backend::Postgres {
            format!("({expr})::json")
        } else {
            expr
        }
    };
    let mut planned = true;
    let (schedule, next) = match how {
        Seed::Mixed { due_now } => (
            // one in four a crontab, else an interval of 60..3660 s
            format!(
                "CASE WHEN g % 4 = 0 THEN '{{\"minute\": \"*/5\"}}' ELSE {} END",
                concat(&["'{\"timedelta\": '", "(60 + g % 3600)", "'}'"])
            ),
            format!(
                "CASE WHEN g <= {due_now} THEN {} ELSE {} END",
                db.at(now - TimeDelta::seconds(1)),
                db.plus_seconds(now + TimeDelta::minutes(10), "g % 3000")
            ),
        ),
        Seed::AllAt(at) => ("'{\"timedelta\": 3600}'".to_owned(), db.at(*at)),
        Seed::EverySecond(from) => (
            "'{\"timedelta\": 1}'".to_owned(),
            db.plus_micros(*from, &format!("(g - 1) * 1000000 / {n}")),
        ),
        Seed::Unplanned(schedule) => {
            planned = false;
            let null = match b {
                Backend::Postgres => "NULL::timestamp",
                _ => "NULL",
            };
            (
                format!("'{}'", schedule.replace('\'', "''")),
                null.to_owned(),
            )
        }
    };
    let select = format!(
        "SELECT {id}, {name}, 'bench.task', {schedule}, {kwargs}, {options}, {t}, 0, {next}, {f} FROM seq",
        id = match b {
            Backend::Postgres => "gen_random_uuid()",
            Backend::Mysql => "REPLACE(UUID(), '-', '')",
            Backend::Sqlite => "lower(hex(randomblob(16)))",
        },
        name = concat(&["'bench'", "g"]),
        schedule = json(schedule),
        kwargs = json("'{}'".to_owned()),
        options = json(format!("'{{\"queue\": \"{queue}\"}}'")),
        t = if b == Backend::Postgres { "true" } else { "1" },
        // needs_sync: a planned row is not; an unplanned one awaits the beat.
        f = match (b == Backend::Postgres, planned) {
            (true, true) => "false",
            (true, false) => "true",
            (false, true) => "0",
            (false, false) => "1",
        },
    );
    let seq = match b {
        Backend::Postgres => format!("seq AS (SELECT g FROM generate_series(1::bigint, {n}) AS g)"),
        Backend::Sqlite => {
            format!("RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {n})")
        }
        // Digits crossed with themselves: MySQL caps recursion at 1000
        // rows by default and MariaDB names that limit differently.
        Backend::Mysql => {
            let places = n.max(2).to_string().len();
            let tables: Vec<String> = (0..places).map(|i| format!("d d{i}")).collect();
            let sum: Vec<String> = (0..places)
                .map(|i| format!("d{i}.d * {}", 10usize.pow(i as u32)))
                .collect();
            format!(
                "d AS (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9), \
                 seq AS (SELECT g FROM (SELECT 1 + {} AS g FROM {}) AS all_g WHERE g <= {n})",
                sum.join(" + "),
                tables.join(", ")
            )
        }
    };
    db.execute(&format!(
        "INSERT INTO routines (id, name, task, schedule, kwargs, options, active, total_run_count, \
         next_run_at, needs_sync) WITH {seq} {select}"
    ))?;
    db.execute(match b {
        Backend::Postgres => "ANALYZE routines",
        Backend::Mysql => "ANALYZE TABLE routines",
        Backend::Sqlite => "ANALYZE",
    })?;
    Ok(started.elapsed())
}

impl Database {
    /// Runs SQL as an operator would.
    pub(crate) fn execute(&self, statements: &str) -> anyhow::Result<()> {
        sql::execute(&self.url, statements).map_err(anyhow::Error::msg)
    }

    fn at(&self, t: DateTime<Utc>) -> String {
        match self.backend {
            Backend::Postgres => format!("'{}'::timestamp", ts(t)),
            _ => format!("'{}'", ts(t)),
        }
    }

    fn plus_seconds(&self, t: DateTime<Utc>, seconds: &str) -> String {
        self.plus_micros(t, &format!("({seconds}) * 1000000"))
    }

    /// `t` plus an integer SQL expression of microseconds, as a timestamp
    /// in the beat's fixed-width text form where the backend stores text.
    fn plus_micros(&self, t: DateTime<Utc>, micros: &str) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "'{}'::timestamp + ({micros}) * interval '1 microsecond'",
                ts(t)
            ),
            Backend::Mysql => format!("TIMESTAMPADD(MICROSECOND, {micros}, '{}')", ts(t)),
            Backend::Sqlite => {
                let base = t.timestamp_micros();
                format!(
                    "strftime('%Y-%m-%d %H:%M:%S', ({base} + ({micros})) / 1000000, 'unixepoch') || '.' || \
                     substr('000000' || (({base} + ({micros})) % 1000000), -6)"
                )
            }
        }
    }
}
