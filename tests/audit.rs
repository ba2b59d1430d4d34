//! The audit trail (`routine_edits`): every insert, update and delete of a
//! routine, by plain SQL, the `beat` command line, the dashboard and a
//! starting beat, recorded once with who and what, on each database; the
//! beat's own bookkeeping recording nothing; retention by age and count;
//! and `beat log`.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{
    Beat, EditAction, EditFilter, EditRow, HttpServer, Routine, RoutineStore, Via,
};
use chrono::{Duration as TimeDelta, Utc};
use common::cli::{beat, beat_with};
use common::web::post;
use common::{at, every, wait_until, Kind, Recorder, TestClock, TestDb};
use serde_json::{json, Value};
use std::time::Duration;

const ALICE: &str = "alice-operator-token-0123";

/// Every edit recorded, oldest first.
fn edits(store: &RoutineStore) -> Vec<EditRow> {
    let mut filter = EditFilter::default();
    filter.limit = 10_000;
    let mut all = store.edits().list(&filter).unwrap();
    all.reverse();
    all
}

/// An edit as the test expects it: its routine, action, who, how, and
/// each changed column's (old, new), JSON values (`Value::Null` where
/// the column holds NULL; absent sides left out).
struct Expected {
    routine: &'static str,
    action: EditAction,
    actor: Option<String>,
    via: Via,
    application: Option<&'static str>,
    changes: Vec<(&'static str, Option<Value>, Option<Value>)>,
}

fn check(found: &[EditRow], expected: &[Expected]) {
    let shown = || format!("{found:#?}");
    assert_eq!(found.len(), expected.len(), "{}", shown());
    for (i, (edit, want)) in found.iter().zip(expected).enumerate() {
        let at = format!("edit {i} of\n{}", shown());
        assert_eq!(edit.routine, want.routine, "{at}");
        assert_eq!(edit.action, want.action, "{at}");
        assert_eq!(edit.actor, want.actor, "{at}");
        assert_eq!(edit.via, want.via, "{at}");
        assert_eq!(edit.application.as_deref(), want.application, "{at}");
        let changes: Vec<(&str, Option<Value>, Option<Value>)> = edit
            .changes
            .iter()
            .map(|c| (c.column.as_str(), c.old.clone(), c.new.clone()))
            .collect();
        assert_eq!(changes, want.changes, "{at}");
        assert!(edit.edited_at.is_some(), "{at}");
    }
}

/// An insert's changes: every audited column's new value.
fn inserted(
    name: &str,
    task: &str,
    schedule: Value,
    kwargs: Value,
    options: Value,
) -> Vec<(&'static str, Option<Value>, Option<Value>)> {
    vec![
        ("name", None, Some(json!(name))),
        ("task", None, Some(json!(task))),
        ("schedule", None, Some(schedule)),
        ("active", None, Some(json!(true))),
        ("kwargs", None, Some(kwargs)),
        ("options", None, Some(options)),
    ]
}

backend_tests! {
    fn every_edit_is_recorded_once_with_who_and_what(db) {
        let mut config = db.config();
        config.set("http_tokens", &format!("alice:{ALICE}")).unwrap();
        // A starting beat inserts its declared routine.
        let beat_handle = Beat::builder(config.clone())
            .task(Recorder::new("ok"))
            .routine(Routine::new("declared", "ok", every(3600)).kwargs(json!({"from": "code"})))
            .start()
            .unwrap();
        let beat_id = beat_handle.monitor().beat_id().to_owned();
        // Plain SQL: an insert, then a change of schedule.
        let application = match db.kind {
            Kind::Postgres => "SET application_name = 'audit-by-hand';",
            _ => "",
        };
        db.exec(&format!(
            r#"{application}
               INSERT INTO routines (name, task, schedule, kwargs, options, active)
               VALUES ('by-hand', 'ok', '{{"timedelta": 60}}', '{{"k": 1}}', '{{}}', true);
               UPDATE routines SET schedule = '{{"hour": "3"}}' WHERE name = 'by-hand'"#
        ));
        let id = db.store().routine("by-hand").unwrap().unwrap().id;
        // The command line: as the OS user, then as another name.
        let edited = beat_with(
            &db.url,
            &["edit", "by-hand", "--crontab", r#"{"minute": "*/5"}"#, "--kwargs", r#"{"k": "v"}"#],
            &[("USER", "carol")],
        );
        assert_eq!(edited.code, 0, "{edited:?}");
        let disabled = beat(&db.url, &["disable", "by-hand", "--as", "bob"]);
        assert_eq!(disabled.code, 0, "{disabled:?}");
        // The dashboard, as a named operator.
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), beat_handle.monitor(), config.clone()).unwrap();
        let enabled = post(server.addr(), "/routine/enable", &[("Authorization", &format!("Bearer {ALICE}"))], &[("name", "by-hand")]);
        assert_eq!(enabled.status, 303, "{}", enabled.body);
        // And a delete from the command line.
        let removed = beat(&db.url, &["remove", "by-hand", "--as", "dave"]);
        assert_eq!(removed.code, 0, "{removed:?}");

        let sql_who = |store: &RoutineStore| -> Option<String> {
            match db.kind {
                Kind::Postgres => Some("postgres".into()),
                // MySQL's USER(): the account and the client's host.
                Kind::Mysql => edits(store).iter().find(|e| e.via == Via::Sql).and_then(|e| e.actor.clone())
                    .filter(|a| a.starts_with("root@")),
                Kind::Sqlite => None,
            }
        };
        let store = db.store();
        let who = sql_who(&store);
        if db.kind == Kind::Mysql {
            assert!(who.is_some(), "{:#?}", edits(&store));
        }
        let app = (db.kind == Kind::Postgres).then_some("audit-by-hand");
        let found = edits(&store);
        check(&found, &[
            Expected {
                routine: "declared", action: EditAction::Insert, actor: Some(beat_id.clone()), via: Via::Beat,
                application: None,
                changes: inserted("declared", "ok", json!({"timedelta": 3600}), json!({"from": "code"}), json!({})),
            },
            Expected {
                routine: "by-hand", action: EditAction::Insert, actor: who.clone(), via: Via::Sql, application: app,
                changes: inserted("by-hand", "ok", json!({"timedelta": 60}), json!({"k": 1}), json!({})),
            },
            Expected {
                routine: "by-hand", action: EditAction::Update, actor: who.clone(), via: Via::Sql, application: app,
                changes: vec![("schedule", Some(json!({"timedelta": 60})), Some(json!({"hour": "3"})))],
            },
            Expected {
                routine: "by-hand", action: EditAction::Update, actor: Some("carol".into()), via: Via::Cli, application: None,
                changes: vec![
                    ("schedule", Some(json!({"hour": "3"})), Some(json!({"minute": "*/5"}))),
                    ("kwargs", Some(json!({"k": 1})), Some(json!({"k": "v"}))),
                ],
            },
            Expected {
                routine: "by-hand", action: EditAction::Update, actor: Some("bob".into()), via: Via::Cli, application: None,
                changes: vec![("active", Some(json!(true)), Some(json!(false)))],
            },
            Expected {
                routine: "by-hand", action: EditAction::Update, actor: Some("alice".into()), via: Via::Dashboard, application: None,
                changes: vec![("active", Some(json!(false)), Some(json!(true)))],
            },
            Expected {
                routine: "by-hand", action: EditAction::Delete, actor: Some("dave".into()), via: Via::Cli, application: None,
                changes: vec![
                    ("name", Some(json!("by-hand")), None),
                    ("task", Some(json!("ok")), None),
                    ("schedule", Some(json!({"minute": "*/5"})), None),
                    ("active", Some(json!(true)), None),
                    ("kwargs", Some(json!({"k": "v"})), None),
                    ("options", Some(json!({})), None),
                ],
            },
        ]);
        // The routine's own edits, by id (as `beat show` and its page read
        // them), are the six of by-hand's, newest first.
        let mut filter = EditFilter::default();
        filter.routine_id = Some(id);
        filter.limit = 100;
        assert_eq!(store.edits().list(&filter).unwrap().len(), 6);
        drop(server);
        beat_handle.stop();
    }

    fn the_beats_own_bookkeeping_records_no_edit(db) {
        let ok = Recorder::new("ok");
        let clock = TestClock::at(at(0));
        let mut routines: Vec<Routine> = (0..5).map(|i| Routine::new(format!("every second {i}"), "ok", every(1))).collect();
        // One the beat finds invalid: it writes its last_error.
        routines.push(Routine::new("unknown task", "nope", every(1)));
        let mut beat = Beat::builder(db.config())
            .clock(clock.clone())
            .task(ok.clone())
            .routines(routines)
            .start_manual()
            .unwrap();
        beat.tick(at(0)).unwrap();
        let store = db.store();
        let before = edits(&store);
        assert_eq!(before.len(), 6, "the six inserts of the declared routines: {before:#?}");
        // A minute of 1 s routines: claims, plans, last_error, and a run
        // request the beat takes and clears.
        for s in 1..=60 {
            clock.set(at(s));
            if s == 30 {
                let op = Operator::connect(db.config()).unwrap();
                op.request(&common::tester(), "every second 0").unwrap();
            }
            beat.tick(at(s)).unwrap();
            // Each run ends before the next tick (a routine whose run is
            // still going is not queued again). The worker counts a run as
            // succeeded once it has left the in-flight set; the task's own
            // count comes before that, and a tick right after it could
            // find the run still going.
            let runs = 5 * s as u64 + u64::from(s >= 30);
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == runs), "{:?}, not {runs} runs", beat.stats());
        }
        let row = store.routine("every second 1").unwrap().unwrap();
        assert_eq!(row.total_run_count, Some(60), "the routines ran every second");
        assert_eq!(ok.count(), 5 * 60 + 1, "and the requested run once");
        let invalid = store.routine("unknown task").unwrap().unwrap();
        assert!(invalid.last_error.is_some_and(|e| e.contains("nope")));
        assert_eq!(edits(&store), before, "bookkeeping recorded edits");
    }

    fn edits_are_pruned_by_age_and_count_per_routine(db) {
        let mut config = db.config();
        config.audit_max_edits = 3;
        config.audit_max_age = Duration::from_secs(3600);
        config.scheduler_heartbeat_interval = Duration::from_millis(200);
        config.scheduler_dead_after = Duration::from_secs(2);
        let store = db.store();
        db.exec("INSERT INTO routines (name, task, schedule) VALUES ('busy', 'ok', '{\"timedelta\": 1000}'), ('quiet', 'ok', '{\"timedelta\": 1000}')");
        for i in 1..=9 {
            db.exec(&format!("UPDATE routines SET kwargs = '{{\"i\": {i}}}' WHERE name = 'busy'"));
        }
        // An edit older than audit_max_age, of a routine long gone.
        db.exec(&format!(
            "INSERT INTO routine_edits (routine_id, routine, edited_at, action, via, changes) \
             VALUES ('gone', 'gone', {}, 'delete', 'sql', '{{}}')",
            db.timestamp(Utc::now() - TimeDelta::hours(2))
        ));
        assert_eq!(edits(&store).len(), 12);
        let beat = Beat::builder(config).task(Recorder::new("ok")).start().unwrap();
        let of = |name: &str| edits(&store).into_iter().filter(|e| e.routine == name).collect::<Vec<_>>();
        assert!(
            wait_until(Duration::from_secs(15), || of("busy").len() == 3 && of("gone").is_empty()),
            "{:#?}",
            edits(&store)
        );
        // The newest three of busy's stay; quiet's insert stays.
        let kept: Vec<Value> = of("busy").iter().map(|e| e.changes[0].new.clone().unwrap()).collect();
        assert_eq!(kept, vec![json!({"i": 7}), json!({"i": 8}), json!({"i": 9})]);
        assert_eq!(of("quiet").len(), 1);
        beat.stop();
    }
}

#[test]
fn beat_log_lists_edits_newest_first_by_routine_and_since() {
    let db = TestDb::sqlite("beat_log");
    let op = Operator::migrate(db.config()).unwrap();
    drop(op);
    let added = beat(
        &db.url,
        &[
            "add",
            "nightly",
            "--task",
            "app.report",
            "--crontab",
            r#"{"hour": "2"}"#,
            "--as",
            "erin",
        ],
    );
    assert_eq!(added.code, 0, "{added:?}");
    let edited = beat(
        &db.url,
        &[
            "edit",
            "nightly",
            "--crontab",
            r#"{"hour": "3"}"#,
            "--as",
            "erin",
        ],
    );
    assert_eq!(edited.code, 0, "{edited:?}");
    db.exec("UPDATE routines SET active = 0 WHERE name = 'nightly'");
    // Another routine's edit, which `log nightly` leaves out.
    let other = beat(
        &db.url,
        &[
            "add",
            "other",
            "--task",
            "app.other",
            "--every",
            "1h",
            "--as",
            "frank",
        ],
    );
    assert_eq!(other.code, 0, "{other:?}");
    let log = beat(&db.url, &["log", "nightly", "--json"]).json();
    let actions: Vec<(&str, Option<&str>, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str(),
                e["via"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("update", None, "sql"),
            ("update", Some("erin"), "cli"),
            ("insert", Some("erin"), "cli")
        ]
    );
    assert_eq!(
        log[1]["changes"],
        json!({"schedule": {"old": {"hour": "2"}, "new": {"hour": "3"}}})
    );
    assert_eq!(
        log[0]["changes"],
        json!({"active": {"old": true, "new": false}})
    );
    // As text: one line per edit, who and how, old and new.
    let text = beat(&db.url, &["log"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.out.contains("erin (cli)")
            && text
                .out
                .contains(r#"schedule: {"hour":"2"} -> {"hour":"3"}"#),
        "{}",
        text.out
    );
    // Without a name: every routine's, newest first.
    let all = beat(&db.url, &["log", "--json"]).json();
    let routines: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["routine"].as_str().unwrap())
        .collect();
    assert_eq!(
        routines,
        ["other", "nightly", "nightly", "nightly"],
        "{all:#}"
    );
    // --since leaves out what came before: nightly's insert, moved back
    // two hours, is before `1h` ago; its two updates are not.
    db.exec(&format!(
        "UPDATE routine_edits SET edited_at = {} WHERE routine = 'nightly' AND action = 'insert'",
        db.timestamp(Utc::now() - TimeDelta::hours(2))
    ));
    let recent: Vec<String> = beat(&db.url, &["log", "nightly", "--since", "1h", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recent, ["update", "update"]);
    // A routine since deleted is still found by name; --since leaves out
    // what came before.
    assert_eq!(
        beat(&db.url, &["remove", "nightly", "--as", "erin"]).code,
        0
    );
    assert_eq!(
        beat(&db.url, &["log", "nightly", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let later = beat(&db.url, &["log", "--since", "2999-01-01", "--json"]).json();
    assert_eq!(later, json!([]));
    let bad = beat(&db.url, &["log", "--as", ""]);
    assert_eq!(bad.code, 2, "{bad:?}");
}
