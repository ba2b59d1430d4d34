//! The scenarios, each measured on a fresh database and printed as one
//! JSON line: `scale`, `burst`, `steady`, `edit` (see `main.rs`), with
//! Redis or RabbitMQ as broker (`--broker`).

use super::common::web;
use super::db::{seed, Database, Seed};
use super::measure::{cpu_time, Cpu, Drain, Drained};
use super::rabbit::{self, Rabbit};
use super::{Backend, Broker, Options};
use anyhow::{bail, Context};
use celery_diesel_kit::{task_id, Beat, BeatHandle, Config, HttpServer};
use chrono::{TimeDelta, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn config(db: &Database, o: &Options) -> Config {
    let mut config = Config::default();
    config.scheduler_db_uri = db.url.clone();
    config.broker_url = Some(match o.broker {
        Broker::Redis => o.redis.clone(),
        Broker::Amqp => o.amqp.clone(),
    });
    config.shutdown_timeout = Duration::from_secs(10);
    config.history = o.history;
    config
}

pub(crate) fn redis(o: &Options) -> anyhow::Result<redis::Connection> {
    Ok(redis::Client::open(o.redis.as_str())?.get_connection()?)
}

pub(crate) fn llen(conn: &mut redis::Connection, key: &str) -> anyhow::Result<usize> {
    Ok(redis::cmd("LLEN").arg(key).query(conn)?)
}

pub(crate) fn del(conn: &mut redis::Connection, keys: &[&str]) {
    for key in keys {
        let _ = redis::cmd("DEL").arg(*key).query::<()>(conn);
        let _ = redis::cmd("DEL")
            .arg(format!("_kombu.binding.{key}"))
            .query::<()>(conn);
    }
}

/// The bench's own connection to the broker under measure.
pub(crate) enum Queues {
    Redis(redis::Connection),
    Amqp(Box<Rabbit>),
}

impl Queues {
    pub(crate) fn open(o: &Options) -> anyhow::Result<Queues> {
        Ok(match o.broker {
            Broker::Redis => Queues::Redis(redis(o)?),
            Broker::Amqp => Queues::Amqp(Box::new(Rabbit::connect(&o.amqp)?)),
        })
    }

    /// Messages waiting in `queue`.
    pub(crate) fn len(&mut self, queue: &str) -> anyhow::Result<usize> {
        match self {
            Queues::Redis(conn) => llen(conn, queue),
            Queues::Amqp(rabbit) => rabbit.count(queue),
        }
    }

    /// Empties `queues` before a measure (on RabbitMQ, deleted and declared
    /// again as a Celery worker declares them, see `Rabbit::reset`).
    pub(crate) fn reset(&mut self, queues: &[&str]) -> anyhow::Result<()> {
        match self {
            Queues::Redis(conn) => del(conn, queues),
            Queues::Amqp(rabbit) => {
                for queue in queues {
                    rabbit.reset(queue)?;
                }
            }
        }
        Ok(())
    }

    /// Removes `queues` after a measure.
    pub(crate) fn remove(&mut self, queues: &[&str]) -> anyhow::Result<()> {
        match self {
            Queues::Redis(conn) => del(conn, queues),
            Queues::Amqp(rabbit) => {
                for queue in queues {
                    rabbit.delete(queue)?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

pub(crate) fn emit(line: serde_json::Value) {
    println!("{line}");
}

pub(crate) fn wait_for(
    limit: Duration,
    done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    poll_until(limit, Duration::from_millis(1), done)
}

/// Whether `done` came true within `limit`, asked every `every`.
pub(crate) fn poll_until(
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(every);
    }
    Ok(false)
}

pub(crate) fn scale(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "scale")?;
    let store = db.store()?;
    let queue = format!("bench-scale-{}", std::process::id());
    let mut queues = Queues::open(o)?;
    queues.reset(&[&queue])?;
    let seeded = seed(&db, n, &Seed::Mixed { due_now: 10 }, &queue)?;
    drop(store);
    let rss_before = rss_mb("VmRSS:");
    let started = Instant::now();
    let beat = Beat::builder(config(&db, o)).start()?;
    let first = wait_for(Duration::from_secs(60), || Ok(queues.len(&queue)? > 0))?;
    let first_dispatch = started.elapsed();
    if !first {
        bail!("scale {n} on {}: no dispatch within 60 s", backend.name());
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = cpu_time("/proc/self/stat");
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(o.idle_seconds));
    let idle_cpu = cpu_time("/proc/self/stat").saturating_sub(cpu_before);
    let idle_wall = idle_started.elapsed();
    let rss = rss_mb("VmRSS:");
    let stats = beat.stop().stats;
    emit(json!({
        "scenario": "scale", "backend": backend.name(), "routines": n,
        "seed_s": round(seeded.as_secs_f64(), 1),
        "first_dispatch_s": round(first_dispatch.as_secs_f64(), 3),
        "rss_mb": round(rss, 1), "rss_before_start_mb": round(rss_before, 1),
        "peak_rss_mb": round(rss_mb("VmHWM:"), 1),
        "idle_cpu_pct_of_a_core": round(idle_cpu.as_secs_f64() / idle_wall.as_secs_f64() * 100.0, 2),
        "idle_cpu_s_per_minute": round(idle_cpu.as_secs_f64() * 60.0 / idle_wall.as_secs_f64(), 3),
        "idle_measured_s": o.idle_seconds,
        "dispatched": stats.fired, "broker": o.broker.name(),
    }));
    queues.remove(&[&queue])
}

pub(crate) fn steady(
    backend: Backend,
    routines: usize,
    seconds: u64,
    o: &Options,
) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "steady")?;
    let store = db.store()?;
    let queue = format!("bench-steady-{}", std::process::id());
    let mut queues = Queues::open(o)?;
    queues.reset(&[&queue])?;
    // Not used while the beat runs (RabbitMQ's would miss its heartbeats).
    drop(queues);
    let lead = if routines * seconds as usize > 10_000 {
        5
    } else {
        2
    };
    let t0 = Utc::now() + TimeDelta::seconds(lead);
    seed(&db, routines, &Seed::EverySecond(t0), &queue)?;
    // Every run due in the window, by task id.
    let mut expected: HashMap<String, ()> = HashMap::with_capacity(routines * seconds as usize);
    for row in store.routines()? {
        let first = row
            .next_run_at_utc()
            .context("seeded routines are planned")?;
        for k in 0..seconds as i64 {
            expected.insert(task_id(&row.id, first + TimeDelta::seconds(k)), ());
        }
    }
    let end = t0 + TimeDelta::seconds(seconds as i64);

    // Drain the queue as it fills, so that the broker holds no more than a
    // moment's messages; the drain's own CPU is measured and left out.
    let stop = Arc::new(AtomicBool::new(false));
    let drain = match o.broker {
        Broker::Redis => drain_redis(&o.redis, &queue, Arc::clone(&stop)),
        Broker::Amqp => rabbit::drain(&o.amqp, &queue, Arc::clone(&stop))?,
    };
    let beat = Beat::builder(config(&db, o)).start()?;
    let first = store
        .routines()?
        .first()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let loader = match o.http_load {
        true => Some(load_pages(&beat, &db, o, &first, Arc::clone(&stop))?),
        false => None,
    };
    std::thread::sleep((t0 - Utc::now()).to_std().unwrap_or_default());
    let cpu0 = Cpu::now(backend, o.broker);
    let wall0 = Instant::now();
    std::thread::sleep((end - Utc::now()).to_std().unwrap_or_default());
    // The broker's CPU includes serving the drain.
    let Cpu {
        beat: cpu,
        database: database_cpu,
        broker: broker_cpu,
    } = cpu0.since(backend, o.broker);
    let wall = wall0.elapsed();
    // Runs due just before the end may still be on their way.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (page_loads, loader_cpu) = match loader {
        Some((server, thread)) => {
            let loaded = thread
                .join()
                .map_err(|_| anyhow::anyhow!("page loader panicked"))?;
            drop(server);
            loaded
        }
        None => (0, Duration::ZERO),
    };
    let stats = beat.stop().stats;
    let (seen, drain_cpu) = drain
        .join()
        .map_err(|_| anyhow::anyhow!("drain thread panicked"))??;
    let in_window = expected.keys().filter(|id| seen.contains_key(*id)).count();
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    // The beat's CPU includes the HTTP server's, not the loader's.
    let beat_cpu = cpu.saturating_sub(drain_cpu).saturating_sub(loader_cpu);
    emit(json!({
        "scenario": "steady", "broker": o.broker.name(), "backend": backend.name(),
        "routines": routines, "seconds": seconds,
        "dispatches_per_s": round(in_window as f64 / seconds as f64, 1),
        "ideal_per_s": routines,
        "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 2),
        "lateness_p99_ms": round(stats.lateness.p99.as_secs_f64() * 1e3, 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 2),
        "misses": expected.len() - in_window, "repeats": repeats,
        "beat_cpu_pct_of_a_core": round(beat_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0, 1),
        "database_cpu_pct_of_a_core": round(database_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0, 1),
        "broker_cpu_pct_of_a_core": round(broker_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0, 1),
        "http_load": o.http_load,
        "page_loads_per_s": round(page_loads as f64 / wall.as_secs_f64(), 1),
        "http_pause_ms": o.http_pause.as_millis() as u64,
    }));
    Queues::open(o)?.remove(&[&queue])
}

/// Starts a thread that pops `queue` in batches as it fills, counting
/// messages by task id, until `stop` is set and the list is empty.
fn drain_redis(url: &str, queue: &str, stop: Arc<AtomicBool>) -> Drain {
    let (url, queue) = (url.to_owned(), queue.to_owned());
    std::thread::spawn(move || -> anyhow::Result<Drained> {
        let cpu0 = cpu_time("/proc/thread-self/stat");
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let batch: Option<Vec<String>> =
                redis::cmd("RPOP").arg(&queue).arg(5_000).query(&mut conn)?;
            let batch = batch.unwrap_or_default();
            if batch.is_empty() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            for m in batch {
                // The id is the first field of the headers; no full parse.
                let id = m.find("\"id\": \"").and_then(|at| m.get(at + 7..at + 43));
                *seen.entry(id.unwrap_or("?").to_owned()).or_default() += 1;
            }
        }
        Ok((
            seen,
            cpu_time("/proc/thread-self/stat").saturating_sub(cpu0),
        ))
    })
}

/// A page loader and the listener it loads.
type Loader = (HttpServer, std::thread::JoinHandle<(usize, Duration)>);

/// Serves `beat`'s dashboard and metrics, and loads them in a loop until
/// `stop`: the list, a search, a routine, the beats, `/metrics`. The
/// thread returns its page loads and its own CPU time.
fn load_pages(
    beat: &BeatHandle,
    db: &Database,
    o: &Options,
    routine: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Loader> {
    let server = HttpServer::start("127.0.0.1:0".parse()?, beat.monitor(), config(db, o))?;
    let addr = server.addr();
    let paths = [
        "/".to_owned(),
        "/?q=bench1&state=active".to_owned(),
        format!("/routine?name={}", web::encode(routine)),
        "/beats".to_owned(),
        "/metrics".to_owned(),
    ];
    let pause = o.http_pause;
    let thread = std::thread::spawn(move || {
        let cpu0 = cpu_time("/proc/thread-self/stat");
        let mut loads = 0;
        while !stop.load(Ordering::SeqCst) {
            for path in &paths {
                let answer = web::get(addr, path);
                assert_eq!(answer.status, 200, "{path}: {}", answer.body);
                loads += 1;
                std::thread::sleep(pause);
            }
        }
        (
            loads,
            cpu_time("/proc/thread-self/stat").saturating_sub(cpu0),
        )
    });
    Ok((server, thread))
}

pub(crate) fn edit(backend: Backend, edits: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "edit")?;
    let store = db.store()?;
    let queue = format!("bench-edit-{}", std::process::id());
    seed(&db, 1_000, &Seed::Mixed { due_now: 0 }, &queue)?;
    let beat: BeatHandle = Beat::builder(config(&db, o)).start()?;
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::with_capacity(edits);
    let mut state: u64 = 0x00C0_FFEE;
    let name_of = |i: usize| format!("bench{}", 1 + i * 7 % 1_000);
    for i in 0..edits {
        // An irregular pause, so that edits fall anywhere in the beat's cycle.
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis((state >> 33) % 500));
        // Every edit changes its row (an unchanged value is no edit, and
        // would be "applied" at once): a new interval, a routine disabled,
        // the routine disabled two edits before enabled again.
        let (name, sql) = match i % 4 {
            0 | 2 => {
                let name = name_of(i);
                let sql = format!(
                    "UPDATE routines SET schedule = '{{\"timedelta\": {}}}' WHERE name = '{name}'",
                    100 + i
                );
                (name, sql)
            }
            1 => {
                let name = name_of(i);
                let sql = format!("UPDATE routines SET active = false WHERE name = '{name}'");
                (name, sql)
            }
            _ => {
                let name = name_of(i - 2);
                let sql = format!("UPDATE routines SET active = true WHERE name = '{name}'");
                (name, sql)
            }
        };
        let before = store.routine(&name)?.context("no such routine")?;
        if before.awaits_planning() {
            bail!("edit {i}: {name} was not planned before the edit");
        }
        let edited_at = Utc::now();
        let edited = Instant::now();
        db.execute(&sql)?;
        let applied = wait_for(Duration::from_secs(10), || {
            Ok(store.routine(&name)?.is_some_and(|r| !r.awaits_planning()))
        })?;
        if !applied {
            bail!("edit {i} not applied within 10 s");
        }
        latencies.push(edited.elapsed());
        // The beat took the edit in: the row's plan is the edit's.
        let after = store.routine(&name)?.context("routine gone")?;
        let next = after.next_run_at_utc();
        let took_in = match i % 4 {
            0 | 2 => {
                let every = TimeDelta::seconds(100 + i as i64);
                let second = TimeDelta::seconds(1);
                after.schedule != before.schedule
                    && next.is_some_and(|t| {
                        t >= edited_at + every - second && t <= Utc::now() + every + second
                    })
            }
            1 => before.active && !after.active && next.is_none(),
            _ => !before.active && after.active && next.is_some(),
        };
        if !took_in {
            bail!("edit {i} ({sql}) not taken in: {after:?}");
        }
    }
    beat.stop();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    emit(json!({
        "scenario": "edit", "backend": backend.name(), "edits": edits,
        "applied": latencies.len(),
        "p50_ms": round(at(0.5).as_secs_f64() * 1e3, 1),
        "p99_ms": round(at(0.99).as_secs_f64() * 1e3, 1),
        "max_ms": round(latencies[latencies.len() - 1].as_secs_f64() * 1e3, 1),
    }));
    Ok(())
}
