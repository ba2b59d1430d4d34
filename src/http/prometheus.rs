//! `/metrics`: the beat's counts and health, written by `prometheus-client`
//! in the OpenMetrics text format, which Prometheus asks for. Other
//! scrapers (and `promtool check metrics`) get the classic text format
//! (0.0.4): the same lines, but a counter's `# HELP` and `# TYPE` name its
//! sample (`beat_runs_total`), and the `# UNIT` and `# EOF` lines go.
//!
//! Runs are counted by task, target and outcome, never by routine. The
//! routines by state and the live beats come from the database: one scan
//! of `routines` (see `RoutineStore::count_by_state`), made at most every
//! [`DB_COUNTS_EVERY`] by the scrape that finds them stale, on the HTTP
//! thread, never on the scheduler's.

use super::Reply;
use crate::metrics::{BucketsSnapshot, HealthReport, Monitor, RunOutcome, Target};
use crate::ops::Operator;
use crate::store::RoutineCounts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Mutex, PoisonError};
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

pub(crate) struct Exporter {
    monitor: Monitor,
    cached: Mutex<Option<(Instant, DbCounts)>>,
}

impl Exporter {
    pub(crate) fn new(monitor: Monitor) -> Self {
        Exporter {
            monitor,
            cached: Mutex::new(None),
        }
    }

    /// Forgets the database's counts (after a change from the dashboard).
    pub(crate) fn forget_counts(&self) {
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The database's counts, at most [`DB_COUNTS_EVERY`] old; `None` if the
    /// database cannot say.
    pub(crate) fn db_counts(&self, operator: &Operator) -> Option<DbCounts> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, counts)) = *cached {
            if at.elapsed() < DB_COUNTS_EVERY {
                return Some(counts);
            }
        }
        let read = || -> Result<DbCounts, crate::error::Error> {
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
        };
        match read() {
            Ok(counts) => {
                *cached = Some((Instant::now(), counts));
                Some(counts)
            }
            Err(e) => {
                log::debug!("http: /metrics could not count routines: {e}");
                None
            }
        }
    }

    /// The metrics, in OpenMetrics if `accept` asks for it.
    pub(crate) fn scrape(&self, operator: &Operator, accept: Option<&str>) -> Reply {
        let metrics = &self.monitor.metrics;
        let snapshot = Snapshot {
            runs: metrics.runs_by_task(),
            lateness: metrics.lateness_buckets.snapshot(),
            pass: metrics.pass_seconds.snapshot(),
            claim: metrics.claim_seconds.snapshot(),
            health: self.monitor.health(),
            db: self.db_counts(operator),
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

/// Everything one scrape reports, read at one moment.
#[derive(Debug)]
struct Snapshot {
    runs: Vec<(String, Target, RunOutcome, u64)>,
    lateness: BucketsSnapshot,
    pass: BucketsSnapshot,
    claim: BucketsSnapshot,
    health: HealthReport,
    db: Option<DbCounts>,
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
        {
            let mut metric = encoder.encode_descriptor(
                "runs",
                "Runs by task, target (celery, in_process, none: not routed) and outcome \
                 (dispatched, skipped, missed, abandoned; invalid: rows found invalid; \
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
        }
        histogram(
            &mut encoder,
            "lateness",
            "From a run's due time to its hand-over (in Redis, or in the worker queue).",
            &self.lateness,
        )?;
        histogram(
            &mut encoder,
            "pass_duration",
            "Scheduler passes (look for edits, claim what is due, find the next due time).",
            &self.pass,
        )?;
        histogram(
            &mut encoder,
            "claim_duration",
            "Claim transactions (lock due rows, dispatch, advance, commit).",
            &self.claim,
        )?;
        let h = &self.health;
        gauge(
            &mut encoder,
            "database_up",
            "1 if the scheduler's last pass reached the database.",
            None,
            f64::from(u8::from(h.database_up)),
        )?;
        if let Some(up) = h.broker_up {
            gauge(
                &mut encoder,
                "broker_up",
                "1 unless the last publish to the broker failed.",
                None,
                f64::from(u8::from(up)),
            )?;
        }
        gauge(
            &mut encoder,
            "healthy",
            "1 while /healthz answers 200.",
            None,
            f64::from(u8::from(h.healthy)),
        )?;
        if let Some(at) = h.last_pass {
            gauge(
                &mut encoder,
                "last_pass_timestamp",
                "When the last scheduler pass succeeded (Unix time).",
                Some(&Unit::Seconds),
                at.timestamp_micros() as f64 / 1e6,
            )?;
        }
        if let Some(db) = &self.db {
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
                &mut encoder,
                "beats_alive",
                "Beats that heartbeat within scheduler_dead_after (this one included).",
                None,
                db.beats_alive as f64,
            )?;
        }
        Ok(())
    }
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
