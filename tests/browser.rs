//! The dashboard in a real headless Chromium, against a real `beat`
//! process on PostgreSQL: tests/python/dashboard.py sees nothing before it
//! logs in, logs in as a named operator, disables a routine (and sees the
//! change under its name), fixes a bad schedule after a preview, runs a
//! routine now and takes the README's screenshot; this test then checks
//! in the database that the serving beat did what the page said, and that
//! the audit trail names the operator.
//!
//! Needs Debian's `chromium` and `chromium-driver`, and Selenium (from
//! PyPI, installed into `target/celery-venv`); skipped loudly without them
//! (a failure under CI, whose `.ci/run` installs them). Set
//! `CDK_SCREENSHOT=docs/dashboard.png` to refresh the README's picture.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::Via;
use chrono::{DateTime, Timelike, Utc};
use common::web::{get, tool};
use common::{celery_python, holds_for, wait_until, BeatProcess, TestDb};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const OPERATOR: &str = "alice";
const TOKEN: &str = "browser-test-operator-token";

/// The test venv's Python, with Selenium (installed on first use).
fn selenium_python(test: &str) -> Option<PathBuf> {
    let python = celery_python(test)?;
    let has = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "selenium>=4.20,<5"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !has(&python) {
            common::skip(test, "cannot install selenium into target/celery-venv");
            return None;
        }
    }
    Some(python)
}

#[test]
fn an_operator_steers_the_beat_from_the_dashboard_in_a_real_browser() {
    let test = "an_operator_steers_the_beat_from_the_dashboard_in_a_real_browser";
    if tool(test, "chromium", "chromium").is_none()
        || tool(test, "chromedriver", "chromium-driver").is_none()
    {
        return;
    }
    let Some(python) = selenium_python(test) else {
        return;
    };
    let Some(db) = TestDb::postgres("browser") else {
        return;
    };
    let config = db.config();
    Operator::migrate(config.clone()).expect("migrate");
    db.exec(
        r#"INSERT INTO routines (id, name, task, schedule, kwargs, options, active, total_run_count, needs_sync) VALUES
           ('00000000-0000-4000-8000-000000000001', 'tick-every-second', 'demo.hello', '{"timedelta": 1}', '{"who": "browser"}', '{}', true, 0, true),
           ('00000000-0000-4000-8000-000000000002', 'broken-report', 'demo.hello', '{"minute": "99"}', '{}', '{}', true, 0, true),
           ('00000000-0000-4000-8000-000000000003', 'ad-hoc', 'demo.hello', '{"timedelta": 86400}', '{}', '{}', true, 0, true),
           ('00000000-0000-4000-8000-000000000004', 'nightly-cleanup', 'demo.sleep', '{"minute": 30, "hour": 2, "timezone": "Europe/Berlin"}', '{"seconds": 0.1}', '{}', true, 0, true)"#,
    );
    let port = common::web::free_port();
    let addr = format!("127.0.0.1:{port}");
    let beat = BeatProcess::start_with(
        &["--http", &addr],
        &[
            ("SCHEDULER_DB_URI", db.url.as_str()),
            ("HTTP_TOKENS", &format!("{OPERATOR}:{TOKEN}")),
            ("SCHEDULER_WATCH_INTERVAL", "0.2"),
            ("RUST_LOG", "info"),
        ],
    );
    let socket = addr.parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(socket).is_ok() && get(socket, "/readyz").status == 200
        }),
        "the beat never got ready:\n{}",
        beat.log()
    );
    // The routine to disable has run before it is disabled.
    let op = Operator::connect(config.clone()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        !op.history(Some("tick-every-second"), false, None, 10)
            .unwrap()
            .is_empty()
    }));

    let screenshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join("dashboard.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/dashboard.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{addr}"))
        .arg(OPERATOR)
        .arg(TOKEN)
        .arg(&screenshot)
        .output()
        .expect("run the browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{}\n--- beat log\n{}",
        String::from_utf8_lossy(&out.stderr),
        beat.log()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("the browser saw: {seen}");

    // Disabled: the serving beat fired it no more.
    let disabled_at: DateTime<Utc> = seen["disabled_at"].as_str().unwrap().parse().unwrap();
    let row = op.store().routine("tick-every-second").unwrap().unwrap();
    assert!(!row.active);
    // Nothing dispatched more than a second after the disable (the watch
    // interval is 0.2 s), checked until 3 s after it: long enough that a
    // routine firing every second would have fired again.
    let after = || {
        op.history(Some("tick-every-second"), false, None, 1000)
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.dispatched_at
                    .is_some_and(|t| t.and_utc() > disabled_at + chrono::Duration::seconds(1))
            })
            .collect::<Vec<_>>()
    };
    let window = (disabled_at + chrono::Duration::seconds(3) - Utc::now())
        .to_std()
        .unwrap_or_default();
    assert!(
        holds_for(window, || after().is_empty()),
        "fired after the disable: {:?}",
        after()
    );

    // The audit trail names the operator, for the disable and the fix.
    let edits = op.edits(None, None, 100).unwrap();
    let by_alice: Vec<(&str, &str)> = edits
        .iter()
        .filter(|e| e.actor.as_deref() == Some(OPERATOR))
        .map(|e| (e.routine.as_str(), e.changes[0].column.as_str()))
        .collect();
    assert_eq!(
        by_alice,
        vec![
            ("broken-report", "schedule"),
            ("tick-every-second", "active")
        ],
        "{edits:#?}"
    );
    assert!(edits
        .iter()
        .all(|e| e.actor.as_deref() != Some(OPERATOR) || e.via == Via::Dashboard));

    // Fixed: the error the page showed is gone, and it is planned.
    assert!(seen["error_before"].as_str().unwrap().contains("minute"));
    let fixed = op.store().routine("broken-report").unwrap().unwrap();
    assert_eq!(fixed.last_error, None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&fixed.schedule).unwrap(),
        serde_json::json!({"minute": "*/5"})
    );
    assert!(fixed.next_run_at_utc().is_some_and(|t| t.minute() % 5 == 0));

    // Run now: recorded as on demand, as the page showed.
    let runs = op.history(Some("ad-hoc"), false, None, 10).unwrap();
    assert_eq!(runs.iter().filter(|r| r.on_demand).count(), 1, "{runs:?}");
    assert!(seen["on_demand_row"]
        .as_str()
        .unwrap()
        .contains("(on demand)"));

    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(copy) = std::env::var("CDK_SCREENSHOT") {
        std::fs::copy(
            &screenshot,
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(copy),
        )
        .unwrap();
    }
    drop(beat);
}
