//! What the reliability and outage tests check of a run of beats, on
//! either broker: the history against the messages, what outages may cost,
//! and what a beat costs over a while.

use super::tally::{first, Tally};
use super::{cpu_seconds, BeatProcess, Published, TestDb};
use celery_diesel_kit::ops::Operator;
use celery_diesel_kit::RoutineRow;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The history is the runs, whatever was killed when: every task id that
/// reached the broker has exactly one `published` record (a run RabbitMQ
/// got twice too: the killed claim's record went with its rollback), and
/// every record has its message (the record is written in the claim's
/// transaction, the publish is part of it). Returns the number of records.
pub fn assert_history_is_the_runs(db: &TestDb, messages: &[Published]) -> usize {
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
        first(&unrecorded)
    );
    assert!(
        phantom.is_empty(),
        "{} records without a run: {:?}",
        phantom.len(),
        first(&phantom)
    );
    assert!(
        doubled.is_empty(),
        "runs recorded twice: {:?}",
        first(&doubled)
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

/// The logs of several beats, for a failure message.
pub fn logs(beats: &[BeatProcess]) -> String {
    beats
        .iter()
        .map(BeatProcess::log)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Three beats' 300 routines on 1 s, 2 s and one-minute schedules
/// (`insert_tagged` with periods 1, 2, 60), served for `served` seconds:
/// the 1 s and 2 s routines ran from their first due time, at most 4 s and
/// 5 s after the start (a start-up of up to 3 s, then a period), to the
/// stop, missing none; the minutely ones add what they add. Every message
/// is a run its routine counted, none strays.
pub fn assert_every_due_time_dispatched(tally: &Tally, served: f64) {
    let least = 100.0 * (served - 4.0) + 50.0 * (served - 5.0);
    assert!(
        tally.runs as f64 >= least,
        "{} runs in {served:.1} s, fewer than {least:.0}: {tally:?}",
        tally.runs
    );
    assert!(
        tally.miscounted.is_empty(),
        "{:?}",
        first(&tally.miscounted)
    );
    assert!(
        tally.missed.is_empty(),
        "missed: {:?}",
        first(&tally.missed)
    );
    assert_eq!(tally.strays, 0);
}

/// An outage as the tests saw it: the cut, the restore, and the first run
/// seen after it.
pub type Window = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

/// What outages may do to runs, and no more: a run is missed only while
/// its routine could not be claimed, and after an outage a routine fires
/// once, not once per missed due time.
pub fn assert_outages_cost_only_their_own_runs(tally: &Tally, windows: &[Window]) {
    assert!(
        tally.miscounted.is_empty(),
        "{:?}",
        first(&tally.miscounted)
    );
    assert_eq!(tally.strays, 0);
    // A claim that failed after its push (the database gone at the commit)
    // is claimed again; the broker (Redis) or the beat (RabbitMQ)
    // remembers the run and it is published once. An outage that starts
    // between batches cuts off no batch the broker already had.
    assert_eq!(tally.repeats, 0, "runs published twice");
    for (routine, due) in &tally.missed {
        assert!(
            windows
                .iter()
                .any(|(from, _, back)| *due >= *from - TimeDelta::seconds(1) && *due <= *back),
            "{routine}: run due {due} missed outside an outage"
        );
    }
    for (from, restored, _) in windows {
        let mut inside: HashMap<&str, usize> = HashMap::new();
        for (routine, due) in &tally.dispatched {
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

/// Whether every routine in `rows` has run since `t`.
pub fn all_ran_since(rows: &[RoutineRow], t: DateTime<Utc>) -> bool {
    rows.iter()
        .all(|r| r.last_run_at_utc().is_some_and(|last| last > t))
}

/// What a beat costs over `seconds`: transactions per second on its
/// database, and its share of a core.
pub fn cost(beat: &BeatProcess, db: &TestDb, seconds: u64) -> (f64, f64) {
    let (tx0, cpu0, t0) = (db.transactions(), cpu_seconds(beat.pid()), Instant::now());
    // A rate over a window: time passing is the point.
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = t0.elapsed().as_secs_f64();
    (
        (db.transactions() - tx0) as f64 / wall,
        (cpu_seconds(beat.pid()) - cpu0) / wall,
    )
}

/// What `beat` costs over `seconds` idle (see `cost`), once every routine
/// is planned and none is due (the test makes them hourly).
pub fn idle_cost(beat: &BeatProcess, db: &TestDb, seconds: u64) -> (f64, f64) {
    let store = db.store();
    let planned = || {
        store
            .routines()
            .expect("routines")
            .iter()
            .all(|r| r.next_run_at.is_some() && !r.awaits_planning())
    };
    assert!(
        super::wait_until(Duration::from_secs(20), planned),
        "{}",
        beat.log()
    );
    cost(beat, db, seconds)
}

/// A beat's cost in a lasting broker outage, `(transactions/s, share of a
/// core)`, against idling. The outage adds what its routines staying due
/// cost: the beat looks at them again at each step of its back-offs (the
/// broker's, and its wait for rows it cannot claim), each look a claim
/// rolled back. Measured at 5 to 20% over idling on two shared cores; half
/// again bounds it with room, and a tenth of a core covers the same retries
/// in CPU and the noise of a shared machine.
pub fn assert_an_outage_costs_what_idling_costs(
    (idle_tx, idle_cpu): (f64, f64),
    (outage_tx, outage_cpu): (f64, f64),
    beat: &BeatProcess,
) {
    assert!(
        outage_tx <= idle_tx * 1.5,
        "{outage_tx:.1} transactions/s in the outage, {idle_tx:.1} idle:\n{}",
        beat.log()
    );
    assert!(
        outage_cpu <= idle_cpu + 0.1,
        "{:.1}% of a core in the outage, {:.1}% idle",
        outage_cpu * 100.0,
        idle_cpu * 100.0
    );
}

/// Keeps `beats` serving for `rest` (each must stay up), then stops each
/// cleanly. Returns how long they served since `started`.
pub fn serve_then_stop(beats: &mut [BeatProcess], rest: Duration, started: Instant) -> f64 {
    assert!(
        super::holds_for(rest, || beats.iter_mut().all(BeatProcess::is_running)),
        "a beat exited:\n{}",
        logs(beats)
    );
    let served = started.elapsed().as_secs_f64();
    for beat in beats.iter_mut() {
        assert!(
            beat.terminate(Duration::from_secs(30)),
            "a beat did not stop cleanly:\n{}",
            beat.log()
        );
    }
    served
}
