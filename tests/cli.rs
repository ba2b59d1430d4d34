//! The `beat` binary: the README's demo, signals, and errors a user sees.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BEAT: &str = env!("CARGO_BIN_EXE_beat");

fn workdir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cdk-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn beat(dir: &Path) -> Command {
    let mut cmd = Command::new(BEAT);
    cmd.current_dir(dir);
    for var in common::BEAT_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Stderr lines of a running beat, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_readme_demo_runs_on_embedded_sqlite_and_stops_on_sigterm() {
    let dir = workdir("demo");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/routines.json"),
        dir.join("routines.json"),
    )
    .unwrap();
    let mut child = beat(&dir).stderr(Stdio::piped()).spawn().unwrap();
    let out = lines(&mut child);
    let mut seen = Vec::new();
    let fired =
        wait_for(&out, &mut seen, "hello, world!") && wait_for(&out, &mut seen, "async tick");
    sigterm(&child);
    let stopped = wait_for(&out, &mut seen, "beat: stopped");
    let status = child.wait().unwrap();
    let log = seen.join("\n");
    assert!(fired, "demo routines did not fire:\n{log}");
    assert!(
        stopped && status.success(),
        "no clean stop ({status}):\n{log}"
    );
    assert!(
        dir.join("celery-beat.sqlite3").exists(),
        "the default database is a local SQLite file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_routines_file_nothing_is_declared_or_deleted() {
    let Some(db) = common::TestDb::postgres("cli_no_routines") else {
        return;
    };
    db.store();
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('by sql', 'demo.hello', '{"timedelta": 1}')"#);
    // Run from the repository root, where routines.json exists: with a
    // database configured it must not be used (it would delete 'by sql').
    let mut child = beat(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("SCHEDULER_DB_URI", &db.url)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(&mut child);
    let mut seen = Vec::new();
    let fired = wait_for(&out, &mut seen, "[by sql] hello, world!");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(fired, "{}", seen.join("\n"));
    let names: Vec<String> = db
        .store()
        .routines()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["by sql"]);
}

#[test]
fn bad_input_is_a_clear_error_naming_the_culprit() {
    let dir = workdir("bad");
    std::fs::write(
        dir.join("bad.json"),
        r#"[{"name": "nightly", "task": "t", "schedule": {"hour": 25}}]"#,
    )
    .unwrap();
    let out = beat(&dir)
        .args(["--routines", "bad.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routine nightly") && err.contains("hour"),
        "{err}"
    );

    let out = beat(&dir)
        .env("SCHEDULER_MAX_INTERVAL", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("invalid scheduler_max_interval = \"soon\""),
        "{err}"
    );

    let out = beat(&dir)
        .env("SCHEDULER_DB_URI", "postgres://app:hunter2@127.0.0.1:1/app")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("app:***@") && !err.contains("hunter2"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `beat --config FILE`: the file's keys are used (its database and its
/// zone), a variable overrides the file and an empty one leaves it, as
/// `Config::load` documents; a file that cannot be read or has a bad line
/// is an error naming the file and the line.
#[test]
fn a_config_file_is_used_under_the_environment_and_its_errors_name_file_and_line() {
    let dir = workdir("config");
    let db_file = dir.join("from-file.sqlite3");
    std::fs::write(
        dir.join("beat.conf"),
        format!(
            "# the beat's settings\ntimezone = Asia/Kathmandu\nscheduler_db_uri = \"sqlite://{}\"\n",
            db_file.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = beat(&dir)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let zone = |env: &[(&str, &str)]| {
        let next = [
            "--config",
            "beat.conf",
            "--json",
            "next",
            r#"{"minute": "0", "hour": "9"}"#,
        ];
        let (code, out, err) = run(&next, env);
        assert_eq!(code, Some(0), "{out}{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["timezone"].as_str().unwrap().to_owned()
    };
    assert_eq!(zone(&[]), "Asia/Kathmandu", "the file's zone");
    assert_eq!(
        zone(&[("TIMEZONE", "Pacific/Chatham")]),
        "Pacific/Chatham",
        "the variable wins"
    );
    assert_eq!(
        zone(&[("TIMEZONE", "")]),
        "Asia/Kathmandu",
        "an empty variable leaves the file's"
    );

    let (code, out, err) = run(&["--config", "beat.conf", "migrate"], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        db_file.exists(),
        "the file's database was not created: {out}{err}"
    );
    assert!(
        !dir.join("celery-beat.sqlite3").exists(),
        "the default database was used"
    );

    let errors = [
        (
            "missing.conf",
            None,
            "error: cannot read missing.conf: No such file",
        ),
        (
            "syntax.conf",
            Some("history = on\n\njust words\n"),
            "error: syntax.conf:3: expected `key = value`",
        ),
        (
            "unknown.conf",
            Some("histroy = on\n"),
            "error: unknown.conf:1: unknown configuration key \"histroy\"",
        ),
        (
            "value.conf",
            Some("# ok\nhistory = sometimes\n"),
            "error: value.conf:2: invalid history = \"sometimes\": expected true or false",
        ),
    ];
    for (file, text, expected) in errors {
        if let Some(text) = text {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let (code, out, err) = run(&["--config", file, "next", r#"{"timedelta": 5}"#], &[]);
        assert_eq!(code, Some(1), "{file}: {out}{err}");
        assert!(out.is_empty(), "{file}: {out}");
        assert!(
            err.starts_with(expected),
            "{file}: expected {expected:?}, got {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "{file}: one line: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--http ADDR` names where the listener is, whatever `HTTP_ADDR` says
/// (the flag is applied after every other source of configuration, the
/// environment included).
#[test]
fn the_http_flag_wins_over_http_addr() {
    let dir = workdir("http_flag");
    let db = common::TestDb::sqlite("cli_http_flag");
    let (flag, env) = (common::web::free_port(), common::web::free_port());
    let mut child = beat(&dir)
        .args(["--http", &format!("127.0.0.1:{flag}")])
        .env("SCHEDULER_DB_URI", &db.url)
        .env("HTTP_ADDR", format!("127.0.0.1:{env}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(&mut child);
    let mut seen = Vec::new();
    let listening = wait_for(&out, &mut seen, "http: listening on http://");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(listening, "{}", seen.join("\n"));
    let line = seen
        .iter()
        .find(|l| l.contains("http: listening on"))
        .unwrap();
    assert!(
        line.contains(&format!("http://127.0.0.1:{flag} ")),
        "{line}"
    );
}
