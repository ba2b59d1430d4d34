//! `beat backfill`: a routine's past due times without a run in the
//! history, dispatched once each with the scheduled runs' task ids,
//! recorded as backfill, the routine's row untouched; cut before the
//! next due time (the beats') and at now; refused where it cannot be done;
//! and two backfills at once dispatching each due time once.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{task_id, Beat, RoutineRow};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::cli::{beat, beat_with, Ran};
use common::{published, utc, wait_until, Recorder, TestDb, REDIS_HOST};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

/// The start of the tests' ranges: in the past, whenever the tests run.
const B: &str = "2026-06-01 10:00:00";

/// `i` minutes after [`B`].
fn minute(i: i64) -> DateTime<Utc> {
    utc(B) + TimeDelta::minutes(i)
}

/// As `beat backfill` reads a time: `2026-06-01T10:05`.
fn flag(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M").to_string()
}

/// As the JSON output writes a time.
fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A Redis list of the test's own in Redis database `db` (kept for these
/// tests, and never flushed: each test's queue is its own).
fn broker(test: &str, db: u8) -> Option<(String, String)> {
    let url = format!("redis://{REDIS_HOST}/{db}");
    if !common::reachable(&url) {
        common::skip(test, &format!("Redis not reachable at {REDIS_HOST}"));
        return None;
    }
    Some((url, common::unique(test)))
}

/// A routine on a one-minute crontab sending `tasks.record` to `queue`,
/// inserted by SQL, with the bookkeeping a beat would have written: last
/// run at minute `last`, 3 runs, next run at minute `next`.
fn minutely(
    db: &TestDb,
    name: &str,
    queue: &str,
    (last, next): (Option<i64>, Option<i64>),
    active: bool,
) -> RoutineRow {
    db.exec(&format!(
        r#"INSERT INTO routines (name, task, schedule, kwargs, options, active)
           VALUES ('{name}', 'tasks.record', '{{"minute": "*/1"}}', '{{"r": "{name}"}}',
                   '{{"queue": "{queue}"}}', {active})"#
    ));
    let time = |i: Option<i64>| i.map_or_else(|| "NULL".to_owned(), |i| db.timestamp(minute(i)));
    db.exec(&format!(
        "UPDATE routines SET last_run_at = {}, total_run_count = 3, next_run_at = {}, \
         needs_sync = false WHERE name = '{name}'",
        time(last),
        time(next)
    ));
    row(db, name)
}

fn row(db: &TestDb, name: &str) -> RoutineRow {
    db.store()
        .routine(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no routine {name}"))
}

/// A run of `row` due at `due` recorded by SQL, as a beat records it.
fn recorded(db: &TestDb, row: &RoutineRow, (due, id): (DateTime<Utc>, &str), outcome: &str) {
    recorded_as(db, row, (due, id), outcome, false);
}

fn recorded_as(
    db: &TestDb,
    row: &RoutineRow,
    (due, id): (DateTime<Utc>, &str),
    outcome: &str,
    on_demand: bool,
) {
    db.exec(&format!(
        "INSERT INTO routine_runs (routine_id, routine, task, due_at, dispatched_at, task_id, \
             target, on_demand, outcome) \
         VALUES ('{}', '{}', '{}', {}, {}, '{id}', 'celery', {on_demand}, '{outcome}')",
        row.id,
        row.name,
        row.task,
        db.timestamp(due),
        db.timestamp(due)
    ));
}

/// `beat backfill NAME --from --to [more]` against `broker`.
fn backfill(db: &TestDb, broker: &str, name: &str, range: (i64, i64), more: &[&str]) -> Ran {
    let (from, to) = (flag(minute(range.0)), flag(minute(range.1)));
    let mut args = vec!["backfill", name, "--from", &from, "--to", &to];
    args.extend_from_slice(more);
    beat_with(&db.url, &args, &[("CELERY_BROKER_URL", broker)])
}

/// The runs of a backfill's JSON output: (due time, task id).
fn runs_of(output: &Value) -> Vec<(String, String)> {
    output["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs: {output:#}"))
        .iter()
        .map(|r| {
            (
                r["due_at"].as_str().unwrap().to_owned(),
                r["task_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The runs the schedule would have had at these minutes: (due time,
/// task id).
fn scheduled(row: &RoutineRow, minutes: &[i64]) -> Vec<(String, String)> {
    minutes
        .iter()
        .map(|i| (iso(minute(*i)), task_id(&row.id, minute(*i))))
        .collect()
}

/// Every run recorded of the routine `name`, as `beat history --json`.
fn history(db: &TestDb, name: &str) -> Vec<Value> {
    let runs = beat(&db.url, &["history", name, "--json", "--limit", "10000"]).json();
    runs.as_array().unwrap().clone()
}

backend_tests! {
    fn a_backfill_dispatches_each_missing_due_time_once_as_the_schedule_would(db) {
        let test = "backfill_missing";
        let Some((broker, queue)) = broker(test, 3) else { return };
        Operator::migrate(db.config()).unwrap();
        // Ran at minutes 0, 1 and 7; minute 3 missed (skip policy), 5
        // skipped (a run was going); a run on demand at minute 4 (its own
        // task id); next run planned at minute 10.
        let before = minutely(db, "minutely", &queue, (Some(7), Some(10)), true);
        for (i, outcome) in [(0, "published"), (1, "published"), (3, "missed"), (5, "skipped"), (7, "published")] {
            recorded(db, &before, (minute(i), &task_id(&before.id, minute(i))), outcome);
        }
        recorded_as(db, &before, (minute(4), "6b1d7d9e-0000-4000-8000-000000000004"), "published", true);
        let edits = db.number("SELECT COUNT(*) AS n FROM routine_edits");
        // Due at minutes 0..=9 (minute 10 and on are the beats'): 0, 1
        // and 7 ran; the rest did not.
        let missing = scheduled(&before, &[2, 3, 4, 5, 6, 8, 9]);

        // A dry run lists them and sends nothing.
        let ran = backfill(db, &broker, "minutely", (0, 20), &["--dry-run", "--json"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let dry = ran.json();
        assert_eq!(runs_of(&dry), missing, "{dry:#}");
        assert_eq!((dry["dry_run"].as_bool(), dry["due"].as_u64(), dry["already_run"].as_u64()), (Some(true), Some(10), Some(3)), "{dry:#}");
        assert_eq!(dry["cut"], json!({"at": iso(minute(10)), "why": "next_due"}));
        assert_eq!(published(&broker, &queue).len(), 0);
        assert_eq!(history(db, "minutely").len(), 6);
        let ran = backfill(db, &broker, "minutely", (0, 20), &["--dry-run"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.starts_with("routine minutely: would backfill 7 of 10 due times in the range (3 due times already ran); nothing sent\n\
            the range stops before 2026-06-01 10:10:00 UTC, the routine's next due time: the beats dispatch from there\n\
            DUE (UTC)            TASK ID\n\
            2026-06-01 10:02:00  "), "{ran:?}");
        assert_eq!(ran.out.lines().count(), 3 + 7, "{ran:?}");

        // The backfill: exactly those task ids reach the queue, in order.
        let ran = backfill(db, &broker, "minutely", (0, 20), &["--json"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let done = ran.json();
        assert_eq!(runs_of(&done), missing, "{done:#}");
        assert_eq!(done["dry_run"], false);
        let ids: Vec<String> = published(&broker, &queue).iter().map(|m| m.id.clone()).collect();
        let expected: Vec<String> = missing.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids, expected);
        assert!(published(&broker, &queue).iter().all(|m| m.task == "tasks.record" && m.routine == "minutely"));

        // Recorded as backfill, one record each; the rest as they were.
        let runs = history(db, "minutely");
        assert_eq!(runs.len(), 6 + 7, "{runs:#?}");
        let mut backfilled: Vec<(String, String)> = runs.iter().filter(|r| r["backfill"] == true)
            .map(|r| (r["due_at"].as_str().unwrap().to_owned(), r["task_id"].as_str().unwrap().to_owned()))
            .collect();
        backfilled.sort();
        assert_eq!(backfilled, missing);
        for run in runs.iter().filter(|r| r["backfill"] == true) {
            assert_eq!((run["outcome"].as_str(), run["target"].as_str(), run["on_demand"].as_bool()),
                (Some("published"), Some("celery"), Some(false)), "{run:#}");
            assert_eq!(run["beat_id"], Value::Null);
        }
        let ran = beat(&db.url, &["history", "minutely"]);
        assert_eq!(ran.out.lines().filter(|l| l.contains(" celery (backfill) ")).count(), 7, "{ran:?}");
        assert_eq!(ran.out.lines().filter(|l| l.contains(" celery (sent) ")).count(), 1, "{ran:?}");

        // The routine's row, its timing and the audit trail are untouched.
        assert_eq!(row(db, "minutely"), before);
        assert_eq!(db.number("SELECT COUNT(*) AS n FROM routine_edits"), edits);

        // Again: nothing to send.
        let again = backfill(db, &broker, "minutely", (0, 20), &["--json"]).json();
        assert_eq!(runs_of(&again), Vec::<(String, String)>::new(), "{again:#}");
        assert_eq!((again["due"].as_u64(), again["already_run"].as_u64()), (Some(10), Some(10)));
        let ran = backfill(db, &broker, "minutely", (0, 20), &[]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.out.starts_with("routine minutely: backfilled 0 of 10 due times in the range (10 due times already ran)\n"), "{ran:?}");
        assert_eq!(published(&broker, &queue).len(), 7);
        assert_eq!(history(db, "minutely").len(), 13);
    }
}

/// A routine with nothing planned (inactive) is cut where a beat would
/// plan it when it runs again (the first due time after its last run),
/// and a range that goes past now is cut at now.
#[test]
fn an_inactive_routine_is_cut_where_the_beats_would_take_it_up() {
    let test = "backfill_inactive";
    let Some((broker, queue)) = broker(test, 3) else {
        return;
    };
    let db = TestDb::sqlite(test);
    Operator::migrate(db.config()).unwrap();
    let row = minutely(&db, "paused", &queue, (Some(5), None), false);
    let dry = backfill(&db, &broker, "paused", (0, 20), &["--dry-run", "--json"]).json();
    assert_eq!(
        runs_of(&dry),
        scheduled(&row, &[0, 1, 2, 3, 4, 5]),
        "{dry:#}"
    );
    assert_eq!(dry["cut"], json!({"at": iso(minute(6)), "why": "next_due"}));
    // Never run, nothing planned: cut at now only.
    let fresh = minutely(&db, "fresh", &queue, (None, None), false);
    let now = Utc::now();
    let to = flag(now + TimeDelta::hours(1));
    let from = flag(now - TimeDelta::minutes(3));
    let ran = beat_with(
        &db.url,
        &[
            "backfill",
            "fresh",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
            "--json",
        ],
        &[("CELERY_BROKER_URL", &broker)],
    );
    let dry = ran.json();
    assert_eq!(dry["cut"]["why"], "now", "{dry:#}");
    let due = dry["runs"].as_array().unwrap();
    // From the minute 3 minutes ago to now's (5 if the minute turned
    // between this test's now and the command's).
    assert!((4..=5).contains(&due.len()), "{dry:#}");
    assert!(due
        .iter()
        .all(|r| r["task_id"] != Value::Null && r["due_at"].as_str() < Some(&*iso(Utc::now()))));
    assert_eq!(fresh.next_run_at, None);
    // A real run of the inactive routine dispatches the same as the dry run.
    let done = backfill(&db, &broker, "paused", (0, 20), &["--json"]).json();
    assert_eq!(runs_of(&done), scheduled(&row, &[0, 1, 2, 3, 4, 5]));
    assert_eq!(published(&broker, &queue).len(), 6);
    assert_eq!(self::row(&db, "paused"), row);
}

/// What cannot be backfilled is refused with the routine's name and the
/// reason, and nothing is sent.
#[test]
fn a_backfill_refuses_what_it_cannot_do_naming_the_routine() {
    let test = "backfill_refusals";
    let Some((broker, queue)) = broker(test, 3) else {
        return;
    };
    let db = TestDb::sqlite(test);
    Operator::migrate(db.config()).unwrap();
    minutely(&db, "minutely", &queue, (Some(7), Some(10)), true);
    let refused = |ran: &Ran, words: &str| {
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.err.contains(words), "{words:?} in {ran:?}");
    };

    // A task that runs in-process on the beats (one has run it).
    db.exec(
        r#"INSERT INTO routines (name, task, schedule) VALUES ('hi', 'demo.hello', '{"minute": "*/1"}')"#,
    );
    let manual = Beat::builder(db.config())
        .task(Recorder::new("demo.hello"))
        .start_manual()
        .unwrap();
    let beat_id = manual.id().to_owned();
    manual.stop();
    refused(
        &backfill(&db, &broker, "hi", (0, 5), &[]),
        &format!("routine hi: cannot backfill: its task \"demo.hello\" runs in-process on the beats (beat {beat_id} on "),
    );
    refused(
        &backfill(&db, &broker, "hi", (0, 5), &["--dry-run"]),
        "backfill publishes Celery tasks only",
    );

    // The range: backwards, too long.
    let ran = backfill(&db, &broker, "minutely", (5, 0), &[]);
    refused(&ran, "routine minutely: cannot backfill: the range ends (2026-06-01 10:00:00 UTC) before it starts (2026-06-01 10:05:00 UTC)");
    // 10,001 minutes before the next due time (minute 10): one too many.
    let ran = backfill(&db, &broker, "minutely", (-9_991, 20), &["--dry-run"]);
    refused(&ran, &format!("routine minutely: cannot backfill: the range from {} to 2026-06-01 10:09:59 UTC \
        holds more than 10000 due times, the most one backfill dispatches: split it into shorter ranges",
        minute(-9_991).format("%Y-%m-%d %H:%M:%S UTC")));
    let ran = backfill(
        &db,
        &broker,
        "minutely",
        (-9_990, 20),
        &["--dry-run", "--json"],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["due"], 10_000);
    // A time that is none: a usage error.
    let ran = beat(
        &db.url,
        &[
            "backfill",
            "minutely",
            "--from",
            "2026-06-01T10:00",
            "--to",
            "soon",
        ],
    );
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.err.contains("expected a UTC time"), "{ran:?}");

    // A range wholly at or after the next due time: nothing, said so.
    let ran = backfill(&db, &broker, "minutely", (10, 30), &["--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let done = ran.json();
    assert_eq!(
        (done["due"].as_u64(), done["cut"]["why"].as_str()),
        (Some(0), Some("next_due")),
        "{done:#}"
    );

    // No such routine, an invalid one.
    refused(
        &backfill(&db, &broker, "nope", (0, 5), &[]),
        "routine nope: no such routine",
    );
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('bad', 'tasks.record', '{"minute": "61"}')"#);
    refused(
        &backfill(&db, &broker, "bad", (0, 5), &[]),
        "routine bad: cannot backfill: invalid crontab field minute",
    );

    // The history off: nothing to compare with.
    let (from, to) = (flag(minute(0)), flag(minute(5)));
    let args = ["backfill", "minutely", "--from", &from, "--to", &to];
    let ran = beat_with(
        &db.url,
        &args,
        &[("CELERY_BROKER_URL", &broker), ("HISTORY", "false")],
    );
    refused(
        &ran,
        "routine minutely: cannot backfill with the history off (history = false)",
    );
    // No broker: refused, but a dry run needs none.
    refused(
        &beat(&db.url, &args),
        "no broker_url (CELERY_BROKER_URL) to publish to",
    );
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    assert_eq!(beat(&db.url, &dry).code, 0);
    // A broker that is down: its password is never printed.
    let ran = beat_with(
        &db.url,
        &args,
        &[("CELERY_BROKER_URL", "redis://:hunter2@127.0.0.1:1/0")],
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        !ran.err.contains("hunter2") && !ran.out.contains("hunter2"),
        "{ran:?}"
    );
    let ran = beat_with(
        &db.url,
        &[&args[..], &["--json"]].concat(),
        &[("CELERY_BROKER_URL", "redis://:hunter2@127.0.0.1:1/0")],
    );
    assert!(
        ran.json()["error"].as_str().is_some() && !ran.out.contains("hunter2"),
        "{ran:?}"
    );

    assert_eq!(published(&broker, &queue).len(), 0);
    assert_eq!(history(&db, "minutely").len(), 0);
}

/// A routine's name, read back by raw SQL.
#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[allow(dead_code)]
    name: String,
}

/// A transaction of the test's own holding the lock on a routine's row.
enum Held {
    Postgres(diesel::PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(diesel::MysqlConnection),
}

impl Held {
    fn lock(db: &TestDb, name: &str) -> Held {
        use diesel::connection::SimpleConnection;
        use diesel::{Connection, RunQueryDsl};
        let lock = format!("SELECT name FROM routines WHERE name = '{name}' FOR UPDATE");
        match db.kind {
            common::Kind::Postgres => {
                let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
                conn.batch_execute("BEGIN").unwrap();
                let rows: Vec<Name> = diesel::sql_query(lock).load(&mut conn).unwrap();
                assert_eq!(rows.len(), 1);
                Held::Postgres(conn)
            }
            #[cfg(feature = "mysql")]
            common::Kind::Mysql => {
                let mut conn = diesel::MysqlConnection::establish(&db.url).unwrap();
                conn.batch_execute("START TRANSACTION").unwrap();
                let rows: Vec<Name> = diesel::sql_query(lock).load(&mut conn).unwrap();
                assert_eq!(rows.len(), 1);
                Held::Mysql(conn)
            }
            kind => unreachable!("{kind:?} has no row locks"),
        }
    }

    fn release(self) {
        use diesel::connection::SimpleConnection;
        match self {
            Held::Postgres(mut conn) => conn.batch_execute("COMMIT").unwrap(),
            #[cfg(feature = "mysql")]
            Held::Mysql(mut conn) => conn.batch_execute("COMMIT").unwrap(),
        }
    }
}

/// Sessions of this database waiting for a row lock.
fn waiting(db: &TestDb) -> i64 {
    match db.kind {
        common::Kind::Postgres => db.number(
            "SELECT COUNT(*)::bigint AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ),
        _ => {
            // InnoDB refreshes what `innodb_trx` shows only when it was
            // last read more than 100 ms ago: a faster poll would read
            // the first snapshot forever.
            std::thread::sleep(Duration::from_millis(150));
            db.number(
                "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id \
             WHERE p.DB = DATABASE() AND t.trx_state = 'LOCK WAIT'",
            )
        }
    }
}

/// Two backfills of one routine started together both wait on its row's
/// lock (held by the test), then take turns: each due time is published
/// and recorded once between them. Without the lock both would find no
/// record and record every due time (the broker's own memory stops a
/// repeated message on Redis, not a repeated record).
fn two_backfills_at_once_dispatch_each_due_time_once(db: &TestDb) {
    let test = "backfill_concurrent";
    let Some((broker, queue)) = broker(test, 5) else {
        return;
    };
    Operator::migrate(db.config()).unwrap();
    let row = minutely(db, "busy", &queue, (None, Some(700)), true);
    // 600 due times: two transactions of each backfill (500 a batch).
    let minutes: Vec<i64> = (0..600).collect();
    let held = Held::lock(db, "busy");
    let started: Vec<_> = (0..2)
        .map(|_| {
            let (url, broker) = (db.url.clone(), broker.clone());
            std::thread::spawn(move || {
                let (from, to) = (flag(minute(0)), flag(minute(599)));
                beat_with(
                    &url,
                    &["backfill", "busy", "--from", &from, "--to", &to, "--json"],
                    &[("CELERY_BROKER_URL", &broker)],
                )
            })
        })
        .collect();
    let both_waited = wait_until(Duration::from_secs(30), || waiting(db) == 2);
    held.release();
    let ran: Vec<Ran> = started.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        both_waited,
        "both backfills wait on the routine's row: {ran:?}"
    );
    let outputs: Vec<Value> = ran
        .iter()
        .map(|ran| {
            assert_eq!(ran.code, 0, "{ran:?}");
            ran.json()
        })
        .collect();
    let (first, second) = (runs_of(&outputs[0]), runs_of(&outputs[1]));
    assert_eq!(
        first.len() + second.len(),
        600,
        "each due time dispatched by one backfill: {} and {}",
        first.len(),
        second.len()
    );
    let mut all: Vec<(String, String)> = first.into_iter().chain(second).collect();
    all.sort();
    assert_eq!(all, scheduled(&row, &minutes));
    let ids: HashSet<String> = published(&broker, &queue)
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), 600);
    assert_eq!(published(&broker, &queue).len(), 600);
    let records: Vec<String> = history(db, "busy")
        .iter()
        .map(|r| r["task_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(records.len(), 600);
    assert_eq!(records.into_iter().collect::<HashSet<_>>(), ids);
}

mod concurrent {
    use super::*;

    #[test]
    fn postgres() {
        if let Some(db) = TestDb::postgres("backfill_concurrent_pg") {
            two_backfills_at_once_dispatch_each_due_time_once(&db);
        }
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn mysql() {
        if let Some(db) = TestDb::mysql("backfill_concurrent_my") {
            two_backfills_at_once_dispatch_each_due_time_once(&db);
        }
    }
}

/// The routine page's "Backfill": a preview that sends nothing, then the
/// backfill once confirmed; both need a login and the page's form token,
/// as "Run now" does.
#[test]
fn the_dashboard_previews_a_backfill_and_sends_it_once_confirmed() {
    use celery_diesel_kit::HttpServer;
    use common::web::{self, any_port, csrf_of, post};
    let test = "backfill_dashboard";
    let Some((broker, queue)) = broker(test, 3) else {
        return;
    };
    let db = TestDb::sqlite(test);
    let mut config = db.config();
    config.broker_url = Some(broker.clone());
    config.http_token = Some("t0ken-for-the-backfill-tests".into());
    // Keep the history of June (the serving beat prunes older runs).
    config.history_max_age = Duration::from_secs(10 * 365 * 86_400);
    Operator::migrate(config.clone()).unwrap();
    // Ran at minute 1; next run years away (the serving beat leaves it be).
    let row = minutely(&db, "minutely", &queue, (Some(1), Some(2_000_000)), true);
    recorded(
        &db,
        &row,
        (minute(1), &task_id(&row.id, minute(1))),
        "published",
    );
    let beat = Beat::builder(config.clone()).start().unwrap();
    let server = HttpServer::start(any_port(), beat.monitor(), config.clone()).unwrap();
    let addr = server.addr();
    let login = post(
        addr,
        "/login",
        &[],
        &[("token", "t0ken-for-the-backfill-tests")],
    );
    assert_eq!(login.status, 303);
    let cookie = login
        .header("Set-Cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let session = [("Cookie", cookie.as_str())];
    let page = web::request(addr, "GET", "/routine?name=minutely", &session, "").body;
    assert!(page.contains("id=\"backfill\""), "{page}");
    let csrf = csrf_of(&page);
    let range = [
        ("name", "minutely"),
        ("from", "2026-06-01T10:00"),
        ("to", "2026-06-01T10:04"),
    ];
    let with = |more: &[(&'static str, &str)]| -> Vec<(&str, String)> {
        range
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .chain(more.iter().map(|(k, v)| (*k, (*v).to_owned())))
            .collect()
    };
    let send = |headers: &[(&str, &str)], form: &[(&str, String)]| {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(addr, "/routine/backfill", headers, &form)
    };
    let expected = scheduled(&row, &[0, 2, 3, 4]);

    // Without a login, or with a forged form: refused, nothing sent.
    let confirm = with(&[("csrf", &csrf), ("confirm", "1")]);
    assert_eq!(send(&[], &confirm).status, 401);
    let forged = with(&[("csrf", "forged"), ("confirm", "1")]);
    assert_eq!(send(&session, &forged).status, 403);
    assert_eq!(published(&broker, &queue).len(), 0);

    // The preview: the due times it would send, and a button to confirm.
    let preview = send(&session, &with(&[("csrf", &csrf)]));
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(
        preview
            .body
            .contains("4 of 5 due time(s) have no run and would be sent (1 already ran)"),
        "{}",
        preview.body
    );
    for (_, id) in &expected {
        assert!(preview.body.contains(id.as_str()), "{id}: {}", preview.body);
    }
    assert!(!preview.body.contains(&task_id(&row.id, minute(1))));
    assert!(preview.body.contains("id=\"backfill-confirm\""));
    assert_eq!(published(&broker, &queue).len(), 0);
    let bad = send(
        &session,
        &[
            ("name", "minutely".to_owned()),
            ("from", "soon".to_owned()),
            ("to", "2026-06-01T10:04".to_owned()),
            ("csrf", csrf.clone()),
        ],
    );
    assert_eq!(bad.status, 422);
    assert!(
        bad.body.contains("routine minutely: cannot backfill"),
        "{}",
        bad.body
    );

    // Confirmed: sent, recorded as backfill, shown so on the page.
    let done = send(&session, &confirm);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        done.header("Location"),
        Some("/routine?name=minutely&done=backfilled")
    );
    let ids: Vec<String> = published(&broker, &queue)
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        expected
            .iter()
            .map(|(_, id)| id.clone())
            .collect::<Vec<_>>()
    );
    let page = web::request(
        addr,
        "GET",
        "/routine?name=minutely&done=backfilled",
        &session,
        "",
    )
    .body;
    assert!(page.contains("Backfilled: "), "{page}");
    assert_eq!(page.matches(" UTC (backfill)</td>").count(), 4, "{page}");
    // Confirmed again (a second click): nothing more.
    assert_eq!(send(&session, &confirm).status, 303);
    assert_eq!(published(&broker, &queue).len(), 4);
    assert_eq!(self::row(&db, "minutely"), row);
    beat.stop();
}
