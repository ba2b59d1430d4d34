//! Reliability of beat processes: SIGKILL at any moment, one frozen in
//! the middle of a claim, SIGTERM; bad rows by the thousand and values no
//! plan can hold. Each (routine, due time) must be dispatched once: the
//! tests read every message back from Redis and tally it against the
//! routine's grid of due times and its `total_run_count`
//! (`common::tally`). Outages of the database and the broker are in
//! tests/outages.rs; several beats through random kills, freezes, outages
//! and edits, for as long as asked, in tests/chaos.rs.

mod common;

use celery_diesel_kit::ops::Operator;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::routines::insert_tagged;
use common::runs::assert_history_is_the_runs;
use common::tally::{first, tally};
use common::{
    at, published, published_count, redis_queue, report, signal, wait_until, BeatProcess, Kind,
    Recorder, Rng, TestDb,
};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn a_beat_killed_at_any_moment_loses_no_run_and_pushes_none_twice() {
    let test = "reliability_kill_points";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    insert_tagged(&db, "k", 200, &queue, |i| [1, 2][i % 2]);
    let env = [
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
    ];
    // Kill points spread over the claim-and-publish cycle: a fixed,
    // irregular sequence of lifetimes from 0.1 s to 1.9 s. Each beat's
    // lifetime is recorded: a run may be missed only if it fell due while
    // no beat process was alive.
    let mut alive: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for i in 0..15u64 {
        let started = Utc::now();
        let mut beat = BeatProcess::start(&env);
        // The lifetime is the point: it places the kill in the cycle.
        std::thread::sleep(Duration::from_millis(100 + (i * 523) % 1800));
        beat.kill();
        alive.push((started, Utc::now()));
    }
    let started = Utc::now();
    let mut last = BeatProcess::start(&env);
    // The last beat takes every routine over: each runs after the kills.
    let all_ran = || {
        store
            .routines()
            .unwrap()
            .iter()
            .all(|r| r.last_run_at_utc().is_some_and(|t| t > started))
    };
    assert!(
        wait_until(Duration::from_secs(30), all_ran),
        "{}",
        last.log()
    );
    assert!(last.terminate(Duration::from_secs(30)), "{}", last.log());
    alive.push((started, Utc::now()));
    let messages = published(&broker, &queue);
    let tally = tally(&store.routines().unwrap(), &messages);
    let recorded = assert_history_is_the_runs(&db, &messages);
    report(&format!(
        "15 SIGKILLs: {} runs, {} repeated with the same id, {} missed, {recorded} recorded",
        tally.runs,
        tally.repeats,
        tally.missed.len()
    ));
    assert!(
        tally.miscounted.is_empty(),
        "a run advanced without being published: {:?}",
        first(&tally.miscounted)
    );
    assert_eq!(tally.strays, 0);
    assert_eq!(tally.repeats, 0, "runs pushed to Redis twice");
    let first_start = alive[0].0;
    let with_a_beat: Vec<_> = tally
        .missed
        .iter()
        .filter(|(_, due)| {
            *due > first_start && alive.iter().any(|(from, to)| due >= from && due <= to)
        })
        .collect();
    assert!(
        with_a_beat.is_empty(),
        "missed while a beat process was alive: {:?}",
        first(&with_a_beat)
    );
}

/// What becomes of the frozen beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// SIGCONT once the other beat has taken its rows over.
    Resumed,
    /// SIGKILL at once: a kill at a known point of a claim (often after
    /// its push, before its commit).
    Killed,
}

/// Two beats; one is frozen (SIGSTOP) in the middle of a claim. The other
/// must take its rows over once the database timeout ends the frozen
/// session (or at once, when it is killed), and the frozen one's rows must
/// reach Redis once: not again after SIGCONT, nor again from the other
/// beat after a kill between push and commit.
fn a_frozen_beat(kind: Kind, then: Then) {
    let test = "reliability_frozen";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::of(kind, test) else {
        return;
    };
    let store = db.store();
    insert_tagged(&db, "z", 2000, &queue, |_| 1);
    const BOUND: u64 = 3;
    let bound = BOUND.to_string();
    let env = [
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("SCHEDULER_DB_TIMEOUT", bound.as_str()),
        ("RUST_LOG", "info"),
    ];
    let mut frozen = BeatProcess::start(&env);
    let mut other = BeatProcess::start(&env);
    assert!(wait_until(Duration::from_secs(20), || published_count(
        &broker, &queue
    ) > 4000));
    let pid = frozen.pid();
    let mut rng = Rng(0xf402e);
    let mut caught = None;
    for _ in 0..200 {
        // A moment of the claim cycle, at random: the pause is the point.
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        signal(pid, "STOP");
        // A statement under way completes; then the session waits in its
        // transaction.
        if wait_until(Duration::from_millis(100), || db.locked_by(pid)) {
            let stopped = (Instant::now(), Utc::now());
            // The freeze lasting is the point: after 1.5 s, the rows due
            // more than 1.2 s ago are those it holds (the other beat
            // claims any other within a pass).
            std::thread::sleep(Duration::from_millis(1500));
            let held: HashSet<String> = store
                .routines()
                .unwrap()
                .into_iter()
                .filter(|r| {
                    r.next_run_at_utc()
                        .is_some_and(|t| t < Utc::now() - TimeDelta::milliseconds(1200))
                })
                .map(|r| r.name)
                .collect();
            if !held.is_empty() {
                caught = Some((stopped, held));
                break;
            }
        }
        signal(pid, "CONT");
    }
    let Some(((stopped, stopped_at), held)) = caught else {
        panic!("never caught the beat holding due rows in a claim");
    };
    if then == Then::Killed {
        frozen.kill();
    }
    assert!(
        wait_until(Duration::from_secs(BOUND + 10), || db.overdue(1.2) == 0),
        "the frozen beat's rows were never taken over:\n{}",
        other.log()
    );
    let took_over = stopped.elapsed();
    let held = held.len();
    let taken_at = Utc::now();
    if then == Then::Resumed {
        let frozen_id = store
            .beats()
            .list()
            .unwrap()
            .into_iter()
            .find(|b| b.pid == pid as i32)
            .expect("the frozen beat's row")
            .id;
        signal(pid, "CONT");
        let resumed_at = Utc::now();
        // Resumed, it finds its session ended by the database: its claim
        // fails (whatever it pushed, Redis already has; the records went
        // with the rollback), and it claims anew.
        let op = Operator::connect(db.config()).unwrap();
        let claims_anew = || {
            op.history(None, false, Some(resumed_at), 10_000)
                .unwrap()
                .iter()
                .any(|r| r.beat_id.as_deref() == Some(frozen_id.as_str()))
        };
        assert!(
            wait_until(Duration::from_secs(20), claims_anew),
            "{}",
            frozen.log()
        );
        assert!(
            frozen.terminate(Duration::from_secs(30)),
            "{}",
            frozen.log()
        );
    }
    assert!(other.terminate(Duration::from_secs(30)), "{}", other.log());
    let messages = published(&broker, &queue);
    let tally = tally(&store.routines().unwrap(), &messages);
    assert_history_is_the_runs(&db, &messages);
    report(&format!(
        "{kind:?}: a beat frozen mid-claim ({then:?}) held {held} rows; the other took them over \
         {took_over:.1?} after the freeze (bound {BOUND} s); {} runs, {} repeated, {} missed while frozen",
        tally.runs,
        tally.repeats,
        tally.missed.len()
    ));
    // The database ends the frozen session BOUND after its last statement;
    // the other beat's next pass (every 0.5 s) claims the rows, and they
    // stop counting as overdue (by 1.2 s) once claimed: 2 s covers both.
    assert!(
        took_over <= Duration::from_secs(BOUND + 2),
        "took {took_over:?} with scheduler_db_timeout = {BOUND} s"
    );
    // And no sooner than the database ends the frozen session: its last
    // statement came at most one step of a claim (a batch's publish, well
    // under a second) before the freeze. A killed beat's session ends at
    // the kill.
    if then == Then::Resumed {
        assert!(
            took_over >= Duration::from_secs(BOUND - 1),
            "the held rows were claimed {took_over:?} after the freeze, before the {BOUND} s timeout"
        );
    }
    assert_eq!(tally.repeats, 0, "a held run reached Redis twice");
    assert_eq!(tally.strays, 0);
    assert!(
        tally.miscounted.is_empty(),
        "{:?}",
        first(&tally.miscounted)
    );
    // Runs are missed only while the frozen beat held rows (each such
    // routine fires once when taken over, as after any outage). On MariaDB
    // the other beat's own writes may wait on the frozen session's locks
    // in the due-time index until the bound, so there any routine may miss
    // a run in that window; on PostgreSQL, in practice, the held ones.
    let (from, to) = (
        stopped_at - TimeDelta::seconds(1),
        taken_at + TimeDelta::seconds(1),
    );
    let outside: Vec<_> = tally
        .missed
        .iter()
        .filter(|(_, due)| *due < from || *due > to)
        .collect();
    assert!(
        outside.is_empty(),
        "missed with both beats able to claim: {:?}",
        first(&outside)
    );
}

#[test]
fn a_beat_frozen_mid_claim_on_postgres_holds_its_rows_no_longer_than_the_timeout() {
    a_frozen_beat(Kind::Postgres, Then::Resumed);
}

#[cfg(feature = "mysql")]
#[test]
fn a_beat_frozen_mid_claim_on_mysql_holds_its_rows_no_longer_than_the_timeout() {
    a_frozen_beat(Kind::Mysql, Then::Resumed);
}

#[test]
fn a_beat_killed_between_push_and_commit_pushes_nothing_twice() {
    a_frozen_beat(Kind::Postgres, Then::Killed);
}

#[test]
fn sigterm_stops_claiming_at_once_and_leaves_no_routine_half_advanced() {
    let test = "reliability_sigterm";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    insert_tagged(&db, "t", 100, &queue, |_| 1);
    let mut beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
    ]);
    assert!(wait_until(Duration::from_secs(20), || published_count(
        &broker, &queue
    ) >= 300));
    let signalled = Utc::now();
    let asked = Instant::now();
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());
    let took = asked.elapsed();
    let tally = tally(&store.routines().unwrap(), &published(&broker, &queue));
    assert!(
        tally.miscounted.is_empty() && tally.strays == 0 && tally.repeats == 0,
        "{tally:?}"
    );
    // `signalled` is read before `kill` runs: a pass begun in between may
    // claim what falls due by then.
    let latest = tally.dispatched.iter().map(|(_, due)| *due).max().unwrap();
    assert!(
        latest <= signalled + TimeDelta::milliseconds(500),
        "claimed a run due {latest} after SIGTERM at {signalled}"
    );
    report(&format!(
        "SIGTERM with 100 Celery routines: stopped in {took:?}"
    ));
    // No in-process task to wait for: the stop is the pass under way and
    // the last writes (the beat's stop, in the beats table).
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
}

// ---------------------------------------------------------------------------
// Thousands of bad rows beside good ones.

/// A row that cannot run: (task, schedule, kwargs, options), each JSON text.
fn bad_row(rng: &mut Rng, json_columns: bool) -> (String, String, String, String) {
    let ok_schedule = format!(r#"{{"timedelta": {}}}"#, 1 + rng.below(100));
    let field = |rng: &mut Rng| {
        rng.pick(&[
            "minute",
            "hour",
            "day_of_week",
            "day_of_month",
            "month_of_year",
        ])
        .to_owned()
    };
    let (mut task, mut schedule, mut kwargs, mut options) = (
        "record".to_owned(),
        ok_schedule,
        "{}".to_owned(),
        "{}".to_owned(),
    );
    match rng.below(12) {
        0 => {
            schedule = rng
                .pick(&["5", "\"hourly\"", "[1, 2]", "null", "true", "[]"])
                .to_owned()
        }
        1 => {
            schedule = format!(
                r#"{{"timedelta": {}}}"#,
                rng.pick(&["0", "-1", "-0.5", "\"15\"", "true", "null", "1e300", "[1]", "{}"])
            )
        }
        2 => {
            // Just outside each field's range, or far outside.
            let (name, low, high) = [
                ("minute", 0, 59),
                ("hour", 0, 23),
                ("day_of_week", 0, 6),
                ("day_of_month", 1, 31),
                ("month_of_year", 1, 12),
            ][rng.below(5) as usize];
            let value =
                [low - 1, high + 1, high + 1 + rng.below(1000) as i64][rng.below(3) as usize];
            schedule = format!(r#"{{"{name}": {value}}}"#);
        }
        3 => {
            let garbage: String = (0..1 + rng.below(6))
                .map(|_| rng.pick(&["!", "#", "9", "-", "/", ",", "x", "*", " "]))
                .collect();
            schedule = format!(r#"{{"{}": "!{garbage}"}}"#, field(rng));
        }
        4 => {
            schedule = rng
                .pick(&[
                    r#"{}"#,
                    r#"{"minute": "*"}"#,
                    r#"{"minute": "*", "hour": "*"}"#,
                ])
                .to_owned()
        }
        5 => {
            schedule = rng
                .pick(&[
                    r#"{"day_of_month": 30, "month_of_year": 2}"#,
                    r#"{"day_of_month": [31], "month_of_year": "4,6,9,11"}"#,
                    r#"{"minute": []}"#,
                ])
                .to_owned()
        }
        6 => {
            schedule = format!(
                r#"{{"{}": 5}}"#,
                rng.pick(&["minutes", "hours", "interval", "every", "cron"])
            )
        }
        7 => schedule = format!(r#"{{"{}": "{}"}}"#, field(rng), "9".repeat(10_000)),
        8 => kwargs = rng.pick(&["[1, 2]", "\"text\"", "5", "true"]).to_owned(),
        9 => options = rng.pick(&["[1]", "\"queue\"", "7"]).to_owned(),
        10 => task = format!("no.such.task.{}", rng.below(1000)),
        _ => {
            schedule = format!(
                r#"{{"timedelta": 5, "misfire_policy": "{}"}}"#,
                rng.pick(&["never", "always", "SKIP"])
            );
        }
    }
    if !json_columns && rng.below(10) == 0 {
        schedule = "{not json".to_owned();
    }
    (task, schedule, kwargs, options)
}

backend_tests! {
    fn thousands_of_bad_rows_are_reported_once_and_good_ones_keep_their_timing(db) {
        let rec = Recorder::new("record");
        let mut beat = celery_diesel_kit::Beat::builder(db.config()).task(rec.clone()).start_manual().unwrap();
        let mut rng = Rng(0x5eed);
        let quote = |s: &str| s.replace('\'', "''");
        let mut values = Vec::new();
        for i in 0..2000 {
            let (task, schedule, kwargs, options) = bad_row(&mut rng, db.kind != Kind::Sqlite);
            values.push(format!("('bad{i:04}', '{}', '{}', '{}', '{}')", quote(&task), quote(&schedule), quote(&kwargs), quote(&options)));
        }
        for i in 0..20 {
            values.push(format!(r#"('good{i:02}', 'record', '{{"timedelta": 10}}', '{{"i": {i}}}', '{{}}')"#));
        }
        for chunk in values.chunks(200) {
            db.exec(&format!("INSERT INTO routines (name, task, schedule, kwargs, options) VALUES {}", chunk.join(", ")));
        }
        let tick = beat.tick(at(0)).unwrap();
        assert_eq!((tick.planned, tick.invalid), (2020, 2000));
        let rows = beat.store().routines().unwrap();
        for row in &rows {
            if row.name.starts_with("bad") {
                let error = row.last_error.as_deref().unwrap_or_default();
                assert!(!error.is_empty() && error.len() < 400 && row.next_run_at.is_none(), "{}: {error:?}", row.name);
            } else {
                assert_eq!((row.next_run_at_utc(), &row.last_error), (Some(at(10)), &None), "{}", row.name);
            }
        }
        // Reported once per change of the row: the next passes leave them be,
        // and the good routines run exactly on time.
        for (t, fired) in [(5, 0), (10, 20), (15, 0), (20, 20)] {
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == rec.count() as u64 && rec.count() as u64 == beat.stats().fired));
            let tick = beat.tick(at(t)).unwrap();
            assert_eq!((tick.planned, tick.invalid, tick.fired), (0, 0, fired), "at {t}");
        }
        assert!(wait_until(Duration::from_secs(10), || rec.count() == 40));
        assert!(rec.runs().iter().all(|r| r.scheduled_at == at(10) || r.scheduled_at == at(20)));
    }
}

// ---------------------------------------------------------------------------
// Beats starting together.

backend_tests! {
    fn five_beats_starting_together_insert_each_declared_routine_once(db) {
        // The beats create the table (the test reads it with plain SQL), so
        // that this test can also judge an older beat (`CDK_BEAT_BIN`).
        let dir = std::env::temp_dir().join(format!("cdk-declared-{}-{:?}", std::process::id(), db.kind));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routines.json");
        let routines: Vec<serde_json::Value> = (0..20)
            .map(|i| serde_json::json!({"name": format!("declared{i:02}"), "task": "demo.hello", "schedule": {"timedelta": 3600}}))
            .collect();
        std::fs::write(&file, serde_json::Value::from(routines).to_string()).unwrap();
        let file = file.to_str().unwrap();
        let env = [("SCHEDULER_DB_URI", db.url.as_str()), ("RUST_LOG", "info")];
        for round in 0..20 {
            if round > 0 {
                db.exec("DELETE FROM routines");
            }
            let mut beats: Vec<BeatProcess> =
                (0..5).map(|_| BeatProcess::start_with(&["--routines", file], &env)).collect();
            for beat in &beats {
                assert!(
                    beat.logs_within(Duration::from_secs(30), "beat: running"),
                    "round {round}: a beat did not start:\n{}",
                    beat.log()
                );
            }
            let rows = db.number("SELECT COUNT(*) AS n FROM routines");
            let names = db.number("SELECT COUNT(DISTINCT name) AS n FROM routines");
            assert_eq!((rows, names), (20, 20), "round {round}: one row per declared name");
            for beat in &mut beats {
                beat.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------
// Values no plan can hold.

backend_tests! {
    fn far_future_and_unreadable_times_are_their_rows_errors_and_good_routines_keep_time(db) {
        let rec = Recorder::new("record");
        let mut beat = celery_diesel_kit::Beat::builder(db.config()).task(rec.clone()).start_manual().unwrap();
        let rows = [
            ("good", r#"{"timedelta": 10}"#, None),
            ("every 1e9 s", r#"{"timedelta": 1000000000}"#, None),
            ("every 1e12 s", r#"{"timedelta": 1000000000000}"#, None),
            ("every 9e15 s", r#"{"timedelta": 9000000000000000}"#, None),
            ("monday 29 february", r#"{"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2, "day_of_week": "mon"}"#, None),
            ("hourly from 9999", r#"{"minute": 0}"#, Some("'9999-12-31 23:30:00'")),
            ("leap day from 9999", r#"{"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2}"#, Some("'9999-06-01 00:00:00'")),
        ];
        for (name, schedule, last_run_at) in rows {
            db.exec(&format!(
                "INSERT INTO routines (name, task, schedule, last_run_at) VALUES ('{name}', 'record', '{schedule}', {})",
                last_run_at.unwrap_or("NULL")
            ));
        }
        // What only some backends let a row hold.
        let unreadable: &[(&str, &str)] = match db.kind {
            Kind::Postgres => &[("last run at infinity", "'infinity'"), ("last run in 290000", "'290000-01-01 00:00:00'")],
            Kind::Sqlite => &[("last run yesterday", "'yesterday'")],
            Kind::Mysql => &[],
        };
        for (name, value) in unreadable {
            db.exec(&format!(
                r#"INSERT INTO routines (name, task, schedule, last_run_at) VALUES ('{name}', 'record', '{{"timedelta": 10}}', {value})"#
            ));
        }
        let tick = beat.tick(at(0)).unwrap();
        assert_eq!(tick.planned, rows.len() + unreadable.len());
        let all = beat.store().routines().unwrap();
        let get = |name: &str| all.iter().find(|r| r.name == name).unwrap().clone();
        for name in ["every 1e12 s", "every 9e15 s", "hourly from 9999", "leap day from 9999"]
            .iter()
            .chain(unreadable.iter().map(|(n, _)| n))
        {
            let row = get(name);
            assert!(row.last_error.is_some() && row.next_run_at.is_none(), "{name}: {row:?}");
        }
        assert_eq!(get("every 1e9 s").next_run_at_utc(), Some(at(1_000_000_000)));
        let monday = get("monday 29 february").next_run_at_utc().unwrap();
        assert!(monday > at(0) && get("monday 29 february").last_error.is_none());
        assert_eq!(get("good").next_run_at_utc(), Some(at(10)));
        for (t, fired) in [(10, 1), (15, 0), (20, 1)] {
            // The last run has ended (a run still going is skipped).
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == beat.stats().fired));
            assert_eq!(beat.tick(at(t)).unwrap().fired, fired, "at {t}");
        }
        assert!(wait_until(Duration::from_secs(10), || rec.count() == 2));
        let due: Vec<_> = rec.runs().iter().map(|r| (r.routine.clone(), r.scheduled_at)).collect();
        assert_eq!(due, [("good".to_owned(), at(10)), ("good".to_owned(), at(20))]);
    }
}
