//! The scenarios, each measured on a fresh database and printed as one
//! JSON line: `scale`, `burst`, `steady`, `edit` (see `main.rs`).

use super::common::web;
use super::db::{seed, Database, Seed};
use super::{Backend, Options};
use anyhow::{bail, Context};
use celery_diesel_kit::{task_id, Beat, BeatHandle, Config, HttpServer};
use chrono::{TimeDelta, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(db: &Database, o: &Options) -> Config {
    let mut config = Config::default();
    config.scheduler_db_uri = db.url.clone();
    config.broker_url = Some(o.redis.clone());
    config.shutdown_timeout = Duration::from_secs(10);
    config.history = o.history;
    config
}

fn redis(o: &Options) -> anyhow::Result<redis::Connection> {
    Ok(redis::Client::open(o.redis.as_str())?.get_connection()?)
}

fn llen(conn: &mut redis::Connection, key: &str) -> anyhow::Result<usize> {
    Ok(redis::cmd("LLEN").arg(key).query(conn)?)
}

fn del(conn: &mut redis::Connection, keys: &[&str]) {
    for key in keys {
        let _ = redis::cmd("DEL").arg(*key).query::<()>(conn);
        let _ = redis::cmd("DEL")
            .arg(format!("_kombu.binding.{key}"))
            .query::<()>(conn);
    }
}

/// This process's CPU time (user + system) and resident memory.
fn cpu_time(stat: &str) -> Duration {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

/// CPU time of every process called `name` on this machine (the database
/// server's backends, Redis): where a claim's time goes, besides the beat.
fn cpu_of(name: &str) -> Duration {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim() == name).then(|| cpu_time(&path.join("stat").to_string_lossy()))
        })
        .sum()
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

fn wait_for(
    limit: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(false)
}

pub(crate) fn scale(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "scale")?;
    let store = db.store()?;
    let queue = format!("bench-scale-{}", std::process::id());
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue]);
    let seeded = seed(&db, n, &Seed::Mixed { due_now: 10 }, &queue)?;
    drop(store);
    let rss_before = rss_mb("VmRSS:");
    let started = Instant::now();
    let beat = Beat::builder(config(&db, o)).start()?;
    let first = wait_for(Duration::from_secs(60), || Ok(llen(&mut conn, &queue)? > 0))?;
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
        "dispatched": stats.fired,
    }));
    del(&mut conn, &[&queue]);
    Ok(())
}

pub(crate) fn burst(backend: Backend, n: usize, o: &Options) -> anyhow::Result<()> {
    let db = Database::create(backend, o, "burst")?;
    let store = db.store()?;
    let queue = format!("bench-burst-{}", std::process::id());
    let copy = format!("{queue}-lpush");
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue, &copy]);
    // Due a few seconds after the beat starts, all at once. (Seeding 100k
    // rows takes up to 8 s on MariaDB here, each insert's triggers with
    // it: the margin leaves the beat time to start before the due time.)
    let due = Utc::now() + TimeDelta::seconds(if n > 20_000 { 20 } else { 2 });
    seed(&db, n, &Seed::AllAt(due), &queue)?;
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
    let server = if backend == Backend::Mysql {
        "mariadbd"
    } else {
        "postgres"
    };
    let cpu0 = (
        cpu_time("/proc/self/stat"),
        cpu_of(server),
        cpu_of("redis-server"),
    );
    let t0 = Instant::now();
    let all = wait_for(Duration::from_secs(120), || {
        Ok(llen(&mut conn, &queue)? >= n)
    })?;
    let took = t0.elapsed();
    let cpu = (
        cpu_time("/proc/self/stat").saturating_sub(cpu0.0),
        cpu_of(server).saturating_sub(cpu0.1),
        cpu_of("redis-server").saturating_sub(cpu0.2),
    );
    let stats = beat.stop().stats;
    if !all {
        bail!(
            "burst {n} on {}: only {} of {n} messages in 120 s",
            backend.name(),
            llen(&mut conn, &queue)?
        );
    }
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
    let advanced: i64 = store
        .routines()?
        .iter()
        .map(|r| i64::from(r.total_run_count.unwrap_or(0)))
        .sum();
    emit(json!({
        "scenario": "burst", "backend": backend.name(), "routines": n,
        "all_in_redis_s": round(took.as_secs_f64(), 3),
        "per_second": round(n as f64 / took.as_secs_f64(), 0),
        "plain_lpush_s": round(lpush.as_secs_f64(), 3),
        "speed_vs_plain_lpush": round(lpush.as_secs_f64() / took.as_secs_f64(), 3),
        "distinct_ids": ids.len(), "repeats": messages.len() - ids.len(),
        "rows_advanced": advanced, "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 1),
        "beat_cpu_s": round(cpu.0.as_secs_f64(), 2), "database_cpu_s": round(cpu.1.as_secs_f64(), 2),
        "redis_cpu_s": round(cpu.2.as_secs_f64(), 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 1),
    }));
    del(&mut conn, &[&queue, &copy]);
    Ok(())
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
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue]);
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

    // Drain Redis as it fills, so that it holds no more than a moment's
    // messages; the drain's own CPU is measured and left out.
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let (stop, queue, url) = (Arc::clone(&stop), queue.clone(), o.redis.clone());
        std::thread::spawn(
            move || -> anyhow::Result<(HashMap<String, usize>, Duration)> {
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
            },
        )
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
    let cpu0 = cpu_time("/proc/self/stat");
    let wall0 = Instant::now();
    std::thread::sleep((end - Utc::now()).to_std().unwrap_or_default());
    let cpu = cpu_time("/proc/self/stat").saturating_sub(cpu0);
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
        "scenario": "steady", "backend": backend.name(), "routines": routines, "seconds": seconds,
        "dispatches_per_s": round(in_window as f64 / seconds as f64, 1),
        "ideal_per_s": routines,
        "lateness_p50_ms": round(stats.lateness.p50.as_secs_f64() * 1e3, 2),
        "lateness_p99_ms": round(stats.lateness.p99.as_secs_f64() * 1e3, 2),
        "lateness_max_ms": round(stats.lateness.max.as_secs_f64() * 1e3, 2),
        "misses": expected.len() - in_window, "repeats": repeats,
        "beat_cpu_pct_of_a_core": round(beat_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0, 1),
        "http_load": o.http_load,
        "page_loads_per_s": round(page_loads as f64 / wall.as_secs_f64(), 1),
        "http_pause_ms": o.http_pause.as_millis() as u64,
    }));
    del(&mut conn, &[&queue]);
    Ok(())
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
