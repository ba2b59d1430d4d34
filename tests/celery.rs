//! Celery interop against real Redis and a real Python Celery worker.

mod common;

use celery_diesel_kit::{Beat, ManualBeat, Routine, Schedule};
use chrono::{DateTime, Utc};
use common::{
    at, body, celery_python, envelopes, every, holds_for, published_count, recorded_calls,
    redis_conn, redis_db, utc, wait_until, CeleryWorker, Proxy, Recorder, TestDb,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

const SEP: &str = "\x06\x16";

/// Everything a Celery test needs, or `None` when a service is missing.
fn setup(test: &str, redis: u8) -> Option<(PathBuf, String, TestDb)> {
    let python = celery_python(test)?;
    let broker = redis_db(test, redis)?;
    let db = TestDb::postgres(test)?;
    Some((python, broker, db))
}

fn manual(db: &TestDb, broker: &str, routines: Vec<Routine>) -> ManualBeat {
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.to_owned());
        c
    };
    Beat::builder(config)
        .routines(routines)
        .start_manual()
        .expect("start")
}

#[test]
fn routines_inserted_by_sql_run_on_a_python_celery_worker() {
    let test = "celery_sql_routines_run";
    let Some((python, broker, db)) = setup(test, 1) else {
        return;
    };
    let worker = CeleryWorker::start(&python, &broker, "celery");
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c
    };
    let beat = Beat::builder(config).start().unwrap();
    for (name, kwargs) in [
        ("a", r#"{"n": 1, "text": "é'\"x"}"#),
        ("b", r#"{"n": 2, "nested": {"k": [1, 2.5, null]}}"#),
        ("c", "{}"),
    ] {
        db.exec(&format!(
            "INSERT INTO routines (name, task, schedule, kwargs) VALUES ('{name}', 'tasks.record', '{{\"timedelta\": 1}}', '{}')",
            kwargs.replace('\'', "''")
        ));
    }
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            >= 6),
        "worker log:\n{}",
        worker.log()
    );
    beat.stop();
    let rows = db.store().routines().unwrap();
    let fired: i32 = rows.iter().map(|r| r.total_run_count.unwrap_or(0)).sum();
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            == fired as usize),
        "{} calls for {fired} fires:\n{}",
        recorded_calls(&broker).len(),
        worker.log()
    );
    let calls = recorded_calls(&broker);
    let ids: HashSet<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), calls.len(), "every run has its own id");
    for call in &calls {
        assert_eq!(call["task"], "tasks.record");
        assert_eq!(call["args"], json!([]));
        assert_eq!(call["delivery_info"]["routing_key"], "celery");
    }
    // Each routine's calls, by its kwargs: exactly as many as it fired.
    let mut by_kwargs: HashMap<String, usize> = HashMap::new();
    for call in &calls {
        *by_kwargs.entry(call["kwargs"].to_string()).or_default() += 1;
    }
    let fired_by = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.total_run_count)
            .unwrap_or(0) as usize
    };
    let expected: HashMap<String, usize> = [
        (json!({"n": 1, "text": "é'\"x"}), fired_by("a")),
        (
            json!({"n": 2, "nested": {"k": [1, 2.5, null]}}),
            fired_by("b"),
        ),
        (json!({}), fired_by("c")),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), *n))
    .collect();
    assert_eq!(by_kwargs, expected);
    assert!(expected.values().all(|n| *n >= 1), "{expected:?}");
}

#[test]
fn queue_and_exchange_routing_reach_a_worker_on_that_queue() {
    let test = "celery_queue_routing";
    let Some((python, broker, db)) = setup(test, 2) else {
        return;
    };
    let worker = CeleryWorker::start(&python, &broker, "only_here");
    let mut beat = manual(
        &db,
        &broker,
        vec![
            Routine::new("by queue", "tasks.record", every(10))
                .options(json!({"queue": "only_here"}))
                .kwargs(json!({"via": "queue"})),
            Routine::new("by exchange", "tasks.record", every(10))
                .options(json!({"exchange": "only_here", "routing_key": "only_here"}))
                .kwargs(json!({"via": "exchange"})),
            Routine::new("default queue", "tasks.record", every(10))
                .kwargs(json!({"via": "default"})),
        ],
    );
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 3);
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            >= 2),
        "{}",
        worker.log()
    );
    // No third call: the worker takes a message it is sent within
    // milliseconds, so none in half a second means the default-queue
    // message was not for it.
    assert!(
        holds_for(Duration::from_millis(500), || recorded_calls(&broker).len()
            == 2),
        "{}",
        worker.log()
    );
    let calls = recorded_calls(&broker);
    let via: HashSet<&str> = calls
        .iter()
        .map(|c| c["kwargs"]["via"].as_str().unwrap())
        .collect();
    assert_eq!(
        via,
        HashSet::from(["queue", "exchange"]),
        "only the routed messages reach the only_here worker"
    );
    let exchange_call = calls
        .iter()
        .find(|c| c["kwargs"]["via"] == "exchange")
        .unwrap();
    assert_eq!(exchange_call["delivery_info"]["exchange"], "only_here");
    assert_eq!(
        envelopes(&broker, "celery").len(),
        1,
        "the default-queue message waits for a worker on 'celery'"
    );
}

#[test]
fn priority_orders_a_backlog_as_celerys_own_messages_do() {
    let test = "celery_priority";
    let Some((python, broker, db)) = setup(test, 3) else {
        return;
    };
    let priorities = [9, 0, 5, 3, 0, 9, 6, 1];
    let routines = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Routine::new(format!("p{i}"), "tasks.record", every(10))
                .options(json!({"priority": p}))
                .kwargs(json!({"p": p}))
        })
        .collect();
    let mut beat = manual(&db, &broker, routines);
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, priorities.len());

    // Celery's own messages with the same priorities land in the same lists.
    let celery_broker = redis_db(test, 4).unwrap();
    for p in priorities {
        let spec = json!({"name": "tasks.record", "kwargs": {"p": p}, "task_id": uuid::Uuid::new_v4().to_string(), "options": {"priority": p}});
        let status = std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/send_task.py"
            ))
            .arg(&celery_broker)
            .arg(spec.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let lists = |url: &str| -> HashMap<String, Vec<i64>> {
        let mut conn = redis_conn(url);
        let keys: Vec<String> = redis::cmd("KEYS").arg("celery*").query(&mut conn).unwrap();
        keys.into_iter()
            .map(|k| {
                let mut ps: Vec<i64> = envelopes(url, &k)
                    .iter()
                    .map(|e| e["properties"]["priority"].as_i64().unwrap())
                    .collect();
                ps.sort();
                (k.replace(SEP, "|"), ps)
            })
            .collect()
    };
    let (ours, celerys) = (lists(&broker), lists(&celery_broker));
    assert_eq!(ours, celerys);
    assert_eq!(ours.len(), 4, "{ours:?}");

    // A worker drains the backlog highest priority (lowest number) first.
    let worker = CeleryWorker::start(&python, &broker, "celery");
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            == priorities.len()),
        "{}",
        worker.log()
    );
    let order: Vec<i64> = recorded_calls(&broker)
        .iter()
        .map(|c| c["kwargs"]["p"].as_i64().unwrap())
        .collect();
    let steps: Vec<i64> = order
        .iter()
        .map(|p| [0, 3, 6, 9].into_iter().rev().find(|s| s <= p).unwrap())
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "ran in order {order:?}"
    );
}

#[test]
fn an_expires_in_the_past_makes_the_worker_discard_the_message() {
    let test = "celery_expires";
    let Some((python, broker, db)) = setup(test, 5) else {
        return;
    };
    let mut beat = manual(
        &db,
        &broker,
        vec![
            Routine::new("expired", "tasks.record", every(10))
                .options(json!({"expires": "2020-01-01T00:00:00+00:00"}))
                .kwargs(json!({"which": "expired"})),
            Routine::new("fresh", "tasks.record", every(10))
                .options(json!({"expires": 3600}))
                .kwargs(json!({"which": "fresh"})),
        ],
    );
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 2);
    let queued = envelopes(&broker, "celery");
    let expired = queued
        .iter()
        .find(|e| body(e)[1]["which"] == "expired")
        .unwrap();
    let expired_id = expired["headers"]["id"].as_str().unwrap().to_owned();
    assert_eq!(expired["properties"]["expiration"], "0");
    let fresh = queued
        .iter()
        .find(|e| body(e)[1]["which"] == "fresh")
        .unwrap();
    let left: i64 = fresh["properties"]["expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // 3600 s less the moment between reading the clock for `expires` and
    // for the publish; a second covers a loaded machine.
    assert!((3_599_000..=3_600_000).contains(&left), "{left}");

    let worker = CeleryWorker::start(&python, &broker, "celery");
    let meta_key = format!("celery-task-meta-{expired_id}");
    let status = || -> Option<String> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(&meta_key)
            .query(&mut redis_conn(&broker))
            .unwrap();
        raw.map(|r| {
            serde_json::from_str::<Value>(&r).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            == 1
            && status().is_some()),
        "{}",
        worker.log()
    );
    assert_eq!(status().as_deref(), Some("REVOKED"));
    assert_eq!(recorded_calls(&broker)[0]["kwargs"]["which"], "fresh");
}

#[test]
fn a_run_claimed_again_is_pushed_once_within_the_window_and_with_its_id_after() {
    let test = "celery_same_id";
    let Some(broker) = redis_db(test, 6) else {
        return;
    };
    let db = TestDb::sqlite(test);
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c.broker_dedup_window = Duration::from_secs(1);
        c
    };
    let mut beat = Beat::builder(config)
        .routine(Routine::new("r", "tasks.record", every(10)))
        .start_manual()
        .unwrap();
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
    let ids = || -> Vec<String> {
        envelopes(&broker, "celery")
            .iter()
            .map(|e| e["headers"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = ids();
    assert_eq!(first.len(), 1);
    // Redis remembers the run for the window, 1 s, and no longer: the
    // marker's time to live is the window less the moments since the push.
    let marker = format!("_beat.sent.{}", at(10).timestamp());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&marker)
        .query(&mut redis_conn(&broker))
        .unwrap();
    assert!((800..=1000).contains(&ttl), "{marker} lives {ttl} ms");
    // What a crash (or a failed commit) between publishing and committing
    // leaves: the row still due at the time that was just published.
    let rewind = || {
        db.exec(&format!(
            "UPDATE routines SET next_run_at = {}, total_run_count = 0",
            db.timestamp(at(10))
        ))
    };
    rewind();
    assert_eq!(beat.tick(at(11)).unwrap().fired, 1, "claimed again");
    assert_eq!(
        ids(),
        first,
        "the same run is not pushed twice within the window"
    );
    // Beyond the window Redis has forgotten the run: pushed again, with its id.
    assert!(wait_until(Duration::from_secs(5), || {
        let remembered: bool = redis::cmd("SISMEMBER")
            .arg(&marker)
            .arg(&first[0])
            .query(&mut common::redis_conn(&broker))
            .unwrap();
        !remembered
    }));
    rewind();
    assert_eq!(beat.tick(at(12)).unwrap().fired, 1);
    assert_eq!(beat.tick(at(20)).unwrap().fired, 1);
    let all = ids();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0], all[1],
        "after the window: the same run, with its id"
    );
    assert_ne!(all[1], all[2], "the next run has its own");
}

#[test]
fn a_zoned_routines_message_carries_utc_times_as_celerys_own() {
    let test = "celery_zoned_eta";
    let Some(broker) = redis_db(test, 11) else {
        return;
    };
    let db = TestDb::sqlite(test);
    // 03:00 on the Chatham Islands (+13:45 in their summer) is 13:15 UTC
    // the day before; the message's eta and expires are UTC, as Celery's
    // beat writes them whatever the app's timezone.
    let chatham = Schedule::crontab("0", "3", "*", "*", "*")
        .unwrap()
        .in_timezone("Pacific/Chatham")
        .unwrap();
    let mut beat = manual(
        &db,
        &broker,
        vec![Routine::new("chatham", "tasks.record", chatham)
            .options(json!({"countdown": 30, "expires": 60}))],
    );
    beat.tick(utc("2030-01-01 00:00:00")).unwrap();
    let due = utc("2030-01-01 13:15:00");
    assert_eq!(beat.tick(due).unwrap().fired, 1);
    let sent = envelopes(&broker, "celery");
    assert_eq!(sent.len(), 1);
    let headers = &sent[0]["headers"];
    assert_eq!(headers["eta"], "2030-01-01T13:15:30+00:00");
    assert_eq!(headers["expires"], "2030-01-01T13:16:00+00:00");
    assert_eq!(
        headers["id"],
        celery_diesel_kit::task_id(&beat.store().routine("chatham").unwrap().unwrap().id, due)
    );
}

#[test]
fn a_broker_outage_loses_no_routine_and_doubles_none() {
    let test = "celery_broker_outage";
    let Some(direct) = redis_db(test, 7) else {
        return;
    };
    let proxy = Proxy::in_front_of(&direct);
    let broker = proxy.url(&direct);
    let db = TestDb::sqlite(test);
    let local = Recorder::new("local");
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c
    };
    let mut beat = Beat::builder(config)
        .task(local.clone())
        .routines((0..5).map(|i| Routine::new(format!("celery {i}"), "tasks.record", every(1))))
        .routine(Routine::new("in-process", "local", every(1)))
        .start_manual()
        .unwrap();
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(1)).unwrap().fired, 6);
    proxy.cut();
    // The pass at 2 s is the first to fail to publish, no sooner than this.
    let cut = std::time::Instant::now();
    for t in [2, 3, 4] {
        assert!(wait_until(Duration::from_secs(10), || beat
            .stats()
            .succeeded
            == (t - 1) as u64));
        let tick = beat.tick(at(t)).unwrap();
        assert_eq!(
            tick.fired, 1,
            "at {t}: only the in-process routine runs while Redis is away"
        );
    }
    // Each broker routine's run count and next run.
    let progress = |beat: &ManualBeat| -> Vec<(Option<i32>, Option<DateTime<Utc>>)> {
        (0..5)
            .map(|i| {
                let row = beat
                    .store()
                    .routine(&format!("celery {i}"))
                    .unwrap()
                    .unwrap();
                (row.total_run_count, row.next_run_at_utc())
            })
            .collect()
    };
    assert_eq!(
        progress(&beat),
        vec![(Some(1), Some(at(2))); 5],
        "not advanced while unpublished"
    );
    proxy.restore();
    let restored = std::time::Instant::now();
    // The broker is retried after its back-off; then each routine fires
    // once for everything it missed, and is back on its 1 s grid.
    assert!(wait_until(Duration::from_secs(10), || beat
        .stats()
        .succeeded
        == 4));
    assert!(
        wait_until(Duration::from_secs(30), || {
            beat.tick(at(5)).unwrap();
            envelopes(&direct, "celery").len() == 10
        }),
        "the routines never reached Redis again"
    );
    // The cut refused connections at once: at most three publishes failed
    // (one per pass at 2, 3 and 4), so the back-off was at most 0.25 +
    // 0.5 s, and the wait for the retry at most 1 s from the restore;
    // 1 s more covers a loaded machine. A back-off that ignored its cap or
    // a broker never retried until a later pass fails here.
    let took = restored.elapsed();
    assert!(took < Duration::from_secs(2), "back after {took:?}");
    // And not before the first back-off (0.25 s) from the first failure:
    // the passes at 3, 4 and 5 s left the broker alone until then.
    let since_cut = cut.elapsed();
    assert!(
        since_cut >= Duration::from_millis(250),
        "retried {since_cut:?} after the cut"
    );
    assert_eq!(progress(&beat), vec![(Some(2), Some(at(6))); 5]);
    let ids: HashSet<String> = envelopes(&direct, "celery")
        .iter()
        .map(|e| e["headers"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 10, "no message doubled");
    assert_eq!(beat.tick(at(5)).unwrap().fired, 0);
}

#[test]
fn our_message_matches_celerys_send_task_field_by_field() {
    message_matches_celerys("celery_message_compare", (8, 9), None);
}

/// As above, for a routine with positional args: the body's first element
/// and the `argsrepr` header (cut, as Celery cuts it, at 1024 characters)
/// are Celery's own.
#[test]
fn a_message_with_args_matches_celerys_send_task_field_by_field() {
    let args = json!(["daily", 3, 0.25, 1e16, null, true, false, "é ü 🎉", "it's \"quoted\"",
                      {"nested": [1, "two", {"k": null}]}, [], "lorem ipsum ".repeat(100)]);
    message_matches_celerys("celery_message_args", (15, 0), Some(args));
}

/// A routine's message (with `args`, if any) is Celery's `send_task` of the
/// same, field by field and byte for byte, and a real worker runs it with
/// everything in place. `redis`: the Redis databases of ours and of
/// Celery's.
fn message_matches_celerys(test: &str, redis: (u8, u8), args: Option<Value>) {
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(broker) = redis_db(test, redis.0) else {
        return;
    };
    let Some(theirs_broker) = redis_db(test, redis.1) else {
        return;
    };
    let db = TestDb::sqlite(test);
    // Long enough that Celery's kwargsrepr cuts it (at 1024 characters).
    let notes = "lorem ipsum dolor ".repeat(80);
    let kwargs = json!({"report": "daily", "to": ["ops@example.com"], "n": 3, "ratio": 0.25, "big": 1e16, "uni": "é ü 🎉", "quote": "it's", "notes": notes});
    let options = json!({"queue": "reports", "priority": 5, "expires": 60, "countdown": 3, "time_limit": 30, "soft_time_limit": 20,
                         "headers": {"x_trace": "abc"}});
    // An on-demand send builds the message a scheduled run does, at the
    // real time, so that both clients' `expires` can be compared.
    let mut routine = Routine::new("r", "tasks.record", every(3600))
        .kwargs(kwargs.clone())
        .options(options.clone());
    if let Some(args) = &args {
        routine = routine.args(args.clone());
    }
    let beat = manual(&db, &broker, vec![routine]);
    let sent = std::time::Instant::now();
    beat.send_now("r").unwrap();
    let key = format!("reports{SEP}3");
    let ours = envelopes(&broker, &key).pop().expect("our message");
    let id = ours["headers"]["id"].as_str().unwrap();

    let args = args.unwrap_or_else(|| json!([]));
    let spec = json!({"name": "tasks.record", "args": args, "kwargs": kwargs, "task_id": id, "options": options});
    let status = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/send_task.py"
        ))
        .arg(&theirs_broker)
        .arg(spec.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let apart = sent.elapsed();
    let theirs = envelopes(&theirs_broker, &key)
        .pop()
        .expect("Celery's message");

    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs), "envelope keys and order");
    assert_eq!(ours["body"], theirs["body"], "body, byte for byte");
    for field in ["content-encoding", "content-type"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    assert_eq!(
        keys(&ours["headers"]),
        keys(&theirs["headers"]),
        "header keys and order"
    );
    for (name, value) in ours["headers"].as_object().unwrap() {
        let other = &theirs["headers"][name];
        match name.as_str() {
            // gen<pid>@<host>: two processes on one host.
            "origin" => {
                let host = |v: &Value| v.as_str().unwrap().split_once('@').unwrap().1.to_owned();
                assert!(
                    value.as_str().unwrap().starts_with("gen") && host(value) == host(other),
                    "{value} vs {other}"
                );
            }
            // now + 60 s (expires) or + 3 s (eta), ours first, theirs
            // at most `apart` later (a second more for either's rounding).
            "expires" | "eta" => {
                let t = |v: &Value| DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
                let later = (t(other) - t(value)).num_milliseconds();
                assert!(
                    (-1000..=apart.as_millis() as i64 + 1000).contains(&later),
                    "{value} vs {other}, {apart:?} apart"
                );
                assert!(value.as_str().unwrap().ends_with("+00:00"));
            }
            // Celery 5.5's send_task sends false, 5.6 and later null:
            // both mean "store the result". We send 5.5's false.
            "ignore_result" => {
                assert_eq!(value, false);
                assert!(other == false || other.is_null(), "{other}");
            }
            _ => assert_eq!(value, other, "header {name}"),
        }
    }
    assert_eq!(
        keys(&ours["properties"]),
        keys(&theirs["properties"]),
        "property keys and order"
    );
    for (name, value) in ours["properties"].as_object().unwrap() {
        let other = &theirs["properties"][name];
        match name.as_str() {
            "reply_to" | "delivery_tag" => assert!(
                uuid::Uuid::parse_str(value.as_str().unwrap()).is_ok(),
                "{name}: {value}"
            ),
            "expiration" => assert_eq!(value, "60000", "ours is sent at once: {other}"),
            _ => assert_eq!(value, other, "property {name}"),
        }
    }
    // Byte for byte, once the values two clients cannot share are swapped.
    let raw = |url: &str| -> String {
        let all: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query(&mut redis_conn(url))
            .unwrap();
        all.into_iter().next().unwrap()
    };
    let mut theirs_raw = raw(&theirs_broker);
    for (path, field) in [
        ("headers", "origin"),
        ("headers", "expires"),
        ("headers", "eta"),
        ("properties", "reply_to"),
        ("properties", "delivery_tag"),
        ("properties", "expiration"),
    ] {
        theirs_raw = theirs_raw.replace(
            &theirs[path][field].to_string(),
            &ours[path][field].to_string(),
        );
    }
    theirs_raw = theirs_raw.replace("\"ignore_result\": null", "\"ignore_result\": false");
    assert_eq!(raw(&broker), theirs_raw);

    // And a worker runs ours with everything in place, at its eta: 3 s
    // after the send, not when it reads the message (a worker is ready in
    // about a second), or at once if it was ready only later; 2 s more
    // covers a loaded machine.
    let worker = CeleryWorker::start(&python, &broker, "reports");
    let due = sent.elapsed().max(Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&broker).len()
            == 1),
        "{}",
        worker.log()
    );
    let ran = sent.elapsed();
    assert!(
        ran >= Duration::from_secs(3) && ran < due + Duration::from_secs(2),
        "ran {ran:?} after the send, due {due:?}"
    );
    let call = &recorded_calls(&broker)[0];
    assert_eq!(
        (
            &call["args"],
            &call["kwargs"],
            &call["timelimit"],
            &call["x_trace"]
        ),
        (&args, &kwargs, &json!([30, 20]), &json!("abc"))
    );
}

#[test]
fn send_now_runs_a_routine_outside_its_schedule() {
    let test = "celery_send_now";
    let Some(broker) = redis_db(test, 10) else {
        return;
    };
    let db = TestDb::sqlite(test);
    let local = Recorder::new("local");
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c
    };
    let beat = Beat::builder(config)
        .task(local.clone())
        .routine(Routine::new("remote", "tasks.record", every(3600)))
        .routine(Routine::new("here", "local", every(3600)))
        .start_manual()
        .unwrap();
    let id = beat.send_now("remote").unwrap();
    let queued = envelopes(&broker, "celery");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["headers"]["id"], id.as_str());
    beat.send_now("here").unwrap();
    assert!(wait_until(Duration::from_secs(10), || local.count() == 1));
    assert!(beat
        .send_now("nope")
        .unwrap_err()
        .to_string()
        .contains("routine nope: no such routine"));
    let row = beat.store().routine("remote").unwrap().unwrap();
    assert_eq!(
        row.total_run_count,
        Some(0),
        "an on-demand run does not advance the routine"
    );
}

#[test]
fn without_a_broker_an_unknown_task_is_an_error_for_that_routine_only() {
    let db = TestDb::sqlite("celery_no_broker");
    let local = Recorder::new("local");
    let mut beat = Beat::builder(db.config())
        .task(local.clone())
        .routine(Routine::new("remote", "tasks.record", every(10)))
        .routine(Routine::new("here", "local", every(10)))
        .start_manual()
        .unwrap();
    let tick = beat.tick(at(0)).unwrap();
    assert_eq!((tick.planned, tick.invalid), (2, 1));
    let error = beat
        .store()
        .routine("remote")
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    assert!(
        error.contains("unknown task \"tasks.record\"") && error.contains("no broker_url"),
        "{error}"
    );
    assert_eq!(beat.tick(at(10)).unwrap().fired, 1);
}

/// kombu's direct exchange on Redis: a message goes to every queue bound
/// with its routing key (`_kombu.binding.<exchange>`, as workers declare
/// them), and one that matches no binding goes nowhere, as Celery's own
/// client drops it; the beat says so, naming the routine and the task id.
#[test]
fn an_exchange_reaches_every_queue_bound_with_its_key_and_a_message_bound_to_none_is_logged() {
    // Installed before the beat exists, so that nothing it logs is missed.
    let log = common::captured_log();
    let test = "celery_exchange_bindings";
    let Some(broker) = redis_db(test, 14) else {
        return;
    };
    let binding = |key: &str, queue: &str| format!("{key}{SEP}{SEP}{queue}");
    let _: () = redis::cmd("SADD")
        .arg("_kombu.binding.fan")
        .arg(binding("k", "q1"))
        .arg(binding("k", "q2"))
        .arg(binding("other", "q3"))
        .query(&mut redis_conn(&broker))
        .unwrap();
    let db = TestDb::sqlite(test);
    let mut beat = manual(
        &db,
        &broker,
        vec![
            Routine::new("fan out", "tasks.record", every(10))
                .options(json!({"exchange": "fan", "routing_key": "k"})),
            Routine::new("bound to none", "tasks.record", every(10))
                .options(json!({"exchange": "fan", "routing_key": "nobody"})),
        ],
    );
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 2);
    let id = |routine: &str| {
        celery_diesel_kit::task_id(&beat.store().routine(routine).unwrap().unwrap().id, at(10))
    };
    let ids_in = |queue: &str| -> Vec<String> {
        envelopes(&broker, queue)
            .iter()
            .map(|e| e["headers"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_in("q1"), [id("fan out")]);
    assert_eq!(ids_in("q2"), [id("fan out")]);
    assert_eq!(ids_in("q3"), Vec::<String>::new(), "another routing key");
    // Nothing else anywhere: every list in the database is q1 or q2.
    let mut conn = redis_conn(&broker);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let lists: Vec<&String> = keys
        .iter()
        .filter(|k| {
            redis::cmd("TYPE")
                .arg(k.as_str())
                .query::<String>(&mut conn)
                .unwrap()
                == "list"
        })
        .collect();
    assert_eq!(lists.len(), 2, "{keys:?}");
    let lines = |routine: &str| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("routine {routine}: no queue is bound to")))
            .cloned()
            .collect()
    };
    let dropped = lines("bound to none");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(
        dropped[0].starts_with("ERROR ")
            && dropped[0].contains("Celery would drop message")
            && dropped[0].contains(&id("bound to none")),
        "{}",
        dropped[0]
    );
    assert_eq!(lines("fan out"), Vec::<String>::new());
}

/// Options Celery's beat does not pass on to its message (a `shadow`
/// name, a `serializer`) leave no trace in ours, and the beat says which,
/// once per routine, when it reads the row.
#[test]
fn options_celerys_beat_does_not_pass_on_are_left_out_with_one_warning() {
    // Installed before the beat exists, so that nothing it logs is missed.
    let log = common::captured_log();
    let test = "celery_ignored_options";
    let Some((broker, queue)) = common::redis_queue(test) else {
        return;
    };
    let db = TestDb::sqlite(test);
    let mut beat = manual(
        &db,
        &broker,
        vec![
            Routine::new("with-ignored", "tasks.record", every(10))
                .options(json!({"queue": queue, "shadow": "alias", "serializer": "pickle"})),
            Routine::new("without-ignored", "tasks.record", every(10))
                .options(json!({"queue": queue})),
        ],
    );
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.tick(at(10)).unwrap().fired, 2);
    assert_eq!(beat.tick(at(20)).unwrap().fired, 2);
    let sent = envelopes(&broker, &queue);
    assert_eq!(sent.len(), 4);
    for message in &sent {
        assert_eq!(message["headers"]["shadow"], Value::Null, "{message}");
        assert_eq!(message["content-type"], "application/json");
    }
    let lines = |routine: &str| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("routine {routine}: ignoring options")))
            .cloned()
            .collect()
    };
    assert_eq!(
        lines("with-ignored"),
        ["WARN routine with-ignored: ignoring options Celery's beat does not pass on: shadow, serializer"],
        "one warning for three passes, naming both"
    );
    assert_eq!(lines("without-ignored"), Vec::<String>::new());
}

/// `stats().lateness` (and `beat_lateness_seconds`): from a run's due time
/// to its hand-over, a message in Redis or a job in the worker queue, on
/// the beat's clock, for both kinds of run.
#[test]
fn lateness_runs_from_the_due_time_to_the_hand_over_on_the_beats_clock() {
    let test = "celery_lateness";
    let Some((broker, queue)) = common::redis_queue(test) else {
        return;
    };
    let db = TestDb::sqlite(test);
    let clock = common::TestClock::at(at(0));
    let local = Recorder::new("local");
    let config = {
        let mut c = db.config();
        c.broker_url = Some(broker.clone());
        c
    };
    let mut beat = Beat::builder(config)
        .clock(clock.clone())
        .task(local.clone())
        .routine(Routine::new("remote", "tasks.record", every(10)).options(json!({"queue": queue})))
        .routine(Routine::new("here", "local", every(10)))
        .start_manual()
        .unwrap();
    beat.tick(at(0)).unwrap();
    assert_eq!(beat.stats().lateness.count, 0);
    // The histogram is exact to 1%.
    let close = |d: Duration, secs: f64| (d.as_secs_f64() - secs).abs() <= secs * 0.01;
    // Both were due at 10 s and are handed over at 12 s, then at 20 s and
    // 25 s: 2 s late twice, 5 s late twice.
    for (n, (t, late)) in [(12, 2.0), (25, 5.0)].into_iter().enumerate() {
        clock.set(at(t));
        assert_eq!(beat.tick(at(t)).unwrap().fired, 2, "at {t}");
        let l = beat.stats().lateness;
        assert!(close(l.max, late), "at {t}: {l:?}");
        // An in-process routine is not fired again while its run is in
        // flight: the next tick waits for this one to have ended (a slow
        // worker thread would otherwise make it fire once, not twice).
        let ran = n as u64 + 1;
        assert!(
            wait_until(Duration::from_secs(10), || beat.stats().succeeded == ran),
            "at {t}: the local run never ended: {:?}",
            beat.stats()
        );
    }
    let l = beat.stats().lateness;
    assert_eq!(l.count, 4, "{l:?}");
    assert!(close(l.p50, 2.0), "{l:?}");
    assert_eq!(published_count(&broker, &queue), 2);
    assert_eq!(local.count(), 2);
}
