//! The benchmark's smoke run: every scenario, small, on every backend, so
//! that `bench` cannot rot. Figures are not judged here (never in a timed
//! test); correctness is: nothing missed, nothing repeated.

mod common;

use serde_json::Value;

#[test]
fn bench_smoke_run_reports_every_scenario_without_misses_or_repeats() {
    let test = "bench_smoke";
    for (name, url) in [
        ("PostgreSQL", common::POSTGRES_ADMIN_URL),
        ("MariaDB", common::MYSQL_ADMIN_URL),
    ] {
        if common::TestDb::of(
            if name == "MariaDB" {
                common::Kind::Mysql
            } else {
                common::Kind::Postgres
            },
            test,
        )
        .is_none()
        {
            return common::skip(test, &format!("{name} not reachable at {url}"));
        }
    }
    if common::redis_queue(test).is_none() {
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let backends = if cfg!(feature = "mysql") { 3 } else { 2 };
    assert_eq!(
        lines.len(),
        4 * backends,
        "one line per scenario and backend:\n{lines:#?}"
    );
    for line in &lines {
        match line["scenario"].as_str().unwrap() {
            "scale" => assert!(
                line["first_dispatch_s"].as_f64().unwrap() > 0.0
                    && line["dispatched"].as_u64().unwrap() >= 10,
                "{line}"
            ),
            "burst" => {
                assert_eq!(line["distinct_ids"], line["routines"], "{line}");
                assert_eq!(
                    (line["repeats"].as_u64(), line["rows_advanced"].as_u64()),
                    (Some(0), line["routines"].as_u64()),
                    "{line}"
                );
            }
            "steady" => assert_eq!(
                (line["misses"].as_u64(), line["repeats"].as_u64()),
                (Some(0), Some(0)),
                "{line}"
            ),
            "edit" => assert!(line["p99_ms"].as_f64().unwrap() > 0.0, "{line}"),
            other => panic!("unknown scenario {other}"),
        }
    }
}
