//! The `burst` scenario: many routines due at once, on Redis or RabbitMQ,
//! against a plain publisher of the same messages (see `main.rs`).

use super::db::{seed, Database, Seed};
use super::measure::{cpu_of, Cpu};
use super::rabbit::{Rabbit, Sends};
use super::scenarios::{config, del, emit, llen, poll_until, redis, round, rss_mb};
use super::{Backend, Broker, Options};
use anyhow::bail;
use celery_diesel_kit::{Beat, BeatHandle, RoutineStore, Stats};
use chrono::{TimeDelta, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The beat's claim batch (`CLAIM_BATCH`, src/scheduler/claim.rs): the
/// RabbitMQ baseline publishes in batches of this size, as a claim does.
const CLAIM_BATCH: usize = 1_000;

/// A burst under way: `n` routines, all due now, and the beat started on
/// them before they fell due.
struct Burst {
    _db: Database,
    store: RoutineStore,
    /// The beat, until `until_all_in` stops it.
    beat: Option<BeatHandle>,
    /// How many routines fall due.
    n: usize,
    /// Resident memory after seeding, before the beat started.
    rss_before_mb: f64,
}

/// A burst that has all arrived: how long it took from the due time, the
/// CPU taken meanwhile, this process's memory then (before the bench reads
/// the messages back), and the beat's stats (it is stopped).
struct Arrival {
    took: Duration,
    cpu: Cpu,
    rss_after: f64,
    peak_rss: f64,
    stats: Stats,
    burst: Burst,
}

impl Burst {
    /// Waits up to 120 s for `count` (the messages in the broker, asked
    /// every `every`) to reach the burst's size, then stops the beat. An
    /// error if they did not all arrive.
    fn until_all_in(
        mut self,
        backend: Backend,
        o: &Options,
        every: Duration,
        mut count: impl FnMut() -> anyhow::Result<usize>,
    ) -> anyhow::Result<Arrival> {
        let n = self.n;
        let cpu0 = Cpu::now(backend, o.broker);
        let t0 = Instant::now();
        let all = poll_until(Duration::from_secs(120), every, || Ok(count()? >= n))?;
        let took = t0.elapsed();
        let cpu = cpu0.since(backend, o.broker);
        let (rss_after, peak_rss) = (rss_mb("VmRSS:"), rss_mb("VmHWM:"));
        let stats = match self.beat.take() {
            Some(beat) => beat.stop().stats,
            None => bail!("the burst's beat was stopped already"),
        };
        if !all {
            bail!(
                "burst {n} on {}: only {} of {n} messages in 120 s",
                backend.name(),
                count()?
            );
        }
        Ok(Arrival {
            took,
            cpu,
            rss_after,
            peak_rss,
            stats,
            burst: self,
        })
    }
}

/// Seeds `n` routines publishing to `queue`, all due at one instant a few
/// seconds ahead, starts the beat, and returns when they fall due.
fn start_burst(backend: Backend, n: usize, o: &Options, queue: &str) -> anyhow::Result<Burst> {
    let db = Database::create(backend, o, "burst")?;
    let store = db.store()?;
    // Due a few seconds after the beat starts, all at once. (Seeding 100k
    // rows takes up to 8 s on MariaDB here, each insert's triggers with
    // it: the margin leaves the beat time to start before the due time.)
    let due = Utc::now() + TimeDelta::seconds(if n > 20_000 { 20 } else { 2 });
    seed(&db, n, &Seed::AllAt(due), queue)?;
    let rss_before_mb = rss_mb("VmRSS:");
    let beat = Beat::builder(config(&db, o)).start()?;
    if Utc::now() >= due {
        bail!(
            "burst {n} on {}: seeding and starting the beat overran the due time by {:?}; \
             the measure would include the start",
            backend.name(),
            Utc::now() - due
        );
    }
    let wait = (due - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait);
    Ok(Burst {
        _db: db,
        store,
        beat: Some(beat),
        n,
        rss_before_mb,
    })
}

/// Runs the routines have made: each routine's `total_run_count`, summed.
fn rows_advanced(store: &RoutineStore) -> anyhow::Result<i64> {
    Ok(store
        .routines()?
        .iter()
        .map(|r| i64::from(r.total_run_count.unwrap_or(0)))
        .sum())
}

pub(crate) fn burst(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    match o.broker {
        Broker::Redis => burst_redis(backend, n, o),
        Broker::Amqp => burst_amqp(backend, n, o),
    }
}

/// The time until all `n` messages are in the Redis list, against a
/// pipelined LPUSH of the same messages by this process.
fn burst_redis(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let queue = format!("bench-burst-{}", std::process::id());
    let copy = format!("{queue}-lpush");
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue, &copy]);
    let burst = start_burst(backend, n, o, &queue)?;
    let Arrival {
        took,
        cpu,
        rss_after,
        peak_rss,
        stats,
        burst,
    } = burst.until_all_in(backend, o, Duration::from_millis(1), || {
        llen(&mut conn, &queue)
    })?;
    // The physical limit: the same messages, pushed again by this process
    // in plain pipelines.
    let mut messages: Vec<String> = Vec::with_capacity(n);
    for start in (0..n).step_by(10_000) {
        let chunk: Vec<String> = redis::cmd("LRANGE")
            .arg(&queue)
            .arg(start)
            .arg(start + 9_999)
            .query(&mut conn)?;
        messages.extend(chunk);
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let v: serde_json::Value = serde_json::from_str(m)?;
        *ids.entry(v["headers"]["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let t1 = Instant::now();
    for chunk in messages.chunks(1_000) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.cmd("LPUSH").arg(&copy).arg(m).ignore();
        }
        pipe.query::<()>(&mut conn)?;
    }
    let lpush = t1.elapsed();
    let advanced = rows_advanced(&burst.store)?;
    emit(json!({
        "scenario": "burst", "broker": "redis", "backend": backend.name(), "routines": n,
        "all_in_redis_s": round(took.as_secs_f64(), 3),
        "per_second": round(n as f64 / took.as_secs_f64(), 0),
        "plain_lpush_s": round(lpush.as_secs_f64(), 3),
        "speed_vs_plain_lpush": round(lpush.as_secs_f64() / took.as_secs_f64(), 3),
        "distinct_ids": ids.len(), "repeats": messages.len() - ids.len(),
        "rows_advanced": advanced, "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 1),
        "beat_cpu_s": round(cpu.beat.as_secs_f64(), 2), "database_cpu_s": round(cpu.database.as_secs_f64(), 2),
        "redis_cpu_s": round(cpu.broker.as_secs_f64(), 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 1),
        "rss_before_mb": round(burst.rss_before_mb, 1), "rss_after_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak_rss, 1),
    }));
    del(&mut conn, &[&queue, &copy]);
    Ok(())
}

/// The time until RabbitMQ holds all `n` messages (counted in the queue by
/// a passive declare; and until the last is confirmed, by the beat's
/// lateness), against a plain confirmed publisher of
/// the same messages by this process: one connection, one confirming
/// channel, batches of the beat's claim batch, each batch confirmed before
/// the next is sent; each batch handed to lapin at once (the baseline), and
/// again one `basic_publish` awaited after another, as the beat's loop
/// does (to tell the loop's cost from the rest of the claim's).
fn burst_amqp(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let queue = format!("bench-burst-{}", std::process::id());
    let copy = format!("{queue}-copy");
    let mut rabbit = Rabbit::connect(&o.amqp)?;
    rabbit.reset(&queue)?;
    rabbit.reset(&copy)?;
    let burst = start_burst(backend, n, o, &queue)?;
    // A passive declare costs RabbitMQ (and the bench) far more than LLEN
    // costs Redis, and the burst takes seconds: asked every 10 ms.
    let Arrival {
        took,
        cpu,
        rss_after,
        peak_rss,
        stats,
        burst,
    } = burst.until_all_in(backend, o, Duration::from_millis(10), || {
        rabbit.count(&queue)
    })?;
    // RabbitMQ counts a message in the queue before it confirms it (a
    // persistent message is confirmed once on disk): the beat's own
    // measure of its last confirm, from the due time, is the stricter one.
    let confirmed = stats.lateness.max;
    let messages = rabbit.take_all(&queue)?;
    let mut ids: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        *ids.entry(m.id()).or_default() += 1;
    }
    let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
    let rabbit_cpu0 = cpu_of(o.broker.process());
    let plain = rabbit.publish_confirmed(&copy, &messages, CLAIM_BATCH, Sends::Pipelined)?;
    let plain_rabbit_cpu = cpu_of(o.broker.process()).saturating_sub(rabbit_cpu0);
    copied(&mut rabbit, &copy, messages.len())?;
    rabbit.purge(&copy)?;
    let one_by_one = rabbit.publish_confirmed(&copy, &messages, CLAIM_BATCH, Sends::OneByOne)?;
    copied(&mut rabbit, &copy, messages.len())?;
    let advanced = rows_advanced(&burst.store)?;
    emit(json!({
        "scenario": "burst", "broker": "amqp", "backend": backend.name(), "routines": n,
        "all_in_rabbitmq_s": round(took.as_secs_f64(), 3),
        "per_second": round(n as f64 / took.as_secs_f64(), 0),
        "all_confirmed_s": round(confirmed.as_secs_f64(), 3),
        "plain_publisher_s": round(plain.as_secs_f64(), 3),
        "speed_vs_plain_publisher": round(plain.as_secs_f64() / took.as_secs_f64(), 3),
        "confirmed_speed_vs_plain_publisher": round(plain.as_secs_f64() / confirmed.as_secs_f64(), 3),
        "one_by_one_publisher_s": round(one_by_one.as_secs_f64(), 3),
        "speed_vs_one_by_one_publisher": round(one_by_one.as_secs_f64() / took.as_secs_f64(), 3),
        "plain_batch": CLAIM_BATCH,
        "body_bytes_mean": round(bytes as f64 / messages.len().max(1) as f64, 0),
        "distinct_ids": ids.len(), "repeats": messages.len() - ids.len(),
        "rows_advanced": advanced, "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 1),
        "beat_cpu_s": round(cpu.beat.as_secs_f64(), 2), "database_cpu_s": round(cpu.database.as_secs_f64(), 2),
        "rabbitmq_cpu_s": round(cpu.broker.as_secs_f64(), 2),
        "plain_rabbitmq_cpu_s": round(plain_rabbit_cpu.as_secs_f64(), 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 1),
        "rss_before_mb": round(burst.rss_before_mb, 1), "rss_after_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak_rss, 1),
    }));
    rabbit.delete(&queue)?;
    rabbit.delete(&copy)
}

/// Checks that the baseline's queue holds all `n` messages it published.
fn copied(rabbit: &mut Rabbit, copy: &str, n: usize) -> anyhow::Result<()> {
    let held = rabbit.count(copy)?;
    if held != n {
        bail!("the plain publisher's queue holds {held} of {n} messages");
    }
    Ok(())
}
