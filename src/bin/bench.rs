//! `bench`: measures the beat on a real database and Redis, and prints one
//! JSON line per scenario and backend.
//!
//! ```text
//! cargo run --release --bin bench                        # everything, full size
//! cargo run --release --bin bench -- --db postgres --scenario burst
//! cargo run --release --bin bench -- --smoke             # small and quick (CI)
//! ```
//!
//! Scenarios (each on a fresh database the bench creates and drops):
//! - `scale`: 10k, 100k and 1M planned routines (intervals and crontabs);
//!   time from start to the first dispatch, resident memory, CPU per minute
//!   while nothing is due.
//! - `burst`: 100k routines due at one instant, published to Redis: the
//!   time until all are in Redis, against a plain pipelined LPUSH of the
//!   same messages by this process.
//! - `steady`: 10k routines every second for 60 s: dispatches per second,
//!   lateness, misses and repeats, beat CPU.
//! - `edit`: 100 edits by SQL (schedule, active), each timed until the
//!   beat has applied it.
//!
//! The beat runs in this process through the library's `Beat::start`, the
//! code path of the `beat` binary.

use anyhow::{bail, Context};
use celery_diesel_kit::{task_id, Beat, BeatHandle, Config, RoutineStore};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Postgres,
    Mysql,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }
}

struct Options {
    backends: Vec<Backend>,
    scenarios: Vec<String>,
    scale: Vec<usize>,
    burst: usize,
    steady_routines: usize,
    steady_seconds: u64,
    edits: usize,
    idle_seconds: u64,
    postgres: String,
    mysql: String,
    redis: String,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut o = Options {
        backends: if cfg!(feature = "mysql") {
            vec![Backend::Postgres, Backend::Sqlite, Backend::Mysql]
        } else {
            vec![Backend::Postgres, Backend::Sqlite]
        },
        scenarios: ["scale", "burst", "steady", "edit"]
            .map(String::from)
            .to_vec(),
        scale: vec![10_000, 100_000, 1_000_000],
        burst: 100_000,
        steady_routines: 10_000,
        steady_seconds: 60,
        edits: 100,
        idle_seconds: 30,
        postgres: "postgres://postgres@127.0.0.1:5432/test".into(),
        mysql: "mysql://root@127.0.0.1:3306/test".into(),
        redis: "redis://127.0.0.1:6379/14".into(),
    };
    let mut args = std::env::args().skip(1);
    let list = |v: String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
    let numbers = |v: String| -> anyhow::Result<Vec<usize>> {
        v.split(',')
            .map(|n| n.trim().replace('_', "").parse().context("a number"))
            .collect()
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--db" => {
                o.backends = list(value()?)
                    .iter()
                    .map(|b| match b.as_str() {
                        "postgres" => Ok(Backend::Postgres),
                        "mysql" | "mariadb" => Ok(Backend::Mysql),
                        "sqlite" => Ok(Backend::Sqlite),
                        other => bail!("unknown backend {other}"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--scenario" => o.scenarios = list(value()?),
            "--scale" => o.scale = numbers(value()?)?,
            "--burst" => o.burst = numbers(value()?)?[0],
            "--steady-routines" => o.steady_routines = numbers(value()?)?[0],
            "--steady-seconds" => o.steady_seconds = numbers(value()?)?[0] as u64,
            "--edits" => o.edits = numbers(value()?)?[0],
            "--idle-seconds" => o.idle_seconds = numbers(value()?)?[0] as u64,
            "--postgres-url" => o.postgres = value()?,
            "--mysql-url" => o.mysql = value()?,
            "--redis-url" => o.redis = value()?,
            "--smoke" => {
                o.scale = vec![1_000];
                o.burst = 2_000;
                o.steady_routines = 200;
                o.steady_seconds = 3;
                o.edits = 10;
                o.idle_seconds = 1;
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--smoke] [--db postgres,sqlite,mysql] [--scenario scale,burst,steady,edit]\n\
                     \x20            [--scale 10000,100000,1000000] [--burst N] [--steady-routines N]\n\
                     \x20            [--steady-seconds S] [--edits N] [--idle-seconds S]\n\
                     \x20            [--postgres-url URL] [--mysql-url URL] [--redis-url URL]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(o)
}

/// A database of the bench's own, dropped at the end.
struct Database {
    backend: Backend,
    url: String,
    admin: Option<(String, String)>,
}

impl Database {
    fn create(backend: Backend, o: &Options, label: &str) -> anyhow::Result<Database> {
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
        let admin = RoutineStore::connect(admin_url)?;
        admin.execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
        admin.execute(&format!("CREATE DATABASE {name}"))?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        Ok(Database {
            backend,
            url: format!("{base}/{name}"),
            admin: Some((admin_url.clone(), name)),
        })
    }

    fn store(&self) -> anyhow::Result<RoutineStore> {
        let store = RoutineStore::connect(&self.url)?;
        store.migrate()?;
        Ok(store)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        match &self.admin {
            Some((admin, name)) => {
                if let Ok(store) = RoutineStore::connect(admin) {
                    let force = if self.backend == Backend::Postgres {
                        " WITH (FORCE)"
                    } else {
                        ""
                    };
                    let _ = store.execute(&format!("DROP DATABASE IF EXISTS {name}{force}"));
                }
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
enum Seed {
    /// Mixed intervals (60..3660 s) and crontabs, planned 10 to 60 minutes
    /// ahead; `due_now` of them due at once.
    Mixed { due_now: usize },
    /// Every one due at `at`, then hourly.
    AllAt(DateTime<Utc>),
    /// Every second, phases spread evenly over the second from `from`.
    EverySecond(DateTime<Utc>),
}

fn ts(t: DateTime<Utc>) -> String {
    t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Inserts `n` planned routines in the database itself (no rows cross the
/// wire), sending to Redis list `queue`.
fn seed(
    db: &Database,
    store: &RoutineStore,
    n: usize,
    how: &Seed,
    queue: &str,
) -> anyhow::Result<Duration> {
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
        f = if b == Backend::Postgres { "false" } else { "0" },
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
    store.execute(&format!(
        "INSERT INTO routines (id, name, task, schedule, kwargs, options, active, total_run_count, \
         next_run_at, needs_sync) WITH {seq} {select}"
    ))?;
    store.execute(match b {
        Backend::Postgres => "ANALYZE routines",
        Backend::Mysql => "ANALYZE TABLE routines",
        Backend::Sqlite => "ANALYZE",
    })?;
    Ok(started.elapsed())
}

impl Database {
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

fn config(db: &Database, o: &Options) -> Config {
    Config {
        scheduler_db_uri: db.url.clone(),
        broker_url: Some(o.redis.clone()),
        shutdown_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

fn redis(o: &Options) -> anyhow::Result<redis::Connection> {
    Ok(redis::Client::open(o.redis.as_str())?.get_connection()?)
}

fn llen(conn: &mut redis::Connection, key: &str) -> anyhow::Result<usize> {
    Ok(redis::cmd("LLEN").arg(key).query(conn)?)
}

fn del(conn: &mut redis::Connection, keys: &[&str]) {
    for key in keys {
        let _ = redis::cmd("DEL").arg(*key).query::<()>(conn);
        let _ = redis::cmd("DEL")
            .arg(format!("_kombu.binding.{key}"))
            .query::<()>(conn);
    }
}

/// This process's CPU time (user + system) and resident memory.
fn cpu_time(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

fn wait_for(
    limit: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(false)
}

fn scale(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "scale")?;
    let store = db.store()?;
    let queue = format!("bench-scale-{}", std::process::id());
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue]);
    let seeded = seed(&db, &store, n, &Seed::Mixed { due_now: 10 }, &queue)?;
    drop(store);
    let rss_before = rss_mb("VmRSS:");
    let started = Instant::now();
    let beat = Beat::builder(config(&db, o)).start()?;
    let first = wait_for(Duration::from_secs(60), || Ok(llen(&mut conn, &queue)? > 0))?;
    let first_dispatch = started.elapsed();
    if !first {
        bail!("scale {n} on {}: no dispatch within 60 s", backend.name());
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = cpu_time("/proc/self/stat");
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(o.idle_seconds));
    let idle_cpu = cpu_time("/proc/self/stat").saturating_sub(cpu_before);
    let idle_wall = idle_started.elapsed();
    let rss = rss_mb("VmRSS:");
    let stats = beat.stop().stats;
    emit(json!({
        "scenario": "scale", "backend": backend.name(), "routines": n,
        "seed_s": round(seeded.as_secs_f64(), 1),
        "first_dispatch_s": round(first_dispatch.as_secs_f64(), 3),
        "rss_mb": round(rss, 1), "rss_before_start_mb": round(rss_before, 1),
        "peak_rss_mb": round(rss_mb("VmHWM:"), 1),
        "idle_cpu_pct_of_a_core": round(idle_cpu.as_secs_f64() / idle_wall.as_secs_f64() * 100.0, 2),
        "idle_cpu_s_per_minute": round(idle_cpu.as_secs_f64() * 60.0 / idle_wall.as_secs_f64(), 3),
        "idle_measured_s": o.idle_seconds,
        "dispatched": stats.fired,
    }));
    del(&mut conn, &[&queue]);
    Ok(())
}

fn burst(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "burst")?;
    let store = db.store()?;
    let queue = format!("bench-burst-{}", std::process::id());
    let copy = format!("{queue}-lpush");
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue, &copy]);
    // Due a few seconds after the beat starts, all at once.
    let due = Utc::now() + TimeDelta::seconds(if n > 20_000 { 8 } else { 2 });
    seed(&db, &store, n, &Seed::AllAt(due), &queue)?;
    let beat = Beat::builder(config(&db, o)).start()?;
    let wait = (due - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait);
    let t0 = Instant::now();
    let all = wait_for(Duration::from_secs(120), || {
        Ok(llen(&mut conn, &queue)? >= n)
    })?;
    let took = t0.elapsed();
    let stats = beat.stop().stats;
    if !all {
        bail!(
            "burst {n} on {}: only {} of {n} messages in 120 s",
            backend.name(),
            llen(&mut conn, &queue)?
        );
    }
    // The physical limit: the same messages, pushed again by this process
    // in plain pipelines.
    let mut messages: Vec<String> = Vec::with_capacity(n);
    for start in (0..n).step_by(10_000) {
        let chunk: Vec<String> = redis::cmd("LRANGE")
            .arg(&queue)
            .arg(start)
            .arg(start + 9_999)
            .query(&mut conn)?;
        messages.extend(chunk);
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let v: serde_json::Value = serde_json::from_str(m)?;
        *ids.entry(v["headers"]["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let t1 = Instant::now();
    for chunk in messages.chunks(1_000) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.cmd("LPUSH").arg(&copy).arg(m).ignore();
        }
        pipe.query::<()>(&mut conn)?;
    }
    let lpush = t1.elapsed();
    let advanced: i64 = store
        .routines()?
        .iter()
        .map(|r| i64::from(r.total_run_count.unwrap_or(0)))
        .sum();
    emit(json!({
        "scenario": "burst", "backend": backend.name(), "routines": n,
        "all_in_redis_s": round(took.as_secs_f64(), 3),
        "per_second": round(n as f64 / took.as_secs_f64(), 0),
        "plain_lpush_s": round(lpush.as_secs_f64(), 3),
        "speed_vs_plain_lpush": round(lpush.as_secs_f64() / took.as_secs_f64(), 3),
        "distinct_ids": ids.len(), "repeats": messages.len() - ids.len(),
        "rows_advanced": advanced, "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 1),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 1),
    }));
    del(&mut conn, &[&queue, &copy]);
    Ok(())
}

fn steady(backend: Backend, routines: usize, seconds: u64, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "steady")?;
    let store = db.store()?;
    let queue = format!("bench-steady-{}", std::process::id());
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue]);
    let lead = if routines * seconds as usize > 10_000 {
        5
    } else {
        2
    };
    let t0 = Utc::now() + TimeDelta::seconds(lead);
    seed(&db, &store, routines, &Seed::EverySecond(t0), &queue)?;
    // Every run due in the window, by task id.
    let mut expected: HashMap<String, ()> = HashMap::with_capacity(routines * seconds as usize);
    for row in store.routines()? {
        let first = row
            .next_run_at_utc()
            .context("seeded routines are planned")?;
        for k in 0..seconds as i64 {
            expected.insert(task_id(&row.id, first + TimeDelta::seconds(k)), ());
        }
    }
    let end = t0 + TimeDelta::seconds(seconds as i64);

    // Drain Redis as it fills, so that it holds no more than a moment's
    // messages; the drain's own CPU is measured and left out.
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let (stop, queue, url) = (Arc::clone(&stop), queue.clone(), o.redis.clone());
        std::thread::spawn(
            move || -> anyhow::Result<(HashMap<String, usize>, Duration)> {
                let cpu0 = cpu_time("/proc/thread-self/stat");
                let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
                let mut seen: HashMap<String, usize> = HashMap::new();
                loop {
                    let batch: Option<Vec<String>> =
                        redis::cmd("RPOP").arg(&queue).arg(5_000).query(&mut conn)?;
                    let batch = batch.unwrap_or_default();
                    if batch.is_empty() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    for m in batch {
                        // The id is the first field of the headers; no full parse.
                        let id = m.find("\"id\": \"").and_then(|at| m.get(at + 7..at + 43));
                        *seen.entry(id.unwrap_or("?").to_owned()).or_default() += 1;
                    }
                }
                Ok((
                    seen,
                    cpu_time("/proc/thread-self/stat").saturating_sub(cpu0),
                ))
            },
        )
    };
    let beat = Beat::builder(config(&db, o)).start()?;
    std::thread::sleep((t0 - Utc::now()).to_std().unwrap_or_default());
    let cpu0 = cpu_time("/proc/self/stat");
    let wall0 = Instant::now();
    std::thread::sleep((end - Utc::now()).to_std().unwrap_or_default());
    let cpu = cpu_time("/proc/self/stat").saturating_sub(cpu0);
    let wall = wall0.elapsed();
    // Runs due just before the end may still be on their way.
    std::thread::sleep(Duration::from_millis(500));
    let stats = beat.stop().stats;
    stop.store(true, Ordering::SeqCst);
    let (seen, drain_cpu) = drain
        .join()
        .map_err(|_| anyhow::anyhow!("drain thread panicked"))??;
    let in_window = expected.keys().filter(|id| seen.contains_key(*id)).count();
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    let beat_cpu = cpu.saturating_sub(drain_cpu);
    emit(json!({
        "scenario": "steady", "backend": backend.name(), "routines": routines, "seconds": seconds,
        "dispatches_per_s": round(in_window as f64 / seconds as f64, 1),
        "ideal_per_s": routines,
        "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 2),
        "lateness_p99_ms": round(stats.lateness.p99.as_secs_f64() * 1e3, 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 2),
        "misses": expected.len() - in_window, "repeats": repeats,
        "beat_cpu_pct_of_a_core": round(beat_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0, 1),
    }));
    del(&mut conn, &[&queue]);
    Ok(())
}

fn edit(backend: Backend, edits: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "edit")?;
    let store = db.store()?;
    let queue = format!("bench-edit-{}", std::process::id());
    seed(&db, &store, 1_000, &Seed::Mixed { due_now: 0 }, &queue)?;
    let beat: BeatHandle = Beat::builder(config(&db, o)).start()?;
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::with_capacity(edits);
    let mut state: u64 = 0x00C0_FFEE;
    for i in 0..edits {
        // An irregular pause, so that edits fall anywhere in the beat's cycle.
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis((state >> 33) % 500));
        let name = format!("bench{}", 1 + i * 7 % 1_000);
        let sql = if i % 2 == 0 {
            format!(
                "UPDATE routines SET schedule = '{{\"timedelta\": {}}}' WHERE name = '{name}'",
                100 + i
            )
        } else {
            let value = if i % 4 == 1 { "false" } else { "true" };
            format!("UPDATE routines SET active = {value} WHERE name = '{name}'")
        };
        let edited = Instant::now();
        store.execute(&sql)?;
        let applied = wait_for(Duration::from_secs(10), || {
            Ok(store.routine(&name)?.is_some_and(|r| !r.needs_sync))
        })?;
        if !applied {
            bail!("edit {i} not applied within 10 s");
        }
        latencies.push(edited.elapsed());
    }
    beat.stop();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    emit(json!({
        "scenario": "edit", "backend": backend.name(), "edits": edits,
        "p50_ms": round(at(0.5).as_secs_f64() * 1e3, 1),
        "p99_ms": round(at(0.99).as_secs_f64() * 1e3, 1),
        "max_ms": round(latencies[latencies.len() - 1].as_secs_f64() * 1e3, 1),
    }));
    Ok(())
}

/// The arguments, less those that select backends, scenarios and scales.
fn strip_selection(args: Vec<String>) -> Vec<String> {
    let mut kept = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if ["--db", "--scenario", "--scale"].contains(&arg.as_str()) {
            it.next();
        } else {
            kept.push(arg);
        }
    }
    kept
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let o = parse_args()?;
    let mut runs: Vec<(Backend, String, Option<usize>)> = Vec::new();
    for backend in &o.backends {
        for scenario in &o.scenarios {
            if scenario == "scale" {
                runs.extend(
                    o.scale
                        .iter()
                        .map(|n| (*backend, scenario.clone(), Some(*n))),
                );
            } else {
                runs.push((*backend, scenario.clone(), None));
            }
        }
    }
    if runs.len() > 1 {
        // One process per measurement, so that memory and CPU figures are
        // the beat's alone, not left over from an earlier scenario.
        let passed: Vec<String> = strip_selection(std::env::args().skip(1).collect());
        for (backend, scenario, size) in runs {
            let mut child = std::process::Command::new(std::env::current_exe()?);
            child
                .args(&passed)
                .args(["--db", backend.name(), "--scenario", &scenario]);
            if let Some(n) = size {
                child.args(["--scale", &n.to_string()]);
            }
            let status = child.status().context("run the bench for one scenario")?;
            if !status.success() {
                bail!("{scenario} on {} failed", backend.name());
            }
        }
        return Ok(());
    }
    for backend in &o.backends {
        for scenario in &o.scenarios {
            let result = match scenario.as_str() {
                "scale" => o.scale.iter().try_for_each(|n| scale(*backend, *n, &o)),
                "burst" => burst(*backend, o.burst, &o),
                "steady" => steady(*backend, o.steady_routines, o.steady_seconds, &o),
                "edit" => edit(*backend, o.edits, &o),
                other => bail!("unknown scenario {other}"),
            };
            result.with_context(|| format!("{scenario} on {}", backend.name()))?;
        }
    }
    Ok(())
}
