//! Schedules beyond the kit, end to end on the three backends, with the
//! time injected (`ManualBeat::tick`): clocked and one-off routines, start
//! and end, run limits and jitter, as docs/schedules.md states them.

mod common;

use celery_diesel_kit::{
    task_id, Beat, HttpServer, ManualBeat, Routine, RoutineRow, RunFilter, Timing,
};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::web::{any_port, request};
use common::{
    at, published, published_count, redis_queue, utc, wait_until, BeatProcess, Recorder, TestDb,
};
use serde_json::json;
use std::time::Duration;

fn manual(db: &TestDb, recorder: &Recorder) -> ManualBeat {
    Beat::builder(db.config())
        .task(recorder.clone())
        .start_manual()
        .expect("start")
}

fn add(db: &TestDb, name: &str, schedule: &str) {
    db.exec(&format!(
        "INSERT INTO routines (name, task, schedule) VALUES ('{name}', 'record', '{schedule}')"
    ));
}

fn row(beat: &ManualBeat, name: &str) -> RoutineRow {
    beat.store()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
}

/// The due times `name` ran for, in order, once `n` runs have ended.
fn ran(recorder: &Recorder, name: &str, n: usize) -> Vec<DateTime<Utc>> {
    assert!(
        wait_until(Duration::from_secs(10), || recorder.runs_of(name).len()
            >= n),
        "{name}: {} runs, expected {n}",
        recorder.runs_of(name).len()
    );
    let mut due: Vec<_> = recorder
        .runs_of(name)
        .iter()
        .map(|r| r.scheduled_at)
        .collect();
    due.sort();
    due
}

/// Fires `beat` at `t`, and waits for the run to end (a run still going
/// would make the next one skip, as no run overlaps its previous one).
fn fire_one(beat: &mut ManualBeat, t: DateTime<Utc>) {
    let before = beat.stats().succeeded;
    assert_eq!(beat.tick(t).unwrap().fired, 1, "at {t}");
    assert!(
        wait_until(Duration::from_secs(10), || beat.stats().succeeded > before),
        "the run at {t} did not end"
    );
}

/// (active, total_run_count, next_run_at, last_error) of a row.
fn state(r: &RoutineRow) -> (bool, Option<i32>, Option<DateTime<Utc>>, Option<String>) {
    (
        r.active,
        r.total_run_count,
        r.next_run_at_utc(),
        r.last_error.clone(),
    )
}

/// The beat's edits of `name` that made it inactive, in the audit trail.
fn ended_by_beat(db: &TestDb, name: &str) -> i64 {
    db.number(&format!(
        "SELECT COUNT(*) AS n FROM routine_edits WHERE routine = '{name}' \
         AND action = 'update' AND via = 'beat' AND changes LIKE '%active%'"
    ))
}

backend_tests! {
    fn a_clocked_routine_runs_once_at_its_time_then_is_inactive(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec);
        // T0 is 2030-01-01 00:00 UTC: 02:00 CET that day is at(3600).
        add(db, "clocked", r#"{"clocked": "2030-01-01T02:00:00", "timezone": "Europe/Berlin"}"#);
        add(db, "offset", r#"{"clocked": "2030-01-01T01:30:00+00:00"}"#);
        beat.tick(at(0)).unwrap();
        assert_eq!(row(&beat, "clocked").next_run_at_utc(), Some(at(3600)));
        assert_eq!(row(&beat, "offset").next_run_at_utc(), Some(at(5400)));
        assert_eq!(beat.tick(at(3599)).unwrap().fired, 0);
        assert_eq!(beat.tick(at(3600)).unwrap().fired, 1);
        assert_eq!(ran(&rec, "clocked", 1), [at(3600)]);
        // Over: inactive, with no error, and the beat's edit says so.
        let r = row(&beat, "clocked");
        assert_eq!(state(&r), (false, Some(1), None, None));
        assert_eq!(r.last_run_at_utc(), Some(at(3600)));
        assert_eq!(ended_by_beat(db, "clocked"), 1);
        assert_eq!(beat.tick(at(5400)).unwrap().fired, 1);
        assert_eq!(beat.tick(at(99_999)).unwrap().fired, 0, "each fires once");
        assert_eq!(ran(&rec, "clocked", 1), [at(3600)]);
        assert_eq!(ran(&rec, "offset", 1), [at(5400)]);
        assert_eq!(state(&row(&beat, "offset")), (false, Some(1), None, None));
        // Shown as finished, with why, not as an error.
        let shown = common::cli::beat(&db.url, &["show", "clocked", "--json"]);
        assert_eq!(shown.code, 0, "{shown:?}");
        let shown = shown.json();
        assert_eq!(shown["routine"]["over"]["state"], "finished", "{shown}");
        assert_eq!(shown["routine"]["schedule_words"], "once at 2030-01-01T02:00:00 (Europe/Berlin)");
        assert_eq!(shown["routine"]["last_error"], serde_json::Value::Null);
        assert_eq!(shown["next"], json!([]));
        let text = common::cli::beat(&db.url, &["show", "clocked"]);
        assert!(text.out.contains("none: finished, a clocked routine, and its time (2030-01-01 01:00:00 UTC) has come"), "{text:?}");
        let list = common::cli::beat(&db.url, &["list"]);
        assert!(list.out.lines().any(|l| l.starts_with("clocked") && l.contains("no, finished")), "{list:?}");
    }

    fn routines_declared_in_code_keep_their_bounds_and_clocked_times(db) {
        let declared = [
            json!({"name": "campaign", "task": "record", "schedule": {"timedelta": 60, "timezone": "Europe/Berlin", "start_at": "2030-01-01T02:00:00", "max_runs": 2, "jitter": 5}}),
            json!({"name": "once", "task": "record", "schedule": {"clocked": "2030-01-01T00:30:00"}}),
            json!({"name": "off", "task": "record", "schedule": {"minute": 0, "one_off": true, "misfire_policy": "skip"}}),
        ];
        let routines: Vec<Routine> = declared.iter().map(|r| Routine::from_json(r).unwrap()).collect();
        let rec = Recorder::new("record");
        let mut beat = Beat::builder(db.config()).task(rec.clone()).routines(routines).start_manual().unwrap();
        beat.tick(at(0)).unwrap();
        for r in &declared {
            let name = r["name"].as_str().unwrap();
            let stored: serde_json::Value = serde_json::from_str(&row(&beat, name).schedule).unwrap();
            assert_eq!(&stored, &r["schedule"], "{name}");
        }
        // Read as written: 02:00 in Berlin is 01:00 UTC.
        let campaign = row(&beat, "campaign");
        assert_eq!(campaign.next_due_at_utc(), Some(at(3600)));
        assert_eq!(row(&beat, "once").next_run_at_utc(), Some(at(1800)));
        assert!(Routine::from_json(&json!({"name": "bad", "task": "record", "schedule": {"minute": 0, "max_runs": 0}})).is_err());
    }

    fn a_clocked_time_past_when_the_row_appears_fires_once_at_once_or_not_at_all_by_the_misfire_policy(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec);
        beat.tick(at(0)).unwrap();
        add(db, "late", r#"{"clocked": "2030-01-01T00:00:00"}"#);
        add(db, "late skip", r#"{"clocked": "2030-01-01T00:00:00", "misfire_policy": "skip"}"#);
        let tick = beat.tick(at(600)).unwrap();
        assert_eq!((tick.planned, tick.fired, tick.missed), (2, 1, 1));
        assert_eq!(ran(&rec, "late", 1), [at(0)]);
        for name in ["late", "late skip"] {
            let r = row(&beat, name);
            assert!(!r.active, "{name}");
            assert_eq!((r.next_run_at_utc(), r.last_error.clone()), (None, None), "{name}");
            assert_eq!(ended_by_beat(db, name), 1, "{name}");
        }
        assert_eq!(row(&beat, "late skip").total_run_count, Some(0));
        assert_eq!(beat.tick(at(1200)).unwrap().fired, 0);
        assert!(rec.runs_of("late skip").is_empty());
    }

    fn a_finished_one_off_routine_is_re_armed_only_by_an_edit_that_makes_it_active(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec);
        add(db, "once", r#"{"timedelta": 60, "one_off": true}"#);
        add(db, "clocked", r#"{"clocked": "2030-01-01T00:01:00"}"#);
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(60)).unwrap().fired, 2);
        // Both runs ended, before the edits below make the routines due.
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 2));
        assert_eq!(ran(&rec, "once", 1), [at(60)]);
        assert_eq!(state(&row(&beat, "once")), (false, Some(1), None, None));
        assert_eq!(beat.tick(at(120)).unwrap().fired, 0);

        // A new schedule alone does not re-arm it.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 30, "one_off": true}' WHERE name = 'once'"#);
        db.exec(r#"UPDATE routines SET schedule = '{"clocked": "2030-01-01T00:05:00"}' WHERE name = 'clocked'"#);
        beat.tick(at(130)).unwrap();
        assert_eq!(beat.tick(at(400)).unwrap().fired, 0);
        assert_eq!(state(&row(&beat, "once")), (false, Some(1), None, None));

        // Active again: each runs once more, by the usual rule for an edit
        // (the next run after its last: 60 + 30 s, and the new clocked
        // time; at once, as both have passed), and is over again.
        db.exec("UPDATE routines SET active = true");
        let tick = beat.tick(at(400)).unwrap();
        assert_eq!((tick.planned, tick.fired), (2, 2));
        assert_eq!(ran(&rec, "once", 2), [at(60), at(90)]);
        assert_eq!(ran(&rec, "clocked", 2), [at(60), at(300)]);
        for name in ["once", "clocked"] {
            assert_eq!(state(&row(&beat, name)), (false, Some(2), None, None), "{name}");
            assert_eq!(ended_by_beat(db, name), 2, "{name}");
        }
        assert_eq!(beat.tick(at(9_999)).unwrap().fired, 0);
    }

    fn max_runs_ends_a_routine_after_that_many_runs(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec);
        add(db, "three", r#"{"timedelta": 10, "max_runs": 3}"#);
        beat.tick(at(0)).unwrap();
        for t in [10, 20, 30] {
            fire_one(&mut beat, at(t));
        }
        assert_eq!(beat.tick(at(40)).unwrap().fired, 0);
        assert_eq!(ran(&rec, "three", 3), [at(10), at(20), at(30)]);
        assert_eq!(state(&row(&beat, "three")), (false, Some(3), None, None));
        assert_eq!(ended_by_beat(db, "three"), 1);
        // Raised and made active again: it goes on to the new limit.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 10, "max_runs": 4}', active = true"#);
        assert_eq!(beat.tick(at(45)).unwrap().fired, 1);
        assert_eq!(ran(&rec, "three", 4), [at(10), at(20), at(30), at(40)]);
        assert_eq!(state(&row(&beat, "three")), (false, Some(4), None, None));
    }

    fn start_and_end_bound_the_runs_across_a_daylight_saving_change(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec);
        // 02:30 daily in Berlin, 27 to 29 March 2027; the 28th's 02:30 is
        // in the spring gap and fires at 03:00 CEST.
        add(db, "campaign", r#"{"minute": 30, "hour": 2, "timezone": "Europe/Berlin", "start_at": "2027-03-27T00:00:00", "end_at": "2027-03-29T02:30:00"}"#);
        add(db, "backwards", r#"{"minute": 0, "start_at": "2027-03-29T00:00:00", "end_at": "2027-03-28T00:00:00"}"#);
        add(db, "gone", r#"{"timedelta": 60, "end_at": "2027-03-01T00:00:00Z"}"#);
        // Previewed within its bounds, without a database.
        let preview = common::cli::beat(
            "postgres://nobody:secret@127.0.0.1:1/none",
            &["next", r#"{"minute": 30, "hour": 2, "start_at": "2027-03-27T00:00:00", "end_at": "2027-03-29T02:30:00"}"#,
              "--timezone", "Europe/Berlin", "-n", "10", "--after", "2027-03-01 00:00", "--json"],
        );
        assert_eq!(preview.code, 0, "{preview:?}");
        let utc_times: Vec<String> = preview.json()["runs"].as_array().unwrap().iter().map(|t| t["utc"].as_str().unwrap().to_owned()).collect();
        assert_eq!(utc_times.len(), 3, "{utc_times:?}");
        beat.tick(utc("2027-03-20 00:00:00")).unwrap();
        assert_eq!(row(&beat, "campaign").next_run_at_utc(), Some(utc("2027-03-27 01:30:00")));
        let backwards = row(&beat, "backwards");
        assert!(backwards.active);
        assert!(backwards.last_error.as_deref().is_some_and(|e| e.contains("end_at") && e.contains("before start_at")), "{backwards:?}");
        // An end already past: over at once, without an error.
        assert_eq!(state(&row(&beat, "gone")), (false, None, None, None));
        for t in ["2027-03-27 01:30:00", "2027-03-28 01:00:00", "2027-03-29 00:30:00"] {
            assert_eq!(beat.tick(utc(t) - TimeDelta::seconds(1)).unwrap().fired, 0, "{t}");
            fire_one(&mut beat, utc(t));
        }
        assert_eq!(beat.tick(utc("2027-04-01 00:00:00")).unwrap().fired, 0);
        assert_eq!(
            ran(&rec, "campaign", 3),
            [utc("2027-03-27 01:30:00"), utc("2027-03-28 01:00:00"), utc("2027-03-29 00:30:00")]
        );
        assert_eq!(state(&row(&beat, "campaign")), (false, Some(3), None, None));
    }

    fn jitter_dispatches_late_by_the_same_offset_in_three_beats_and_keeps_ids_and_history(db) {
        let recs: Vec<Recorder> = (0..3).map(|_| Recorder::new("record")).collect();
        let mut beats: Vec<ManualBeat> = recs.iter().map(|r| manual(db, r)).collect();
        let schedule = r#"{"minute": "*/1", "jitter": 30}"#;
        add(db, "herd", schedule);
        let timing = Timing::from_json_in(&serde_json::from_str(schedule).unwrap(), chrono_tz::UTC).unwrap();
        beats[0].tick(at(0)).unwrap();
        let id = row(&beats[0], "herd").id;
        // Five due times, each planned by one beat and run by the next:
        // the offset each wrote is the one every beat computes.
        for k in 1..=5 {
            let due = at(60 * k);
            let dispatch = timing.dispatch_at(&id, due);
            let r = row(&beats[0], "herd");
            assert_eq!((r.next_run_at_utc(), r.next_due_at_utc()), (Some(dispatch), Some(due)), "due {due}");
            assert!(dispatch > due && dispatch <= due + TimeDelta::seconds(30), "{dispatch}");
            let beat = &mut beats[usize::try_from(k).unwrap() % 3];
            assert_eq!(beat.tick(dispatch - TimeDelta::microseconds(1)).unwrap().fired, 0);
            fire_one(beat, dispatch);
            // Its record closed too: another beat's next claim would skip
            // a run still open in the history (no run overlaps its last).
            let open = "SELECT COUNT(*) AS n FROM routine_runs \
                        WHERE outcome IN ('queued', 'running', 'retrying')";
            assert!(wait_until(Duration::from_secs(10), || db.number(open) == 0));
            // last_run_at names the due time, not the dispatch.
            assert_eq!(row(&beats[1], "herd").last_run_at_utc(), Some(due));
        }
        let mut due: Vec<DateTime<Utc>> = Vec::new();
        for (i, rec) in recs.iter().enumerate() {
            due.extend(ran(rec, "herd", [1, 2, 2][i]));
        }
        due.sort();
        assert_eq!(due, (1..=5).map(|k| at(60 * k)).collect::<Vec<_>>());
        // The history and the task ids name the due times.
        let mut filter = RunFilter::default();
        filter.routine = Some("herd".into());
        filter.limit = 10;
        let mut runs = beats[0].store().runs().list(&filter).unwrap();
        runs.sort_by_key(|r| r.due_at);
        let expected: Vec<_> = (1..=5).map(|k| (Some(at(60 * k).naive_utc()), task_id(&id, at(60 * k)))).collect();
        assert_eq!(runs.iter().map(|r| (r.due_at, r.task_id.clone())).collect::<Vec<_>>(), expected);
    }
}

/// One-off, clocked and limited routines run exactly as often as they
/// should across three beat processes, one of them SIGKILLed while they
/// fire (PostgreSQL, Redis, real time).
#[test]
fn one_off_clocked_and_limited_routines_run_exactly_so_often_across_three_beats_and_a_sigkill() {
    let test = "bounds_three_beats";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    // 100 of each: clocked at times spread over 2 to 8 s from now; one-off
    // every second; at most 3 runs every second.
    let now = Utc::now();
    let rows: Vec<String> = (0..300)
        .map(|i| {
            let name = format!("b{i:03}");
            let schedule = match i % 3 {
                0 => {
                    let at = now + TimeDelta::milliseconds(2_000 + 60 * i);
                    format!(r#"{{"clocked": "{}"}}"#, at.to_rfc3339())
                }
                1 => r#"{"timedelta": 1, "one_off": true}"#.to_owned(),
                _ => r#"{"timedelta": 1, "max_runs": 3}"#.to_owned(),
            };
            format!(
                r#"('{name}', 'tasks.record', '{schedule}', '{{"r": "{name}"}}', '{{"queue": "{queue}"}}')"#
            )
        })
        .collect();
    common::routines::insert_rows(&db, &rows);
    let env = [
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "info"),
    ];
    let mut beats: Vec<BeatProcess> = (0..3).map(|_| BeatProcess::start(&env)).collect();
    // Killed while the routines fire: once a sixth of the runs are out.
    assert!(
        wait_until(Duration::from_secs(30), || published_count(&broker, &queue)
            >= 100),
        "{} messages",
        published_count(&broker, &queue)
    );
    beats[1].kill();
    let all_over = || {
        store
            .routines()
            .unwrap()
            .iter()
            .all(|r| !r.active && r.next_run_at.is_none())
    };
    assert!(
        wait_until(Duration::from_secs(60), all_over),
        "routines still active: {:?}",
        store
            .routines()
            .unwrap()
            .iter()
            .filter(|r| r.active)
            .map(|r| &r.name)
            .collect::<Vec<_>>()
    );
    for beat in [0, 2] {
        assert!(
            beats[beat].terminate(Duration::from_secs(15)),
            "beat {beat} did not stop"
        );
    }
    let messages = published(&broker, &queue);
    let mut by_routine = std::collections::HashMap::<String, Vec<String>>::new();
    for m in &messages {
        by_routine
            .entry(m.routine.clone())
            .or_default()
            .push(m.id.clone());
    }
    for r in store.routines().unwrap() {
        let ids = by_routine.remove(&r.name).unwrap_or_default();
        let i: usize = r.name[1..].parse().unwrap();
        let runs = if i % 3 == 2 { 3 } else { 1 };
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(
            (ids.len(), distinct.len()),
            (runs, runs),
            "{}: {ids:?}",
            r.name
        );
        assert_eq!(
            r.total_run_count,
            Some(i32::try_from(runs).unwrap()),
            "{}",
            r.name
        );
        assert_eq!(r.last_error, None, "{}", r.name);
    }
    assert!(by_routine.is_empty(), "strays: {by_routine:?}");
}

/// The dashboard says a routine whose runs are over has finished or
/// ended, and why, on the list and on its page (SQLite; the pages are the
/// same on every backend).
#[test]
fn the_dashboard_shows_finished_and_ended_routines_as_such() {
    let db = TestDb::sqlite("bounds_dashboard");
    let mut config = db.config();
    config.http_token = Some("t0ken-for-the-bounds-tests".into());
    let rec = Recorder::new("record");
    let mut beat = Beat::builder(config.clone())
        .task(rec.clone())
        .start_manual()
        .unwrap();
    add(&db, "once", r#"{"clocked": "2030-01-01T00:01:00"}"#);
    add(&db, "three", r#"{"timedelta": 60, "max_runs": 1}"#);
    add(&db, "still", r#"{"timedelta": 600, "jitter": 30}"#);
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(60)).unwrap().fired, 2);
    beat.tick(at(61)).unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config).unwrap();
    let auth = [("Authorization", "Bearer t0ken-for-the-bounds-tests")];
    let list = request(server.addr(), "GET", "/", &auth, "");
    assert_eq!(list.status, 200);
    for (name, word) in [("once", "finished"), ("three", "ended")] {
        let row_html = list
            .body
            .split("<tr")
            .find(|tr| tr.contains(&format!(">{name}</a>")))
            .unwrap_or_else(|| panic!("{name} not listed: {}", list.body));
        assert!(
            row_html.contains(&format!("inactive</span> {word}")),
            "{row_html}"
        );
        let page = request(
            server.addr(),
            "GET",
            &format!("/routine?name={name}"),
            &auth,
            "",
        );
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains(&format!("<span id=\"over\">{word}: ")),
            "{}",
            page.body
        );
    }
    let page = request(server.addr(), "GET", "/routine?name=once", &auth, "");
    assert!(
        page.body.contains("once at 2030-01-01T00:01:00"),
        "{}",
        page.body
    );
    let page = request(server.addr(), "GET", "/routine?name=three", &auth, "");
    assert!(
        page.body.contains("it has made its 1 run(s) (max_runs)"),
        "{}",
        page.body
    );
    let page = request(server.addr(), "GET", "/routine?name=still", &auth, "");
    assert!(!page.body.contains("id=\"over\""), "{}", page.body);
    assert!(
        page.body
            .contains("every 10 minutes, dispatched up to 30 s after each due time (jitter)"),
        "{}",
        page.body
    );
}
