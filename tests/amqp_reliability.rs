//! Reliability on RabbitMQ, each test in a virtual host of its own: three
//! beats with one SIGKILLed, a blocked connection (RabbitMQ under a memory
//! or disk alarm, played by the test's proxy) and outages through that
//! proxy. Every message is read back from RabbitMQ (py-amqp) and tallied
//! against each routine's grid of due times and its `total_run_count`
//! (`common::tally`), as tests/reliability.rs and tests/outages.rs do on
//! Redis.
//!
//! One difference is by design: RabbitMQ cannot drop a repeated task id
//! as the Redis path does, so a beat killed after RabbitMQ had a batch and
//! before its claim committed leaves runs that the next claim publishes
//! again, with the same task id. The tests allow exactly those.

mod common;

use celery_diesel_kit::{task_id, RoutineRow};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::proxy::AmqpProxy;
use common::rabbit::{published, rabbit_vhost};
use common::routines::insert_tagged;
use common::runs::{
    all_ran_since, assert_an_outage_costs_what_idling_costs, assert_every_due_time_dispatched,
    assert_history_is_the_runs, assert_outages_cost_only_their_own_runs, cost, idle_cost, logs,
    serve_then_stop, Window,
};
use common::tally::{first, tally};
use common::{celery_python, env_seconds, holds_for, report, wait_until, BeatProcess, TestDb};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The queue the tests' routines send to.
const QUEUE: &str = "reliability";

/// Rows one claim transaction takes (`CLAIM_BATCH` in
/// src/scheduler/claim.rs, private there).
const CLAIM_BATCH: usize = 1000;

/// Three beats on one database, 300 routines on 1 s, 2 s and one-minute
/// schedules, for 40 s; mid-way one beat is SIGKILLed at the worst moment
/// for RabbitMQ: it has published a batch, RabbitMQ has taken and
/// confirmed it, and the beat has not heard the confirms (the test's
/// proxy holds them), so its claim never commits. Every due time is
/// dispatched, and the only repeats are that batch's runs, each published
/// again once, with its task id, by the beat that claims the row next.
#[test]
fn three_beats_on_rabbitmq_dispatch_each_due_time_and_repeat_only_the_killed_beats_last_claim() {
    let test = "amqp_reliability_three_beats";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(vhost) = rabbit_vhost(test, "reliability_three_beats") else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    // 300 routines: every 1 s, every 2 s, and every minute.
    insert_tagged(&db, "r", 300, QUEUE, |i| [1, 2, 60][i % 3]);
    let broker = vhost.url();
    // The beat to be killed talks to RabbitMQ through the proxy.
    let proxy = AmqpProxy::in_front_of(&broker);
    let through = proxy.url(&broker);
    let env = |broker: &str| {
        [
            ("SCHEDULER_DB_URI", db.url.clone()),
            ("CELERY_BROKER_URL", broker.to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
    };
    let start = |broker: &str| {
        let env = env(broker);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        BeatProcess::start(&env)
    };
    let seconds = 40;
    let started = Instant::now();
    let mut beats = vec![start(&broker), start(&through), start(&broker)];
    // The soak's length is the point; over it, every beat stays up (but
    // the one killed, for the 3 s it is down).
    let half = Duration::from_secs(seconds / 2);
    assert!(
        holds_for(half, || beats.iter_mut().all(BeatProcess::is_running)),
        "a beat exited:\n{}",
        logs(&beats)
    );
    // Between two of its batches (every message it published confirmed),
    // the beat behind the proxy stops hearing from RabbitMQ. Once it has
    // published a batch (RabbitMQ has it, and confirms it) and has sent
    // nothing for 300 ms since (it waits for the confirms, its claim
    // open), it is killed.
    let (publishes, held_from) = loop {
        assert!(
            between_batches(&proxy, Duration::from_secs(20)),
            "the beat behind the proxy has no batch confirmed:\n{}",
            beats[1].log()
        );
        let held_from = Utc::now();
        let held = proxy.hold_answers();
        if held.since_confirm == 0 {
            break (held.publishes, held_from);
        }
        // A batch began just now: its confirms go through, and the
        // test waits for the next pause.
        proxy.release_answers();
    };
    let unconfirmed = || proxy.publishes() - publishes;
    assert!(
        wait_until(Duration::from_secs(20), || unconfirmed() > 0
            && proxy
                .since_client_sent()
                .is_some_and(|d| d >= Duration::from_millis(300))),
        "the beat behind the proxy published nothing in 20 s:\n{}",
        beats[1].log()
    );
    let unconfirmed = unconfirmed() as usize;
    beats[1].kill();
    let killed_at = Utc::now();
    proxy.cut();
    assert!(
        holds_for(Duration::from_secs(3), || beats[0].is_running()
            && beats[2].is_running()),
        "a beat exited:\n{}",
        logs(&beats)
    );
    beats[1] = start(&broker);
    let rest = Duration::from_secs(seconds - seconds / 2);
    let served = serve_then_stop(&mut beats, rest, started);
    let rows = store.routines().expect("routines");
    let read = Instant::now();
    let messages = published(&python, &broker, QUEUE);
    let read = read.elapsed();
    let tally = tally(&rows, &messages);
    let recorded = assert_history_is_the_runs(&db, &messages);

    // The repeated task ids, and the runs (routine, due time) they are.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for m in &messages {
        *copies.entry(m.id.as_str()).or_default() += 1;
    }
    let repeated: HashMap<&str, usize> = copies.into_iter().filter(|(_, n)| *n > 1).collect();
    let ids: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.id.as_str()))
        .collect();
    let repeated_runs: Vec<&(String, DateTime<Utc>)> = tally
        .dispatched
        .iter()
        .filter(|(routine, due)| {
            repeated.contains_key(task_id(ids[routine.as_str()], *due).as_str())
        })
        .collect();
    let mut before_kill: Vec<i64> = repeated_runs
        .iter()
        .map(|(_, due)| (killed_at - *due).num_milliseconds())
        .collect();
    before_kill.sort_unstable();
    report(&format!(
        "RabbitMQ, three beats, {seconds} s, one SIGKILLed with {unconfirmed} messages \
         RabbitMQ had taken but the beat had not heard confirmed: {} messages read back in \
         {read:.1?}, {} runs, {} repeated (same id; due {:?} to {:?} ms before the kill), \
         {} missed, {} strays, {recorded} recorded",
        messages.len(),
        tally.runs,
        tally.repeats,
        before_kill.first(),
        before_kill.last(),
        tally.missed.len(),
        tally.strays
    ));
    assert_every_due_time_dispatched(&tally, served);
    // A repeat is a run the killed beat gave RabbitMQ in a claim the kill
    // rolled back; the next claim of the row publishes it again, once.
    // So the repeats are exactly the messages published behind the proxy
    // after its answers were held, each twice, each a run on its
    // routine's grid, at most one per routine (a row is in one claim at a
    // time), no more than a claim batch, and each already due when its claim began: at most 2 s before the
    // answers were held (those beats claim within a second of each due
    // time), and before the kill.
    let tripled: Vec<_> = repeated.iter().filter(|(_, n)| **n != 2).collect();
    assert!(
        tripled.is_empty(),
        "runs published more than twice: {:?}",
        first(&tripled)
    );
    assert_eq!(
        repeated_runs.len(),
        repeated.len(),
        "each repeated id is a run on its routine's grid"
    );
    assert_eq!(
        tally.repeats, unconfirmed,
        "the repeats are the killed beat's unconfirmed messages"
    );
    let routines: HashSet<&str> = repeated_runs.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        routines.len(),
        repeated_runs.len(),
        "two repeated runs of one routine: {repeated_runs:?}"
    );
    // A beat on PostgreSQL has three claimers, each a claim in flight of
    // up to a batch; these 300 routines keep it under one.
    assert!(
        tally.repeats <= CLAIM_BATCH,
        "{} repeats, more than a claim batch",
        tally.repeats
    );
    let unexplained: Vec<_> = repeated_runs
        .iter()
        .filter(|(_, due)| *due < held_from - TimeDelta::seconds(2) || *due > killed_at)
        .collect();
    assert!(
        unexplained.is_empty(),
        "repeated runs not due within 2 s before the unconfirmed claim ({held_from}) and the \
         SIGKILL ({killed_at}): {:?}",
        first(&unexplained)
    );
}

// ---------------------------------------------------------------------------
// A blocked connection, and outages.

/// Waits for a moment between two seconds' batches: RabbitMQ has just
/// confirmed one, and nothing for 200 ms since (a batch of these
/// routines is confirmed within tens of milliseconds of its first
/// message; the next is due most of a second later). An outage begun
/// there cuts no batch off after RabbitMQ had part of it.
fn between_batches(proxy: &AmqpProxy, limit: Duration) -> bool {
    let quiet = Duration::from_millis(200);
    wait_until(limit, || {
        proxy
            .since_last_confirm()
            .is_some_and(|d| d >= quiet && d < quiet * 2)
    })
}

/// One beat, 200 Celery routines and an in-process one, RabbitMQ through
/// the test's proxy. Idle (the Celery routines hourly), then every
/// second: RabbitMQ blocks the beat's connections for 5 s (a memory
/// alarm), then is cut off for 5 s and for 30 s. Through each, the beat
/// stays up, logs one line when it begins and one when it ends, the
/// in-process routine keeps its time and the Celery routines stay due;
/// after each, every one of them fires once. In the 30 s outage the beat
/// costs what it costs idling (transactions per second on its database,
/// share of a core). Every message is read back and tallied.
#[test]
fn a_blocked_or_lost_rabbitmq_leaves_routines_due_costs_what_idling_costs_and_each_fires_once_after(
) {
    let test = "amqp_reliability_blocked";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(vhost) = rabbit_vhost(test, "reliability_blocked") else {
        return;
    };
    let Some(db) = TestDb::postgres(test) else {
        return;
    };
    let store = db.store();
    // 200 Celery routines, hourly while idling, every second after.
    const ROUTINES: usize = 200;
    insert_tagged(&db, "b", ROUTINES, QUEUE, |_| 3600);
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('in-process', 'demo.hello', '{"timedelta": 1}')"#);
    let direct = vhost.url();
    let proxy = AmqpProxy::in_front_of(&direct);
    let mut beat = BeatProcess::start(&[
        ("SCHEDULER_DB_URI", db.url.as_str()),
        ("CELERY_BROKER_URL", proxy.url(&direct).as_str()),
        ("RUST_LOG", "info"),
    ]);
    let celery_rows = || -> Vec<RoutineRow> {
        store
            .routines()
            .expect("routines")
            .into_iter()
            .filter(|r| r.task == "tasks.record")
            .collect()
    };
    let ran_since = |t| all_ran_since(&celery_rows(), t);
    let runs_of_celery_routines = || -> i64 {
        celery_rows()
            .iter()
            .map(|r| i64::from(r.total_run_count.unwrap_or(0)))
            .sum()
    };
    let local_runs = || {
        store
            .routine("in-process")
            .expect("the in-process routine")
            .expect("the in-process routine")
            .total_run_count
            .unwrap_or(0)
    };
    let down = |beat: &BeatProcess| beat.lines_with("broker unavailable").len();
    let back = |beat: &BeatProcess| beat.lines_with("broker reachable again").len();
    // In-process routines go on while RabbitMQ is away or blocked: once a
    // second, give or take one at the window's edges.
    let assert_local_kept_time = |ran: i32, over: Duration, what: &str| {
        assert!(
            (f64::from(ran) - over.as_secs_f64()).abs() <= 1.0,
            "the in-process routine ran {ran} times in {over:.1?} of {what}"
        );
    };

    let seconds = env_seconds("CDK_OUTAGE_SECONDS", 10);
    let (idle_tx, idle_cpu) = idle_cost(&beat, &db, seconds);

    let switched = Utc::now();
    db.exec(r#"UPDATE routines SET schedule = '{"timedelta": 1}' WHERE task = 'tasks.record'"#);
    assert!(
        wait_until(Duration::from_secs(20), || ran_since(switched)),
        "{}",
        beat.log()
    );
    let mut windows: Vec<Window> = Vec::new();

    // RabbitMQ blocks the connections (a memory alarm) for 5 s.
    assert!(
        between_batches(&proxy, Duration::from_secs(10)),
        "no confirms:\n{}",
        beat.log()
    );
    let (runs_before, local_before, local_from) =
        (runs_of_celery_routines(), local_runs(), Instant::now());
    let block_at = Utc::now();
    let told = proxy.block("low on memory (the test's alarm)");
    assert!(told >= 1, "no connection had published");
    // The blocked connection is an outage from the next batch on (due
    // within a second): the beat has the notice before it publishes.
    let noticed = beat
        .logs_within(Duration::from_secs(3), "broker unavailable")
        .then(|| Utc::now() - block_at);
    // The block's length is the point; the beat stays up through it.
    let block = Duration::from_secs(5);
    let left = block.saturating_sub(local_from.elapsed());
    assert!(
        holds_for(left, || beat.is_running()),
        "the beat exited while blocked:\n{}",
        beat.log()
    );
    let (runs_blocked, local_ran, over) = (
        runs_of_celery_routines(),
        local_runs() - local_before,
        local_from.elapsed(),
    );
    let (blocked_sent, held) = (proxy.blocked_sent(), proxy.held_publishes());
    let unblock_at = Utc::now();
    proxy.unblock();
    let recovered = wait_until(Duration::from_secs(30), || {
        ran_since(unblock_at) && back(&beat) == 1
    });
    let recovered_after_block = (Utc::now() - unblock_at).num_milliseconds();
    // What the beat did while blocked, for the failures below.
    let evidence = format!(
        "blocked from {block_at} to {unblock_at}: {told} connection(s) that had published were \
         sent connection.blocked at once, {} more on their first publish; {held} basic.publish \
         frame(s) arrived on a blocked connection and were held; meanwhile the Celery routines \
         ran {} times and the in-process routine {local_ran} times in {over:.1?}; the beat's \
         broker lines, up to {} after the unblock:\n{}",
        blocked_sent - told as u64,
        runs_blocked - runs_before,
        Utc::now(),
        beat.lines_with("broker").join("\n")
    );
    assert!(
        noticed.is_some(),
        "the beat did not take the blocked connection for an outage within 3 s; {evidence}"
    );
    // No Celery routine advanced while blocked: runs only grow, so the
    // same sum at both ends means none ran in between.
    assert_eq!(
        runs_blocked, runs_before,
        "Celery routines advanced while RabbitMQ blocked publishing; {evidence}"
    );
    assert_local_kept_time(
        local_ran,
        over,
        &format!("a blocked connection; {evidence}"),
    );
    assert_eq!(
        down(&beat),
        1,
        "one line for the blocked connection:\n{}",
        beat.log()
    );
    assert!(
        recovered,
        "not every routine ran after the unblock:\n{}",
        beat.log()
    );
    windows.push((block_at, unblock_at, Utc::now()));

    // Cut off for 5 s, then for 30 s; the cost is measured in the second.
    let mut costs = Vec::new();
    for (outage, cut) in [5u64, 30].into_iter().enumerate() {
        assert!(
            between_batches(&proxy, Duration::from_secs(10)),
            "no confirms:\n{}",
            beat.log()
        );
        let (local_before, local_from) = (local_runs(), Instant::now());
        let start = Utc::now();
        proxy.cut();
        assert!(
            wait_until(Duration::from_secs(3), || down(&beat) == outage + 2),
            "the outage was not logged:\n{}",
            beat.log()
        );
        if cut == 30 {
            // The outage has begun (a publish failed). Its first, quick
            // retries (the back-offs start at 0.25 s and double) come in
            // the first 2 s; what is measured is the outage as it lasts:
            // time passing is the point.
            std::thread::sleep(Duration::from_secs(2));
            let (local_before, local_from) = (local_runs(), Instant::now());
            costs.push(cost(&beat, &db, seconds));
            assert_local_kept_time(
                local_runs() - local_before,
                local_from.elapsed(),
                "the measured outage",
            );
        }
        // The outage's length is the point; the beat stays up through it.
        let left = Duration::from_secs(cut).saturating_sub(local_from.elapsed());
        assert!(
            holds_for(left, || beat.is_running()),
            "the beat exited during an outage:\n{}",
            beat.log()
        );
        assert_local_kept_time(
            local_runs() - local_before,
            local_from.elapsed(),
            "an outage",
        );
        proxy.restore();
        let restored_at = Utc::now();
        assert!(
            wait_until(Duration::from_secs(30), || ran_since(restored_at)
                && back(&beat) == outage + 2),
            "not every routine ran after the outage:\n{}",
            beat.log()
        );
        windows.push((start, restored_at, Utc::now()));
    }
    assert!(beat.terminate(Duration::from_secs(30)), "{}", beat.log());
    assert_eq!(
        (down(&beat), back(&beat)),
        (3, 3),
        "one line per change of state:\n{}",
        beat.log()
    );

    let messages = published(&python, &direct, QUEUE);
    let tally = tally(&celery_rows(), &messages);
    let [(outage_tx, outage_cpu)] = costs[..] else {
        panic!("one outage measured: {costs:?}");
    };
    report(&format!(
        "RabbitMQ blocked for 5 s (noticed after {} ms, {blocked_sent} connection.blocked sent, \
         {held} publishes held, all ran again {recovered_after_block} ms after the unblock), \
         then cut for 5 s and 30 s: \
         {} runs, {} repeated, {} missed in outages; beat cost with {ROUTINES} Celery routines, \
         idle vs a {seconds} s stretch of the 30 s outage: {idle_tx:.1} vs {outage_tx:.1} \
         transactions/s, {:.1}% vs {:.1}% of a core",
        noticed.map_or(-1, |d| d.num_milliseconds()),
        tally.runs,
        tally.repeats,
        tally.missed.len(),
        idle_cpu * 100.0,
        outage_cpu * 100.0
    ));
    assert_outages_cost_only_their_own_runs(&tally, &windows);
    assert_an_outage_costs_what_idling_costs((idle_tx, idle_cpu), (outage_tx, outage_cpu), &beat);
}
