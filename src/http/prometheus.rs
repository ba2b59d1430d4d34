//! `/metrics`: the beat's counts and health, written by `prometheus-client`
//! in the OpenMetrics text format, which Prometheus asks for. Other
//! scrapers (and `promtool check metrics`) get the classic text format
//! (0.0.4): the same lines, but a counter's `# HELP` and `# TYPE` name its
//! sample (`beat_runs_total`), and the `# UNIT` and `# EOF` lines go.
//!
//! Runs are counted by task, target and outcome, never by routine. The
//! routines by state and the live beats come from the database: one scan
//! of `routines` (see `RoutineStore::count_by_state`), made at most every
//! [`DB_COUNTS_EVERY`], on a thread of its own that the scrape or page
//! finding them stale starts: a scrape never waits on the database (a
//! million routines take 0.2 s to count), never on the scheduler's thread.

use super::server::ServerStats;
use super::Reply;
use crate::metrics::{BucketsSnapshot, Counted, HealthReport, Monitor, Target};
use crate::ops::Operator;
use crate::store::RoutineCounts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the database's counts are reused.
pub(crate) const DB_COUNTS_EVERY: Duration = Duration::from_secs(15);

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text format.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics text `body` in the classic text format (see above).
fn classic(body: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.push(name);
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP comes before TYPE: look ahead for the counter's TYPE.
            let name = rest.split(' ').next().unwrap_or("");
            if body.contains(&format!("# TYPE {name} counter\n")) {
                out.push_str(&format!("# HELP {name}_total{}\n", &rest[name.len()..]));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Counts read from the database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbCounts {
    pub(crate) routines: RoutineCounts,
    pub(crate) beats_alive: usize,
}

/// The database's counts, kept fresh by a thread of their own.
#[derive(Default)]
struct Counts {
    /// The last counts, and when they were read.
    last: Option<(Instant, DbCounts)>,
    /// A thread is reading them.
    reading: bool,
    /// Reads asked for (a change, or stale counts, asks for one more).
    asked: u64,
    /// The last read asked for that has ended, with counts or not.
    done: u64,
}

pub(crate) struct Exporter {
    monitor: Monitor,
    operator: Arc<Operator>,
    server: Arc<ServerStats>,
    counts: Arc<(Mutex<Counts>, Condvar)>,
}

/// How long a scrape waits for counts it has none of (the first scrape):
/// a probe is never held longer.
const SCRAPE_WAIT: Duration = Duration::from_millis(50);
/// How long a page waits for counts being read again.
const PAGE_WAIT: Duration = Duration::from_secs(2);

impl Exporter {
    pub(crate) fn new(monitor: Monitor, operator: Arc<Operator>, server: Arc<ServerStats>) -> Self {
        let exporter = Exporter {
            monitor,
            operator,
            server,
            counts: Arc::new((Mutex::new(Counts::default()), Condvar::new())),
        };
        exporter.ask(false);
        exporter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for the counts to be read again (`forget`: and the last ones
    /// forgotten), on a thread of their own; returns the read to wait for.
    fn ask(&self, forget: bool) -> u64 {
        let mut counts = self.lock();
        if forget {
            counts.last = None;
        }
        counts.asked += 1;
        let asked = counts.asked;
        if counts.reading {
            return asked;
        }
        counts.reading = true;
        drop(counts);
        let shared = Arc::clone(&self.counts);
        let operator = Arc::clone(&self.operator);
        let spawned = std::thread::Builder::new()
            .name("beat-http-counts".into())
            .spawn(move || read_until_current(&shared, &operator));
        if spawned.is_err() {
            self.lock().reading = false;
        }
        asked
    }

    /// Forgets the database's counts (after a change from the dashboard):
    /// they are read again, and the next page waits for them.
    pub(crate) fn forget_counts(&self) {
        self.ask(true);
    }

    /// The database's counts, at most [`DB_COUNTS_EVERY`] old if they can
    /// be read within `wait` (else the last ones, while they are read
    /// again on their own thread); `None` if there are none.
    fn counts_within(&self, wait: Duration) -> Option<DbCounts> {
        let last = self.lock().last;
        if last.is_some_and(|(at, _)| at.elapsed() < DB_COUNTS_EVERY) {
            return last.map(|(_, c)| c);
        }
        let asked = self.ask(false);
        let deadline = Instant::now() + wait;
        let (_, changed) = &*self.counts;
        let mut counts = self.lock();
        while counts.done < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            counts = changed
                .wait_timeout(counts, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        counts.last.map(|(_, c)| c)
    }

    /// The counts for a page, which may wait a little for fresh ones.
    pub(crate) fn db_counts(&self) -> Option<DbCounts> {
        self.counts_within(PAGE_WAIT)
    }

    /// The metrics, in OpenMetrics if `accept` asks for it. Never waits on
    /// the database: the counts are the last ones read (a first scrape
    /// waits up to 50 ms for them).
    pub(crate) fn scrape(&self, accept: Option<&str>) -> Reply {
        let metrics = &self.monitor.metrics;
        let has_counts = self.lock().last.is_some();
        let snapshot = Snapshot {
            runs: metrics.runs_by_task(),
            lateness: metrics.lateness_buckets.snapshot(),
            pass: metrics.pass_seconds.snapshot(),
            claim: metrics.claim_seconds.snapshot(),
            health: self.monitor.health(),
            db: self.counts_within(if has_counts {
                Duration::ZERO
            } else {
                SCRAPE_WAIT
            }),
            server: ServerSnapshot::of(&self.server),
        };
        let mut registry = Registry::with_prefix("beat");
        registry.register_collector(Box::new(snapshot));
        let mut body = String::new();
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        match prometheus_client::encoding::text::encode(&mut body, &registry) {
            Ok(()) if openmetrics => Reply {
                status: 200,
                content_type: OPENMETRICS,
                body,
                headers: Vec::new(),
            },
            Ok(()) => Reply {
                status: 200,
                content_type: TEXT,
                body: classic(&body),
                headers: Vec::new(),
            },
            Err(e) => Reply::text(500, format!("cannot encode the metrics: {e}\n")),
        }
    }
}

/// The counts thread: reads until it has read for the last read asked.
fn read_until_current(shared: &(Mutex<Counts>, Condvar), operator: &Operator) {
    let (lock, changed) = shared;
    loop {
        let target = lock.lock().unwrap_or_else(PoisonError::into_inner).asked;
        let read = read_counts(operator);
        let mut counts = lock.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(read) => counts.last = Some((Instant::now(), read)),
            Err(e) => {
                // No counts rather than old ones.
                counts.last = None;
                log::debug!("http: cannot count the routines: {e}");
            }
        }
        counts.done = target;
        changed.notify_all();
        if counts.asked == target {
            counts.reading = false;
            return;
        }
    }
}

fn read_counts(operator: &Operator) -> Result<DbCounts, crate::error::Error> {
    let routines = operator.counts()?;
    let beats_alive = operator
        .beats()?
        .iter()
        .filter(|b| operator.is_alive(b))
        .count();
    Ok(DbCounts {
        routines,
        beats_alive,
    })
}

/// The listener's own counts, read at one moment.
#[derive(Debug)]
struct ServerSnapshot {
    open: u64,
    refused_full: u64,
    refused_client: u64,
    timed_out: u64,
    pages_busy: u64,
}

impl ServerSnapshot {
    fn of(stats: &ServerStats) -> Self {
        let read = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        ServerSnapshot {
            open: read(&stats.open),
            refused_full: read(&stats.refused_full),
            refused_client: read(&stats.refused_client),
            timed_out: read(&stats.timed_out),
            pages_busy: read(&stats.pages_busy),
        }
    }
}

/// Everything one scrape reports, read at one moment.
#[derive(Debug)]
struct Snapshot {
    runs: Vec<(String, Target, Counted, u64)>,
    lateness: BucketsSnapshot,
    pass: BucketsSnapshot,
    claim: BucketsSnapshot,
    health: HealthReport,
    db: Option<DbCounts>,
    server: ServerSnapshot,
}

/// `value` as a label value in the text format: `\`, `"` and line feeds
/// escaped (the encoder writes label values as they are given).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &BucketsSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_seconds,
        h.count,
        &h.buckets,
        None,
    )
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    metric.encode_gauge(&value)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_runs(&mut encoder)?;
        self.encode_durations(&mut encoder)?;
        self.encode_health(&mut encoder)?;
        if let Some(db) = &self.db {
            encode_db_counts(&mut encoder, db)?;
        }
        self.encode_server(&mut encoder)
    }
}

impl Snapshot {
    /// `runs`: the counter of runs by task, target and outcome.
    fn encode_runs(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "runs",
            "Runs by task, target (celery, in_process, none: not routed) and outcome \
             (dispatched, skipped, missed, abandoned; invalid: rows found invalid; \
             refused: the broker could not take the message where it goes; \
             in-process attempts: succeeded, failed, gave_up).",
            None,
            MetricType::Counter,
        )?;
        for (task, target, outcome, n) in &self.runs {
            let labels = [
                ("task", label(task)),
                ("target", target.label().to_owned()),
                ("outcome", outcome.label().to_owned()),
            ];
            ConstCounter::new(*n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// The histograms: lateness, and how long passes and claims take.
    fn encode_durations(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        histogram(
            encoder,
            "lateness",
            "From a run's due time to its hand-over (in Redis, or in the worker queue).",
            &self.lateness,
        )?;
        histogram(
            encoder,
            "pass_duration",
            "Scheduler passes (look for edits, claim what is due, find the next due time).",
            &self.pass,
        )?;
        histogram(
            encoder,
            "claim_duration",
            "Claim transactions (lock due rows, dispatch, advance, commit).",
            &self.claim,
        )
    }

    /// The health gauges: database, broker (if any), `/healthz`, last pass.
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.health;
        gauge(
            encoder,
            "database_up",
            "1 if the scheduler's last pass reached the database.",
            None,
            f64::from(u8::from(h.database_up)),
        )?;
        if let Some(up) = h.broker_up {
            gauge(
                encoder,
                "broker_up",
                "1 unless the broker's last publish or check failed.",
                None,
                f64::from(u8::from(up)),
            )?;
        }
        gauge(
            encoder,
            "healthy",
            "1 while /healthz answers 200.",
            None,
            f64::from(u8::from(h.healthy)),
        )?;
        if let Some(at) = h.last_pass {
            gauge(
                encoder,
                "last_pass_timestamp",
                "When the last scheduler pass succeeded (Unix time).",
                Some(&Unit::Seconds),
                at.timestamp_micros() as f64 / 1e6,
            )?;
        }
        Ok(())
    }

    /// The listener's own metrics: open connections, refused requests.
    fn encode_server(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let server = &self.server;
        gauge(
            encoder,
            "http_connections",
            "Connections open to this listener.",
            None,
            server.open as f64,
        )?;
        let mut metric = encoder.encode_descriptor(
            "http_refused",
            "Requests refused by the listener's bounds: connections (all in use), client \
             (its address had too many open), timeout (head or body too slow: 408), \
             pages (every page thread busy: 503).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("connections", server.refused_full),
            ("client", server.refused_client),
            ("timeout", server.timed_out),
            ("pages", server.pages_busy),
        ] {
            ConstCounter::new(n).encode(metric.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// The gauges read from the database: routines by state, live beats.
fn encode_db_counts(encoder: &mut DescriptorEncoder, db: &DbCounts) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "routines",
        "Routines by state: active, inactive (disabled), error (active, with last_error).",
        None,
        MetricType::Gauge,
    )?;
    let r = db.routines;
    for (state, n) in [
        ("active", r.active),
        ("inactive", r.inactive),
        ("error", r.error),
    ] {
        metric
            .encode_family(&[("state", state)])?
            .encode_gauge(&(n as f64))?;
    }
    gauge(
        encoder,
        "beats_alive",
        "Beats that heartbeat within scheduler_dead_after (this one included).",
        None,
        db.beats_alive as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let open = "# HELP beat_runs Runs.\n# TYPE beat_runs counter\nbeat_runs_total{a=\"b\"} 1\n\
            # HELP beat_up Up.\n# TYPE beat_up gauge\n# UNIT beat_up seconds\nbeat_up 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP beat_runs_total Runs.\n# TYPE beat_runs_total counter\nbeat_runs_total{a=\"b\"} 1\n\
             # HELP beat_up Up.\n# TYPE beat_up gauge\nbeat_up 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
        assert_eq!(label("plain.task"), "plain.task");
    }
}
