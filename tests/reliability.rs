//! Reliability: several beat processes, SIGKILL at any moment, database and
//! broker outages through a proxy the test owns, bad rows by the thousand,
//! secrets in logs. Each (routine, due time) must be dispatched once: the
//! tests read every message back from Redis and check it against the
//! routine's grid of due times and its `total_run_count`.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{task_id, RoutineRow, RoutineStore};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::{
    at, published, published_count, redis_queue, wait_until, BeatProcess, Kind, Proxy, Published,
    TestDb,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Inserts `n` routines by SQL, as an operator would: every `period`
/// seconds, or every minute when `period` is 60. Each carries its name in
/// kwargs, so that its messages can be told apart, and sends to `queue`.
fn insert_routines(
    db: &TestDb,
    prefix: &str,
    n: usize,
    queue: &str,
    period: impl Fn(usize) -> u64,
) {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("{prefix}{i:03}");
            let schedule = match period(i) {
                60 => r#"{"minute": "*/1"}"#.to_owned(),
                s => format!(r#"{{"timedelta": {s}}}"#),
            };
            format!("('{name}', 'tasks.record', '{schedule}', '{{\"r\": \"{name}\"}}', '{{\"queue\": \"{queue}\"}}')")
        })
        .collect();
    for chunk in rows.chunks(100) {
        db.exec(&format!(
            "INSERT INTO routines (name, task, schedule, kwargs, options) VALUES {}",
            chunk.join(", ")
        ));
    }
}

fn period_of(row: &RoutineRow) -> TimeDelta {
    let schedule: serde_json::Value = serde_json::from_str(&row.schedule).unwrap();
    match schedule.get("timedelta").and_then(|v| v.as_f64()) {
        Some(s) => TimeDelta::milliseconds((s * 1000.0) as i64),
        None => TimeDelta::minutes(1),
    }
}

/// What the messages say about the routines.
#[derive(Debug, Default)]
struct Audit {
    /// Distinct runs dispatched.
    runs: usize,
    /// Extra copies of a run already dispatched (same task id).
    repeats: usize,
    /// Due times on a routine's grid, between its first run and its next,
    /// that were never dispatched.
    missed: Vec<(String, DateTime<Utc>)>,
    /// Routines whose `total_run_count` differs from the runs dispatched.
    miscounted: Vec<String>,
    /// Messages that match no due time of their routine.
    strays: usize,
    /// Every dispatched run: routine name and due time.
    dispatched: Vec<(String, DateTime<Utc>)>,
}

fn audit(rows: &[RoutineRow], messages: &[Published]) -> Audit {
    let mut by_routine: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for m in messages {
        *by_routine
            .entry(m.routine.as_str())
            .or_default()
            .entry(m.id.as_str())
            .or_default() += 1;
    }
    let mut audit = Audit::default();
    for row in rows {
        let ids = by_routine.remove(row.name.as_str()).unwrap_or_default();
        audit.runs += ids.len();
        audit.repeats += ids.values().map(|n| n - 1).sum::<usize>();
        if row.total_run_count.unwrap_or(0) as usize != ids.len() {
            audit.miscounted.push(format!(
                "{}: {} runs, total_run_count {:?}",
                row.name,
                ids.len(),
                row.total_run_count
            ));
        }
        // Walk the grid back from the next run (always on the grid) until
        // every dispatched id is accounted for.
        let Some(next) = row.next_run_at_utc() else {
            continue;
        };
        let period = period_of(row);
        let mut found = 0;
        let mut gaps = Vec::new();
        let mut t = next - period;
        while found < ids.len() && t > next - period * 100_000 {
            if ids.contains_key(task_id(&row.id, t).as_str()) {
                found += 1;
                audit.dispatched.push((row.name.clone(), t));
                audit
                    .missed
                    .extend(gaps.drain(..).map(|g| (row.name.clone(), g)));
            } else {
                gaps.push(t);
            }
            t -= period;
        }
        audit.strays += ids.len() - found;
    }
    audit.strays += by_routine.values().map(HashMap::len).sum::<usize>();
    audit
}

/// The history is the runs, whatever was killed when: every message
/// reached Redis has exactly one `published` record, and every record has
/// its message (the record is written in the claim's transaction, the push
/// is part of it).
fn assert_history_is_the_runs(db: &TestDb, messages: &[Published]) -> usize {
    let op = Operator::connect(db.config()).expect("connect");
    let runs = op.history(None, false, None, 10_000_000).expect("history");
    let mut recorded: HashMap<&str, usize> = HashMap::new();
    for run in runs.iter().filter(|r| r.outcome == "published") {
        *recorded.entry(run.task_id.as_str()).or_default() += 1;
    }
    let sent: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    let unrecorded: Vec<&&str> = sent
        .iter()
        .filter(|id| !recorded.contains_key(**id))
        .collect();
    let phantom: Vec<&&str> = recorded.keys().filter(|id| !sent.contains(**id)).collect();
    let doubled: Vec<(&&str, &usize)> = recorded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        unrecorded.is_empty(),
        "{} runs without a record: {:?}",
        unrecorded.len(),
        &unrecorded[..unrecorded.len().min(5)]
    );
    assert!(
        phantom.is_empty(),
        "{} records without a run: {:?}",
        phantom.len(),
        &phantom[..phantom.len().min(5)]
    );
    assert!(
        doubled.is_empty(),
        "runs recorded twice: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    let others: Vec<&str> = runs
        .iter()
        .filter(|r| r.outcome != "published")
        .map(|r| r.outcome.as_str())
        .collect();
    assert!(
        others.is_empty(),
        "Celery runs are published, nothing else: {others:?}"
    );
    recorded.len()
}

/// An outage as the tests saw it: the cut, the restore, and the first run
/// seen after it.
type Window = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

/// What outages may do to runs, and no more: a run is missed only while
/// its routine could not be claimed, and after an outage a routine fires
/// once, not once per missed due time.
fn assert_outages_cost_only_their_own_runs(audit: &Audit, windows: &[Window]) {
    assert!(
        audit.miscounted.is_empty(),
        "{:?}",
        &audit.miscounted[..audit.miscounted.len().min(5)]
    );
    assert_eq!(audit.strays, 0);
    // A claim that failed after its push (the database gone at the commit)
    // is claimed again; Redis remembers the run and takes it once.
    assert_eq!(audit.repeats, 0, "runs pushed to Redis twice");
    for (routine, due) in &audit.missed {
        assert!(
            windows
                .iter()
                .any(|(from, _, back)| *due >= *from - TimeDelta::seconds(1) && *due <= *back),
            "{routine}: run due {due} missed outside an outage"
        );
    }
    for (from, restored, _) in windows {
        let mut inside: HashMap<&str, usize> = HashMap::new();
        for (routine, due) in &audit.dispatched {
            if *due > *from + TimeDelta::seconds(1) && *due < *restored {
                *inside.entry(routine.as_str()).or_default() += 1;
            }
        }
        assert!(
            inside.values().all(|n| *n <= 1),
            "more than one run per routine within the outage from {from}: {inside:?}"
        );
    }
}

fn migrated(db: &TestDb) -> RoutineStore {
    db.store()
}

/// Seconds to run the multi-beat test: `CDK_SOAK_SECONDS` or `default`.
fn soak_seconds(default: u64) -> u64 {
    std::env::var("CDK_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn several_beats_one_killed(seconds: u64) {
    let test = "reliability_three_beats";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = migrated(&db);
    // 300 routines: every 1 s, every 2 s, and every minute.
    insert_routines(&db, "r", 300, &queue, |i| [1, 2, 60][i % 3]);
    let env = [
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "info"),
    ];
    let mut beats: Vec<BeatProcess> = (0..3).map(|_| BeatProcess::start(&env)).collect();
    std::thread::sleep(Duration::from_secs(seconds / 2));
    beats[1].kill();
    std::thread::sleep(Duration::from_secs(3));
    beats[1] = BeatProcess::start(&env);
    std::thread::sleep(Duration::from_secs(seconds - seconds / 2));
    for beat in &mut beats {
        assert!(
            beat.terminate(Duration::from_secs(30)),
            "a beat did not stop cleanly:\n{}",
            beat.log()
        );
    }
    let rows = store.routines().unwrap();
    let messages = published(&broker, &queue);
    let audit = audit(&rows, &messages);
    let recorded = assert_history_is_the_runs(&db, &messages);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "three beats, {seconds} s, one SIGKILLed: {} runs dispatched, {} repeated (same id), {} missed, {} strays, {recorded} recorded\n",
            audit.runs, audit.repeats, audit.missed.len(), audit.strays
        )
        .as_bytes(),
    );
    assert!(
        audit.runs > 300 * seconds as usize / 3,
        "too few runs: {audit:?}"
    );
    assert!(
        audit.miscounted.is_empty(),
        "{:?}",
        &audit.miscounted[..audit.miscounted.len().min(5)]
    );
    assert!(
        audit.missed.is_empty(),
        "missed: {:?}",
        &audit.missed[..audit.missed.len().min(5)]
    );
    assert_eq!(audit.strays, 0);
    // A SIGKILL between publishing and committing leaves a run pushed but
    // not claimed; the next claim of it pushes nothing (Redis remembers
    // its id).
    assert_eq!(
        audit.repeats, 0,
        "{} runs reached Redis twice",
        audit.repeats
    );
}

#[test]
fn three_beat_processes_dispatch_each_due_time_once_through_a_sigkill() {
    several_beats_one_killed(40);
}

/// The same for as long as `CDK_SOAK_SECONDS` says (default 10 minutes):
/// `CDK_SOAK_SECONDS=600 cargo test --release --test reliability -- --ignored soak`
#[test]
#[ignore]
fn soak_three_beat_processes() {
    several_beats_one_killed(soak_seconds(600));
}

#[test]
fn a_beat_killed_at_any_moment_loses_no_run_and_pushes_none_twice() {
    let test = "reliability_kill_points";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = migrated(&db);
    insert_routines(&db, "k", 200, &queue, |i| [1, 2][i % 2]);
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
        std::thread::sleep(Duration::from_millis(100 + (i * 523) % 1800));
        beat.kill();
        alive.push((started, Utc::now()));
    }
    let started = Utc::now();
    let mut last = BeatProcess::start(&env);
    std::thread::sleep(Duration::from_secs(4));
    assert!(last.terminate(Duration::from_secs(30)), "{}", last.log());
    alive.push((started, Utc::now()));
    let messages = published(&broker, &queue);
    let audit = audit(&store.routines().unwrap(), &messages);
    let recorded = assert_history_is_the_runs(&db, &messages);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "15 SIGKILLs: {} runs, {} repeated with the same id, {} missed, {recorded} recorded\n",
            audit.runs,
            audit.repeats,
            audit.missed.len()
        )
        .as_bytes(),
    );
    assert!(
        audit.miscounted.is_empty(),
        "a run advanced without being published: {:?}",
        &audit.miscounted[..audit.miscounted.len().min(5)]
    );
    assert_eq!(audit.strays, 0);
    assert_eq!(audit.repeats, 0, "runs pushed to Redis twice");
    let first = alive[0].0;
    let with_a_beat: Vec<_> = audit
        .missed
        .iter()
        .filter(|(_, due)| *due > first && alive.iter().any(|(from, to)| due >= from && due <= to))
        .collect();
    assert!(
        with_a_beat.is_empty(),
        "missed while a beat process was alive: {:?}",
        &with_a_beat[..with_a_beat.len().min(5)]
    );
}

/// Runs a beat through a proxy to its database, cuts the proxy for 5 s,
/// 30 s and three times 2 s, and checks the log and every message.
fn database_outage(kind: Kind) {
    let test = "reliability_db_outage";
    let Some((broker, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::of(kind, test) else {
        return;
    };
    let store = migrated(&db);
    insert_routines(&db, "o", 20, &queue, |_| 1);
    let upstream = match kind {
        Kind::Postgres => "127.0.0.1:5432",
        Kind::Mysql => "127.0.0.1:3306",
        Kind::Sqlite => unreachable!("SQLite is a file"),
    };
    let proxy = Proxy::start(upstream);
    let via_proxy = db
        .url
        .replacen(upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let mut beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", via_proxy.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "info"),
    ]);
    let mut windows = Vec::new();
    let mut recoveries = Vec::new();
    std::thread::sleep(Duration::from_secs(3));
    for cut in [5, 30, 2, 2, 2] {
        let count = published_count(&broker, &queue);
        let start = Utc::now();
        proxy.cut();
        std::thread::sleep(Duration::from_secs(cut));
        assert!(
            beat.is_running(),
            "the beat exited during an outage:\n{}",
            beat.log()
        );
        proxy.restore();
        let restored = Instant::now();
        let restored_at = Utc::now();
        assert!(
            wait_until(Duration::from_secs(30), || published_count(&broker, &queue)
                > count + 20),
            "no runs after the outage ended:\n{}",
            beat.log()
        );
        recoveries.push(restored.elapsed());
        // Runs fall due unclaimed from the cut until the beat is back (its
        // back-off may outlast the cut a little).
        windows.push((start, restored_at, Utc::now()));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());

    let failed = beat.lines_with("retrying with back-off");
    let recovered = beat.lines_with("database reachable again");
    assert!(
        (2..=5).contains(&failed.len()),
        "one line per outage, at least the 5 s and 30 s ones:\n{}",
        beat.log()
    );
    assert_eq!(failed.len(), recovered.len(), "{}", beat.log());
    let audit = audit(&store.routines().unwrap(), &published(&broker, &queue));
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("database outages on {kind:?}: {} runs, {} repeated, {} missed in outages, recovery after {:?}\n",
            audit.runs, audit.repeats, audit.missed.len(), recoveries).as_bytes(),
    );
    assert_outages_cost_only_their_own_runs(&audit, &windows);
}

#[test]
fn postgres_outages_are_survived_logged_once_and_recovered() {
    database_outage(Kind::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_outages_are_survived_logged_once_and_recovered() {
    database_outage(Kind::Mysql);
}

#[test]
fn broker_outages_leave_routines_due_and_each_fires_once_after() {
    let test = "reliability_broker_outage";
    let Some((direct, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = migrated(&db);
    insert_routines(&db, "b", 20, &queue, |_| 1);
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('in-process', 'demo.hello', '{"timedelta": 1}')"#);
    let proxy = Proxy::start(common::REDIS_HOST);
    let broker = format!("redis://127.0.0.1:{}/13", proxy.port);
    let mut beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "info"),
    ]);
    let local_runs = || {
        store
            .routine("in-process")
            .unwrap()
            .unwrap()
            .total_run_count
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_secs(3));
    let mut windows = Vec::new();
    for cut in [5, 12] {
        let count = published_count(&direct, &queue);
        let local_before = local_runs();
        let start = Utc::now();
        proxy.cut();
        std::thread::sleep(Duration::from_secs(cut));
        assert!(
            local_runs() >= local_before + cut as i32 - 2,
            "in-process routines go on while Redis is away"
        );
        proxy.restore();
        let restored_at = Utc::now();
        assert!(
            wait_until(Duration::from_secs(30), || published_count(&direct, &queue)
                > count + 20),
            "no messages after the outage:\n{}",
            beat.log()
        );
        windows.push((start, restored_at, Utc::now()));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());
    let down = beat.lines_with("broker unavailable");
    let back = beat.lines_with("broker reachable again");
    assert_eq!(
        (down.len(), back.len()),
        (2, 2),
        "one line per change of state:\n{}",
        beat.log()
    );

    let rows: Vec<RoutineRow> = store
        .routines()
        .unwrap()
        .into_iter()
        .filter(|r| r.task == "tasks.record")
        .collect();
    let audit = audit(&rows, &published(&direct, &queue));
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "broker outages: {} runs, {} repeated with the same id, {} missed in outages\n",
            audit.runs,
            audit.repeats,
            audit.missed.len()
        )
        .as_bytes(),
    );
    assert_outages_cost_only_their_own_runs(&audit, &windows);
}

/// Transactions the database `url` has seen (committed or rolled back).
fn transactions(url: &str) -> i64 {
    common::sql::number(
        url,
        "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .unwrap()
}

/// What a beat costs over `seconds`: transactions per second on its
/// database, and its share of a core.
fn cost(beat: &BeatProcess, url: &str, seconds: u64) -> (f64, f64) {
    let (tx0, cpu0, t0) = (
        transactions(url),
        common::cpu_seconds(beat.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = t0.elapsed().as_secs_f64();
    (
        (transactions(url) - tx0) as f64 / wall,
        (common::cpu_seconds(beat.pid()) - cpu0) / wall,
    )
}

/// Seconds of each measured phase: `CDK_OUTAGE_SECONDS` or 10.
fn outage_seconds() -> u64 {
    std::env::var("CDK_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

#[test]
fn a_broker_outage_costs_what_idling_costs_and_in_process_routines_keep_time() {
    let test = "reliability_outage_cost";
    let Some((direct, queue)) = redis_queue(test) else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = migrated(&db);
    // 1,000 Celery routines, hourly while idling, every second in the outage.
    insert_routines(&db, "c", 1000, &queue, |_| 3600);
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('in-process', 'demo.hello', '{"timedelta": 1}')"#);
    let proxy = Proxy::start(common::REDIS_HOST);
    let broker = format!("redis://127.0.0.1:{}/13", proxy.port);
    let beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "info"),
    ]);
    assert!(wait_until(Duration::from_secs(20), || store
        .routine("c999")
        .unwrap()
        .is_some_and(|r| r.next_run_at.is_some())));
    std::thread::sleep(Duration::from_secs(2));
    let seconds = outage_seconds();
    let (idle_tx, idle_cpu) = cost(&beat, &db.url, seconds);

    db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 1}' WHERE task = 'tasks.record'"#);
    assert!(wait_until(Duration::from_secs(10), || published_count(
        &direct, &queue
    ) >= 1000));
    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    let local = || store.routine("in-process").unwrap().unwrap();
    let (before, from) = (local().total_run_count.unwrap_or(0), Utc::now());
    let (outage_tx, outage_cpu) = cost(&beat, &db.url, seconds);
    let (after, to) = (local().total_run_count.unwrap_or(0), Utc::now());
    proxy.restore();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "beat cost, idle vs a {seconds} s broker outage with 1,000 Celery routines: \
             {idle_tx:.1} vs {outage_tx:.1} transactions/s, {:.1}% vs {:.1}% of a core\n",
            idle_cpu * 100.0,
            outage_cpu * 100.0
        )
        .as_bytes(),
    );
    assert!(
        outage_tx <= idle_tx * 2.0 + 5.0,
        "{outage_tx:.1} transactions/s in the outage, {idle_tx:.1} idle:\n{}",
        beat.log()
    );
    assert!(
        outage_cpu <= idle_cpu + 0.1,
        "{:.1}% of a core in the outage, {:.1}% idle",
        outage_cpu * 100.0,
        idle_cpu * 100.0
    );
    // The in-process routine ran once per second throughout.
    let due_seconds = (to - from).num_milliseconds() as f64 / 1000.0;
    let ran = f64::from(after - before);
    assert!(
        (ran - due_seconds).abs() <= 1.0,
        "in-process routine ran {ran} times in {due_seconds:.1} s"
    );
}

/// Whether the process `pid` holds a transaction with rows locked in it.
fn holds_a_claim(kind: Kind, url: &str, pid: u32) -> bool {
    let ports = common::tcp_ports(pid);
    if ports.is_empty() {
        return false;
    }
    let list = |f: &dyn Fn(&u16) -> String| ports.iter().map(f).collect::<Vec<_>>().join(", ");
    let query = match kind {
        Kind::Postgres => format!(
            "SELECT COUNT(*)::bigint AS n FROM pg_stat_activity \
             WHERE client_port IN ({}) AND state = 'idle in transaction'",
            list(&|p| p.to_string())
        ),
        Kind::Mysql => format!(
            "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id \
             WHERE p.HOST IN ({}) AND t.trx_rows_locked > 0",
            list(&|p| format!("'127.0.0.1:{p}'"))
        ),
        Kind::Sqlite => unreachable!("SQLite has no sessions to bound"),
    };
    common::sql::number(url, &query).unwrap() > 0
}

/// Rows due more than `seconds` ago: on a busy healthy beat, none.
fn overdue(kind: Kind, url: &str, seconds: f64) -> i64 {
    let micros = (seconds * 1e6) as i64;
    let query = match kind {
        Kind::Postgres => format!(
            "SELECT COUNT(*)::bigint AS n FROM routines \
             WHERE next_run_at < (now() AT TIME ZONE 'UTC') - interval '{micros} microseconds'"
        ),
        _ => format!(
            "SELECT COUNT(*) AS n FROM routines \
             WHERE next_run_at < UTC_TIMESTAMP(6) - INTERVAL {micros} MICROSECOND"
        ),
    };
    common::sql::number(url, &query).unwrap()
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
    let store = migrated(&db);
    insert_routines(&db, "z", 2000, &queue, |_| 1);
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
    let mut rng = common::Rng(0xf402e);
    let mut caught = None;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        common::signal(pid, "STOP");
        // A statement under way completes; then the session waits in its
        // transaction.
        std::thread::sleep(Duration::from_millis(30));
        if holds_a_claim(kind, &db.url, pid) {
            let stopped = (Instant::now(), Utc::now());
            // Its locked rows are the ones the other beat cannot claim.
            std::thread::sleep(Duration::from_millis(1500));
            let held: std::collections::HashSet<String> = store
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
        common::signal(pid, "CONT");
    }
    let Some(((stopped, stopped_at), held)) = caught else {
        panic!("never caught the beat holding due rows in a claim");
    };
    if then == Then::Killed {
        frozen.kill();
    }
    assert!(
        wait_until(Duration::from_secs(BOUND + 10), || overdue(
            kind, &db.url, 1.2
        ) == 0),
        "the frozen beat's rows were never taken over:\n{}",
        other.log()
    );
    let took_over = stopped.elapsed();
    let held = held.len();
    let taken_at = Utc::now();
    if then == Then::Resumed {
        common::signal(pid, "CONT");
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            frozen.terminate(Duration::from_secs(30)),
            "{}",
            frozen.log()
        );
    }
    assert!(other.terminate(Duration::from_secs(30)), "{}", other.log());
    let messages = published(&broker, &queue);
    let audit = audit(&store.routines().unwrap(), &messages);
    assert_history_is_the_runs(&db, &messages);
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "{kind:?}: a beat frozen mid-claim ({then:?}) held {held} rows; the other took them over \
             {took_over:.1?} after the freeze (bound {BOUND} s); {} runs, {} repeated, {} missed while frozen\n",
            audit.runs,
            audit.repeats,
            audit.missed.len()
        )
        .as_bytes(),
    );
    assert!(
        took_over <= Duration::from_secs(BOUND + 2),
        "took {took_over:?} with scheduler_db_timeout = {BOUND} s"
    );
    assert_eq!(audit.repeats, 0, "a held run reached Redis twice");
    assert_eq!(audit.strays, 0);
    assert!(
        audit.miscounted.is_empty(),
        "{:?}",
        &audit.miscounted[..audit.miscounted.len().min(5)]
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
    let outside: Vec<_> = audit
        .missed
        .iter()
        .filter(|(_, due)| *due < from || *due > to)
        .collect();
    assert!(
        outside.is_empty(),
        "missed with both beats able to claim: {:?}",
        &outside[..outside.len().min(5)]
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
    let store = migrated(&db);
    insert_routines(&db, "t", 100, &queue, |_| 1);
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
    let audit = audit(&store.routines().unwrap(), &published(&broker, &queue));
    assert!(
        audit.miscounted.is_empty() && audit.strays == 0 && audit.repeats == 0,
        "{audit:?}"
    );
    let latest = audit.dispatched.iter().map(|(_, due)| *due).max().unwrap();
    assert!(
        latest <= signalled + TimeDelta::milliseconds(500),
        "claimed a run due {latest} after SIGTERM at {signalled}"
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
}

#[test]
fn no_password_appears_in_any_log_line_or_error() {
    let test = "reliability_secrets";
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    migrated(&db);
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('remote', 'tasks.record', '{"timedelta": 1}')"#);
    const SECRET: &str = "Sup3rS3cretPw";
    let db_proxy = Proxy::start("127.0.0.1:5432");
    let redis_proxy = Proxy::start(common::REDIS_HOST);
    redis_proxy.cut();
    // Trust authentication ignores the password; it still travels in the URL.
    let db_url = db.url.replacen(
        "postgres@127.0.0.1:5432",
        &format!("postgres:{SECRET}@127.0.0.1:{}", db_proxy.port),
        1,
    );
    let broker = format!("redis://:{SECRET}@127.0.0.1:{}/13", redis_proxy.port);
    let mut beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", db_url.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("RUST_LOG", "debug"),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    db_proxy.cut();
    std::thread::sleep(Duration::from_secs(7));
    db_proxy.restore();
    std::thread::sleep(Duration::from_secs(3));
    assert!(beat.terminate(Duration::from_secs(30)));
    let mut output = beat.log();
    assert!(
        output.contains("retrying with back-off") && output.contains("broker unavailable"),
        "{output}"
    );
    // Errors at start, from the binary and from the library.
    for url in [
        format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        format!("mysql://app:{SECRET}@127.0.0.1:1/app"),
        format!("oracle://app:{SECRET}@host/app"),
    ] {
        let mut failing =
            BeatProcess::start(&[("SCHEDULER_DB_URI", url.as_str()), ("RUST_LOG", "debug")]);
        assert!(failing.wait_exit(Duration::from_secs(30)).is_some());
        output.push_str(&failing.log());
        let config = {
            let mut c = celery_diesel_kit::Config::default();
            c.scheduler_db_uri = url.clone();
            c
        };
        output.push_str(&format!(
            "{:?}",
            celery_diesel_kit::Beat::builder(config.clone())
                .start()
                .err()
        ));
        output.push_str(&format!("{config:?}"));
    }
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c
    };
    output.push_str(&format!("{config:?}"));
    assert!(output.contains(":***@"), "nothing was redacted?\n{output}");
    assert!(
        !output.contains(SECRET),
        "a password leaked:\n{}",
        output
            .lines()
            .filter(|l| l.contains(SECRET))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// Thousands of bad rows beside good ones.

/// A row that cannot run: (task, schedule, kwargs, options), each JSON text.
fn bad_row(rng: &mut common::Rng, json_columns: bool) -> (String, String, String, String) {
    let ok_schedule = format!(r#"{{"timedelta": {}}}"#, 1 + rng.below(100));
    let field = |rng: &mut common::Rng| {
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
        let rec = common::Recorder::new("record");
        let mut beat = celery_diesel_kit::Beat::builder(db.config()).task(rec.clone()).start_manual().unwrap();
        let mut rng = common::Rng(0x5eed);
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
                    wait_until(Duration::from_secs(30), || !beat.lines_with("beat: running").is_empty()),
                    "round {round}: a beat did not start:\n{}",
                    beat.log()
                );
            }
            let count = |query: &str| common::sql::number(&db.url, query).unwrap();
            let rows = count("SELECT COUNT(*) AS n FROM routines");
            let names = count("SELECT COUNT(DISTINCT name) AS n FROM routines");
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
        let rec = common::Recorder::new("record");
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
