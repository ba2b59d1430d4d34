//! Python users: the wheel (`pip install` gives `beat` and the
//! `celery_diesel_kit` package), and routines declared in their Celery app
//! (`beat_schedule`, the kit's task classes) synced into the table by the
//! kit's source-of-truth rules (`python -m celery_diesel_kit sync`, `beat
//! sync --celery-app`, `beat --celery-app`).
//!
//! Under `.ci/run` these run the wheel it built, installed into a fresh
//! virtualenv (`tests/common/python.rs`); a plain `cargo test` runs this
//! build's `beat` with the package from `python/`, and skips the test of
//! the wheel itself, loudly.

mod common;

use common::cli::Ran;
use common::python::{built_wheel, UserBeat};
use common::{redis_conn, redis_db, unique, wait_until, BeatProcess, CeleryWorker, TestDb};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A Celery user's project: `proj/celery.py`, whose app declares periodic
/// tasks in `beat_schedule` (a number, a `timedelta`, Celery's
/// `schedule(run_every=...)`, a crontab in the app's zone; args, kwargs, a
/// queue) and with task classes (this package's `SyncTask`, and
/// celery-sqlalchemy-kit's own, unchanged). Every run records its call in
/// the broker's Redis (`calls`). `CDK_DROP` removes entries (a comma list);
/// `CDK_SOLAR` adds a solar one.
const PROJECT: &str = r#"
import json
import os
from datetime import timedelta

import celery_sqlalchemy_kit
import redis
from celery import Celery
from celery.schedules import crontab, schedule, solar

from celery_diesel_kit import SyncTask

app = Celery("proj", broker=os.environ["CDK_BROKER_URL"])
app.conf.update(
    timezone="Asia/Kolkata",
    scheduler_db_uri=os.environ["CDK_DB_URI"],
    task_default_queue="celery",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
_calls = redis.Redis.from_url(os.environ["CDK_BROKER_URL"])


def _record(request, entry, args, kwargs):
    delivery = request.delivery_info or {}
    _calls.rpush("calls", json.dumps({
        "entry": entry, "id": request.id, "args": list(args), "kwargs": kwargs,
        "queue": delivery.get("routing_key"),
    }))


@app.task(name="proj.record", bind=True)
def record(self, *args, **kwargs):
    _record(self.request, kwargs.get("entry"), args, kwargs)


beat_schedule = {
    "every 2 s": {"task": "proj.record", "schedule": 2, "args": (1, "two"),
                  "kwargs": {"entry": "every 2 s"}},
    "timedelta": {"task": "proj.record", "schedule": timedelta(seconds=3),
                  "kwargs": {"entry": "timedelta"}, "options": {"queue": "reports"}},
    "schedule object": {"task": "proj.record", "schedule": schedule(run_every=timedelta(seconds=2)),
                        "args": ["obj"], "kwargs": {"entry": "schedule object"}},
    "every minute": {"task": "proj.record", "schedule": crontab(minute="*"),
                     "kwargs": {"entry": "every minute"}},
}
for name in filter(None, os.environ.get("CDK_DROP", "").split(",")):
    del beat_schedule[name]
if os.environ.get("CDK_SOLAR"):
    beat_schedule["sunset"] = {"task": "proj.record", "schedule": solar("sunset", 52.5, 13.4)}
app.conf.beat_schedule = beat_schedule


class Report(SyncTask):
    name = "report"
    schedule = 2
    kwargs = {"entry": "report"}
    options = {"queue": "kit"}

    def run(self, *args, **kwargs):
        _record(self.request, "report", args, kwargs)


class Legacy(celery_sqlalchemy_kit.SyncTask):
    name = "legacy"
    schedule = 2
    kwargs = {"entry": "legacy"}

    def run(self, *args, **kwargs):
        _record(self.request, "legacy", args, kwargs)


app.register_task(Report())
app.register_task(Legacy())
"#;

const APP: &str = "proj.celery:app";

/// A directory of the test's own holding the project.
fn project(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(test));
    std::fs::create_dir_all(dir.join("proj")).unwrap();
    std::fs::write(dir.join("proj/__init__.py"), "").unwrap();
    std::fs::write(dir.join("proj/celery.py"), PROJECT).unwrap();
    dir
}

/// Runs `cmd` in `dir` with `env` to its end.
fn run(mut cmd: Command, dir: &Path, env: &[(&str, &str)]) -> Ran {
    cmd.current_dir(dir).envs(env.iter().copied());
    Ran::of(cmd)
}

/// The user's `beat --celery-app proj.celery:app ARGS` in `dir`, serving.
fn serve(user: &UserBeat, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> BeatProcess {
    let mut cmd = user.beat_command();
    cmd.arg("--celery-app")
        .arg(APP)
        .args(user.python_args())
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info");
    let beat = BeatProcess::spawn(cmd);
    assert!(
        beat.logs_within(Duration::from_secs(60), "beat: running"),
        "{}",
        beat.log()
    );
    beat
}

/// `python -m celery_diesel_kit sync -A proj.celery:app`.
fn python_sync(user: &UserBeat, dir: &Path, env: &[(&str, &str)]) -> Ran {
    let mut cmd = user.python_command();
    cmd.args(["-m", "celery_diesel_kit", "sync", "-A", APP]);
    run(cmd, dir, env)
}

/// The row of `name` as JSON columns: schedule, args, kwargs, options.
fn row(db: &TestDb, name: &str) -> Option<Value> {
    let row = db.store().routine(name).expect("read the routine")?;
    let parse = |text: Option<&str>| {
        text.map(|t| serde_json::from_str::<Value>(t).expect("JSON column"))
            .unwrap_or(Value::Null)
    };
    Some(json!({
        "task": row.task,
        "schedule": parse(Some(&row.schedule)),
        "args": parse(row.args.as_deref()),
        "kwargs": parse(row.kwargs.as_deref()),
        "options": parse(row.options.as_deref()),
        "active": row.active,
    }))
}

/// The calls the project's tasks recorded, in order.
fn calls(redis_url: &str) -> Vec<Value> {
    let lines: Vec<String> = ::redis::cmd("LRANGE")
        .arg("calls")
        .arg(0)
        .arg(-1)
        .query(&mut redis_conn(redis_url))
        .expect("LRANGE calls");
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a recorded call"))
        .collect()
}

/// The project's periodic tasks as the table holds them after a sync.
fn expected_rows() -> BTreeMap<&'static str, Value> {
    // Celery's every minute; the kit's JSON refuses all five "*".
    let every_minute = json!({"minute": "*/1", "hour": "*", "day_of_week": "*",
        "day_of_month": "*", "month_of_year": "*", "timezone": "Asia/Kolkata"});
    let rows = [
        (
            "every 2 s",
            json!({"timedelta": 2}),
            json!([1, "two"]),
            json!({}),
        ),
        (
            "timedelta",
            json!({"timedelta": 3}),
            Value::Null,
            json!({"queue": "reports"}),
        ),
        (
            "schedule object",
            json!({"timedelta": 2}),
            json!(["obj"]),
            json!({}),
        ),
        ("every minute", every_minute, Value::Null, json!({})),
        (
            "report",
            json!({"timedelta": 2}),
            Value::Null,
            json!({"queue": "kit"}),
        ),
        ("legacy", json!({"timedelta": 2}), Value::Null, json!({})),
    ];
    rows.into_iter()
        .map(|(name, schedule, args, options)| {
            let task = if matches!(name, "report" | "legacy") {
                name
            } else {
                "proj.record"
            };
            let row = json!({"task": task, "schedule": schedule, "args": args,
                "kwargs": {"entry": name}, "options": options, "active": true});
            (name, row)
        })
        .collect()
}

/// The whole path of a Celery user, on PostgreSQL and Redis: `sync` writes
/// the app's periodic tasks to the table (each as the kit wrote it, the
/// crontab with the app's zone); the installed `beat --celery-app` serves
/// them, with the database and broker the app's configuration names; a
/// real worker runs each with its arguments on its queue; an entry removed
/// from the app is deleted by the next sync (here `beat sync
/// --celery-app`); a solar entry is refused by name, and a row of that
/// name stays; every call the worker made is a run in the history, once.
#[test]
fn a_celery_apps_periodic_tasks_run_on_a_real_worker() {
    let test = "celery_app_end_to_end";
    let Some(user) = UserBeat::get(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let Some(redis) = redis_db(test, 12) else {
        return;
    };
    let dir = project(test);
    let mut env: Vec<(&str, &str)> = vec![("CDK_BROKER_URL", &redis), ("CDK_DB_URI", &db.url)];
    let app_env = user.app_env();
    env.extend(app_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    let synced = python_sync(&user, &dir, &env);
    assert_eq!(synced.code, 0, "{synced:?}");
    assert!(
        synced.out.contains(
            "inserted: every 2 s, every minute, legacy, report, schedule object, timedelta"
        ),
        "{synced:?}"
    );
    for (name, expected) in expected_rows() {
        assert_eq!(row(&db, name).as_ref(), Some(&expected), "row {name}");
    }

    // The installed beat: no database or broker in its environment, only
    // the app, whose configuration names them.
    let mut beat = serve(&user, &dir, &env, &[]);
    assert!(
        beat.log()
            .contains("6 routine(s) declared by the Celery app proj.celery:app"),
        "{}",
        beat.log()
    );
    let worker = CeleryWorker::start_app(&user.python, &dir, APP, "celery,reports,kit", &env);

    let wanted = [
        ("every 2 s", json!([1, "two"]), "celery"),
        ("timedelta", json!([]), "reports"),
        ("schedule object", json!(["obj"]), "celery"),
        ("report", json!([]), "kit"),
        ("legacy", json!([]), "celery"),
    ];
    let ran_each = wait_until(Duration::from_secs(60), || {
        let calls = calls(&redis);
        wanted
            .iter()
            .all(|(entry, ..)| calls.iter().any(|c| c["entry"] == *entry))
    });
    assert!(
        ran_each,
        "calls: {:?}\n--- beat\n{}\n--- worker\n{}",
        calls(&redis),
        beat.log(),
        worker.log()
    );
    for call in calls(&redis) {
        let entry = call["entry"].as_str().expect("entry");
        if let Some((_, args, queue)) = wanted.iter().find(|(e, ..)| *e == entry) {
            assert_eq!(call["args"], *args, "{call}");
            assert_eq!(call["queue"], *queue, "{call}");
            assert_eq!(call["kwargs"], json!({"entry": entry}), "{call}");
        }
    }

    // `timedelta` leaves the app: the next sync (the beat's own command
    // this time) deletes its row, and only its row.
    let mut dropped = env.clone();
    dropped.push(("CDK_DROP", "timedelta"));
    let mut cmd = user.beat_command();
    cmd.args(["sync", "--celery-app", APP])
        .args(user.python_args());
    let resynced = run(cmd, &dir, &dropped);
    assert_eq!(resynced.code, 0, "{resynced:?}");
    assert!(
        resynced.out.contains("inserted: none")
            && resynced
                .out
                .contains("deleted (no longer declared): timedelta"),
        "{resynced:?}"
    );
    assert_eq!(row(&db, "timedelta"), None);

    // A solar entry is refused by name; a row of its name (made here by
    // hand) stays, and so does everything else.
    let mut cmd = user.beat_command();
    cmd.args([
        "add",
        "sunset",
        "--task",
        "proj.record",
        "--every",
        "1d",
        "--inactive",
    ]);
    // (With the database's URL as the kit's users wrote it: SQLAlchemy's
    // form, with its Python driver.)
    let kit_url = db.url.replacen("postgres://", "postgresql+psycopg2://", 1);
    assert_ne!(kit_url, db.url);
    let added = run(cmd, &dir, &[("SCHEDULER_DB_URI", &kit_url)]);
    assert_eq!(added.code, 0, "{added:?}");
    let mut solar = dropped.clone();
    solar.push(("CDK_SOLAR", "1"));
    let refused = python_sync(&user, &dir, &solar);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.err.contains("'sunset'") && refused.err.contains("solar"),
        "{refused:?}"
    );
    assert!(
        refused.out.contains("deleted (no longer declared): none"),
        "{refused:?}"
    );
    assert!(row(&db, "sunset").is_some());
    for (name, expected) in expected_rows() {
        if name != "timedelta" {
            assert_eq!(row(&db, name).as_ref(), Some(&expected), "row {name}");
        }
    }

    // The crontab, every minute in Kolkata: its first run.
    assert!(
        wait_until(Duration::from_secs(90), || calls(&redis)
            .iter()
            .any(|c| c["entry"] == "every minute" && c["queue"] == "celery")),
        "calls: {:?}\n{}",
        calls(&redis),
        beat.log()
    );
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());

    // A beat started on the app with the solar entry serves the rest and
    // says which entry it left out. (And its `--http` wins over the
    // environment's HTTP_ADDR, though the app's settings came after both.)
    let (flag, env_port) = (common::web::free_port(), common::web::free_port());
    let env_addr = format!("127.0.0.1:{env_port}");
    solar.push(("HTTP_ADDR", &env_addr));
    let flag_addr = format!("127.0.0.1:{flag}");
    let mut beat = serve(&user, &dir, &solar, &["--http", &flag_addr]);
    let log = beat.log();
    assert!(
        log.contains("routine sunset: not declared (its row, if any, is left as it is): beat_schedule entry: a solar schedule")
            && log.contains("5 routine(s) declared by the Celery app")
            && log.contains(&format!("http: listening on http://{flag_addr} ")),
        "{log}"
    );
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());
    assert!(row(&db, "sunset").is_some());

    // Every run the history holds reached the worker, once; nothing else
    // did. (The worker drains what is queued.)
    let op = celery_diesel_kit::ops::Operator::connect(db.config()).expect("connect");
    let runs = op.history(None, false, None, 100_000).expect("history");
    let published: Vec<&str> = runs
        .iter()
        .filter(|r| r.outcome == "published")
        .map(|r| r.task_id.as_str())
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || calls(&redis).len()
            >= published.len()),
        "{} runs published, {} calls",
        published.len(),
        calls(&redis).len()
    );
    let mut called: HashMap<String, usize> = HashMap::new();
    for call in calls(&redis) {
        *called
            .entry(call["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for id in &published {
        *recorded.entry((*id).to_owned()).or_default() += 1;
    }
    assert_eq!(
        called, recorded,
        "the worker's calls are the history's runs"
    );
    drop(worker);
    let _ = std::fs::remove_dir_all(dir);
}

/// The wheel `.ci/run` built, `pip install`ed into a fresh virtualenv with
/// nothing else (no index: the wheel needs nothing): `beat --version`,
/// `beat next`, the package at the same version, and the binary using the
/// OpenSSL copied into the wheel, not the system's.
#[test]
fn the_wheel_installs_beat_into_a_fresh_virtualenv() {
    let test = "the_wheel_installs_beat";
    let Some(wheel) = built_wheel(test) else {
        return;
    };
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("celery_diesel_kit-{version}-py3-none-manylinux_"))
            && name.ends_with("_x86_64.whl"),
        "{name}"
    );
    let venv = std::env::temp_dir().join(unique(test));
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "python3 -m venv");
    let python = venv.join("bin/python");
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-index"])
        .arg(&wheel)
        .output()
        .expect("pip");
    assert!(
        pip.status.success(),
        "{}",
        String::from_utf8_lossy(&pip.stderr)
    );

    let beat = venv.join("bin/beat");
    let out = Command::new(&beat)
        .arg("--version")
        .output()
        .expect("beat --version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("beat {version}\n")
    );
    let out = Command::new(&beat)
        .args([
            "next",
            r#"{"minute": "*/15", "hour": "9", "timezone": "Asia/Kolkata"}"#,
        ])
        .args(["--after", "2027-03-01T00:00:00Z", "-n", "3", "--json"])
        .output()
        .expect("beat next");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let utc: Vec<&str> = next["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["utc"].as_str().expect("utc"))
        .collect();
    // 09:00, 09:15, 09:30 in Kolkata (UTC+05:30).
    assert_eq!(
        utc,
        [
            "2027-03-01T03:30:00.000000Z",
            "2027-03-01T03:45:00.000000Z",
            "2027-03-01T04:00:00.000000Z"
        ]
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import celery_diesel_kit; print(celery_diesel_kit.__version__)",
        ])
        .output()
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), version);

    // The real binary (bin/beat is pip's launcher of it) finds OpenSSL in
    // the wheel's own libraries.
    let binary = std::fs::read_dir(venv.join("lib"))
        .expect("lib/")
        .filter_map(Result::ok)
        .map(|python_dir| {
            python_dir
                .path()
                .join("site-packages/celery_diesel_kit.scripts/beat")
        })
        .find(|p| p.is_file())
        .expect("the installed binary");
    let ldd = Command::new("ldd").arg(&binary).output().expect("ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let ssl: Vec<&str> = ldd.lines().filter(|l| l.contains("libssl")).collect();
    assert!(
        ssl.len() == 1 && ssl[0].contains("celery_diesel_kit.libs/"),
        "{ldd}"
    );
    let _ = std::fs::remove_dir_all(venv);
}

/// Crontabs through the bridge: random `crontab(...)` objects (ints,
/// strings, sets, lists, ranges) in an app's zone (zones without clock
/// changes, where Celery's own arithmetic is exact; across changes
/// tests/timezones.rs holds the rules), turned into schedule JSON by the
/// package, and the installed `beat next` from it: the same five fire
/// times as Celery's `remaining_estimate`, step by step.
#[test]
fn crontabs_through_the_bridge_fire_when_celery_says() {
    let test = "crontabs_through_the_bridge";
    let Some(user) = UserBeat::get(test) else {
        return;
    };
    let oracle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/bridge_oracle.py");
    let mut python = user.python_command();
    python
        .arg(oracle)
        .args(["20261204", "300"])
        .envs(user.app_env())
        .stdout(Stdio::piped());
    let mut child = python.spawn().expect("start the oracle");
    let lines: Vec<Value> = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map(|line| serde_json::from_str(&line.expect("a line")).expect("JSON"))
        .collect();
    assert!(child.wait().expect("oracle").success());
    let (cases, done) = lines.split_at(lines.len() - 1);
    assert_eq!(done[0]["done"], true, "{:?}", done[0]);

    let (mut compared, mut zoned) = (0, 0);
    for case in cases {
        let Some(celery) = case["celery"].as_array() else {
            continue;
        };
        let schedule = case["schedule"].to_string();
        let mut cmd = user.beat_command();
        cmd.args(["next", &schedule, "-n", "5", "--json", "--after"])
            .arg(case["after"].as_str().expect("after"));
        let out = cmd.output().expect("beat next");
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let ours: Vec<&Value> = ours["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| &r["utc"])
            .collect();
        let theirs: Vec<&Value> = celery.iter().collect();
        assert_eq!(ours, theirs, "{case}");
        compared += 1;
        if case["zone"] != "UTC" {
            zoned += 1;
        }
    }
    eprintln!("compared with Celery through the bridge: {compared} crontabs, {zoned} in a zone other than UTC");
    assert!(
        compared >= 200 && zoned >= 100,
        "{compared} compared, {zoned} zoned"
    );
}

/// A shop's app with every kind of declaration the bridge reads, and those
/// it refuses. Its settings include one of Celery's own that the beat
/// must not take (`worker_concurrency`).
const SHOP: &str = r#"
from datetime import datetime, timedelta

import celery_sqlalchemy_kit
from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule, solar

from celery_diesel_kit import SyncTask

app = Celery("shop", broker="redis://:secret@cache:6379/3")
app.conf.update(
    timezone="Europe/Berlin",
    scheduler_db_uri="postgresql+psycopg2://app:secret@db/app",
    scheduler_max_interval=60,
    create_table=False,
    worker_concurrency=16,
)


class EveryOtherTuesday(BaseSchedule):
    def remaining_estimate(self, last_run_at):
        return timedelta(days=14)

    def is_due(self, last_run_at):
        return (False, 60.0)


app.conf.beat_schedule = {
    "seconds": {"task": "shop.a", "schedule": 30},
    "float": {"task": "shop.a", "schedule": 2.5},
    "timedelta": {"task": "shop.a", "schedule": timedelta(minutes=5)},
    "schedule object": {"task": "shop.a", "schedule": schedule(run_every=timedelta(seconds=5))},
    "crontab": {"task": "shop.b",
                "schedule": crontab(minute="*/15", hour={2, 1}, day_of_week="mon-fri"),
                "args": (1, "two"), "kwargs": {"x": [1, 2]},
                "options": {"queue": "fast", "priority": 3}},
    "relative": {"task": "shop.a", "schedule": timedelta(seconds=10), "relative": True},
    "sunset": {"task": "shop.a", "schedule": solar("sunset", 52.5, 13.4)},
    "custom": {"task": "shop.a", "schedule": EveryOtherTuesday()},
    "datetime kwargs": {"task": "shop.a", "schedule": 60, "kwargs": {"at": datetime(2027, 1, 1)}},
}


@app.on_after_finalize.connect
def add_more(sender, **kwargs):
    sender.add_periodic_task(300.0, sender.signature("shop.c"), name="added at finalize")


class KitReport(celery_sqlalchemy_kit.SyncTask):
    name = "kit report"
    schedule = 15
    kwargs = {"to": "ops"}
    options = {"queue": "kit"}


class KitCron(celery_sqlalchemy_kit.AsyncTask):
    name = "kit cron"
    schedule = {"minute": 0, "hour": "9-17"}

    async def execute(self, *args, **kwargs):
        pass


class Ours(SyncTask):
    name = "ours"
    schedule = {"minute": 30, "day_of_week": "mon-fri"}
    kwargs = {"a": 1}


class OursClocked(SyncTask):
    name = "ours clocked"
    schedule = {"clocked": "2027-03-01T09:00:00"}


for task in (KitReport, KitCron, Ours, OursClocked):
    app.register_task(task())
"#;

/// `python -m celery_diesel_kit export`: each kind of declaration becomes
/// the routine the kit would have written (crontabs with the app's zone,
/// a kit class's dict as its crontab, args only where given), each one the
/// beat cannot represent is refused by name with why, and the settings are
/// the kit's keys, the broker and the zone, the database URL in the beat's
/// form. An app that does not import is an error naming it.
#[test]
fn an_apps_declarations_become_the_kits_routines() {
    let test = "celery_app_export";
    let Some(user) = UserBeat::get(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(unique(test));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.py"), SHOP).unwrap();
    let mut cmd = user.python_command();
    cmd.args(["-m", "celery_diesel_kit", "export", "-A", "shop:app"]);
    let exported = run(cmd, &dir, &[]);
    assert_eq!(exported.code, 0, "{exported:?}");
    let doc = exported.json();

    let routines: BTreeMap<&str, &Value> = doc["routines"]
        .as_array()
        .expect("routines")
        .iter()
        .map(|r| (r["name"].as_str().expect("name"), r))
        .collect();
    let berlin = |fields: Value| {
        let mut all = json!({"minute": "*", "hour": "*", "day_of_week": "*",
            "day_of_month": "*", "month_of_year": "*", "timezone": "Europe/Berlin"});
        for (k, v) in fields.as_object().expect("fields") {
            all[k] = v.clone();
        }
        all
    };
    let plain = |name: &str, task: &str, schedule: Value| json!({"name": name, "task": task, "schedule": schedule, "kwargs": {}, "options": {}});
    let expected: BTreeMap<&str, Value> = [
        ("seconds", plain("seconds", "shop.a", json!({"timedelta": 30}))),
        ("float", plain("float", "shop.a", json!({"timedelta": 2.5}))),
        ("timedelta", plain("timedelta", "shop.a", json!({"timedelta": 300}))),
        ("schedule object", plain("schedule object", "shop.a", json!({"timedelta": 5}))),
        (
            "crontab",
            json!({"name": "crontab", "task": "shop.b",
                "schedule": berlin(json!({"minute": "*/15", "hour": [1, 2], "day_of_week": "mon-fri"})),
                "args": [1, "two"], "kwargs": {"x": [1, 2]}, "options": {"queue": "fast", "priority": 3}}),
        ),
        ("added at finalize", plain("added at finalize", "shop.c", json!({"timedelta": 300.0}))),
        (
            "kit report",
            json!({"name": "kit report", "task": "kit report", "schedule": {"timedelta": 15},
                "kwargs": {"to": "ops"}, "options": {"queue": "kit"}}),
        ),
        ("kit cron", plain("kit cron", "kit cron", berlin(json!({"minute": 0, "hour": "9-17"})))),
        (
            "ours",
            json!({"name": "ours", "task": "ours",
                "schedule": berlin(json!({"minute": 30, "day_of_week": "mon-fri"})),
                "kwargs": {"a": 1}, "options": {}}),
        ),
        ("ours clocked", plain("ours clocked", "ours clocked", json!({"clocked": "2027-03-01T09:00:00"}))),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        routines.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, routine) in &routines {
        assert_eq!(*routine, &expected[name], "routine {name}");
    }

    let refused: BTreeMap<&str, &str> = doc["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .map(|r| {
            assert_eq!(r["source"], "beat_schedule", "{r}");
            (r["name"].as_str().unwrap(), r["reason"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        refused.keys().copied().collect::<Vec<_>>(),
        ["custom", "datetime kwargs", "relative", "sunset"]
    );
    assert!(refused["sunset"].contains("solar"), "{refused:?}");
    assert!(
        refused["custom"].contains("shop.EveryOtherTuesday"),
        "{refused:?}"
    );
    assert!(refused["relative"].contains("relative=True"), "{refused:?}");
    assert!(
        refused["datetime kwargs"].contains("kwargs")
            && refused["datetime kwargs"].contains("datetime"),
        "{refused:?}"
    );

    assert_eq!(
        doc["config"],
        json!({
            "scheduler_db_uri": "postgresql://app:secret@db/app",
            "scheduler_max_interval": 60,
            "create_table": false,
            "broker_url": "redis://:secret@cache:6379/3",
            "timezone": "Europe/Berlin",
        })
    );

    // Every routine exported is one the beat takes: `beat sync` of them
    // alone, into a SQLite file, inserts each.
    let routines_file = dir.join("routines.json");
    std::fs::write(&routines_file, doc["routines"].to_string()).unwrap();
    let db = TestDb::sqlite(test);
    let mut cmd = user.beat_command();
    cmd.args(["sync", "--routines"]).arg(&routines_file);
    let synced = run(cmd, &dir, &[("SCHEDULER_DB_URI", &db.url)]);
    assert_eq!(synced.code, 0, "{synced:?}");
    assert_eq!(
        synced.out.lines().next(),
        Some("inserted: added at finalize, crontab, float, kit cron, kit report, ours, ours clocked, schedule object, seconds, timedelta"),
        "{synced:?}"
    );

    // The beat takes the app's database (in the beat's form), and never
    // shows its password: the host `db` does not resolve here.
    let mut cmd = user.beat_command();
    cmd.args(["sync", "--celery-app", "shop:app"])
        .args(user.python_args());
    let unreachable = run(cmd, &dir, &[]);
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    assert!(
        unreachable
            .err
            .contains("cannot connect to postgresql://app:***@db/app")
            && !unreachable.err.contains("secret"),
        "{unreachable:?}"
    );

    let mut cmd = user.beat_command();
    cmd.args(["sync", "--celery-app", "nosuch.module:app"])
        .args(user.python_args());
    let missing = run(cmd, &dir, &[("SCHEDULER_DB_URI", &db.url)]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .err
            .contains("cannot load the Celery app 'nosuch.module:app'")
            && missing
                .err
                .contains("error: cannot read the Celery app nosuch.module:app"),
        "{missing:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
