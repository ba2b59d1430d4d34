//! The run history and the registry of beats: every dispatch recorded in
//! its claim, in-process outcomes written when runs end, retention by age
//! and count, no overlap of a routine's runs across beats, and a dead
//! beat's runs marked lost.

mod common;

use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::{
    task_id, Beat, Config, ManualBeat, Routine, RunOutcome, RunRow, Schedule, SyncTask, Target,
    TaskContext, TaskResult,
};
use chrono::{DateTime, Utc};
use common::{at, every, gate, holds_for, wait_until, BeatProcess, Recorder, TestClock, TestDb};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// Every recorded run, oldest first.
fn runs(config: &Config) -> Vec<RunRow> {
    let op = Operator::connect(config.clone()).expect("connect");
    let mut runs = op.history(None, false, None, 100_000).expect("history");
    runs.reverse();
    runs
}

/// Each routine's runs as (due second, outcome), oldest first.
fn outcomes(config: &Config) -> HashMap<String, Vec<(i64, String)>> {
    let mut by_routine: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for run in runs(config) {
        let due = run.due_at.unwrap().and_utc();
        by_routine
            .entry(run.routine.clone())
            .or_default()
            .push(((due - at(0)).num_seconds(), run.outcome.to_string()));
    }
    by_routine
}

/// A task that always fails.
struct Fail;

impl SyncTask for Fail {
    fn name(&self) -> &str {
        "fail"
    }
    fn run(&self, ctx: &TaskContext) -> TaskResult {
        Err(format!("attempt {} failed", ctx.attempt).into())
    }
}

fn start(builder: celery_diesel_kit::BeatBuilder) -> ManualBeat {
    builder.start_manual().expect("start")
}

backend_tests! {
    fn every_dispatch_is_recorded_in_its_claim_and_every_outcome_when_it_ends(db) {
        let mut config = db.config();
        config.celery_max_retry = 1;
        let (gate, started, release) = gate();
        let clock = TestClock::at(at(0));
        let late = Routine::from_json(&json!({"name": "late", "task": "ok",
            "schedule": {"timedelta": 10, "misfire_policy": "skip", "misfire_grace_time": 1}})).unwrap();
        let mut beat = start(Beat::builder(config.clone())
            .clock(clock.clone())
            .task(Recorder::new("ok"))
            .task(Fail)
            .task(gate)
            .routine(Routine::new("ok", "ok", every(10)))
            .routine(Routine::new("fail", "fail", every(10)))
            .routine(Routine::new("gate", "gate", every(5)))
            .routine(late));
        beat.tick(at(0)).unwrap();
        clock.set(at(10));
        let tick = beat.tick(at(10)).unwrap();
        assert_eq!(tick.fired, 4, "{tick:?}");
        started.recv_timeout(Duration::from_secs(10)).expect("gate started");
        let ended = || beat.stats().gave_up == 1 && beat.stats().succeeded == 2;
        assert!(wait_until(Duration::from_secs(10), ended), "{:?}", beat.stats());
        clock.set(at(15));
        assert_eq!(beat.tick(at(15)).unwrap().skipped, 1);
        clock.set(at(32));
        let tick = beat.tick(at(32)).unwrap();
        assert_eq!((tick.fired, tick.skipped, tick.missed), (2, 1, 1), "{tick:?}");
        let settled = |want_gate: &str| {
            let o = outcomes(&config);
            o.get("fail").is_some_and(|f| f.iter().all(|(_, x)| x == "failed") && f.len() == 2)
                && o.get("ok").is_some_and(|f| f.iter().all(|(_, x)| x == "succeeded") && f.len() == 2)
                && o.get("gate").is_some_and(|g| g.first().is_some_and(|(_, x)| x == want_gate))
        };
        assert!(wait_until(Duration::from_secs(10), || settled("running")), "{:#?}", runs(&config));
        release.send(()).unwrap();
        assert!(wait_until(Duration::from_secs(10), || settled("succeeded")), "{:#?}", runs(&config));

        let o = outcomes(&config);
        let expect = |pairs: &[(i64, &str)]| pairs.iter().map(|(t, s)| (*t, s.to_string())).collect::<Vec<_>>();
        assert_eq!(o["ok"], expect(&[(10, "succeeded"), (20, "succeeded")]));
        assert_eq!(o["fail"], expect(&[(10, "failed"), (20, "failed")]));
        assert_eq!(o["gate"], expect(&[(5, "succeeded"), (15, "skipped"), (20, "skipped")]));
        assert_eq!(o["late"], expect(&[(10, "succeeded"), (20, "missed")]));

        let all = runs(&config);
        let rows = beat.store().routines().unwrap();
        for row in &rows {
            let mine: Vec<&RunRow> = all.iter().filter(|r| r.routine_id == row.id).collect();
            let fired = mine.iter().filter(|r| !matches!(r.outcome.as_str(), "skipped" | "missed")).count();
            assert_eq!(Some(fired as i32), row.total_run_count, "{}: history agrees with total_run_count", row.name);
            for run in &mine {
                assert_eq!(run.task_id, task_id(&row.id, run.due_at.unwrap().and_utc()));
                assert_eq!(run.target, Target::InProcess);
                assert_eq!(run.beat_id.as_deref(), Some(beat.id()));
                assert!(!run.on_demand);
            }
        }
        let fail: Vec<&RunRow> = all.iter().filter(|r| r.routine == "fail").collect();
        assert!(fail.iter().all(|r| r.attempts == Some(2) && r.error.as_deref() == Some("attempt 1 failed")), "{fail:#?}");
        let gate_run = all.iter().find(|r| r.routine == "gate" && r.outcome == "succeeded").unwrap();
        assert!(gate_run.started_at.is_some() && gate_run.finished_at >= gate_run.started_at);
        let skipped = all.iter().find(|r| r.outcome == "skipped").unwrap();
        assert_eq!(skipped.error.as_deref(), Some("its previous run was still queued or running"));
        let missed = all.iter().find(|r| r.outcome == "missed").unwrap();
        assert!(missed.error.as_deref().unwrap().contains("misfire grace time 1s"), "{missed:?}");
        beat.stop();
    }

    fn history_is_pruned_by_count_per_routine_and_by_age(db) {
        let mut config = db.config();
        config.history_max_runs = 3;
        config.history_max_age = Duration::from_secs(3600);
        config.scheduler_heartbeat_interval = Duration::from_millis(100);
        let clock = TestClock::at(at(0));
        let mut beat = start(Beat::builder(config.clone())
            .clock(clock.clone())
            .task(Recorder::new("ok"))
            .routine(Routine::new("often", "ok", every(1)))
            .routine(Routine::new("seldom", "ok", every(5))));
        db.exec(&format!(
            "INSERT INTO routine_runs (routine_id, routine, task, due_at, dispatched_at, task_id, target, outcome) \
             VALUES ('gone', 'ancient', 'ok', {old}, {old}, 'a1', 'local', 'succeeded'), \
                    ('gone', 'ancient', 'ok', {old}, {old}, 'a2', 'local', 'succeeded'), \
                    ('gone', 'ancient', 'ok', {recent}, {recent}, 'a3', 'local', 'succeeded')",
            old = db.timestamp(at(-7200)),
            recent = db.timestamp(at(-60)),
        ));
        beat.tick(at(0)).unwrap();
        for t in 1..=10 {
            clock.set(at(t));
            beat.tick(at(t)).unwrap();
            // Each run ends before the next second, so none is skipped.
            let ran = (t + t / 5) as u64;
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == ran), "{t}: {:?}", beat.stats());
        }
        let pruned = || {
            let o = outcomes(&config);
            let dues = |name: &str| o.get(name).map(|runs| runs.iter().map(|(t, _)| *t).collect::<Vec<_>>());
            dues("often") == Some(vec![8, 9, 10]) && dues("seldom") == Some(vec![5, 10])
                && dues("ancient") == Some(vec![-60])
        };
        assert!(wait_until(Duration::from_secs(10), pruned), "{:#?}", outcomes(&config));
        // total_run_count keeps counting: retention bounds the records only.
        let often = beat.store().routine("often").unwrap().unwrap();
        assert_eq!(often.total_run_count, Some(10));
        beat.stop();
    }

    fn with_history_off_only_unfinished_in_process_runs_are_kept(db) {
        let mut config = db.config();
        config.history = false;
        let (gate, started, release) = gate();
        let clock = TestClock::at(at(0));
        let mut beat = start(Beat::builder(config.clone())
            .clock(clock.clone())
            .task(Recorder::new("ok"))
            .task(gate)
            .routine(Routine::new("ok", "ok", every(10)))
            .routine(Routine::new("gate", "gate", every(10))));
        beat.tick(at(0)).unwrap();
        clock.set(at(10));
        assert_eq!(beat.tick(at(10)).unwrap().fired, 2);
        started.recv_timeout(Duration::from_secs(10)).expect("gate started");
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 1), "ok ran");
        clock.set(at(20));
        assert_eq!(beat.tick(at(20)).unwrap().skipped, 1, "only the gate is still running");
        let only_gate = || {
            let o = outcomes(&config);
            o.len() == 1 && o.get("gate").is_some_and(|g| g == &[(10, "running".to_owned())])
        };
        assert!(wait_until(Duration::from_secs(10), only_gate), "{:#?}", outcomes(&config));
        release.send(()).unwrap();
        assert!(wait_until(Duration::from_secs(10), || runs(&config).is_empty()), "{:#?}", runs(&config));
        beat.stop();
    }

    fn a_run_going_on_another_beat_is_never_overlapped_until_that_beat_is_dead(db) {
        let clock = TestClock::at(at(0));
        // Beat A heartbeats once (at start), then falls silent, as a hung
        // or partitioned beat would.
        let mut silent = db.config();
        silent.scheduler_heartbeat_interval = Duration::from_secs(3600);
        silent.scheduler_dead_after = Duration::from_secs(7200);
        let (gate_a, started_a, release_a) = gate();
        // A's last heartbeat is at its start, between these two instants.
        let before_a = std::time::Instant::now();
        let mut a = start(Beat::builder(silent.clone())
            .clock(clock.clone())
            .task(gate_a)
            .routine(Routine::new("exclusive", "gate", every(5))));
        let after_a = std::time::Instant::now();
        let mut watchful = db.config();
        watchful.scheduler_heartbeat_interval = Duration::from_millis(100);
        watchful.scheduler_dead_after = Duration::from_secs(3);
        let (gate_b, started_b, release_b) = gate();
        let mut b = start(Beat::builder(watchful.clone())
            .clock(clock.clone())
            .task(gate_b)
            .routine(Routine::new("exclusive", "gate", every(5))));
        a.tick(at(0)).unwrap();
        clock.set(at(5));
        assert_eq!(a.tick(at(5)).unwrap().fired, 1);
        started_a.recv_timeout(Duration::from_secs(10)).expect("A's run started");

        clock.set(at(10));
        let tick = b.tick(at(10)).unwrap();
        assert_eq!((tick.fired, tick.skipped), (0, 1), "B must not overlap A's run: {tick:?}");
        let skipped = runs(&watchful).into_iter().find(|r| r.outcome == "skipped").unwrap();
        assert_eq!(skipped.error.as_deref(), Some("its previous run was still going on another beat"));
        assert_eq!(skipped.beat_id.as_deref(), Some(b.id()));

        // A falls silent for longer than B's bound: B marks A's run lost,
        // and the routine is free again.
        let lost = || runs(&watchful).iter().any(|r| r.outcome == "lost" && r.beat_id.as_deref() == Some(a.id()));
        assert!(wait_until(Duration::from_secs(15), lost), "{:#?}", runs(&watchful));
        // Not before B's 3 s bound from A's last heartbeat; within it, B's
        // next cycle (0.1 s) and 1 s for a loaded machine and the polling.
        let bound = watchful.scheduler_dead_after;
        let (since_before, since_after) = (before_a.elapsed(), after_a.elapsed());
        assert!(since_before >= bound, "lost {since_before:?} after A's start, inside the {bound:?} bound");
        assert!(
            since_after <= bound + watchful.scheduler_heartbeat_interval + Duration::from_secs(1),
            "lost {since_after:?} after A's start, past the bound"
        );
        clock.set(at(15));
        assert_eq!(b.tick(at(15)).unwrap().fired, 1);
        started_b.recv_timeout(Duration::from_secs(10)).expect("B's run started");
        let beats = Operator::connect(watchful.clone()).unwrap().beats().unwrap();
        let a_row = beats.iter().find(|x| x.id == a.id()).unwrap();
        assert!(!a_row.is_alive(watchful.scheduler_dead_after) && a_row.stopped_at.is_none());
        release_a.send(()).unwrap();
        release_b.send(()).unwrap();
        a.stop();
        b.stop();
        let beats = Operator::connect(watchful.clone()).unwrap().beats().unwrap();
        assert!(beats.iter().all(|x| x.stopped_at.is_some()), "{beats:#?}");
    }

    // Beats silent for longer than `history_max_age` (1 h here) are
    // deleted from `beats`, stopped or not; those heard from within it,
    // and the live beat, stay. With the history off too: the registry is
    // not the history, and would grow by a row at every start.
    fn beats_silent_for_longer_than_history_max_age_are_pruned_and_the_others_kept(db) {
        db.store();
        for history in [true, false] {
            db.exec("DELETE FROM beats");
            let now = Utc::now();
            let old = db.timestamp(now - chrono::TimeDelta::seconds(3600 + 120));
            let recent = db.timestamp(now - chrono::TimeDelta::seconds(3600 - 120));
            db.exec(&format!(
                "INSERT INTO beats (id, host, pid, version, started_at, heartbeat_at, stopped_at, tasks, broker) VALUES \
                 ('old-stopped', 'h', 1, '0', {old}, {old}, {old}, '[]', false), \
                 ('old-silent', 'h', 2, '0', {old}, {old}, NULL, '[]', false), \
                 ('recent-stopped', 'h', 3, '0', {recent}, {recent}, {recent}, '[]', false), \
                 ('recent-silent', 'h', 4, '0', {recent}, {recent}, NULL, '[]', false)"
            ));
            let mut config = db.config();
            config.history = history;
            config.history_max_age = Duration::from_secs(3600);
            config.scheduler_heartbeat_interval = Duration::from_millis(100);
            config.scheduler_dead_after = Duration::from_secs(1);
            let beat = start(Beat::builder(config));
            let ids = || {
                let mut ids: Vec<String> = beat.store().beats().list().unwrap().into_iter().map(|b| b.id).collect();
                ids.sort();
                ids
            };
            let mut kept = vec![beat.id().to_owned(), "recent-silent".to_owned(), "recent-stopped".to_owned()];
            kept.sort();
            assert!(wait_until(Duration::from_secs(10), || ids() == kept), "history {history}: {:?}", ids());
            // Several heartbeat cycles later, the same rows.
            assert!(holds_for(Duration::from_millis(500), || ids() == kept), "history {history}: {:?}", ids());
            beat.stop();
        }
    }

    // An operator deletes a running beat's row: at its next heartbeat the
    // beat finds its row gone and registers again, as itself, and goes on
    // heartbeating, running and recording its runs; its stop is recorded.
    fn a_beat_whose_row_was_deleted_registers_again_and_keeps_working(db) {
        let mut config = db.config();
        config.scheduler_heartbeat_interval = Duration::from_millis(100);
        config.scheduler_dead_after = Duration::from_secs(1);
        let clock = TestClock::at(at(0));
        let ok = Recorder::new("ok");
        let mut beat = start(Beat::builder(config.clone())
            .clock(clock.clone())
            .task(ok.clone())
            .routine(Routine::new("often", "ok", every(5))));
        beat.tick(at(0)).unwrap();
        let id = beat.id().to_owned();
        let mine = || beat.store().beats().list().unwrap().into_iter().filter(|b| b.id == id).collect::<Vec<_>>();
        let first = mine().pop().expect("registered at start");
        // Marked, then deleted: the beat may register again within a
        // heartbeat (0.1 s), so the row's absence cannot be checked after
        // the delete; a row without the mark (heartbeats write only
        // heartbeat_at) is a new one.
        let marked = "marked before the delete";
        db.exec(&format!(
            "UPDATE beats SET version = '{marked}' WHERE id = '{id}'; DELETE FROM beats WHERE id = '{id}'"
        ));
        assert!(
            wait_until(Duration::from_secs(10), || mine().iter().any(|b| b.version != marked)),
            "not registered again: {:?}",
            mine()
        );
        assert_eq!(mine().len(), 1);
        let again = mine().pop().unwrap();
        assert_eq!(
            (&again.host, again.pid, &again.version, &again.tasks, again.broker),
            (&first.host, first.pid, &first.version, &first.tasks, first.broker),
            "registered again as itself"
        );
        assert!(again.stopped_at.is_none() && again.is_alive(config.scheduler_dead_after), "{again:?}");
        let since = again.heartbeat_at;
        assert!(wait_until(Duration::from_secs(10), || mine().first().is_some_and(|b| b.heartbeat_at > since)),
            "heartbeats go on: {:?}", mine());
        clock.set(at(5));
        assert_eq!(beat.tick(at(5)).unwrap().fired, 1);
        assert!(wait_until(Duration::from_secs(10), || ok.count() == 1));
        let recorded = || runs(&config).iter().any(|r| r.outcome == RunOutcome::Succeeded);
        assert!(wait_until(Duration::from_secs(10), recorded), "{:#?}", runs(&config));
        let all = runs(&config);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].beat_id.as_deref(), Some(id.as_str()));
        beat.stop();
        let rows = Operator::connect(config).unwrap().beats().unwrap();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert!(rows[0].id == id && rows[0].stopped_at.is_some(), "{rows:#?}");
    }

    // A stop that outlasts `shutdown_timeout` (0.5 s, one worker): the
    // run still running at the deadline, the run queued behind it and the
    // retry waiting on its delay are each recorded `abandoned`, with the
    // reason; the beat does not wait for the running task, and its late
    // end changes nothing. (A beat that dies instead has its runs marked
    // `lost` by another: see the test above.)
    fn runs_a_stop_leaves_behind_are_recorded_as_abandoned(db) {
        let mut config = db.config();
        config.worker_concurrency = 1;
        config.shutdown_timeout = Duration::from_millis(500);
        config.celery_max_retry = 3;
        config.celery_retry_delay = Duration::from_secs(3600);
        let (gate, started, release) = gate();
        let clock = TestClock::at(at(0));
        let ok = Recorder::new("ok");
        let mut beat = start(Beat::builder(config.clone())
            .clock(clock.clone())
            .task(ok.clone())
            .task(Fail)
            .task(gate)
            .routine(Routine::new("retrying", "fail", every(3)))
            .routine(Routine::new("held", "gate", every(5)))
            .routine(Routine::new("queued", "ok", every(7))));
        beat.tick(at(0)).unwrap();
        clock.set(at(3));
        assert_eq!(beat.tick(at(3)).unwrap().fired, 1);
        let retrying = || outcomes(&config).get("retrying").is_some_and(|r| r == &[(3, "retrying".to_owned())]);
        assert!(wait_until(Duration::from_secs(10), retrying), "{:#?}", runs(&config));
        clock.set(at(5));
        assert_eq!(beat.tick(at(5)).unwrap().fired, 1);
        started.recv_timeout(Duration::from_secs(10)).expect("held started");
        clock.set(at(7));
        let tick = beat.tick(at(7)).unwrap();
        assert_eq!((tick.fired, tick.skipped), (1, 1), "{tick:?}");
        let asked = std::time::Instant::now();
        let report = beat.stop();
        let took = asked.elapsed();
        release.send(()).unwrap();
        // The stop waits out its 0.5 s for the workers, not the gate, and
        // at most the housekeeper's 2 s grace for its last writes (and
        // 0.5 s for threads on a loaded machine).
        let bound = config.shutdown_timeout + Duration::from_secs(2) + Duration::from_millis(500);
        assert!(took >= config.shutdown_timeout && took < bound, "stopped in {took:?}");
        assert_eq!(report.busy_workers, 1, "{report:?}");
        assert_eq!(report.stats.abandoned, 2, "the queued run and the retry: {report:?}");
        assert_eq!(ok.count(), 0, "the queued run never ran");
        let expect = |pairs: &[(i64, &str)]| pairs.iter().map(|(t, s)| (*t, s.to_string())).collect::<Vec<_>>();
        let settled = || {
            let o = outcomes(&config);
            o.len() == 3
                && o["retrying"] == expect(&[(3, "abandoned"), (6, "skipped")])
                && o["held"] == expect(&[(5, "abandoned")])
                && o["queued"] == expect(&[(7, "abandoned")])
        };
        assert!(settled(), "{:#?}", runs(&config));
        let all = runs(&config);
        let run = |name: &str| all.iter().find(|r| r.routine == name && r.outcome == RunOutcome::Abandoned).unwrap();
        let held = run("held");
        assert_eq!(held.error.as_deref(), Some("the beat stopped before the run ended"));
        assert!(held.started_at.is_some() && held.finished_at == Some(at(7).naive_utc()), "{held:?}");
        let queued = run("queued");
        assert_eq!(queued.error.as_deref(), Some("the beat stopped before it ran"));
        assert_eq!((queued.started_at, queued.attempts), (None, Some(0)), "{queued:?}");
        assert!(queued.finished_at.is_some(), "{queued:?}");
        let retry = run("retrying");
        assert_eq!(retry.error.as_deref(), Some("the beat stopped before it ran"));
        assert_eq!(retry.attempts, Some(1), "one attempt made: {retry:?}");
        assert!(retry.started_at.is_some() && retry.finished_at.is_some(), "{retry:?}");
        // The gate's task ends after the stop: the record stays abandoned.
        assert!(holds_for(Duration::from_millis(300), settled), "{:#?}", runs(&config));
    }
}

/// A bound shorter than two heartbeats would declare live beats dead.
#[test]
fn a_dead_after_shorter_than_two_heartbeats_is_refused() {
    let db = TestDb::sqlite("history_dead_after");
    let mut config = db.config();
    config.scheduler_heartbeat_interval = Duration::from_secs(2);
    config.scheduler_dead_after = Duration::from_secs(3);
    let err = Beat::builder(config).start_manual().err().expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("scheduler_dead_after")
            && message.contains("twice scheduler_heartbeat_interval"),
        "{message}"
    );
}

/// `beat send` through the table: the beat that plans the request runs the
/// routine at once, outside its schedule, and records it.
#[test]
fn a_run_requested_through_the_table_is_run_once_and_recorded() {
    let db = TestDb::sqlite("history_requested");
    let config = db.config();
    let clock = TestClock::at(at(0));
    let ok = Recorder::new("ok");
    let mut beat = start(
        Beat::builder(config.clone())
            .clock(clock.clone())
            .task(ok.clone())
            .routine(
                Routine::new(
                    "daily",
                    "ok",
                    Schedule::parse(r#"{"minute": 0, "hour": 3}"#).unwrap(),
                )
                .kwargs(json!({"x": 1})),
            ),
    );
    beat.tick(at(0)).unwrap();
    Operator::connect(config.clone())
        .unwrap()
        .request(&common::tester(), "daily")
        .unwrap();
    clock.set(at(1));
    beat.tick(at(1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ok.count() == 1));
    assert_eq!(ok.runs()[0].kwargs, json!({"x": 1}));
    let row = beat.store().routine("daily").unwrap().unwrap();
    assert_eq!(row.run_requested_at, None, "the request is cleared");
    assert_eq!(
        row.total_run_count,
        Some(0),
        "an on-demand run is not a scheduled one"
    );
    assert_eq!(
        row.next_run_at_utc(),
        Some(at(3 * 3600)),
        "its schedule is untouched"
    );
    let recorded = || {
        runs(&config)
            .first()
            .is_some_and(|r| r.outcome == "succeeded")
    };
    assert!(
        wait_until(Duration::from_secs(10), recorded),
        "{:#?}",
        runs(&config)
    );
    let all = runs(&config);
    assert_eq!(all.len(), 1);
    assert!(all[0].on_demand && all[0].target == Target::InProcess);
    // Ticks later run nothing more: a run they handed over would start
    // within milliseconds, so none in 0.3 s is none.
    clock.set(at(2));
    assert_eq!(beat.tick(at(2)).unwrap().fired, 0);
    assert!(holds_for(Duration::from_millis(300), || ok.count() == 1));
    beat.stop();
}

/// Two beat processes share a routine whose task (3 s) outlasts its period
/// (1 s): its runs follow one another and never overlap, whichever beat
/// runs them; the due times in between are recorded as skipped. A SIGKILL
/// of the beat running it frees the routine after the heartbeat bound.
#[test]
fn two_beat_processes_never_overlap_a_routine_and_a_killed_one_frees_it() {
    let test = "history_two_processes";
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    db.exec(r#"INSERT INTO routines (name, task, schedule, kwargs) VALUES ('slow', 'demo.sleep', '{"timedelta": 1}', '{"seconds": 3}')"#);
    let env = [
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("SCHEDULER_WATCH_INTERVAL", "0.2"),
        ("SCHEDULER_HEARTBEAT_INTERVAL", "0.5"),
        ("SCHEDULER_DEAD_AFTER", "3"),
        ("RUST_LOG", "info"),
    ];
    let mut beats = [BeatProcess::start(&env), BeatProcess::start(&env)];
    let config = {
        let mut c = db.config();
        c.scheduler_dead_after = Duration::from_secs(3);
        c
    };
    // Both beats serve; the routine is run by one at a time.
    assert!(
        wait_until(Duration::from_secs(30), || runs(&config)
            .iter()
            .filter(|r| r.outcome == "succeeded")
            .count()
            >= 3),
        "{:#?}\n{}\n{}",
        runs(&config),
        beats[0].log(),
        beats[1].log()
    );
    // Kill whichever beat runs it now.
    let running = || runs(&config).into_iter().find(|r| r.outcome == "running");
    assert!(wait_until(Duration::from_secs(10), || running().is_some()));
    let victim = running().unwrap();
    let beat_rows = store.beats().list().unwrap();
    let pid = beat_rows
        .iter()
        .find(|b| Some(&b.id) == victim.beat_id.as_ref())
        .unwrap()
        .pid;
    let index = beats.iter().position(|b| b.pid() as i32 == pid).unwrap();
    beats[index].kill();
    let killed_at = Utc::now();
    let survivor = &mut beats[1 - index];
    // The survivor waits out the bound, marks the run lost, and runs the
    // routine again.
    let resumed = || {
        runs(&config).iter().any(|r| {
            r.beat_id != victim.beat_id && r.started_at.is_some_and(|s| s.and_utc() > killed_at)
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), resumed),
        "{:#?}\n{}",
        runs(&config),
        survivor.log()
    );
    assert!(
        survivor.terminate(Duration::from_secs(30)),
        "{}",
        survivor.log()
    );

    let all = runs(&config);
    let lost: Vec<&RunRow> = all.iter().filter(|r| r.outcome == "lost").collect();
    assert_eq!(lost.len(), 1, "{all:#?}");
    assert_eq!(lost[0].task_id, victim.task_id);
    let first_after = all
        .iter()
        .filter(|r| r.started_at.is_some_and(|s| s.and_utc() > killed_at))
        .filter_map(|r| r.started_at)
        .min()
        .unwrap()
        .and_utc();
    let waited = (first_after - killed_at).to_std().unwrap();
    // The victim is dead 3 s (SCHEDULER_DEAD_AFTER) after its last
    // heartbeat, which was at most one heartbeat interval (0.5 s) before
    // the kill: at least 2.5 s after it. From then the routine is free at
    // its next due time (1 s later at most), and the run starts when the
    // survivor's worker takes it: 4 s after the kill, and 1 s for the
    // passes and the start under load. The default bound (10 s) would
    // resume it 9.5 s after the kill at the earliest.
    assert!(
        waited >= Duration::from_millis(2500),
        "resumed {waited:?} after the kill, inside the 3 s bound"
    );
    assert!(
        waited <= Duration::from_secs(5),
        "resumed {waited:?} after the kill: SCHEDULER_DEAD_AFTER=3 allows 4 s and 1 s of slack"
    );
    // No two runs overlap: each started after the previous one ended (the
    // killed run ended at the kill).
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = all
        .iter()
        .filter_map(|r| {
            let start = r.started_at?.and_utc();
            let end = match r.outcome.as_str() {
                "lost" => killed_at,
                _ => r.finished_at?.and_utc(),
            };
            Some((start, end))
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "overlapping runs: {pair:?}\n{all:#?}"
        );
    }
    let skipped = all.iter().filter(|r| r.outcome == "skipped").count();
    let ran: Vec<&str> = all
        .iter()
        .filter(|r| r.outcome == "succeeded")
        .filter_map(|r| r.beat_id.as_deref())
        .collect();
    assert!(
        skipped >= 2 * ran.len(),
        "due times between runs are recorded as skipped: {all:#?}"
    );
    let row = store.routine("slow").unwrap().unwrap();
    let fired = all
        .iter()
        .filter(|r| r.outcome != "skipped" && r.outcome != "missed")
        .count();
    assert_eq!(
        row.total_run_count,
        Some(fired as i32),
        "history agrees with total_run_count"
    );
    common::report(&format!(
        "two beats, 3 s task every 1 s: {} runs (one lost at the kill), {skipped} skipped, resumed {waited:?} after the SIGKILL",
        spans.len()
    ));
}

/// `BeatHandle::send_now` takes the path `beat send` takes: a routine that
/// cannot run is an error for the caller, and, with `history`, a failed
/// run on demand in the table (target `none`), so that an operator sees
/// why; its schedule is left as it is.
#[test]
fn a_run_sent_now_that_cannot_run_is_an_error_and_a_failed_record() {
    let db = TestDb::sqlite("history_send_now_invalid");
    let config = db.config();
    let clock = TestClock::at(at(0));
    let beat = start(
        Beat::builder(config.clone())
            .clock(clock.clone())
            // Not registered here, and no broker_url: it cannot run.
            .routine(Routine::new("orphan", "nowhere.task", every(3600))),
    );
    let err = beat.send_now("orphan").unwrap_err().to_string();
    assert!(err.contains("routine orphan: unknown task"), "{err}");
    let all = runs(&config);
    assert_eq!(all.len(), 1, "{all:#?}");
    let run = &all[0];
    assert_eq!(
        (run.on_demand, run.target, run.outcome),
        (true, Target::Unrouted, RunOutcome::Failed)
    );
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.starts_with("cannot run: unknown task")),
        "{run:?}"
    );
    assert_eq!(
        beat.store()
            .routine("orphan")
            .unwrap()
            .unwrap()
            .total_run_count,
        Some(0)
    );
    beat.stop();
}
