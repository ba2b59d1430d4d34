//! The bench as a test: under `cargo test` (no `--bench` argument) every
//! scenario runs small on every backend this build has, and the figures are
//! checked for correctness only (nothing missed, nothing repeated), never
//! for speed. Arguments other than flags filter the cases by name, as the
//! test harness does: `cargo test -- bench_smoke::postgres`.

use super::Backend;
use crate::common;
use serde_json::Value;
use std::process::ExitCode;

/// The edits the smoke run makes (`--smoke`).
pub(crate) const EDITS: usize = 10;

/// Options of the bench itself; with any of them it measures.
const BENCH_OPTIONS: [&str; 17] = [
    "--bench",
    "--smoke",
    "--db",
    "--scenario",
    "--scale",
    "--burst",
    "--steady-routines",
    "--steady-seconds",
    "--edits",
    "--idle-seconds",
    "--postgres-url",
    "--mysql-url",
    "--redis-url",
    "--broker",
    "--amqp-url",
    "--herd-routines",
    "--jitter",
];

/// Whether this process was started by `cargo test` rather than to
/// measure: `cargo bench` passes `--bench`, and a measurement names its
/// options; the test harness passes only filters and its own flags.
pub(crate) fn is_test_run(args: &[String]) -> bool {
    !args
        .iter()
        .any(|a| BENCH_OPTIONS.contains(&a.as_str()) || a == "-h" || a == "--help")
}

/// Runs the smoke cases the filters select; reports them as the test
/// harness would.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let mut backends = vec![Backend::Postgres, Backend::Sqlite];
    if cfg!(feature = "mysql") {
        backends.push(Backend::Mysql);
    }
    let cases: Vec<(String, Backend)> = backends
        .into_iter()
        .map(|b| (format!("bench_smoke::{}", b.name()), b))
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    println!("\nrunning {} tests", cases.len());
    let mut failed = Vec::new();
    for (name, backend) in &cases {
        match case(name, *backend) {
            Ok(true) => println!("test {name} ... ok"),
            Ok(false) => println!("test {name} ... skipped"),
            Err(why) => {
                println!("test {name} ... FAILED");
                failed.push(format!("{name}: {why}"));
            }
        }
    }
    for failure in &failed {
        eprintln!("\n---- {failure}");
    }
    println!(
        "\ntest result: {}. {} passed; {} failed\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        cases.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One backend's smoke run: `Ok(false)` when skipped for a missing service.
fn case(name: &str, backend: Backend) -> Result<bool, String> {
    let server = match backend {
        Backend::Postgres => Some(("PostgreSQL", common::postgres_admin_url())),
        Backend::Mysql => Some(("MySQL/MariaDB", common::mysql_admin_url())),
        Backend::Sqlite => None,
    };
    let redis = format!("redis://{}/14", common::REDIS_HOST);
    for (service, url) in server.into_iter().chain([("Redis", redis)]) {
        if !common::reachable(&url) {
            // Fails the run under CI=true (a panic: exit status 101).
            common::skip(name, &format!("{service} not reachable at {url}"));
            return Ok(false);
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = std::process::Command::new(exe)
        .args(["--bench", "--smoke", "--db", backend.name()])
        .output()
        .map_err(|e| format!("cannot run the bench: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("the bench failed:\n{stderr}"));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON: {l}: {e}")))
        .collect::<Result<_, _>>()?;
    check(&lines)?;
    Ok(true)
}

/// What every smoke run must show: each scenario once, and the beat's
/// guarantees (nothing missed, nothing repeated, every row advanced once,
/// every edit taken in).
fn check(lines: &[Value]) -> Result<(), String> {
    let mut seen: Vec<&str> = lines
        .iter()
        .map(|l| l["scenario"].as_str().unwrap_or("?"))
        .collect();
    seen.sort_unstable();
    if seen != ["burst", "edit", "scale", "steady"] {
        return Err(format!("expected one line per scenario, got {lines:#?}"));
    }
    for line in lines {
        let number = |key: &str| line[key].as_f64().unwrap_or(f64::NAN);
        let ok = match line["scenario"].as_str() {
            Some("scale") => number("first_dispatch_s") > 0.0 && number("dispatched") >= 10.0,
            Some("burst") => {
                line["distinct_ids"] == line["routines"]
                    && number("repeats") == 0.0
                    && line["rows_advanced"] == line["routines"]
            }
            Some("steady") => number("misses") == 0.0 && number("repeats") == 0.0,
            // Every edit made, each taken in by the beat (the scenario
            // checks the row's new plan), and the latencies in order;
            // 10 s is the scenario's own bound on one edit.
            Some("edit") => {
                let (p50, p99, max) = (number("p50_ms"), number("p99_ms"), number("max_ms"));
                number("edits") == EDITS as f64
                    && number("applied") == EDITS as f64
                    && 0.0 < p50
                    && p50 <= p99
                    && p99 <= max
                    && max < 10_000.0
            }
            _ => false,
        };
        if !ok {
            return Err(format!("{line}"));
        }
    }
    Ok(())
}
