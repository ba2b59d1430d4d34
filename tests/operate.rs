//! The `beat` command line, end to end with the real binary against each
//! database: every subcommand, its output, errors and exit status, and a
//! serving beat acting on each edit it makes.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{Beat, Routine};
use common::cli::{beat, beat_with};
use common::{
    at, every, holds_for, published, redis_queue, wait_until, BeatProcess, Recorder, TestClock,
    TestDb,
};
use serde_json::{json, Value};
use std::time::Duration;

/// The error a beat records for a row with this schedule.
fn beats_error(db: &TestDb, schedule: &str) -> String {
    db.exec(&format!(
        "INSERT INTO routines (name, task, schedule) VALUES ('probe', 'demo.hello', '{schedule}')"
    ));
    let mut manual = Beat::builder(db.config())
        .clock(TestClock::at(at(0)))
        .task(Recorder::new("demo.hello"))
        .start_manual()
        .unwrap();
    manual.tick(at(0)).unwrap();
    let error = manual.store().routine("probe").unwrap().unwrap().last_error;
    manual.stop();
    db.exec("DELETE FROM routines WHERE name = 'probe'");
    error.expect("the beat records an error")
}

backend_tests! {
    fn every_subcommand_sees_and_steers_the_table(db) {
        let url = db.url.as_str();
        // Before the tables exist, every command but migrate says what to do.
        let ran = beat(url, &["list"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("run `beat migrate`"), "{ran:?}");
        // The database's reason, said once (not again as the error's cause).
        let reason = ran.err.split("older than this version (").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default();
        assert!(!reason.is_empty() && ran.err.matches(reason).count() == 1, "{ran:?}");
        let ran = beat(url, &["migrate"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.contains("tables are up to date"), "{ran:?}");

        // add: checked as the beat checks, refused with the beat's words.
        let ran = beat(url, &["add", "hello", "--task", "demo.hello", "--every", "30s", "--kwargs", r#"{"who": "ops"}"#]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let ran = beat(url, &["add", "hello", "--task", "demo.hello", "--every", "5"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("routine hello: a routine of this name exists"), "{ran:?}");
        let bad = r#"{"minute": "61"}"#;
        let words = beats_error(db, bad);
        let ran = beat(url, &["add", "bad", "--task", "demo.hello", "--crontab", bad]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains(&format!("routine bad: {words}")), "the beat says {words:?}: {ran:?}");
        let ran = beat(url, &["add", "nightly", "--task", "reports.send", "--crontab", r#"{"minute": 0, "hour": 3}"#,
            "--timezone", "Europe/Berlin", "--inactive"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let ran = beat(url, &["add", "zoned", "--task", "demo.hello", "--every", "1h", "--timezone", "Europe/Berlin"]);
        assert_eq!(ran.code, 1, "an interval has no zone: {ran:?}");
        db.exec(&format!("INSERT INTO routines (name, task, schedule) VALUES ('broken', 'demo.hello', '{bad}')"));

        // A beat runs them once (then stops), leaving history.
        let clock = TestClock::at(at(0));
        let mut manual = Beat::builder(db.config()).clock(clock.clone())
            .task(Recorder::new("demo.hello")).start_manual().unwrap();
        let beat_id = manual.id().to_owned();
        manual.tick(at(0)).unwrap();
        clock.set(at(30));
        assert_eq!(manual.tick(at(30)).unwrap().fired, 1);
        assert!(wait_until(Duration::from_secs(10), || manual.stats().succeeded == 1));
        manual.stop();

        // list
        let ran = beat(url, &["list"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let lines: Vec<&str> = ran.out.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("NEXT (UTC)"), "{ran:?}");
        assert_eq!(lines.len(), 4, "{ran:?}");
        assert!(lines[1].starts_with("broken ") && lines[1].contains("invalid crontab field minute"), "{ran:?}");
        assert!(lines[2].starts_with("hello ") && lines[2].contains("every 30 seconds") && lines[2].contains("2030-01-01 00:01:00"), "{ran:?}");
        assert!(lines[3].starts_with("nightly ") && lines[3].contains("at 03:00 (Europe/Berlin)") && lines[3].contains(" no "), "{ran:?}");
        let position = |line: &str, needle: &str| line.find(needle);
        assert_eq!(position(lines[0], "TASK"), position(lines[2], "demo.hello"), "aligned: {ran:?}");
        let listed = beat(url, &["list", "--json"]).json();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 3);
        let hello = listed.iter().find(|r| r["name"] == "hello").unwrap();
        assert_eq!(hello["kwargs"], json!({"who": "ops"}));
        assert_eq!(hello["schedule"]["timedelta"].as_f64(), Some(30.0));
        assert_eq!(hello["total_run_count"], 1);
        assert_eq!(hello["next_run_at"], "2030-01-01T00:01:00.000000Z");
        assert_eq!(hello["last_run_at"], "2030-01-01T00:00:30.000000Z");
        let nightly = listed.iter().find(|r| r["name"] == "nightly").unwrap();
        assert_eq!((nightly["timezone"].as_str(), nightly["active"].as_bool()), (Some("Europe/Berlin"), Some(false)));
        let names = |args: &[&str]| -> Vec<String> {
            beat(url, args).json().as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(names(&["list", "--json", "--inactive"]), ["nightly"]);
        assert_eq!(names(&["list", "--json", "--errors"]), ["broken"]);

        // show
        let ran = beat(url, &["show", "hello"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.contains("every 30 seconds") && ran.out.contains("next runs:") && ran.out.contains("succeeded"), "{ran:?}");
        let shown = beat(url, &["show", "hello", "--json"]).json();
        let next: Vec<&str> = shown["next"].as_array().unwrap().iter().map(|t| t["utc"].as_str().unwrap()).collect();
        assert_eq!(next, ["2030-01-01T00:01:00.000000Z", "2030-01-01T00:01:30.000000Z", "2030-01-01T00:02:00.000000Z",
            "2030-01-01T00:02:30.000000Z", "2030-01-01T00:03:00.000000Z"]);
        assert_eq!(shown["runs"].as_array().unwrap().len(), 1);
        assert_eq!(shown["runs"][0]["outcome"], "succeeded");
        let berlin = beat(url, &["show", "nightly", "--json"]).json();
        assert!(berlin["routine"]["schedule_words"].as_str().unwrap().contains("Europe/Berlin"));
        let ran = beat(url, &["show", "nope"]);
        assert_eq!(ran.code, 1);
        assert!(ran.err.contains("routine nope: no such routine"), "{ran:?}");

        // history
        let ran = beat(url, &["history"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.lines().nth(1).is_some_and(|l| l.contains("hello") && l.contains("succeeded")), "{ran:?}");
        let runs = beat(url, &["history", "hello", "--json"]).json();
        assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
        assert_eq!(runs[0]["beat_id"], beat_id.as_str());
        assert_eq!(runs[0]["due_at"], "2030-01-01T00:00:30.000000Z");
        assert_eq!(beat(url, &["history", "--failed", "--json"]).json(), json!([]));
        assert_eq!(beat(url, &["history", "--since", "2031-01-01", "--json"]).json(), json!([]));
        assert_eq!(beat(url, &["history", "--since", "2h", "--json"]).json().as_array().unwrap().len(), 1);

        // beats: the two manual beats (the probe's, then this one), stopped.
        let beats = beat(url, &["beats", "--json"]).json();
        let beats = beats.as_array().unwrap();
        assert_eq!(beats.len(), 2, "{beats:#?}");
        assert_eq!(beats[0]["id"], beat_id.as_str(), "newest first");
        assert!(beats.iter().all(|b| b["status"] == "stopped" && b["tasks"] == json!(["demo.hello"])), "{beats:#?}");
        let ran = beat(url, &["beats"]);
        assert!(ran.out.lines().nth(1).is_some_and(|l| l.starts_with(&beat_id) && l.contains(" stopped ")), "{ran:?}");

        // edit, enable, disable
        let ran = beat(url, &["edit", "hello", "--every", "1m", "--kwargs", r#"{"who": "edited"}"#]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let row = db.store().routine("hello").unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&row.schedule).unwrap()["timedelta"].as_f64(), Some(60.0));
        assert_eq!(serde_json::from_str::<Value>(row.kwargs.as_deref().unwrap()).unwrap(), json!({"who": "edited"}));
        assert!(common::sql::needs_sync(url, "hello") && row.next_run_at.is_none(), "an edit the beats will see: {row:?}");
        let ran = beat(url, &["edit", "hello", "--crontab", bad]);
        assert_eq!(ran.code, 1);
        assert!(ran.err.contains(&format!("routine hello: {words}")), "{ran:?}");
        assert_eq!(beat(url, &["edit", "nope", "--every", "1s"]).code, 1);
        assert_eq!(beat(url, &["edit", "hello"]).code, 2);
        let ran = beat(url, &["edit", "nightly", "--timezone", "America/New_York"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let nightly = db.store().routine("nightly").unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&nightly.schedule).unwrap(),
            json!({"minute": 0, "hour": 3, "timezone": "America/New_York"}));
        assert_eq!(beat(url, &["enable", "nightly"]).code, 0);
        assert!(db.store().routine("nightly").unwrap().unwrap().active);
        assert_eq!(beat(url, &["disable", "hello"]).code, 0);
        assert!(!db.store().routine("hello").unwrap().unwrap().active);
        assert_eq!(beat(url, &["disable", "nope"]).code, 1);

        // check: the bad row, then none.
        let ran = beat(url, &["check"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.out.contains("broken") && ran.out.contains(&words), "{ran:?}");
        let checked = beat(url, &["check", "--json"]).json();
        assert_eq!(checked["ok"], false);
        assert_eq!(checked["problems"][0]["name"], "broken");
        assert_eq!(checked["problems"][0]["reason"], words.as_str());
        assert_eq!(beat(url, &["remove", "broken"]).code, 0);
        assert_eq!(beat(url, &["remove", "broken"]).code, 1);
        let ran = beat(url, &["check"]);
        assert_eq!(ran.code, 0, "{ran:?}");

        // send: nothing alive to run it, no broker.
        let ran = beat(url, &["send", "hello"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("no beat is alive"), "{ran:?}");

        // Usage errors are 2; a bad URL is 1, its password hidden.
        for args in [&["add", "x", "--task", "t"][..], &["frobnicate"], &["add", "x", "--task", "t", "--every", "5", "--crontab", "{}"],
            &["add", "x", "--task", "t", "--every", "5", "--kwargs", "{not json"], &["add", "x", "--task", "t", "--every", "soon"]] {
            let ran = beat(url, args);
            assert_eq!(ran.code, 2, "{args:?}: {ran:?}");
        }
        let ran = beat("postgres://app:hunter2@127.0.0.1:1/app", &["list"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("app:***@127.0.0.1:1") && !ran.err.contains("hunter2"), "{ran:?}");
        let ran = beat("postgres://app:hunter2@127.0.0.1:1/app", &["list", "--json"]);
        assert!(ran.json()["error"].as_str().unwrap().contains("app:***@") && !ran.out.contains("hunter2"), "{ran:?}");
    }

    fn a_serving_beat_acts_on_each_edit_from_the_command_line(db) {
        let url = db.url.as_str();
        let mut serving = BeatProcess::start(&[
            ("SCHEDULER_DB_URI", url),
            ("SCHEDULER_WATCH_INTERVAL", "0.2"),
            ("SCHEDULER_HEARTBEAT_INTERVAL", "0.5"),
            ("RUST_LOG", "info"),
        ]);
        assert!(wait_until(Duration::from_secs(30), || !serving.lines_with("beat: running").is_empty()), "{}", serving.log());
        let greetings = |who: &str| serving.lines_with(&format!("[hi] hello, {who}!")).len();
        // Every run of `hi` the serving beat claimed (its claims are in the
        // history) has ended, and greeted.
        let op = Operator::connect(db.config()).unwrap();
        let all_greeted = || {
            let runs = op.history(Some("hi"), false, None, 1000).unwrap();
            let ended = runs.iter().all(|r| !matches!(r.outcome.as_str(), "queued" | "running" | "retrying"));
            let succeeded = runs.iter().filter(|r| r.outcome == "succeeded").count();
            ended && succeeded == greetings("first") + greetings("second")
        };

        let ran = beat(url, &["add", "hi", "--task", "demo.hello", "--every", "1s", "--kwargs", r#"{"who": "first"}"#]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(wait_until(Duration::from_secs(10), || greetings("first") >= 2), "{}", serving.log());
        assert_eq!(beat(url, &["edit", "hi", "--kwargs", r#"{"who": "second"}"#]).code, 0);
        assert!(wait_until(Duration::from_secs(10), || greetings("second") >= 1), "{}", serving.log());
        assert_eq!(beat(url, &["disable", "hi"]).code, 0);
        let seen = || !serving.lines_with("routine hi: inactive").is_empty();
        assert!(wait_until(Duration::from_secs(10), || seen() && all_greeted()), "{}", serving.log());
        let quiet = greetings("second");
        // Two and a half periods of the routine (every 1 s) without a run.
        assert!(holds_for(Duration::from_millis(2500), || greetings("second") == quiet), "a disabled routine runs no more:\n{}", serving.log());
        assert_eq!(beat(url, &["enable", "hi"]).code, 0);
        assert!(wait_until(Duration::from_secs(10), || greetings("second") > quiet), "{}", serving.log());

        // send: an in-process task, through the table, run by the beat.
        let ran = beat(url, &["send", "hi"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.contains("routine hi: taken by a beat as task "), "{ran:?}");
        let sent = beat(url, &["send", "hi", "--json"]).json();
        assert_eq!(sent["via"], "beat");
        let task_id = sent["task_id"].as_str().unwrap().to_owned();
        let recorded = || {
            beat(url, &["history", "hi", "--json"]).json().as_array().unwrap().iter()
                .any(|r| r["task_id"] == task_id.as_str() && r["on_demand"] == true && r["outcome"] == "succeeded")
        };
        assert!(wait_until(Duration::from_secs(10), recorded), "{}", serving.log());

        // The live beat tells which tasks exist: an unknown one is refused.
        let ran = beat(url, &["add", "nope", "--task", "no.such.task", "--every", "1s"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("unknown task \"no.such.task\""), "{ran:?}");
        let beats = beat(url, &["beats", "--json"]).json();
        assert_eq!(beats[0]["status"], "alive", "{beats}");
        assert!(beats[0]["tasks"].as_array().unwrap().contains(&json!("demo.sleep")));
        assert_eq!(beat(url, &["check"]).code, 0);

        // Once the row is gone no claim finds it: only runs claimed before
        // may still greet.
        assert_eq!(beat(url, &["remove", "hi"]).code, 0);
        assert!(wait_until(Duration::from_secs(10), all_greeted), "{}", serving.log());
        let after = greetings("second");
        // Two periods of the routine without a run.
        assert!(holds_for(Duration::from_secs(2), || greetings("second") == after), "a removed routine runs no more:\n{}", serving.log());
        assert!(serving.terminate(Duration::from_secs(30)), "{}", serving.log());
        // Its log read to the end (the process has exited): no late line.
        let late = serving.lines_with("[hi] hello, second!").len();
        assert_eq!(late, after, "{}", serving.log());
        let beats = beat(url, &["beats", "--json"]).json();
        assert_eq!(beats[0]["status"], "stopped", "{beats}");
    }
}

/// `beat next` needs no database.
#[test]
fn next_previews_fire_times_without_a_database() {
    // A database that does not exist: `beat next` never connects.
    let next = |after: &str, n: &str| {
        let ran = beat(
            "postgres://nobody:secret@127.0.0.1:1/none",
            &[
                "next",
                r#"{"minute": "*/15", "hour": "9"}"#,
                "--timezone",
                "Europe/Berlin",
                "-n",
                n,
                "--after",
                after,
                "--json",
            ],
        );
        assert_eq!(ran.code, 0, "{ran:?}");
        ran.json()
    };
    let runs = |preview: &serde_json::Value, key: &str| -> Vec<String> {
        preview["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[key].as_str().unwrap().to_owned())
            .collect()
    };
    let preview = next("2026-01-05 07:50", "3");
    assert_eq!(preview["timezone"], "Europe/Berlin");
    assert_eq!(preview["schedule"], "every 15 minutes past hour 9");
    // 07:50 UTC is 08:50 in Berlin in January (CET, UTC+1).
    assert_eq!(
        runs(&preview, "local"),
        [
            "2026-01-05 09:00:00 CET",
            "2026-01-05 09:15:00 CET",
            "2026-01-05 09:30:00 CET"
        ]
    );
    assert_eq!(runs(&preview, "utc")[0], "2026-01-05T08:00:00.000000Z");
    // The same instant written with its offset; then the hour itself: the
    // times are after it, so 09:00 is not among them.
    for (after, first) in [
        ("2026-01-05T08:50:00+01:00", "09:00"),
        ("2026-01-05 08:00", "09:15"),
    ] {
        assert_eq!(
            &runs(&next(after, "1"), "local")[0][11..16],
            first,
            "after {after}"
        );
    }
    let ran = beat(
        "sqlite://unused",
        &["next", r#"{"timedelta": 90}"#, "--after", "tomorrow"],
    );
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.err.contains("\"tomorrow\": expected a UTC time"),
        "{ran:?}"
    );
    let ran = beat("sqlite://unused", &["next", r#"{"hour": 25}"#]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.err.contains("hour"), "{ran:?}");
    let ran = beat(
        "sqlite://unused",
        &["next", r#"{"timedelta": 90}"#, "-n", "2"],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.out.starts_with("every 90 seconds"), "{ran:?}");
    assert_eq!(ran.out.lines().count(), 3, "{ran:?}");
}

/// `beat send` of a Celery routine with a broker configured: published at
/// once with a fresh id, and recorded.
#[test]
fn send_publishes_a_celery_routine_with_a_fresh_id_and_records_it() {
    let test = "operate_send_celery";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    celery_diesel_kit::ops::Operator::migrate(db.config())
        .unwrap()
        .upsert(
            &common::tester(),
            &Routine::new("remote", "tasks.record", every(3600))
                .kwargs(json!({"r": "remote"}))
                .options(json!({"queue": queue})),
        )
        .unwrap();
    let ran = beat_with(
        &db.url,
        &["send", "remote", "--json"],
        &[("CELERY_BROKER_URL", &broker)],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let sent = ran.json();
    assert_eq!(sent["via"], "celery");
    let task_id = sent["task_id"].as_str().unwrap();
    let messages = published(&broker, &queue);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, task_id);
    assert_eq!(messages[0].task, "tasks.record");
    let runs = beat(&db.url, &["history", "remote", "--json"]).json();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["task_id"], task_id);
    assert_eq!(
        (runs[0]["outcome"].as_str(), runs[0]["target"].as_str()),
        (Some("published"), Some("celery"))
    );
    assert_eq!(runs[0]["on_demand"], true);
    assert_eq!(runs[0]["beat_id"], Value::Null);
    // A second send is a second run: a fresh id.
    let again = beat_with(
        &db.url,
        &["send", "remote", "--json"],
        &[("CELERY_BROKER_URL", &broker)],
    )
    .json();
    assert_ne!(again["task_id"], sent["task_id"]);
    assert_eq!(published(&broker, &queue).len(), 2);
    assert_eq!(
        db.store()
            .routine("remote")
            .unwrap()
            .unwrap()
            .total_run_count,
        Some(0)
    );
}
