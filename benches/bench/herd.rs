//! The `herd` scenario: many routines due at the same crontab minute with
//! a `jitter`, and the moment each run reaches Redis after its due time
//! (see `main.rs`).
//!
//! The herd is hourly (`{"minute": 0}`); measuring that would take
//! an hour of wall time. `{"minute": "*/1"}` makes the same herd at every
//! minute boundary, and its gap to the next due time is 60 s: the same
//! as the hourly one's for any jitter up to 60 s, except at exactly 60 s,
//! where `Timing::dispatch_at` keeps each offset below the gap (in
//! `[0, 60 s)` instead of `[0, 60 s]`).

use super::db::{seed, Database, Seed};
use super::scenarios::{config, del, emit, poll_until, redis, round};
use super::{Backend, Broker, Options};
use anyhow::{bail, Context};
use celery_diesel_kit::{task_id, Beat};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A message as the reader took it from Redis, and when.
type Taken = (String, DateTime<Utc>);

/// Seeds `n` routines on `{"minute": "*/1", "jitter": jitter}`, unplanned,
/// lets the beat plan them for the next minute boundary, and times each
/// run's arrival in Redis from that boundary (its due time).
pub(crate) fn herd(backend: Backend, n: usize, jitter: u64, o: &Options) -> anyhow::Result<()> {
    if o.broker != Broker::Redis {
        bail!("herd measures with Redis only (--broker redis)");
    }
    let minute = TimeDelta::minutes(1);
    let queue = format!("bench-herd-{}", std::process::id());
    let mut conn = redis(o)?;
    del(&mut conn, &[&queue]);
    // Seeding and planning must be over before the boundary the herd is
    // due at: if it is near, start just after it instead.
    let lead = TimeDelta::seconds(10 + i64::try_from(n / 10_000)?);
    let now = Utc::now();
    let boundary = now.duration_trunc(minute)? + minute;
    if boundary - now < lead {
        std::thread::sleep((boundary - now).to_std()? + Duration::from_millis(100));
    }
    let db = Database::create(backend, o, "herd")?;
    let store = db.store()?;
    let schedule = json!({"minute": "*/1", "jitter": jitter});
    seed(&db, n, &Seed::Unplanned(schedule.to_string()), &queue)?;
    let stop = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicUsize::new(0));
    let reader = read_redis(&o.redis, &queue, Arc::clone(&stop), Arc::clone(&taken));
    let beat = Beat::builder(config(&db, o)).start()?;

    // The beat plans every row as it starts: each for the next boundary,
    // dispatched at that plus the row's offset.
    let mut rows = Vec::new();
    let planned = poll_until(Duration::from_secs(60), Duration::from_millis(50), || {
        rows = store.routines()?;
        Ok(rows
            .iter()
            .all(|r| !r.awaits_planning() && r.next_run_at.is_some()))
    })?;
    let planned_at = Utc::now();
    if !planned {
        bail!("herd {n} on {}: not all planned in 60 s", backend.name());
    }
    let dues: BTreeSet<DateTime<Utc>> = rows.iter().filter_map(|r| r.next_due_at_utc()).collect();
    let due = match dues.iter().collect::<Vec<_>>()[..] {
        [due] => *due,
        _ => bail!("herd {n}: planned for {} due times: {dues:?}", dues.len()),
    };
    if planned_at >= due {
        bail!("herd {n}: planning ended at {planned_at}, after the due time {due}");
    }
    // Each run's task id, and the instant the beat plans to dispatch it.
    let plans: HashMap<String, DateTime<Utc>> = rows
        .iter()
        .map(|r| (task_id(&r.id, due), r.next_run_at_utc().unwrap_or(due)))
        .collect();
    // The window the runs are spread over; with no jitter, the minute.
    let gap = minute;
    let window = match jitter {
        0 => gap,
        j => TimeDelta::seconds(i64::try_from(j)?).min(gap),
    };
    let limit = (due + window + TimeDelta::seconds(30) - Utc::now()).to_std()?;
    poll_until(limit, Duration::from_millis(10), || {
        Ok(taken.load(Ordering::SeqCst) >= n)
    })?;
    let stats = beat.stop().stats;
    stop.store(true, Ordering::SeqCst);
    let messages = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;

    let secs = |d: TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut offsets, mut late) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut other_runs = 0;
    for (m, at) in &messages {
        let v: serde_json::Value = serde_json::from_str(m).context("a Celery message")?;
        let id = v["headers"]["id"].as_str().unwrap_or_default();
        let Some(plan) = plans.get(id) else {
            // The next boundary's runs, when the window reaches it.
            other_runs += 1;
            continue;
        };
        let count = seen.entry(id.to_owned()).or_default();
        *count += 1;
        if *count == 1 {
            offsets.push(secs(*at - due));
            late.push(secs(*at - *plan));
        }
    }
    let planned_offsets: Vec<f64> = plans.values().map(|t| secs(*t - due)).collect();
    let w = secs(window);
    let (arrived, before_due, after_window) = tenths(&offsets, w);
    let (planned_tenths, _, _) = tenths(&planned_offsets, w);
    offsets.sort_by(f64::total_cmp);
    late.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| match v.len() {
        0 => f64::NAN,
        len => v[((len as f64 * q).ceil() as usize).clamp(1, len) - 1],
    };
    let ms = |s: f64| round(s * 1e3, 1);
    emit(json!({
        "scenario": "herd", "broker": "redis", "backend": backend.name(), "routines": n,
        "schedule": schedule, "jitter_s": jitter, "due": due.to_rfc3339(),
        "window_s": w, "planned_s_before_due": round(secs(due - planned_at), 1),
        "arrived": seen.len(), "misses": n - seen.len(),
        "repeats": seen.values().map(|c| c - 1).sum::<usize>(), "other_runs": other_runs,
        "offset_min_s": round(at(&offsets, 0.0), 3), "offset_p50_s": round(at(&offsets, 0.5), 3),
        "offset_p90_s": round(at(&offsets, 0.9), 3), "offset_max_s": round(at(&offsets, 1.0), 3),
        "per_tenth": arrived, "before_due": before_due, "after_window": after_window,
        "planned_per_tenth": planned_tenths,
        "late_vs_plan_p50_ms": ms(at(&late, 0.5)), "late_vs_plan_p99_ms": ms(at(&late, 0.99)),
        "late_vs_plan_max_ms": ms(at(&late, 1.0)),
        "beat_lateness_p50_ms": ms(stats.lateness.p50.as_secs_f64()),
        "beat_lateness_max_ms": ms(stats.lateness.max.as_secs_f64()),
    }));
    del(&mut conn, &[&queue]);
    Ok(())
}

/// How many of `offsets` (seconds) fall in each tenth of `[0, window)`,
/// how many before 0, and how many at or after `window`.
fn tenths(offsets: &[f64], window: f64) -> ([usize; 10], usize, usize) {
    let (mut tenths, mut before, mut after) = ([0; 10], 0, 0);
    for &s in offsets {
        if s < 0.0 {
            before += 1;
        } else if s >= window {
            after += 1;
        } else {
            tenths[((s / window * 10.0) as usize).min(9)] += 1;
        }
    }
    (tenths, before, after)
}

/// Starts a thread that takes every message from `queue` as it arrives,
/// stamped with the moment it was taken (at most a round trip after it
/// reached Redis), until `stop` is set and the list is empty; `taken`
/// counts them meanwhile.
fn read_redis(
    url: &str,
    queue: &str,
    stop: Arc<AtomicBool>,
    taken: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<Taken>>> {
    let (url, queue) = (url.to_owned(), queue.to_owned());
    std::thread::spawn(move || {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        let mut out: Vec<Taken> = Vec::new();
        loop {
            // What is waiting, at once; else wait for the next one.
            let batch: Option<Vec<String>> =
                redis::cmd("LPOP").arg(&queue).arg(1_000).query(&mut conn)?;
            let now = Utc::now();
            let batch = batch.unwrap_or_default();
            if !batch.is_empty() {
                taken.fetch_add(batch.len(), Ordering::SeqCst);
                out.extend(batch.into_iter().map(|m| (m, now)));
                continue;
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let one: Option<(String, String)> =
                redis::cmd("BLPOP").arg(&queue).arg(0.2).query(&mut conn)?;
            if let Some((_, m)) = one {
                let now = Utc::now();
                taken.fetch_add(1, Ordering::SeqCst);
                out.push((m, now));
            }
        }
        Ok(out)
    })
}
