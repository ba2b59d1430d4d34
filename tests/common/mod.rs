//! Shared test support: real databases and processes, one per test.
//!
//! Services are found at their usual local addresses (override with
//! `CDK_TEST_POSTGRES_URL`). A test whose service is missing is skipped with
//! a line on stderr that `cargo test` does not swallow; under `CI=true` a
//! missing service fails the test instead.

#![allow(dead_code)]

pub mod cli;
pub mod sql;
pub mod web;

use celery_diesel_kit::{Config, RoutineStore, SyncTask, TaskContext, TaskResult};
use chrono::{DateTime, Utc};
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// An interval schedule of `seconds`.
pub fn every(seconds: u64) -> celery_diesel_kit::Schedule {
    celery_diesel_kit::Schedule::every(Duration::from_secs(seconds)).unwrap()
}

/// Whether the routine `name` is active in the database of `config`.
pub fn is_active(config: &Config, name: &str) -> bool {
    RoutineStore::connect(&config.scheduler_db_uri)
        .unwrap()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
        .active
}

/// Who the tests' own edits are by, in the audit trail.
pub fn tester() -> celery_diesel_kit::Actor {
    celery_diesel_kit::Actor::new("tests", celery_diesel_kit::Via::Library)
}

/// Whether missing services are failures (CI) or skips (a laptop).
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Reports a skipped test where `cargo test` shows it, or fails under CI.
pub fn skip(test: &str, why: &str) {
    if services_required() {
        panic!("{test}: {why} (CI=true: every service is required)");
    }
    // Written to the process's stderr directly: the test harness captures
    // only `print!`/`eprint!`, so this line is always visible.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***");
}

/// Whether the server a URL names accepts TCP connections.
pub fn reachable(url: &str) -> bool {
    let Some(rest) = url.split("://").nth(1) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let Ok(mut addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .next()
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CDK_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.to_owned())
}

/// The MySQL/MariaDB server tests create their databases on.
pub fn mysql_admin_url() -> String {
    std::env::var("CDK_TEST_MYSQL_URL").unwrap_or_else(|_| MYSQL_ADMIN_URL.to_owned())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let clean: String = clean.chars().take(30).collect();
    format!(
        "cdk_{clean}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
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

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A run seen by a [`Recorder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub routine: String,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub kwargs: serde_json::Value,
    pub at: Instant,
}

/// A task that records every run.
#[derive(Clone)]
pub struct Recorder {
    name: &'static str,
    pub runs: Arc<Mutex<Vec<Run>>>,
}

impl Recorder {
    pub fn new(name: &'static str) -> Self {
        Recorder {
            name,
            runs: Arc::default(),
        }
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    pub fn runs_of(&self, routine: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.routine == routine)
            .collect()
    }
}

impl SyncTask for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, ctx: &TaskContext) -> TaskResult {
        self.runs.lock().unwrap().push(Run {
            routine: ctx.routine.clone(),
            scheduled_at: ctx.scheduled_at,
            attempt: ctx.attempt,
            kwargs: ctx.kwargs.clone(),
            at: Instant::now(),
        });
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(text: &str) -> DateTime<Utc> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .and_utc()
}

/// A Python with `celery` installed: `CDK_CELERY_PYTHON`, or a virtualenv
/// under `target/celery-venv`, created on first use. `None` (skipped) if it
/// cannot be made.
pub fn celery_python(test: &str) -> Option<PathBuf> {
    if let Ok(python) = std::env::var("CDK_CELERY_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).ok()?;
    let venv = target.join("celery-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".ready");
    // One test process at a time builds it; the others wait on the lock.
    let lock = std::fs::File::create(target.join("celery-venv.lock")).ok()?;
    lock.lock().ok()?;
    if !ready.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "celery[redis]>=5.5,<6"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            skip(
                test,
                "cannot install celery into target/celery-venv (python3 -m venv / pip)",
            );
            return None;
        }
        std::fs::write(&ready, "").ok()?;
    }
    Some(python)
}

pub const REDIS_HOST: &str = "127.0.0.1:6379";

/// A Redis database of the test's own (each test passes a distinct
/// number), emptied first; `None` (skipped) without a server.
pub fn redis_db(test: &str, db: u8) -> Option<String> {
    let url = format!("redis://{REDIS_HOST}/{db}");
    if !reachable(&url) {
        skip(test, &format!("Redis not reachable at {REDIS_HOST}"));
        return None;
    }
    let mut conn = redis::Client::open(url.as_str())
        .ok()?
        .get_connection()
        .ok()?;
    redis::cmd("FLUSHDB")
        .query::<()>(&mut conn)
        .expect("FLUSHDB");
    Some(url)
}

/// A Redis list of the test's own in a database shared by such tests (13):
/// its URL and a unique queue name. For tests whose routines route their
/// messages to that queue; no worker involved.
pub fn redis_queue(test: &str) -> Option<(String, String)> {
    let url = format!("redis://{REDIS_HOST}/13");
    if !reachable(&url) {
        skip(test, &format!("Redis not reachable at {REDIS_HOST}"));
        return None;
    }
    Some((url, unique(test)))
}

pub fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Collects a child's stderr line by line, on a thread of its own;
/// `watch` sees each line as it comes.
fn collect_stderr(
    child: &mut std::process::Child,
    watch: impl Fn(&str) + Send + 'static,
) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            watch(&line);
            lines.lock().unwrap().push(line);
        }
    });
    log
}

/// A real `celery worker` (solo pool, one task at a time) on `broker`,
/// consuming `queues`; killed when dropped.
pub struct CeleryWorker {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl CeleryWorker {
    pub fn start(python: &std::path::Path, broker: &str, queues: &str) -> CeleryWorker {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
        let mut child = std::process::Command::new(python)
            .args([
                "-m",
                "celery",
                "-A",
                "celery_app",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "info",
                "-Q",
                queues,
            ])
            .arg(format!("--hostname=cdk-{}@%h", std::process::id()))
            .current_dir(dir)
            .env("CDK_BROKER_URL", broker)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start celery worker");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = collect_stderr(&mut child, move |line| {
            if line.contains(" ready.") {
                let _ = ready_tx.send(());
            }
        });
        let worker = CeleryWorker { child, log };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("celery worker not ready in 60 s:\n{}", worker.log());
        }
        worker
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The calls `tasks.record` saw, in order.
pub fn recorded_calls(redis_url: &str) -> Vec<serde_json::Value> {
    let mut conn = redis_conn(redis_url);
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg("calls")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A TCP proxy the test owns, to cut and restore a service without
/// touching the service itself.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    open: bool,
    streams: Vec<std::net::TcpStream>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            streams: Vec::new(),
        }));
        let upstream = upstream.to_owned();
        {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !state.lock().unwrap().open {
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        continue;
                    };
                    {
                        let mut st = state.lock().unwrap();
                        st.streams.push(client.try_clone().unwrap());
                        st.streams.push(server.try_clone().unwrap());
                    }
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            });
        }
        Proxy { port, state }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.open = false;
        for stream in st.streams.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().open = true;
    }
}

/// Every variable the `beat` binary reads: cleared for the processes the
/// tests start, so that the host's settings cannot leak into a test.
pub const BEAT_VARS: [&str; 31] = [
    "SCHEDULER_DB_URI",
    "SCHEDULER_MAX_INTERVAL",
    "SCHEDULER_SYNC_EVERY",
    "SCHEDULER_WATCH_INTERVAL",
    "CELERY_MAX_RETRY",
    "CELERY_RETRY_DELAY",
    "DEFAULT_CELERY_MAX_RETRY",
    "DEFAULT_CELERY_RETRY_DELAY",
    "CREATE_TABLE",
    "CELERY_BROKER_URL",
    "WORKER_CONCURRENCY",
    "SHUTDOWN_TIMEOUT",
    "SCHEDULER_MISFIRE_POLICY",
    "SCHEDULER_MISFIRE_GRACE_TIME",
    "SCHEDULER_DB_TIMEOUT",
    "BROKER_DEDUP_WINDOW",
    "TIMEZONE",
    "CELERY_TIMEZONE",
    "HISTORY",
    "HISTORY_MAX_AGE",
    "HISTORY_MAX_RUNS",
    "SCHEDULER_HEARTBEAT_INTERVAL",
    "SCHEDULER_DEAD_AFTER",
    "HTTP_ADDR",
    "HTTP_TOKEN",
    "HTTP_TOKENS",
    "HTTP_TOKENS_FILE",
    "HTTP_PUBLIC_READ",
    "AUDIT_MAX_AGE",
    "AUDIT_MAX_EDITS",
    "RUST_LOG",
];

/// CPU time (user and system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|t| t.parse::<u64>().ok()))
        .sum();
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    ticks as f64 / per_second as f64
}

/// A `beat` process; its stderr is collected line by line. Killed when
/// dropped.
pub struct BeatProcess {
    pub child: std::process::Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl BeatProcess {
    /// Starts the `beat` binary with `env` (and nothing of the host's beat
    /// settings).
    /// (`CDK_BEAT_BIN` names another build of the binary, to measure an
    /// older version with today's tests.)
    pub fn start(env: &[(&str, &str)]) -> BeatProcess {
        BeatProcess::start_with(&[], env)
    }

    /// As [`BeatProcess::start`], with command-line arguments.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> BeatProcess {
        let binary =
            std::env::var("CDK_BEAT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_beat").to_owned());
        let mut cmd = std::process::Command::new(binary);
        cmd.args(args);
        for var in BEAT_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("start beat");
        let log = collect_stderr(&mut child, |_| {});
        BeatProcess { child, log }
    }

    /// Lines logged so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (up to `limit`) for the exit; returns whether it
    /// exited successfully.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader finish
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BeatProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A message a beat published, as the tests read it back.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub routine: String,
    pub task: String,
}

/// How many messages wait in the Redis list `queue`.
pub fn published_count(redis_url: &str, queue: &str) -> usize {
    redis::cmd("LLEN")
        .arg(queue)
        .query(&mut redis_conn(redis_url))
        .unwrap()
}

/// The envelopes waiting in the Redis list `key`, oldest first.
pub fn envelopes(redis_url: &str, key: &str) -> Vec<serde_json::Value> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut redis_conn(redis_url))
        .unwrap();
    raw.iter()
        .rev()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect()
}

/// A message's body: `[args, kwargs, embed]`.
pub fn body(envelope: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(envelope["body"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Every message waiting in the Redis list `queue`, oldest first. The
/// routines of these tests carry their own name in kwargs (`{"r": name}`).
pub fn published(redis_url: &str, queue: &str) -> Vec<Published> {
    envelopes(redis_url, queue)
        .iter()
        .map(|envelope| Published {
            id: envelope["headers"]["id"].as_str().unwrap().to_owned(),
            routine: body(envelope)[1]["r"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            task: envelope["headers"]["task"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// SplitMix64: a small seeded generator, so that every run of a test
/// checks the same cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A clock the test sets (and moves) by hand.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    pub fn at(t: DateTime<Utc>) -> TestClock {
        TestClock(Arc::new(Mutex::new(t)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

impl celery_diesel_kit::Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Every log line of this test process, from the first call on (a logger
/// can be installed once per process; tests filter by their own routines).
pub fn captured_log() -> &'static Mutex<Vec<String>> {
    struct Capture;
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: std::sync::Once = std::sync::Once::new();
    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Info
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                LINES
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", record.level(), record.args()));
            }
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture;
    INSTALL.call_once(|| {
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
    &LINES
}

/// The local TCP ports of a process's sockets (to tell its database
/// sessions from another process's, by their client port).
pub fn tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            if inodes.contains(*inode) {
                if let Some(port) = local
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

/// Sends `signal` (`STOP`, `CONT`, ...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A task that blocks until the test lets it go (or a minute passes).
pub struct Gate {
    started: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl SyncTask for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn run(&self, _: &TaskContext) -> TaskResult {
        let _ = self.started.send(());
        let _ = self.release.recv_timeout(Duration::from_secs(60));
        Ok(())
    }
}

/// A gate task, the receiver of its starts, and the sender that releases
/// one run.
pub fn gate() -> (
    Gate,
    crossbeam_channel::Receiver<()>,
    crossbeam_channel::Sender<()>,
) {
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    (
        Gate {
            started: started_tx,
            release: release_rx,
        },
        started_rx,
        release_tx,
    )
}
