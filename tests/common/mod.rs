//! Shared test support: real databases and processes, one per test.
//!
//! Services are found at their usual local addresses (override with
//! `CDK_TEST_POSTGRES_URL`, `CDK_TEST_MYSQL_URL`). A test whose service is
//! missing is skipped with a line on stderr that `cargo test` does not
//! swallow; under `CI=true` a missing service fails the test instead.
//!
//! Layout, one module per concern (the names tests use most are
//! re-exported here):
//! - `db`: a database of the test's own (`TestDb`), one test per backend
//!   (`backend_tests!`), and what a test asks of the database's sessions.
//! - `routines`: routines as tests write them (`every`, tagged rows seeded
//!   by SQL) and read them back (`is_active`).
//! - `clock`: fixed times (`at`, `utc`) and a clock the test moves.
//! - `wait`: waiting on a condition (`wait_until`), and checking one over a
//!   window (`holds_for`); the one place tests poll.
//! - `tasks`: tasks that record their runs or block until released.
//! - `redis`: a Redis database or queue of the test's own, and the
//!   messages a beat left there.
//! - `rabbit`: a RabbitMQ virtual host of the test's own, and the
//!   messages waiting there as py-amqp reads them.
//! - `tally`: those messages checked against each routine's due times.
//! - `faults`: the chaos soak's seeded schedule of faults, and what each
//!   may explain; `accounting`: the soak's runs judged against the
//!   messages, the worker, the edits and the faults.
//! - `celery`: the Celery virtualenv and a real Celery worker.
//! - `python`: the beat as a Celery user installs it (the wheel).
//! - `process`: `beat` processes, their logs and their exit.
//! - `proc`: what `/proc` says about a process, and signals.
//! - `proxy`: a TCP proxy the test cuts, restores and slows down.
//! - `log`: this test process's own log lines.
//! - `rng`: a small seeded generator.
//! - `cli`, `sql`, `web`: the `beat` command, raw SQL, an HTTP client.

#![allow(dead_code)]

pub mod accounting;
pub mod celery;
pub mod cli;
pub mod clock;
pub mod db;
pub mod faults;
pub mod kit;
pub mod log;
pub mod proc;
pub mod process;
pub mod proxy;
pub mod python;
pub mod rabbit;
pub mod redis;
pub mod rng;
pub mod routines;
pub mod runs;
pub mod sql;
pub mod tally;
pub mod tasks;
pub mod wait;
pub mod web;

// Each test file uses some of these; the rest are not unused, only
// unused there.
#[allow(unused_imports)]
pub use self::{
    celery::{celery_python, recorded_calls, CeleryWorker},
    clock::{at, utc, TestClock, T0},
    db::{mysql_admin_url, postgres_admin_url, Kind, TestDb},
    log::captured_log,
    proc::{cpu_seconds, signal, tcp_ports},
    process::{BeatProcess, BEAT_VARS},
    proxy::Proxy,
    redis::{
        body, envelopes, published, published_count, redis_conn, redis_db, redis_queue, Published,
        REDIS_HOST,
    },
    rng::Rng,
    routines::{every, is_active, tester},
    tasks::{gate, Gate, Recorder, Run},
    wait::{holds_for, wait_until},
};

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Whether missing services are failures (CI) or skips (a laptop).
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Reports a skipped test where `cargo test` shows it, or fails under CI.
pub fn skip(test: &str, why: &str) {
    if services_required() {
        panic!("{test}: {why} (CI=true: every service is required)");
    }
    report(&format!("\n*** SKIPPED {test}: {why} ***"));
}

/// Writes a line (a measurement, a skip) to the process's stderr directly:
/// the test harness captures only `print!`/`eprint!`, so this line is
/// always visible.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether the server a URL names accepts TCP connections.
pub fn reachable(url: &str) -> bool {
    let Some(host_port) = host_port(url) else {
        return false;
    };
    let Ok(mut addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .next()
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// The `host:port` of a URL (`scheme://user:password@host:port/path`).
pub fn host_port(url: &str) -> Option<&str> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit('@').next()
}

/// Seconds from the environment variable `var` (a longer soak, a longer
/// measurement), or `default`.
pub fn env_seconds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (nor another run of this one) uses: for databases,
/// directories and queues.
pub fn unique(test: &str) -> String {
    let clean: String = test
        .chars()
        .take(30)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "cdk_{clean}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}
