//! The scheduler against real databases: due times, live edits, bad rows,
//! the kit's source-of-truth rules, several beats. Schedule behaviour is
//! driven with explicit times (`ManualBeat::tick`); only the tests that
//! measure real latency or run beats side by side use the clock.

mod common;

use celery_diesel_kit::{Beat, ManualBeat, Routine, RoutineRow, Schedule};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::{at, every, holds_for, wait_until, Recorder, TestDb};
use serde_json::json;
use std::time::{Duration, Instant};

fn manual(db: &TestDb, recorder: &Recorder, routines: Vec<Routine>) -> ManualBeat {
    Beat::builder(db.config())
        .task(recorder.clone())
        .routines(routines)
        .start_manual()
        .expect("start")
}

fn row(beat: &ManualBeat, name: &str) -> RoutineRow {
    beat.store()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
}

/// Waits until `n` runs have finished in all (and so left the in-flight
/// set: a routine whose run is still going is not queued again), then
/// checks there were no more.
fn settle(beat: &ManualBeat, n: u64) {
    assert!(
        wait_until(Duration::from_secs(10), || beat.stats().succeeded >= n),
        "{:?}, expected {n} runs",
        beat.stats()
    );
    assert_eq!(beat.stats().succeeded, n, "{:?}", beat.stats());
}

/// Waits for the workers to have run `n` tasks in all, then checks it stays `n`.
fn expect_runs(recorder: &Recorder, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || recorder.count() >= n),
        "{} runs, expected {n}",
        recorder.count()
    );
    assert_eq!(recorder.count(), n);
}

/// Three routines every 10 s on an injected clock, each run once (at 10).
fn three_routines_run_once(db: &TestDb) -> (ManualBeat, Recorder, common::TestClock) {
    let rec = Recorder::new("record");
    let clock = common::TestClock::at(at(0));
    let mut beat = Beat::builder(db.config())
        .clock(clock.clone())
        .task(rec.clone())
        .routines((0..3).map(|i| Routine::new(format!("r{i}"), "record", every(10))))
        .start_manual()
        .unwrap();
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 3);
    settle(&beat, 3);
    (beat, rec, clock)
}

backend_tests! {
    fn routines_fire_at_their_due_times(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![Routine::new("every minute", "record", every(60))]);
        assert_eq!(beat.tick(at(0)).unwrap().planned, 1);
        assert_eq!(row(&beat, "every minute").next_run_at_utc(), Some(at(60)));
        assert_eq!(beat.tick(at(59)).unwrap().fired, 0);
        let tick = beat.tick(at(60)).unwrap();
        assert_eq!((tick.fired, tick.next_due), (1, Some(at(120))));
        assert_eq!(beat.tick(at(61)).unwrap().fired, 0, "a due time fires once");
        expect_runs(&rec, 1);
        assert_eq!(rec.runs()[0].scheduled_at, at(60));
        let r = row(&beat, "every minute");
        assert_eq!((r.last_run_at_utc(), r.total_run_count, r.next_run_at_utc()), (Some(at(60)), Some(1), Some(at(120))));
    }

    fn crontabs_fire_on_their_minutes(db) {
        let rec = Recorder::new("record");
        let quarter = Schedule::crontab("*/15", "*", "*", "*", "*").unwrap();
        let mut beat = manual(db, &rec, vec![Routine::new("quarter", "record", quarter)]);
        beat.tick(at(60)).unwrap();
        assert_eq!(row(&beat, "quarter").next_run_at_utc(), Some(at(15 * 60)));
        assert_eq!(beat.tick(at(15 * 60 - 1)).unwrap().fired, 0);
        assert_eq!(beat.tick(at(15 * 60)).unwrap().fired, 1);
        assert_eq!(row(&beat, "quarter").next_run_at_utc(), Some(at(30 * 60)));
        expect_runs(&rec, 1);
    }

    fn a_changed_schedule_fires_at_once_only_if_its_time_has_passed(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![Routine::new("r", "record", every(60))]);
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(60)).unwrap().fired, 1);
        settle(&beat, 1);

        // last run 60, new interval 30: next is 90, nothing fires now.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 30}'"#);
        let tick = beat.tick(at(70)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 0));
        assert_eq!(row(&beat, "r").next_run_at_utc(), Some(at(90)));
        assert_eq!(beat.tick(at(89)).unwrap().fired, 0);
        assert_eq!(beat.tick(at(90)).unwrap().fired, 1);
        settle(&beat, 2);

        // last run 90, new interval 5: 95 has passed at 100, so it fires
        // once now, and then keeps the new 5 s grid.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 5}'"#);
        let tick = beat.tick(at(100)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 1));
        assert_eq!(row(&beat, "r").next_run_at_utc(), Some(at(105)));
        assert_eq!(beat.tick(at(100)).unwrap().fired, 0);

        // To a crontab: the first minute after the last run.
        db.exec(r#"UPDATE routines SET schedule = '{"minute": "*/10"}'"#);
        assert_eq!(beat.tick(at(101)).unwrap().fired, 0);
        assert_eq!(row(&beat, "r").next_run_at_utc(), Some(at(600)));
        expect_runs(&rec, 3);
        assert_eq!(rec.runs().iter().map(|r| r.scheduled_at).collect::<Vec<_>>(), [at(60), at(90), at(95)]);
    }

    fn editing_kwargs_options_task_or_name_fires_nothing(db) {
        let rec = Recorder::new("record");
        let other = Recorder::new("other");
        let mut beat = Beat::builder(db.config())
            .task(rec.clone())
            .task(other.clone())
            .routine(Routine::new("r", "record", every(60)).kwargs(json!({"n": 1})))
            .start_manual()
            .unwrap();
        beat.tick(at(0)).unwrap();
        db.exec(r#"UPDATE routines SET kwargs = '{"n": 2}', options = '{"queue": "q"}', name = 'renamed'"#);
        let tick = beat.tick(at(30)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 0));
        assert_eq!(row(&beat, "renamed").next_run_at_utc(), Some(at(60)), "the planned time stands");
        db.exec("UPDATE routines SET task = 'other'");
        let tick = beat.tick(at(40)).unwrap();
        assert_eq!((tick.planned, tick.fired), (1, 0));
        assert_eq!(beat.tick(at(60)).unwrap().fired, 1);
        expect_runs(&other, 1);
        assert_eq!(rec.count(), 0);
        let run = &other.runs()[0];
        assert_eq!((run.routine.as_str(), &run.kwargs, run.scheduled_at), ("renamed", &json!({"n": 2}), at(60)));
    }

    fn inactive_routines_never_run_and_resume_when_activated(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![Routine::new("r", "record", every(60))]);
        beat.tick(at(0)).unwrap();
        db.exec("UPDATE routines SET active = false");
        let tick = beat.tick(at(1)).unwrap();
        assert_eq!((tick.planned, tick.next_due), (1, None));
        for t in [60, 120, 600] {
            assert_eq!(beat.tick(at(t)).unwrap().fired, 0);
        }
        // Never ran: it is planned afresh from now, and runs on schedule.
        db.exec("UPDATE routines SET active = true");
        assert_eq!(beat.tick(at(610)).unwrap().fired, 0);
        assert_eq!(beat.tick(at(670)).unwrap().fired, 1);
        settle(&beat, 1);
        // Deactivated after a run and reactivated much later: the run due
        // after the last one has passed, so it fires once, then on schedule.
        db.exec("UPDATE routines SET active = false");
        beat.tick(at(671)).unwrap();
        db.exec("UPDATE routines SET active = true");
        let tick = beat.tick(at(1000)).unwrap();
        assert_eq!((tick.fired, tick.next_due), (1, Some(at(1030))));
        expect_runs(&rec, 2);
        let row = row(&beat, "r");
        assert_eq!((row.total_run_count, row.active), (Some(2), true));
    }

    fn a_missed_period_fires_once_then_keeps_the_schedule(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![Routine::new("r", "record", every(10))]);
        beat.tick(at(0)).unwrap();
        // Due at 10, 20, ..., 60; the beat looks again only at 65.
        let tick = beat.tick(at(65)).unwrap();
        assert_eq!((tick.fired, tick.next_due), (1, Some(at(70))));
        let r = row(&beat, "r");
        assert_eq!((r.last_run_at_utc(), r.total_run_count), (Some(at(65)), Some(1)));
        expect_runs(&rec, 1);
        assert_eq!(rec.runs()[0].scheduled_at, at(10), "the run stands for the due time it was claimed at");
    }

    fn the_clock_jumping_back_an_hour_causes_no_burst_and_no_missed_run(db) {
        let (mut beat, rec, clock) = three_routines_run_once(db);
        // The system clock steps back an hour, then runs on: every pass up to
        // the next due time (20) fires nothing, and the catch-up is no burst.
        let mut fired = Vec::new();
        for s in (10 - 3600..=40).step_by(5) {
            clock.set(at(s));
            let tick = beat.tick(at(s)).unwrap();
            if tick.fired > 0 {
                fired.push((s, tick.fired));
                settle(&beat, 3 + 3 * fired.len() as u64);
            }
        }
        assert_eq!(fired, [(20, 3), (30, 3), (40, 3)], "each due time once, on time");
        let due: Vec<_> = rec.runs_of("r0").iter().map(|r| r.scheduled_at).collect();
        assert_eq!(due, [at(10), at(20), at(30), at(40)], "no run missed, none repeated");
    }

    fn the_clock_jumping_forward_an_hour_fires_each_routine_once(db) {
        let (mut beat, rec, clock) = three_routines_run_once(db);
        // 360 due times pass in a step; fire_once (the default) runs each
        // routine once for them, then keeps its grid.
        clock.set(at(3615));
        let tick = beat.tick(at(3615)).unwrap();
        assert_eq!((tick.fired, tick.next_due), (3, Some(at(3620))));
        settle(&beat, 6);
        assert_eq!(beat.tick(at(3616)).unwrap().fired, 0, "no second catch-up run");
        assert_eq!(beat.tick(at(3620)).unwrap().fired, 3);
        settle(&beat, 9);
        let due: Vec<_> = rec.runs_of("r1").iter().map(|r| r.scheduled_at).collect();
        assert_eq!(due, [at(10), at(20), at(3620)], "one run stands for the hour");
        assert_eq!(row(&beat, "r1").total_run_count, Some(3));
    }

    fn the_skip_misfire_policy_drops_runs_later_than_their_grace_time(db) {
        use celery_diesel_kit::{Misfire, MisfirePolicy};
        let rec = Recorder::new("record");
        let config = { let mut c = db.config(); c.scheduler_misfire_policy = MisfirePolicy::Skip; c.scheduler_misfire_grace_time = Duration::from_secs(5); c };
        let fire_once = Misfire { policy: Some(MisfirePolicy::FireOnce), grace_time: None };
        let mut beat = Beat::builder(config)
            .task(rec.clone())
            .routine(Routine::new("global skip", "record", every(10)))
            .routine(Routine::new("own fire_once", "record", every(10)).misfire(fire_once))
            .start_manual()
            .unwrap();
        // A routine of an operator's, with its policy in the schedule JSON.
        db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES
            ('sql skip', 'record', '{"minute": "*/1", "misfire_policy": "skip", "misfire_grace_time": 0.5}')"#);
        beat.tick(at(0)).unwrap();
        // 3 s late: within the grace time, every policy runs it.
        let tick = beat.tick(at(13)).unwrap();
        assert_eq!((tick.fired, tick.missed), (2, 0));
        settle(&beat, 2);
        // 25 s late: the skip policy drops it, fire_once runs it once.
        let tick = beat.tick(at(45)).unwrap();
        assert_eq!((tick.fired, tick.missed), (1, 1));
        let skipped = row(&beat, "global skip");
        assert_eq!((skipped.total_run_count, skipped.last_run_at_utc(), skipped.next_run_at_utc()), (Some(1), Some(at(10)), Some(at(50))));
        assert_eq!(row(&beat, "own fire_once").next_run_at_utc(), Some(at(50)));
        // At 61: the two 10 s routines were due at 50 (11 s late); the
        // crontab, whose own grace is half a second, at 60.
        settle(&beat, 3);
        let tick = beat.tick(at(61)).unwrap();
        assert_eq!((tick.fired, tick.missed), (1, 2));
        assert_eq!(row(&beat, "sql skip").next_run_at_utc(), Some(at(120)));
        settle(&beat, 4);
        let tick = beat.tick(at(120)).unwrap();
        assert_eq!((tick.fired, tick.missed), (2, 1), "the crontab on time runs; the 10 s routines are 50 s late");
        expect_runs(&rec, 6);
        assert_eq!(beat.stats().missed, 4);
    }

    fn bad_rows_are_reported_by_name_and_skipped(db) {
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![]);
        let long = "x".repeat(10_000);
        // JSON columns (PostgreSQL, MySQL) refuse text that is not JSON at all.
        let not_json = if db.kind == common::Kind::Sqlite { "{oops" } else { r#""hourly""# };
        for (name, task, schedule, kwargs) in [
            ("good", "record", r#"{"timedelta": 10}"#, "{}"),
            ("not json", "record", not_json, "{}"),
            ("never", "record", r#"{"day_of_month": 31, "month_of_year": 2}"#, "{}"),
            ("all stars", "record", r#"{"minute": "*"}"#, "{}"),
            ("zero", "record", r#"{"timedelta": 0}"#, "{}"),
            ("unknown task", "no.such.task", r#"{"timedelta": 10}"#, "{}"),
            ("kwargs list", "record", r#"{"timedelta": 10}"#, "[1, 2]"),
            ("long", "record", &format!(r#"{{"minute": "{long}"}}"#), "{}"),
        ] {
            db.exec(&format!(
                "INSERT INTO routines (name, task, schedule, kwargs) VALUES ('{name}', '{task}', '{schedule}', '{kwargs}')"
            ));
        }
        let tick = beat.tick(at(0)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (8, 7));
        let expected = [
            ("not json", if db.kind == common::Kind::Sqlite { "not valid JSON" } else { "must be a JSON object" }),
            ("never", "never fires"),
            ("all stars", "no schedule set"),
            ("zero", "invalid timedelta 0"),
            ("unknown task", "unknown task \"no.such.task\""),
            ("kwargs list", "kwargs must be a JSON object"),
            ("long", "invalid crontab field minute"),
        ];
        for (name, reason) in expected {
            let r = row(&beat, name);
            let error = r.last_error.unwrap_or_default();
            assert!(error.contains(reason), "{name}: {error:?} lacks {reason:?}");
            assert!(error.len() < 400, "{name}: error of {} bytes", error.len());
            assert_eq!(r.next_run_at, None, "{name}");
        }
        // Reported once per change: later passes leave them alone, and the
        // good routine keeps its exact timing.
        let tick = beat.tick(at(5)).unwrap();
        assert_eq!((tick.planned, tick.invalid, tick.fired), (0, 0, 0));
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        settle(&beat, 1);
        assert_eq!(beat.tick(at(20)).unwrap().fired, 1);
        // A fixed row runs.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 7}' WHERE name = 'zero'"#);
        let tick = beat.tick(at(21)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (1, 0));
        assert_eq!(row(&beat, "zero").last_error, None);
        assert_eq!(beat.tick(at(28)).unwrap().fired, 1);
        expect_runs(&rec, 3);
    }

    fn rows_with_errors_are_looked_at_again_after_a_restart(db) {
        // Deployed without the task: the row is an error...
        let mut beat = Beat::builder(db.config()).start_manual().unwrap();
        db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('r', 'record', '{"timedelta": 10}')"#);
        assert_eq!(beat.tick(at(0)).unwrap().invalid, 1);
        assert_eq!(beat.tick(at(1)).unwrap().planned, 0, "and stays one while nothing changes");
        beat.stop_within(Duration::from_secs(5));
        // ...redeployed with it: the row runs, without anyone editing it.
        let rec = Recorder::new("record");
        let mut beat = manual(db, &rec, vec![]);
        let tick = beat.tick(at(2)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (1, 0));
        assert_eq!(row(&beat, "r").last_error, None);
        assert_eq!(beat.tick(at(12)).unwrap().fired, 1);
        expect_runs(&rec, 1);
    }

    fn declared_routines_follow_the_kits_source_of_truth_rules(db) {
        let rec = Recorder::new("record");
        let start = |routines: Vec<Routine>| manual(db, &rec, routines);
        let beat = start(vec![
            Routine::new("a", "record", every(10)),
            Routine::new("b", "record", every(10)),
            Routine::new("off", "record", every(10)).active(false),
        ]);
        let names = |beat: &ManualBeat| beat.store().routines().unwrap().into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(&beat), ["a", "b", "off"]);
        beat.stop_within(Duration::from_secs(5));
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 99}' WHERE name = 'a'"#);

        // Redeploy: a in both (the table's schedule wins), b gone (deleted),
        // c new (inserted), off still declared (kept, still inactive).
        let beat = start(vec![
            Routine::new("a", "record", every(10)),
            Routine::new("c", "record", every(10)),
            Routine::new("off", "record", every(10)),
        ]);
        assert_eq!(names(&beat), ["a", "c", "off"]);
        assert_eq!(row(&beat, "a").schedule.replace(' ', ""), r#"{"timedelta":99}"#);
        assert!(!row(&beat, "off").active);
        beat.stop_within(Duration::from_secs(5));

        // Nothing declared (a table managed by SQL): nothing is deleted.
        let beat = start(vec![]);
        assert_eq!(names(&beat), ["a", "c", "off"]);
        beat.stop_within(Duration::from_secs(5));

        // `beat sync`: the same rules, each name accounted for, and a name
        // kept (one the code means but could not declare) is not deleted.
        let op = celery_diesel_kit::ops::Operator::connect(db.config()).unwrap();
        let me = celery_diesel_kit::Actor::new("tester", celery_diesel_kit::Via::Library);
        let synced = op
            .sync(&me, &[Routine::new("a", "record", every(10)), Routine::new("d", "record", every(10))], &["c".to_owned()])
            .unwrap();
        assert_eq!((synced.inserted, synced.kept, synced.deleted), (vec!["d".to_owned()], vec!["a".to_owned()], vec!["off".to_owned()]));
        let names: Vec<String> = db.store().routines().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "c", "d"]);
    }

    fn two_beats_dispatch_each_due_time_exactly_once(db) {
        // Two beats on one table pass at the same instants, on two threads
        // at once, for ten due times of twenty routines on a 1 s schedule:
        // every due time is dispatched by exactly one of them, none missed.
        let rec = Recorder::new("record");
        let clock = common::TestClock::at(at(0));
        let routines: Vec<Routine> = (0..20).map(|i| Routine::new(format!("r{i:02}"), "record", every(1))).collect();
        let start = || Beat::builder(db.config()).clock(clock.clone()).task(rec.clone()).routines(routines.clone()).start_manual().unwrap();
        let (mut first, mut second) = (start(), start());
        let op = celery_diesel_kit::ops::Operator::connect(db.config()).unwrap();
        let succeeded = || op.history(None, false, None, 10_000).unwrap().iter().filter(|r| r.outcome == "succeeded").count();
        for t in 0..=10 {
            let now = at(t);
            clock.set(now);
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| first.tick(now).unwrap());
                let b = s.spawn(|| second.tick(now).unwrap());
                (a.join().unwrap(), b.join().unwrap())
            });
            let expected = if t == 0 { 0 } else { 20 };
            assert_eq!(a.fired + b.fired, expected, "at {now}: {a:?} {b:?}");
            // Each run ends, and its end is recorded, before the next due
            // time (as it would in a second of real time): a routine whose
            // run is recorded as going on one beat is busy for the other.
            let done = 20 * t as usize;
            assert!(wait_until(Duration::from_secs(10), || rec.count() >= done), "{} runs at {now}, expected {done}", rec.count());
            assert!(wait_until(Duration::from_secs(10), || succeeded() == done), "{} runs recorded as succeeded at {now}, expected {done}", succeeded());
        }
        let (a, b) = (first.stats(), second.stats());
        assert_eq!(a.fired + b.fired, 200, "{a:?} {b:?}");
        common::report(&format!("two beats on {:?}: {} and {} of 200 due times", db.kind, a.fired, b.fired));
        let runs = rec.runs();
        assert_eq!(runs.len(), 200);
        let grid: Vec<DateTime<Utc>> = (1..=10).map(at).collect();
        let rows = db.store().routines().unwrap();
        assert_eq!(rows.len(), 20);
        for r in &rows {
            let mut due: Vec<DateTime<Utc>> = runs.iter().filter(|x| x.routine == r.name).map(|x| x.scheduled_at).collect();
            due.sort();
            assert_eq!(due, grid, "{}: each due time from 1 s to 10 s, once", r.name);
            assert_eq!(r.total_run_count, Some(10), "{}", r.name);
        }
        first.stop();
        second.stop();
    }
}

backend_tests! {
    fn edits_take_effect_within_a_second(db) {
        let rec = Recorder::new("record");
        // The default watch interval, as shipped.
        let config = { let mut c = db.config(); c.scheduler_watch_interval = celery_diesel_kit::Config::default().scheduler_watch_interval; c };
        let beat = Beat::builder(config)
            .task(rec.clone())
            .routine(Routine::new("r", "record", every(3600)))
            .start()
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || beat.store().routine("r").unwrap().is_some_and(|r| r.next_run_at.is_some())));
        let mut latencies = Vec::new();
        for i in 0..10 {
            let seconds = 3601 + i;
            let edited = Instant::now();
            db.exec(&format!(r#"UPDATE routines SET schedule = '{{"timedelta": {seconds}}}'"#));
            let applied = wait_until(Duration::from_secs(5), || {
                let r = beat.store().routine("r").unwrap().unwrap();
                !common::sql::needs_sync(&db.url, "r") && r.next_run_at.is_some() && r.schedule.contains(&seconds.to_string())
            });
            assert!(applied, "edit {i} not applied within 5 s");
            latencies.push(edited.elapsed());
        }
        // Deactivating stops a running routine: no run is due after the edit.
        db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 0.2}'"#);
        assert!(wait_until(Duration::from_secs(5), || rec.count() >= 2));
        db.exec("UPDATE routines SET active = false");
        let deactivated = Utc::now();
        assert!(wait_until(Duration::from_secs(5), || {
            beat.store().routine("r").unwrap().is_some() && !common::sql::needs_sync(&db.url, "r")
        }));
        let settled = Instant::now();
        // Over 0.7 s, three and a half periods of the routine, none runs.
        let late = || rec.runs().into_iter().filter(|r| r.at > settled).collect::<Vec<_>>();
        assert!(holds_for(Duration::from_millis(700), || late().is_empty()), "runs after deactivation took effect: {:?}", late());
        beat.stop();
        assert!(rec.runs().iter().all(|r| r.scheduled_at <= deactivated + TimeDelta::seconds(1)));

        latencies.sort();
        let (p50, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
        common::report(&format!("edit-to-effect latency on {:?}: p50 {p50:?}, max {max:?}", db.kind));
        // Edits are looked for every half second (the shipped watch
        // interval), and applied in the pass that finds them: half a second
        // and a pass, so a second bounds it with room to spare.
        assert!(max < Duration::from_secs(1), "edit latency max {max:?} (p50 {p50:?})");
    }
}
