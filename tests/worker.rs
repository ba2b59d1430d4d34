//! The worker pool: sync and async tasks, kwargs, retries, panics,
//! overlapping runs and graceful stop. Runs are started with manual
//! scheduler passes; the tasks themselves run on the real pool.

mod common;

use celery_diesel_kit::{
    AsyncTask, Beat, Config, ManualBeat, Routine, SyncTask, TaskContext, TaskResult,
};
use common::{at, every, gate, wait_until, Recorder};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A task whose kwargs are typed; it records its greetings, and the
/// errors `ctx.kwargs()` gave it.
struct Greet(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>);

#[derive(serde::Deserialize)]
struct GreetArgs {
    who: String,
    #[serde(default)]
    times: usize,
}

impl SyncTask for Greet {
    fn name(&self) -> &str {
        "greet"
    }
    fn run(&self, ctx: &TaskContext) -> TaskResult {
        let args: GreetArgs = ctx
            .kwargs()
            .inspect_err(|e| self.1.lock().unwrap().push(e.to_string()))?;
        self.0
            .lock()
            .unwrap()
            .push(format!("{}x{}", args.who, args.times));
        Ok(())
    }
}

/// An async task that awaits tokio timers and reports its routine and
/// kwargs, and the thread it ran on.
struct Nap(Arc<Mutex<Vec<(String, String)>>>);

impl AsyncTask for Nap {
    fn name(&self) -> &str {
        "nap"
    }
    async fn run(&self, ctx: TaskContext) -> TaskResult {
        // Not Send across the await: fine on a current-thread runtime.
        let local = std::rc::Rc::new(ctx.routine.clone());
        // Awaiting a timer is the point: the runtime must drive it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.0.lock().unwrap().push((
            format!("{} {}", *local, ctx.kwargs),
            std::thread::current().name().unwrap_or("").to_owned(),
        ));
        Ok(())
    }
}

/// A task that fails (or panics) `failures` times, recording attempts.
struct Flaky {
    name: &'static str,
    failures: u32,
    panic: bool,
    attempts: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl SyncTask for Flaky {
    fn name(&self) -> &str {
        self.name
    }
    fn run(&self, ctx: &TaskContext) -> TaskResult {
        self.attempts
            .lock()
            .unwrap()
            .push((ctx.attempt, Instant::now()));
        if ctx.attempt < self.failures {
            if self.panic {
                panic!("flaky task panics on attempt {}", ctx.attempt);
            }
            return Err(format!("failing on attempt {}", ctx.attempt).into());
        }
        Ok(())
    }
}

/// An async task that panics on its first attempt, after awaiting a timer.
struct AsyncPanic(Arc<Mutex<Vec<u32>>>);

impl AsyncTask for AsyncPanic {
    fn name(&self) -> &str {
        "async panic"
    }
    async fn run(&self, ctx: TaskContext) -> TaskResult {
        self.0.lock().unwrap().push(ctx.attempt);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if ctx.attempt == 0 {
            panic!("async task panics on attempt 0");
        }
        Ok(())
    }
}

fn start(builder: celery_diesel_kit::BeatBuilder) -> ManualBeat {
    builder.start_manual().expect("start")
}

backend_tests! {
    fn sync_and_async_tasks_run_with_their_kwargs(db) {
        let greetings = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let naps = Arc::new(Mutex::new(Vec::new()));
        let config = { let mut c = db.config(); c.celery_max_retry = 1; c };
        let mut beat = start(Beat::builder(config)
            .task(Greet(greetings.clone(), errors.clone()))
            .async_task(Nap(naps.clone()))
            .routine(Routine::new("greeting", "greet", every(10)).kwargs(json!({"who": "ada", "times": 2})))
            .routine(Routine::new("nap a", "nap", every(10)).kwargs(json!({"n": 1})))
            .routine(Routine::new("nap b", "nap", every(10))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 3);
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 3), "{:?}", beat.stats());
        assert_eq!(*greetings.lock().unwrap(), ["adax2"]);
        let mut napped: Vec<(String, String)> = naps.lock().unwrap().clone();
        napped.sort();
        assert_eq!(napped.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), [r#"nap a {"n":1}"#, "nap b {}"]);
        // On the pool's own threads (each a current-thread runtime), not
        // on a runtime of the caller's.
        assert!(napped.iter().all(|(_, thread)| thread.starts_with("beat-worker-")), "{napped:?}");
        // Kwargs that do not fit the task's type fail the run, naming both.
        db.exec(r#"UPDATE routines SET kwargs = '{"whom": "bob"}' WHERE name = 'greeting'"#);
        beat.tick(at(11)).unwrap();
        assert_eq!(beat.tick(at(20)).unwrap().fired, 3);
        assert!(wait_until(Duration::from_secs(10), || beat.stats().gave_up == 1 && beat.stats().succeeded == 5), "{:?}", beat.stats());
        assert_eq!(beat.stats().failed, 2, "the run and its one retry failed, the naps did not: {:?}", beat.stats());
        let errors = errors.lock().unwrap().clone();
        assert_eq!(errors.len(), 2, "{errors:?}");
        for error in &errors {
            assert!(
                error.starts_with("routine greeting: kwargs do not fit task greet: ") && error.contains("missing field `who`"),
                "{error}"
            );
        }
        assert_eq!(*greetings.lock().unwrap(), ["adax2"], "no greeting from kwargs that do not fit");
    }

    fn failed_tasks_are_retried_then_given_up(db) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let config = { let mut c = db.config(); c.celery_max_retry = 2; c };
        let mut beat = start(Beat::builder(config)
            .task(Flaky { name: "flaky", failures: u32::MAX, panic: false, attempts: attempts.clone() })
            .routine(Routine::new("r", "flaky", every(10))));
        beat.tick(at(0)).unwrap();
        beat.tick(at(10)).unwrap();
        assert!(wait_until(Duration::from_secs(10), || beat.stats().gave_up == 1), "{:?}", beat.stats());
        let seen: Vec<u32> = attempts.lock().unwrap().iter().map(|(a, _)| *a).collect();
        assert_eq!(seen, [0, 1, 2], "one run, two retries");
        assert_eq!((beat.stats().failed, beat.stats().succeeded), (3, 0));
    }

    fn a_retry_waits_its_delay_without_holding_a_worker(db) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder::new("record");
        let delay = Duration::from_millis(1500);
        let config = { let mut c = db.config(); c.celery_retry_delay = delay; c.worker_concurrency = 1; c };
        let mut beat = start(Beat::builder(config)
            .task(Flaky { name: "flaky", failures: 1, panic: false, attempts: attempts.clone() })
            .task(rec.clone())
            .routine(Routine::new("flaky", "flaky", every(10)))
            .routine(Routine::new("other", "record", every(3600))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        assert!(wait_until(Duration::from_secs(10), || beat.stats().failed == 1), "{:?}", beat.stats());
        // The retry now waits its 1.5 s; the only worker must be free for
        // other work meanwhile.
        let sent = Instant::now();
        beat.send_now("other").unwrap();
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 2), "{:?}", beat.stats());
        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 2);
        let other_ran = rec.runs()[0].at;
        // At once (a queue hand-over; 0.5 s covers a loaded machine), not
        // after the retry's 1.5 s.
        assert!(
            attempts[0].1 < other_ran && other_ran < attempts[1].1 && other_ran - sent < Duration::from_millis(500),
            "the only worker ran another task while the retry waited: {:?} after it was sent",
            other_ran - sent
        );
        // The retry is queued when its delay has passed (the timer sleeps
        // until then) and the worker is idle; 0.5 s more covers a loaded
        // machine, and a retry run at once or a whole delay late fails.
        let waited = attempts[1].1 - attempts[0].1;
        assert!(waited >= delay && waited < delay + Duration::from_millis(500), "retried after {waited:?}");
    }

    fn a_panicking_task_is_a_failed_task_not_a_dead_worker(db) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder::new("record");
        let config = { let mut c = db.config(); c.worker_concurrency = 1; c.celery_max_retry = 1; c };
        let mut beat = start(Beat::builder(config)
            .task(Flaky { name: "panicky", failures: 1, panic: true, attempts: attempts.clone() })
            .task(rec.clone())
            .routine(Routine::new("panicky", "panicky", every(10)))
            .routine(Routine::new("after", "record", every(3600))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        assert!(wait_until(Duration::from_secs(10), || beat.stats().failed == 1), "{:?}", beat.stats());
        // Only after the panic: the single worker must still take work.
        beat.send_now("after").unwrap();
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 2), "{:?}", beat.stats());
        assert_eq!((beat.stats().failed, beat.stats().gave_up), (1, 0));
        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [0, 1], "the panic was retried, and the retry succeeded");
        let runs = rec.runs();
        assert_eq!(runs.len(), 1);
        assert!(runs[0].at > attempts[0].1, "the single worker ran a task after the panic");
    }

    fn a_panicking_async_task_is_a_failed_task_and_its_worker_runs_async_tasks_after_it(db) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let naps = Arc::new(Mutex::new(Vec::new()));
        let config = { let mut c = db.config(); c.worker_concurrency = 1; c.celery_max_retry = 1; c };
        let mut beat = start(Beat::builder(config)
            .async_task(AsyncPanic(attempts.clone()))
            .async_task(Nap(naps.clone()))
            .routine(Routine::new("panics", "async panic", every(10)))
            .routine(Routine::new("naps", "nap", every(3600))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        assert!(wait_until(Duration::from_secs(10), || beat.stats().failed == 1), "{:?}", beat.stats());
        // Only after the panic: the single worker must still run async tasks.
        beat.send_now("naps").unwrap();
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 2), "{:?}", beat.stats());
        assert_eq!((beat.stats().failed, beat.stats().gave_up), (1, 0));
        assert_eq!(*attempts.lock().unwrap(), [0, 1], "the panic was retried, and the retry succeeded");
        let naps = naps.lock().unwrap().clone();
        assert_eq!(naps.len(), 1);
        assert_eq!(naps[0].1, "beat-worker-0", "on the one worker that saw the panic");
    }

    fn a_routine_whose_run_is_still_going_is_not_queued_again(db) {
        let (gate, started, release) = gate();
        let mut beat = start(Beat::builder(db.config()).task(gate).routine(Routine::new("slow", "gate", every(10))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
        started.recv_timeout(Duration::from_secs(10)).expect("the run started");
        for t in [20, 30] {
            let tick = beat.tick(at(t)).unwrap();
            assert_eq!((tick.fired, tick.skipped), (0, 1), "at {t}");
        }
        let row = beat.store().routine("slow").unwrap().unwrap();
        assert_eq!((row.total_run_count, row.next_run_at_utc()), (Some(1), Some(at(40))), "skipped runs still advance");
        release.send(()).unwrap();
        assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == 1));
        assert_eq!(beat.tick(at(40)).unwrap().fired, 1);
        release.send(()).unwrap();
        assert_eq!(beat.stats().skipped, 2);
    }

    fn stop_lets_running_and_queued_tasks_finish_before_the_deadline(db) {
        let (gate, started, release) = gate();
        let rec = Recorder::new("record");
        let config = { let mut c = db.config(); c.worker_concurrency = 1; c };
        let mut beat = start(Beat::builder(config)
            .task(gate)
            .task(rec.clone())
            .routine(Routine::new("slow", "gate", every(5)))
            .routines((0..3).map(|i| Routine::new(format!("queued {i}"), "record", every(10)))));
        beat.tick(at(0)).unwrap();
        assert_eq!(beat.tick(at(5)).unwrap().fired, 1);
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        // Three runs queued behind the slow one on the only worker.
        assert_eq!(beat.tick(at(10)).unwrap().fired, 3);
        assert_eq!(rec.count(), 0);
        let stopping = Instant::now();
        let releaser = std::thread::spawn(move || {
            // A slow task: time passing is the point. It ends 0.3 s into
            // the stop, well before the 10 s deadline.
            std::thread::sleep(Duration::from_millis(300));
            release.send(()).unwrap();
        });
        let report = beat.stop_within(Duration::from_secs(10));
        let took = stopping.elapsed();
        releaser.join().unwrap();
        assert_eq!(
            (report.busy_workers, report.stats.succeeded, report.stats.abandoned),
            (0, 4, 0),
            "stop waited for the task, then ran the queue: {report:?}"
        );
        assert_eq!(rec.count(), 3);
        // It waited for the task (0.3 s) and returned when the task and
        // the queue behind it ended, not at the 10 s deadline: after them
        // come only the housekeeper's last writes, milliseconds; 0.5 s
        // covers a loaded machine.
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(800), "stop took {took:?}");
    }

    fn stop_gives_up_on_a_task_past_the_deadline(db) {
        let (gate, started, release) = gate();
        let mut beat = start(Beat::builder(db.config()).task(gate).routine(Routine::new("stuck", "gate", every(10))));
        beat.tick(at(0)).unwrap();
        beat.tick(at(10)).unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let stopping = Instant::now();
        let report = beat.stop_within(Duration::from_millis(300));
        let took = stopping.elapsed();
        assert_eq!((report.busy_workers, report.stats.succeeded), (1, 0));
        // The stop waits out its deadline and no more: after it comes only
        // the housekeeper's last write (the stop, in the beats table), a
        // few milliseconds on a local database; 0.2 s covers a loaded
        // machine.
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(500), "stop took {took:?}");
        release.send(()).unwrap();
    }
}

/// A stop with every way to linger at once: a task that ignores the
/// deadline, a full queue behind it (and claimed runs still waiting to be
/// queued), and a retry waiting for its time.
#[test]
fn stop_returns_within_its_timeout_and_names_every_run_it_abandons() {
    let log = common::captured_log();
    let db = common::TestDb::sqlite("stop_within_timeout");
    let (gate, started, release) = gate();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let failing = Flaky {
        name: "fail",
        failures: 100,
        panic: false,
        attempts: Arc::clone(&attempts),
    };
    let config = {
        let mut c = db.config();
        c.worker_concurrency = 1;
        c.shutdown_timeout = Duration::from_secs(1);
        c.celery_retry_delay = Duration::from_secs(600);
        c
    };
    let clock = common::TestClock::at(at(0));
    let stuck: Vec<Routine> = (0..100)
        .map(|i| Routine::new(format!("stop-stuck-{i:03}"), "gate", every(10)))
        .collect();
    let beat = Beat::builder(config)
        .clock(clock.clone())
        .task(gate)
        .task(failing)
        .routine(Routine::new("stop-failing", "fail", every(5)))
        .routines(stuck)
        .start()
        .unwrap();
    let store = db.store();
    let planned = || {
        store
            .routines()
            .unwrap()
            .iter()
            .all(|r| r.next_run_at.is_some())
    };
    assert!(wait_until(Duration::from_secs(10), planned));
    clock.set(at(5));
    assert!(
        wait_until(Duration::from_secs(10), || beat.stats().failed == 1),
        "the failing run ran once, its retry waits"
    );
    clock.set(at(10));
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("a stuck run started");
    let claimed = || {
        store
            .routines()
            .unwrap()
            .iter()
            .filter(|r| r.name.starts_with("stop-stuck"))
            .all(|r| r.total_run_count == Some(1))
    };
    assert!(
        wait_until(Duration::from_secs(10), claimed),
        "all 100 stuck runs claimed"
    );

    let stopping = Instant::now();
    let report = beat.stop();
    let took = stopping.elapsed();
    release.send(()).unwrap();
    // The stuck task holds the stop to its deadline; after it come only
    // the abandoned runs' log lines and the housekeeper's last writes
    // (their outcomes), tens of milliseconds on SQLite; 0.5 s covers a
    // loaded machine.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "stop took {took:?} with a 1 s shutdown_timeout"
    );
    assert_eq!(report.busy_workers, 1, "the stuck task still running");
    // 64 queued, 35 never queued, 1 retry: every run but the running one.
    assert_eq!(report.stats.abandoned, 100, "{report:?}");
    let lines = log.lock().unwrap().clone();
    let named = |routine: &str| {
        lines
            .iter()
            .filter(|l| {
                l.contains(&format!("routine {routine}: "))
                    && (l.contains("at stop") || l.contains("stop deadline"))
            })
            .count()
    };
    assert_eq!(named("stop-failing"), 1, "the dropped retry is logged");
    for i in 0..100 {
        assert_eq!(
            named(&format!("stop-stuck-{i:03}")),
            1,
            "stop-stuck-{i:03}:\n{}",
            lines.join("\n")
        );
    }
    // And the history (on by default) says the same, written before the
    // stop returned: every run dropped ends as `abandoned`, with why and
    // the attempts it made; the one still running is ended as abandoned
    // too (its end will never be recorded), and says so.
    let runs = |filter: &str| {
        db.number(&format!(
            "SELECT COUNT(*) AS n FROM routine_runs WHERE {filter}"
        ))
    };
    // 100 stuck runs, the failing routine's run at 5 s, and its run at
    // 10 s skipped (the first still waited for its retry).
    assert_eq!(runs("1 = 1"), 102);
    assert_eq!(runs("outcome = 'skipped' AND routine = 'stop-failing'"), 1);
    let dropped = "outcome = 'abandoned' AND error = 'the beat stopped before it ran'";
    assert_eq!(runs(dropped), 100);
    assert_eq!(
        runs(&format!(
            "{dropped} AND routine LIKE 'stop-stuck-%' AND attempts = 0"
        )),
        99
    );
    assert_eq!(
        runs(&format!(
            "{dropped} AND routine = 'stop-failing' AND attempts = 1"
        )),
        1
    );
    assert_eq!(
        runs("outcome = 'abandoned' AND error = 'the beat stopped before the run ended' AND routine LIKE 'stop-stuck-%'"),
        1
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("beat: 1 in-process run(s) had not ended at the stop"))
            .count(),
        1
    );
}

#[test]
fn default_worker_count_is_the_cpu_count() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap();
    assert_eq!(Config::default().worker_concurrency, cpus);
}
