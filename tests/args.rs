//! Positional args (`routines.args`), end to end on each database: what an
//! in-process task sees, the write paths (the library, a routines file,
//! `beat add/edit`, the dashboard, plain SQL), the audit trail, a kit table
//! adopted, and rows whose args the beat cannot read. Their Celery message
//! is compared with Celery's own in `tests/celery.rs`.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{
    Beat, EditAction, EditRow, HttpServer, ManualBeat, Routine, RoutineRow, Via,
};
use common::cli::beat;
use common::kit::{kit_ddl, kit_insert};
use common::web::{any_port, post, request};
use common::{at, every, sql, wait_until, BeatProcess, Kind, Recorder, TestClock, TestDb};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "t0ken-for-the-args-tests";

fn manual(db: &TestDb, recorder: &Recorder, routines: Vec<Routine>) -> ManualBeat {
    Beat::builder(db.config())
        .clock(TestClock::at(at(0)))
        .task(recorder.clone())
        .routines(routines)
        .start_manual()
        .expect("start")
}

fn row(db: &TestDb, name: &str) -> RoutineRow {
    db.store()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
}

/// The `args` column as JSON (`None`: NULL).
fn args_of(db: &TestDb, name: &str) -> Option<Value> {
    row(db, name)
        .args
        .map(|text| serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
}

/// What an operator sees of a routine: its columns (not where the row
/// lies: PostgreSQL writes a new row version even for an UPDATE that
/// changes no value) and how many edits it has had.
fn state(db: &TestDb, name: &str) -> String {
    let r = row(db, name);
    let columns = (
        &r.id,
        &r.task,
        &r.schedule,
        &r.args,
        &r.kwargs,
        &r.options,
        r.active,
        r.next_run_at,
        r.awaits_planning(),
        &r.last_error,
    );
    format!("{columns:?}, {} edits", edits(db, name).len())
}

/// The routine's edits, newest first.
fn edits(db: &TestDb, name: &str) -> Vec<EditRow> {
    Operator::connect(db.config())
        .unwrap()
        .edits(Some(name), None, 100)
        .unwrap()
}

/// An edit's changed columns, as (column, old, new).
fn changes(edit: &EditRow) -> Vec<(&str, Option<Value>, Option<Value>)> {
    edit.changes
        .iter()
        .map(|c| (c.column.as_str(), c.old.clone(), c.new.clone()))
        .collect()
}

/// Waits for `n` runs of the recorder, then checks there were no more.
fn expect_runs(recorder: &Recorder, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || recorder.count() >= n),
        "{} runs, expected {n}",
        recorder.count()
    );
    assert_eq!(recorder.count(), n, "{:#?}", recorder.runs());
}

/// The words the beat (and `ops::parse_args`) gives for args text that is
/// not JSON.
fn not_json_words(text: &str) -> String {
    let e = serde_json::from_str::<Value>(text).unwrap_err();
    format!("args is not valid JSON: {e}")
}

/// Fires `n` runs at `t` and waits for them to end: a routine whose run
/// is still going would skip its next (no run overlaps its previous one).
fn fire(beat: &mut ManualBeat, t: chrono::DateTime<chrono::Utc>, n: usize) {
    let before = beat.stats().succeeded;
    assert_eq!(beat.tick(t).unwrap().fired, n, "at {t}");
    assert!(
        wait_until(Duration::from_secs(10), || beat.stats().succeeded
            >= before + n as u64),
        "the runs at {t} did not end: {:?}",
        beat.stats()
    );
}

backend_tests! {
    fn an_in_process_task_sees_the_routines_args_exactly(db) {
        let rec = Recorder::new("record");
        let declared = json!(["a", 1, 2.5, null, true, {"k": [1, "é'\""]}, []]);
        let mut beat = manual(db, &rec, vec![
            Routine::new("declared", "record", every(10)).args(declared.clone()).kwargs(json!({"n": 1})),
            Routine::new("none", "record", every(10)),
        ]);
        db.exec(r#"INSERT INTO routines (name, task, schedule, args) VALUES ('by sql', 'record', '{"timedelta": 10}', '[7, "x"]')"#);
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 3);
        expect_runs(&rec, 3);
        let seen = |name: &str| {
            let runs = rec.runs_of(name);
            assert_eq!(runs.len(), 1, "{name}: {runs:#?}");
            (runs[0].args.clone(), runs[0].kwargs.clone(), runs[0].scheduled_at)
        };
        assert_eq!(seen("declared"), (declared.clone(), json!({"n": 1}), at(10)));
        assert_eq!(seen("by sql"), (json!([7, "x"]), json!({}), at(10)));
        assert_eq!(seen("none"), (json!([]), json!({}), at(10)), "no args: []");
        // Stored as given, and NULL when none (as the kit leaves the column).
        assert_eq!(args_of(db, "declared"), Some(declared));
        assert_eq!(args_of(db, "none"), None);
        beat.stop();
    }

    fn rows_whose_args_are_no_json_array_are_that_routines_error_and_the_others_run(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![]);
        let insert = |name: &str, args: &str| {
            sql::execute(&db.url, &format!(
                r#"INSERT INTO routines (name, task, schedule, args) VALUES ('{name}', 'record', '{{"timedelta": 10}}', '{args}')"#
            ))
        };
        insert("good", "[1]").unwrap();
        insert("object", r#"{"x":1}"#).unwrap();
        insert("string", r#""nope""#).unwrap();
        // Only SQLite's column holds text that is not JSON; the others'
        // JSON columns refuse it.
        let not_json = insert("not json", "not json");
        let mut expected = vec![
            ("object", r#"args must be a JSON array, got {"x":1}"#.to_owned()),
            ("string", r#"args must be a JSON array, got "nope""#.to_owned()),
        ];
        match db.kind {
            Kind::Sqlite => {
                not_json.unwrap();
                expected.push(("not json", not_json_words("not json")));
            }
            _ => assert!(not_json.is_err(), "{:?}", db.kind),
        }
        let tick = beat.tick(at(0)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (expected.len() + 1, expected.len()));
        for (name, error) in &expected {
            let r = row(db, name);
            assert_eq!(r.last_error.as_deref(), Some(error.as_str()), "{name}");
            assert_eq!(r.next_run_at, None, "{name}");
        }
        for t in [10, 20] {
            fire(&mut beat, at(t), 1);
        }
        expect_runs(&rec, 2);
        assert_eq!(rec.runs_of("good").len(), 2);
        // Fixed, it runs with its args.
        db.exec(r#"UPDATE routines SET args = '["fixed"]' WHERE name = 'object'"#);
        assert_eq!(beat.tick(at(21)).unwrap().invalid, 0);
        assert_eq!(row(db, "object").last_error, None);
        fire(&mut beat, at(31), 2);
        expect_runs(&rec, 4);
        assert_eq!(rec.runs_of("object")[0].args, json!(["fixed"]));
        beat.stop();
    }

    fn an_args_edit_by_sql_keeps_the_planned_time_and_is_audited(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![Routine::new("r", "record", every(60)).args(json!([1]))]);
        beat.tick(at(0)).unwrap();
        let planned = row(db, "r").next_run_at_utc();
        assert_eq!(planned, Some(at(60)));
        let before = edits(db, "r").len();
        db.exec(r#"UPDATE routines SET args = '[2, "two"]' WHERE name = 'r'"#);
        assert!(sql::needs_sync(&db.url, "r"), "an edit the beats see");
        assert_eq!(row(db, "r").next_run_at_utc(), planned, "the plan is kept");
        let tick = beat.tick(at(30)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 0), "an args edit fires nothing");
        assert_eq!(row(db, "r").next_run_at_utc(), Some(at(60)), "the planned time stands");
        assert_eq!(beat.tick(at(60)).unwrap().fired, 1);
        expect_runs(&rec, 1);
        assert_eq!((rec.runs()[0].args.clone(), rec.runs()[0].scheduled_at), (json!([2, "two"]), at(60)));
        // One edit more: plain SQL's, of args alone (the beat's planning
        // and firing are no edits).
        let found = edits(db, "r");
        assert_eq!(found.len(), before + 1, "{found:#?}");
        assert_eq!((found[0].action, found[0].via), (EditAction::Update, Via::Sql));
        assert_eq!(changes(&found[0]), vec![("args", Some(json!([1])), Some(json!([2, "two"])))]);
        let logged = beat_json(db, &["log", "r", "--json"]);
        assert_eq!(logged[0]["changes"], json!({"args": {"old": [1], "new": [2, "two"]}}));
        assert_eq!(logged[0]["via"], "sql");
        beat.stop();
    }

    fn beat_add_and_edit_refuse_args_that_are_no_json_array_naming_the_routine(db) {
        let url = db.url.as_str();
        assert_eq!(beat(url, &["migrate"]).code, 0);
        let add = |args: &str| beat(url, &["add", "r", "--task", "demo.hello", "--every", "30s", "--args", args]);
        for (bad, words) in [
            (r#"{"a":1}"#, r#"args must be a JSON array, got {"a":1}"#.to_owned()),
            ("nope", not_json_words("nope")),
        ] {
            let ran = add(bad);
            assert_eq!(ran.code, 1, "{bad}: {ran:?}");
            assert!(ran.err.contains(&format!("error: routine r: {words}")), "{bad}: {ran:?}");
            assert_eq!(db.store().routine("r").unwrap(), None, "{bad}: nothing added");
        }
        let ran = add(r#"["x", 2, {"k": null}]"#);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert_eq!(args_of(db, "r"), Some(json!(["x", 2, {"k": null}])));
        // show: a line of its own, and in --json (as list --json has it).
        assert_eq!(shown_args(db, "r"), json!(["x", 2, {"k": null}]));
        assert_eq!(beat_json(db, &["show", "r", "--json"])["routine"]["args"], json!(["x", 2, {"k": null}]));
        assert_eq!(beat_json(db, &["list", "--json"])[0]["args"], json!(["x", 2, {"k": null}]));

        // edit: refused in the same words, the row untouched (no edit).
        let before = state(db, "r");
        for (bad, words) in [
            (r#"{"a":1}"#, r#"args must be a JSON array, got {"a":1}"#.to_owned()),
            ("nope", not_json_words("nope")),
            ("null", "args must be a JSON array, got null".to_owned()),
        ] {
            let ran = beat(url, &["edit", "r", "--args", bad]);
            assert_eq!(ran.code, 1, "{bad}: {ran:?}");
            assert!(ran.err.contains(&format!("error: routine r: {words}")), "{bad}: {ran:?}");
            assert_eq!(state(db, "r"), before, "{bad}: untouched");
        }
        let ran = beat(url, &["edit", "r", "--args", "[3]", "--as", "erin"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert_eq!(args_of(db, "r"), Some(json!([3])));
        assert!(sql::needs_sync(url, "r"), "an edit the beats see");
        let found = edits(db, "r");
        assert_eq!((found[0].actor.as_deref(), found[0].via), (Some("erin"), Via::Cli));
        assert_eq!(changes(&found[0]), vec![("args", Some(json!(["x", 2, {"k": null}])), Some(json!([3])))]);
        let ran = beat(url, &["show", "r"]);
        assert!(ran.out.contains("args: [\"x\",2,{\"k\":null}] -> [3]"), "the last changes show it: {ran:?}");
        // `[]` clears them; on a row without args (NULL) it changes nothing.
        assert_eq!(beat(url, &["edit", "r", "--args", "[]"]).code, 0);
        assert_eq!(args_of(db, "r"), Some(json!([])));
        assert_eq!(beat(url, &["add", "plain", "--task", "demo.hello", "--every", "1m"]).code, 0);
        assert_eq!(args_of(db, "plain"), None);
        assert_eq!(beat_json(db, &["show", "plain", "--json"])["routine"]["args"], Value::Null);
        assert_eq!(shown_args(db, "plain"), json!([]), "none: []");
        let before = state(db, "plain");
        assert_eq!(beat(url, &["edit", "plain", "--args", "[]"]).code, 0);
        assert_eq!(state(db, "plain"), before);
        // A bad value for a routine that does not exist names it too.
        let ran = beat(url, &["edit", "nope", "--args", "[1]"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains("routine nope: no such routine"), "{ran:?}");
    }

    fn the_libraries_upsert_writes_args_and_null_without_them(db) {
        let op = Operator::migrate(db.config()).unwrap();
        let me = common::tester();
        assert!(op.upsert(&me, &Routine::new("u", "t", every(60)).args(json!(["a"]))).unwrap());
        assert_eq!(args_of(db, "u"), Some(json!(["a"])));
        assert!(!op.upsert(&me, &Routine::new("u", "t", every(60)).args(json!(["b", 2]))).unwrap());
        assert_eq!(args_of(db, "u"), Some(json!(["b", 2])));
        assert!(!op.upsert(&me, &Routine::new("u", "t", every(60))).unwrap());
        assert_eq!(args_of(db, "u"), None, "declared without args: NULL");
        let err = op.upsert(&me, &Routine::new("u", "t", every(60)).args(json!({"a": 1}))).unwrap_err();
        assert_eq!(err.to_string(), "routine u: args must be a JSON array");
        assert_eq!(args_of(db, "u"), None);
        let found = edits(db, "u");
        let args_changes: Vec<_> = found.iter().rev()
            .map(|e| (e.action, e.changes.iter().find(|c| c.column == "args").map(|c| (c.old.clone(), c.new.clone()))))
            .collect();
        assert_eq!(args_changes, vec![
            (EditAction::Insert, Some((None, Some(json!(["a"]))))),
            (EditAction::Update, Some((Some(json!(["a"])), Some(json!(["b", 2]))))),
            (EditAction::Update, Some((Some(json!(["b", 2])), Some(Value::Null)))),
        ]);
    }

    fn a_kit_table_adopted_gains_a_nullable_args_column_and_the_kits_inserts_still_work(db) {
        db.exec(kit_ddl(db.kind));
        db.exec(&kit_insert(db.kind, "from the kit", r#"{"timedelta": 10}"#));
        // Adopted: migrated, as a beat's start migrates it.
        db.store();
        assert_eq!(args_of(db, "from the kit"), None);
        // The kit's own INSERT, which names no args, still runs on the
        // adopted table and leaves them NULL.
        db.exec(&kit_insert(db.kind, "later", r#"{"timedelta": 10}"#));
        assert_eq!(args_of(db, "later"), None);
        db.exec(r#"UPDATE routines SET args = '["given"]' WHERE name = 'later'"#);
        let (kit, later) = (Recorder::new("from the kit"), Recorder::new("later"));
        let mut beat = Beat::builder(db.config())
            .clock(TestClock::at(at(0)))
            .task(kit.clone())
            .task(later.clone())
            .start_manual()
            .unwrap();
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 2);
        expect_runs(&kit, 1);
        expect_runs(&later, 1);
        assert_eq!((kit.runs()[0].args.clone(), later.runs()[0].args.clone()), (json!([]), json!(["given"])));
        beat.stop();
    }
}

/// The args line of `beat show NAME`, read as JSON (MySQL writes JSON
/// back with spaces of its own).
fn shown_args(db: &TestDb, name: &str) -> Value {
    let ran = beat(&db.url, &["show", name]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let line = ran
        .out
        .lines()
        .find(|l| l.starts_with("args "))
        .unwrap_or_default();
    let text = line.strip_prefix("args").unwrap_or_default().trim();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}\n{ran:?}"))
}

/// `beat ARGS` on `db`, its JSON output.
fn beat_json(db: &TestDb, args: &[&str]) -> Value {
    let ran = beat(&db.url, args);
    assert_eq!(ran.code, 0, "{args:?}: {ran:?}");
    ran.json()
}

/// A routines file (`beat --routines`) declares args; one that is no JSON
/// array stops the start, naming the routine.
#[test]
fn a_routines_file_declares_args_and_refuses_args_that_are_no_array() {
    let db = TestDb::sqlite("args_routines_file");
    let dir = tempfile_dir("args_routines_file");
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        json!([{"name": "with args", "task": "demo.hello", "schedule": {"timedelta": 3600}, "args": ["a", 1]},
               {"name": "without", "task": "demo.hello", "schedule": {"timedelta": 3600}}])
        .to_string(),
    )
    .unwrap();
    let env = [("SCHEDULER_DB_URI", db.url.as_str()), ("RUST_LOG", "info")];
    let mut serving = BeatProcess::start_with(&["--routines", good.to_str().unwrap()], &env);
    assert!(
        serving.logs_within(Duration::from_secs(30), "beat: running"),
        "{}",
        serving.log()
    );
    assert_eq!(args_of(&db, "with args"), Some(json!(["a", 1])));
    assert_eq!(args_of(&db, "without"), None);
    assert!(
        serving.terminate(Duration::from_secs(30)),
        "{}",
        serving.log()
    );

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        json!([{"name": "bad args", "task": "demo.hello", "schedule": {"timedelta": 60}, "args": {"a": 1}}])
            .to_string(),
    )
    .unwrap();
    let mut refused = BeatProcess::start_with(&["--routines", bad.to_str().unwrap()], &env);
    let status = refused.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", refused.log());
    assert!(
        refused
            .log()
            .contains("routine bad args: args must be a JSON array"),
        "{}",
        refused.log()
    );
    assert_eq!(db.store().routine("bad args").unwrap(), None);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique(test));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The dashboard's routine page shows the args and its form edits them,
/// refusing what is no JSON array with the beat's words; a save of the
/// other fields leaves a row without args as it is.
#[test]
fn the_dashboard_shows_and_edits_args_checked_as_the_beat_checks() {
    let db = TestDb::sqlite("args_dashboard");
    let mut config = db.config();
    config.http_token = Some(TOKEN.into());
    let beat = Beat::builder(config.clone())
        .task(Recorder::new("ok"))
        .routine(Routine::new("r", "ok", every(3600)).args(json!(["<b>bold</b>", 1])))
        .routine(Routine::new("plain", "ok", every(3600)))
        .start()
        .unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let addr = server.addr();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // Both planned by the serving beat: nothing changes them from here on
    // but the edits below (their next runs are an hour away).
    assert!(wait_until(Duration::from_secs(10), || {
        !sql::needs_sync(&db.url, "r") && !sql::needs_sync(&db.url, "plain")
    }));
    let page = request(addr, "GET", "/routine?name=r", &auth, "");
    assert_eq!(page.status, 200);
    let shown = r#"[&quot;&lt;b&gt;bold&lt;/b&gt;&quot;,1]"#;
    assert!(
        page.body
            .contains(&format!("<code id=\"args\">{shown}</code>")),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(&format!("name=\"args\" rows=\"2\">{shown}</textarea>")),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<b>bold"), "escaped");

    let edit = |name: &str, args: &str| {
        post(
            addr,
            "/routine/edit",
            &auth,
            &[
                ("name", name),
                ("schedule", r#"{"timedelta": 3600}"#),
                ("args", args),
                ("kwargs", "{}"),
                ("options", "{}"),
            ],
        )
    };
    let before = state(&db, "r");
    for (bad, words) in [
        (
            r#"{"a":1}"#,
            r#"args must be a JSON array, got {"a":1}"#.to_owned(),
        ),
        ("nope", not_json_words("nope")),
    ] {
        let refused = edit("r", bad);
        assert_eq!(refused.status, 422, "{bad}");
        let escaped = format!("routine r: {words}").replace('"', "&quot;");
        assert!(
            refused.body.contains(&escaped),
            "{escaped}\n{}",
            refused.body
        );
        // What was typed stays in the form.
        let typed = bad.replace('"', "&quot;");
        assert!(
            refused
                .body
                .contains(&format!("name=\"args\" rows=\"2\">{typed}</textarea>")),
            "{}",
            refused.body
        );
        assert_eq!(state(&db, "r"), before, "{bad}: untouched");
    }
    let saved = edit("r", r#"[5, "five"]"#);
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(args_of(&db, "r"), Some(json!([5, "five"])));
    let found = edits(&db, "r");
    assert_eq!(found[0].via, Via::Dashboard);
    assert_eq!(
        changes(&found[0]),
        vec![(
            "args",
            Some(json!(["<b>bold</b>", 1])),
            Some(json!([5, "five"]))
        )]
    );
    // The form shows `[]` for a row without args; saving it as shown (or
    // with the field left empty of anything but `[]`) writes no args.
    let plain = request(addr, "GET", "/routine?name=plain", &auth, "");
    assert!(
        plain
            .body
            .contains("name=\"args\" rows=\"2\">[]</textarea>"),
        "{}",
        plain.body
    );
    let before = state(&db, "plain");
    let saved = edit("plain", "[]");
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(state(&db, "plain"), before);
    // A form without the field (an older page) keeps the args.
    let kept = post(
        addr,
        "/routine/edit",
        &auth,
        &[
            ("name", "r"),
            ("schedule", r#"{"timedelta": 60}"#),
            ("kwargs", "{}"),
            ("options", "{}"),
        ],
    );
    assert_eq!(kept.status, 303, "{}", kept.body);
    assert_eq!(args_of(&db, "r"), Some(json!([5, "five"])));
    drop(server);
    beat.stop();
}
