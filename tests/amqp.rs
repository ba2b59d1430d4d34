//! RabbitMQ: our messages against Celery's own over py-amqp, on the real
//! server, each test in virtual hosts of its own.

mod common;

use celery_diesel_kit::ops::{Operator, Sent};
use celery_diesel_kit::{Beat, Routine};
use chrono::DateTime;
use common::kit::{kit_ddl, kit_insert_row};
use common::rabbit::{rabbit_vhost, take_messages};
use common::{
    celery_python, every, recorded_calls, redis_db, wait_until, CeleryWorker, Kind, TestDb,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

backend_tests! {
    fn routines_inserted_by_sql_run_on_a_celery_worker_over_rabbitmq(db) {
        routines_inserted_by_sql_run_on_a_celery_worker(db);
    }
}

/// Routines inserted by plain SQL run on a real Celery worker consuming
/// from RabbitMQ (py-amqp), with their kwargs, on their queues; an
/// inactive row never runs. Each routine's calls equal its
/// `total_run_count`, and every call has its own id. The Python kit's
/// table, with its rows, is adopted; a row the kit inserts while the beat
/// serves runs too. On each backend.
fn routines_inserted_by_sql_run_on_a_celery_worker(db: &TestDb) {
    let test = "amqp_sql_routines_run";
    let Some(python) = celery_python(test) else {
        return;
    };
    // A virtual host, and a Redis database for the worker's calls, per
    // backend: the three run at once.
    let (name, redis) = match db.kind {
        Kind::Sqlite => ("sql_routines_sqlite", 1),
        Kind::Postgres => ("sql_routines_pg", 15),
        Kind::Mysql => ("sql_routines_my", 2),
    };
    let Some(vhost) = rabbit_vhost(test, name) else {
        return;
    };
    let Some(calls) = redis_db(test, redis) else {
        return;
    };
    // The Python kit's table, with the kit's rows (one inactive), adopted
    // by the beat at its start.
    db.exec(kit_ddl(db.kind));
    for (name, kwargs, active) in [
        ("a", r#"{"n": 1, "text": "é'\"x"}"#, true),
        ("off", r#"{"n": 3}"#, false),
    ] {
        let schedule = r#"{"timedelta": 1}"#;
        db.exec(&kit_insert_row(
            db.kind,
            name,
            "tasks.record",
            schedule,
            0,
            kwargs,
            "{}",
            active,
        ));
    }
    let worker = CeleryWorker::start_recording_in(&python, &vhost.url(), "celery,reports", &calls);
    let mut config = db.config();
    config.broker_url = Some(vhost.url());
    let beat = Beat::builder(config).start().unwrap();
    // The kit's INSERT on the adopted table, while the beat serves: a
    // routine for the queue `reports`.
    db.exec(&kit_insert_row(
        db.kind,
        "b",
        "tasks.record",
        r#"{"timedelta": 1}"#,
        0,
        r#"{"n": 2, "nested": {"k": [1, 2.5, null]}}"#,
        r#"{"queue": "reports"}"#,
        true,
    ));
    assert!(
        wait_until(Duration::from_secs(30), || recorded_calls(&calls).len()
            >= 4),
        "worker log:\n{}",
        worker.log()
    );
    beat.stop();
    let rows = db.store().routines().unwrap();
    let fired_by = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.total_run_count)
            .unwrap_or(0) as usize
    };
    let fired = fired_by("a") + fired_by("b");
    // Generous: once, right after the whole suite, the worker (solo pool,
    // py-amqp) took its messages in bursts 10 s apart, 14 of 22 in 30 s;
    // the beat had published and RabbitMQ confirmed them all.
    assert!(
        wait_until(Duration::from_secs(120), || recorded_calls(&calls).len()
            == fired),
        "{} calls for {fired} fires:\n{}",
        recorded_calls(&calls).len(),
        worker.log()
    );
    let seen = recorded_calls(&calls);
    let ids: HashSet<&str> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "every run has its own id");
    let mut by_kwargs: HashMap<String, (usize, HashSet<String>)> = HashMap::new();
    for call in &seen {
        assert_eq!(
            (&call["task"], &call["args"]),
            (&json!("tasks.record"), &json!([]))
        );
        let entry = by_kwargs.entry(call["kwargs"].to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(
            call["delivery_info"]["routing_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let expected: HashMap<String, (usize, HashSet<String>)> = [
        (json!({"n": 1, "text": "é'\"x"}), fired_by("a"), "celery"),
        (
            json!({"n": 2, "nested": {"k": [1, 2.5, null]}}),
            fired_by("b"),
            "reports",
        ),
    ]
    .into_iter()
    .map(|(k, n, queue)| (k.to_string(), (n, HashSet::from([queue.to_owned()]))))
    .collect();
    assert_eq!(by_kwargs, expected);
    assert!(
        fired_by("a") >= 1 && fired_by("b") >= 1 && fired_by("off") == 0,
        "{rows:?}"
    );
}

/// `app.send_task` over py-amqp and our `send_now` of the same routine,
/// each in a virtual host of its own, taken back with `basic_get` and
/// compared field by field: where it goes (exchange, routing key), every
/// property and header with the type py-amqp decodes it to, and the body
/// byte for byte. The values two clients cannot share (origin, reply_to,
/// the times taken from each one's clock) are checked for their form.
#[test]
fn our_message_matches_celerys_send_task_field_by_field_over_amqp() {
    let test = "amqp_message_compare";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(ours_vhost) = rabbit_vhost(test, "compare_ours") else {
        return;
    };
    let Some(theirs_vhost) = rabbit_vhost(test, "compare_theirs") else {
        return;
    };
    let db = TestDb::sqlite(test);
    let kwargs = json!({"report": "daily", "to": ["ops@example.com"], "n": 3, "big": 4_294_967_296_i64,
                        "ratio": 0.25, "uni": "é ü 🎉", "none": null, "yes": true});
    let options = json!({"queue": "reports", "priority": 5, "expires": 60, "countdown": 3,
                         "time_limit": 30, "soft_time_limit": 20, "headers": {"x_trace": "abc"}});
    let mut config = db.config();
    config.broker_url = Some(ours_vhost.url());
    let beat = Beat::builder(config)
        .routine(
            Routine::new("r", "tasks.record", every(3600))
                .kwargs(kwargs.clone())
                .options(options.clone()),
        )
        .start_manual()
        .unwrap();
    let sent = std::time::Instant::now();
    let id = beat.send_now("r").unwrap();

    let spec = json!({"name": "tasks.record", "kwargs": kwargs, "task_id": id, "options": options});
    let status = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/send_task.py"
        ))
        .arg(theirs_vhost.url())
        .arg(spec.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let apart = sent.elapsed();

    let [ours] = <[Value; 1]>::try_from(take_messages(&python, &ours_vhost.url(), "reports"))
        .expect("our one message in 'reports'");
    let [theirs] = <[Value; 1]>::try_from(take_messages(&python, &theirs_vhost.url(), "reports"))
        .expect("Celery's one message in 'reports'");

    assert_eq!(ours["body"], theirs["body"], "body, byte for byte");
    for field in ["exchange", "routing_key"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&ours["properties"]),
        keys(&theirs["properties"]),
        "properties"
    );
    for (name, value) in ours["properties"].as_object().unwrap() {
        let other = &theirs["properties"][name];
        match name.as_str() {
            "reply_to" => {
                assert_eq!(value[0], other[0], "{name}'s type");
                assert!(
                    uuid::Uuid::parse_str(value[1].as_str().unwrap()).is_ok(),
                    "{value}"
                );
            }
            // Celery counts down from its own send: at most `apart` less.
            "expiration" => {
                let ms = |v: &Value| v[1].as_str().unwrap().parse::<i64>().unwrap();
                assert_eq!(value[0], "str");
                assert!(
                    (0..=apart.as_millis() as i64 + 1000).contains(&(ms(value) - ms(other))),
                    "{value} vs {other}"
                );
            }
            _ => assert_eq!(value, other, "property {name}"),
        }
    }
    assert_eq!(
        keys(&ours["headers"]),
        keys(&theirs["headers"]),
        "header names"
    );
    for (name, value) in ours["headers"].as_object().unwrap() {
        let other = &theirs["headers"][name];
        match name.as_str() {
            "origin" => {
                let host = |v: &Value| v[1].as_str().unwrap().split_once('@').unwrap().1.to_owned();
                assert!(
                    value[1].as_str().unwrap().starts_with("gen") && host(value) == host(other),
                    "{value} vs {other}"
                );
            }
            "expires" | "eta" => {
                let t = |v: &Value| DateTime::parse_from_rfc3339(v[1].as_str().unwrap()).unwrap();
                let later = (t(other) - t(value)).num_milliseconds();
                assert!(
                    (-1000..=apart.as_millis() as i64 + 1000).contains(&later),
                    "{value} vs {other}"
                );
            }
            // Celery 5.5 sends false, 5.6 and later null (see celery.rs).
            "ignore_result" => {
                assert_eq!(value, &json!(["bool", false]));
                assert!(
                    other == &json!(["bool", false]) || other == &json!(["NoneType", null]),
                    "{other}"
                );
            }
            _ => assert_eq!(value, other, "header {name}"),
        }
    }
}

/// RabbitMQ cut through the test's proxy: while it is away only the
/// in-process routine runs and the broker routines stay due, not
/// advanced; once it is back each fires once for what it missed, and
/// exactly those messages are in the queue.
#[test]
fn a_rabbitmq_outage_loses_no_routine_and_doubles_none() {
    let test = "amqp_outage";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(vhost) = rabbit_vhost(test, "outage") else {
        return;
    };
    let proxy = common::Proxy::in_front_of(&vhost.url());
    let db = TestDb::sqlite(test);
    let local = common::Recorder::new("local");
    let mut config = db.config();
    config.broker_url = Some(proxy.url(&vhost.url()));
    let mut beat = Beat::builder(config)
        .task(local.clone())
        .routines((0..3).map(|i| Routine::new(format!("celery {i}"), "tasks.record", every(1))))
        .routine(Routine::new("in-process", "local", every(1)))
        .start_manual()
        .unwrap();
    beat.tick(common::at(0)).unwrap();
    assert_eq!(beat.tick(common::at(1)).unwrap().fired, 4);
    proxy.cut();
    for t in [2, 3, 4] {
        assert!(wait_until(Duration::from_secs(10), || beat
            .stats()
            .succeeded
            == (t - 1) as u64));
        let tick = beat.tick(common::at(t)).unwrap();
        assert_eq!(
            tick.fired, 1,
            "at {t}: only the in-process routine runs while RabbitMQ is away"
        );
    }
    let progress = |beat: &celery_diesel_kit::ManualBeat| -> Vec<Option<i32>> {
        (0..3)
            .map(|i| {
                beat.store()
                    .routine(&format!("celery {i}"))
                    .unwrap()
                    .unwrap()
                    .total_run_count
            })
            .collect()
    };
    assert_eq!(
        progress(&beat),
        vec![Some(1); 3],
        "not advanced while unpublished"
    );
    proxy.restore();
    assert!(
        wait_until(Duration::from_secs(30), || {
            beat.tick(common::at(5)).unwrap();
            progress(&beat) == vec![Some(2); 3]
        }),
        "the routines never reached RabbitMQ again: {:?}",
        progress(&beat)
    );
    let messages = take_messages(&python, &vhost.url(), "celery");
    assert_eq!(messages.len(), 6, "two runs each, none twice");
    let ids: HashSet<&str> = messages
        .iter()
        .map(|m| m["properties"]["correlation_id"][1].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
}

/// The routine tags (kwargs `r`) of messages, in the order taken.
fn tags(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
            body[1]["r"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Routing as kombu routes, on queues and exchanges the user declared:
/// priorities honoured by a queue with `x-max-priority` (which exists
/// with other arguments than the beat's own declare: it is used as it
/// is), a topic and a fanout exchange; and a routine whose exchange does
/// not exist is refused alone, every tick: it moves on with the reason as
/// its `last_error`, the rest of each batch is published, and sending it
/// on demand (`send_now`, and `beat send` from its own process) fails
/// naming the routine and the exchange.
#[test]
fn exchanges_route_as_kombu_routes_and_a_missing_one_refuses_its_routine_alone() {
    let test = "amqp_routing";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(vhost) = rabbit_vhost(test, "routing") else {
        return;
    };
    let url = vhost.url();
    common::rabbit::declare(
        &python,
        &url,
        &[
            "queue:urgent:10",
            "exchange:events:topic",
            "bind:daily:events:report.*",
            "exchange:fan:fanout",
            "bind:fan_a:fan:",
            "bind:fan_b:fan:",
        ],
    );
    let db = TestDb::sqlite(test);
    let mut config = db.config();
    config.broker_url = Some(url.clone());
    let routine = |name: &str, options: Value| {
        Routine::new(name, "tasks.record", every(1))
            .kwargs(json!({ "r": name }))
            .options(options)
    };
    let mut beat = Beat::builder(config.clone())
        .routine(routine("p1", json!({"queue": "urgent", "priority": 1})))
        .routine(routine("p9", json!({"queue": "urgent", "priority": 9})))
        .routine(routine("p5", json!({"queue": "urgent", "priority": 5})))
        .routine(routine(
            "topic",
            json!({"exchange": "events", "routing_key": "report.daily"}),
        ))
        .routine(routine(
            "fanout",
            json!({"exchange": "fan", "routing_key": "any"}),
        ))
        .routine(routine(
            "lost",
            json!({"exchange": "nope", "routing_key": "x"}),
        ))
        .start_manual()
        .unwrap();
    beat.tick(common::at(0)).unwrap();
    for t in [1, 2] {
        let tick = beat.tick(common::at(t)).unwrap();
        assert_eq!((tick.fired, tick.refused), (5, 1), "at {t}: {tick:?}");
    }
    let rows = beat.store().routines().unwrap();
    for row in &rows {
        assert_eq!(row.total_run_count, Some(2), "{}: moved on twice", row.name);
        if row.name == "lost" {
            let error = row.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains(r#"exchange "nope" does not exist"#) && error.contains("NOT_FOUND"),
                "{error}"
            );
        } else {
            assert_eq!(row.last_error, None, "{}", row.name);
        }
    }
    assert_eq!(beat.stats().refused, 2);
    let refused = beat.send_now("lost").unwrap_err().to_string();
    assert!(
        refused.contains("lost") && refused.contains(r#"exchange "nope" does not exist"#),
        "{refused}"
    );
    // `beat send` publishes from its own process: the same refusal, and a
    // run of a routine that can go is in its queue with the others.
    let operator = Operator::connect(config).unwrap();
    let send = |name: &str| {
        operator.send(
            &common::tester(),
            name,
            chrono::Utc::now(),
            Duration::from_secs(5),
        )
    };
    let refused = send("lost").unwrap_err().to_string();
    assert!(
        refused.contains("lost") && refused.contains(r#"exchange "nope" does not exist"#),
        "{refused}"
    );
    assert!(matches!(send("p1"), Ok(Sent::Published { .. })));

    let urgent = take_messages(&python, &url, "urgent");
    assert_eq!(
        tags(&urgent),
        ["p9", "p9", "p5", "p5", "p1", "p1", "p1"],
        "taken by priority, then in order"
    );
    let daily = take_messages(&python, &url, "daily");
    assert_eq!(tags(&daily), ["topic", "topic"]);
    assert_eq!(
        (
            daily[0]["exchange"].as_str(),
            daily[0]["routing_key"].as_str()
        ),
        (Some("events"), Some("report.daily"))
    );
    for queue in ["fan_a", "fan_b"] {
        assert_eq!(
            tags(&take_messages(&python, &url, queue)),
            ["fanout", "fanout"]
        );
    }
    // Celery declares its default queue for a message sent to an exchange
    // by name; nothing reaches it.
    assert_eq!(take_messages(&python, &url, "celery").len(), 0);
}

/// RabbitMQ's passwords stay out of every log line, error and health
/// report: a beat whose password RabbitMQ refuses (every line an outage
/// logs, at debug), one whose server is away, and URLs that cannot be
/// read, from the binary and from the library.
#[test]
fn no_rabbitmq_password_appears_in_any_log_line_or_error() {
    let test = "amqp_secrets";
    let Some(vhost) = rabbit_vhost(test, "secrets") else {
        return;
    };
    const SECRET: &str = "Sup3rS3cretPw";
    let db = TestDb::sqlite(test);
    db.store();
    db.exec(r#"INSERT INTO routines (name, task, schedule) VALUES ('remote', 'tasks.record', '{"timedelta": 1}')"#);
    let refused = vhost
        .url()
        .replacen("guest:guest@", &format!("guest:{SECRET}@"), 1);
    let away = format!("amqp://guest:{SECRET}@127.0.0.1:1/x");
    let mut output = String::new();
    for broker in [&refused, &away] {
        let mut beat = common::BeatProcess::start(&[
            ("SCHEDULER_DB_URI", db.url.as_str()),
            ("CELERY_BROKER_URL", broker.as_str()),
            ("RUST_LOG", "debug"),
        ]);
        assert!(
            beat.logs_within(Duration::from_secs(30), "broker unavailable"),
            "{}",
            beat.log()
        );
        assert!(beat.terminate(Duration::from_secs(30)));
        output.push_str(&beat.log());
    }
    // The library's health report, during the refusal.
    let mut config = db.config();
    config.broker_url = Some(refused.clone());
    let beat = Beat::builder(config.clone()).start().unwrap();
    assert!(wait_until(Duration::from_secs(30), || beat
        .monitor()
        .health()
        .broker_up
        == Some(false)));
    output.push_str(&format!("{:?}", beat.monitor().health()));
    beat.stop();
    output.push_str(&format!("{config:?}"));
    // URLs that cannot be read: errors at start.
    for url in [
        format!("amqp://guest:{SECRET}@127.0.0.1:99999/"),
        format!("amqps://guest:{SECRET}@host/a;amqp://guest:{SECRET}@other/"),
        format!("pyamqp://guest:{SECRET}@host:port/"),
    ] {
        let mut failing = common::BeatProcess::start(&[
            ("SCHEDULER_DB_URI", db.url.as_str()),
            ("CELERY_BROKER_URL", url.as_str()),
            ("RUST_LOG", "debug"),
        ]);
        assert!(
            failing.wait_exit(Duration::from_secs(30)).is_some(),
            "{}",
            failing.log()
        );
        output.push_str(&failing.log());
        let mut config = db.config();
        config.broker_url = Some(url);
        output.push_str(&format!("{:?}", Beat::builder(config).start().err()));
    }
    common::log::assert_redacted(&output, SECRET);
}

/// A claim that published its run but then failed to commit (here the
/// database refuses the advance) leaves the routine due; claimed again,
/// the run is not published a second time: RabbitMQ holds it once, with
/// its task id. (RabbitMQ cannot drop a repeated id as Redis does; the
/// beat remembers what it published and did not commit.)
#[test]
fn a_run_published_by_a_claim_that_failed_to_commit_is_not_published_again() {
    let test = "amqp_not_committed";
    let Some(python) = celery_python(test) else {
        return;
    };
    let Some(vhost) = rabbit_vhost(test, "not_committed") else {
        return;
    };
    let db = TestDb::sqlite(test);
    let mut config = db.config();
    config.broker_url = Some(vhost.url());
    let mut beat = Beat::builder(config)
        .routine(Routine::new("r", "tasks.record", every(60)).kwargs(json!({"r": "r"})))
        .start_manual()
        .unwrap();
    beat.tick(common::at(0)).unwrap();
    let runs = |beat: &celery_diesel_kit::ManualBeat| {
        beat.store()
            .routine("r")
            .unwrap()
            .unwrap()
            .total_run_count
            .unwrap_or(0)
    };
    db.exec(
        "CREATE TRIGGER refuse_advance BEFORE UPDATE OF total_run_count ON routines \
         BEGIN SELECT RAISE(ABORT, 'the test refuses the advance'); END",
    );
    let failed = beat.tick(common::at(60));
    assert_eq!(runs(&beat), 0, "not advanced: {failed:?}");
    db.exec("DROP TRIGGER refuse_advance");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let _ = beat.tick(common::at(61));
            runs(&beat) == 1
        }),
        "the routine never advanced"
    );
    let messages = take_messages(&python, &vhost.url(), "celery");
    assert_eq!(tags(&messages), ["r"], "published once");
}
