//! Aligned text and JSON for the subcommands' output.

use celery_diesel_kit::ops::RoutineView;
use celery_diesel_kit::{BeatRow, EditAction, EditRow, RunRow};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};
use std::io::Write;

/// Columns as wide as their widest cell (or as given), two spaces apart.
pub struct Table {
    widths: Vec<usize>,
}

impl Table {
    /// Widths fitting `header` and `rows`.
    pub fn fit(header: &[&str], rows: &[Vec<String>]) -> Self {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        Table { widths }
    }

    pub fn line(&self, out: &mut impl Write, cells: &[String]) -> std::io::Result<()> {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&self.widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    }

    pub fn header(&self, out: &mut impl Write, header: &[&str]) -> std::io::Result<()> {
        let cells: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
        self.line(out, &cells)
    }
}

/// Prints `header` and `rows` aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let table = Table::fit(header, rows);
    let mut out = std::io::stdout().lock();
    table.header(&mut out, header)?;
    for row in rows {
        table.line(&mut out, row)?;
    }
    Ok(())
}

/// A naive UTC time as text (`-` for none).
pub fn naive(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// A UTC time as ISO 8601 for JSON.
pub fn iso(t: Option<NaiveDateTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.and_utc().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
    })
}

pub fn iso_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The list's columns.
pub const ROUTINE_HEADER: [&str; 10] = [
    "NAME",
    "TASK",
    "SCHEDULE",
    "ZONE",
    "ACTIVE",
    "NEXT (LOCAL)",
    "NEXT (UTC)",
    "LAST RUN (UTC)",
    "COUNT",
    "LAST ERROR",
];

pub fn routine_cells(view: &RoutineView) -> Vec<String> {
    let row = &view.row;
    vec![
        row.name.clone(),
        row.task.clone(),
        view.words.clone(),
        view.zone.name().to_owned(),
        match (row.active, &view.over) {
            (true, _) => "yes".to_owned(),
            (false, None) => "no".to_owned(),
            (false, Some(end)) => format!("no, {}", end.word()),
        },
        row.next_run_at_utc()
            .map_or_else(|| "-".to_owned(), |t| view.local(t)),
        naive(row.next_run_at),
        naive(row.last_run_at),
        row.total_run_count.unwrap_or(0).to_string(),
        row.last_error.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

pub fn routine_json(view: &RoutineView) -> Value {
    let row = &view.row;
    let parse = |text: Option<&str>| {
        text.and_then(|t| serde_json::from_str::<Value>(t).ok())
            .unwrap_or(Value::Null)
    };
    json!({
        "id": row.id,
        "name": row.name,
        "task": row.task,
        "schedule": serde_json::from_str::<Value>(&row.schedule)
            .unwrap_or_else(|_| Value::String(row.schedule.clone())),
        "schedule_words": view.words,
        "timezone": view.zone.name(),
        "active": row.active,
        "over": view.over.map(|end| json!({"state": end.word(), "why": end.to_string()})),
        "next_due_at": iso(row.next_due_at.or(row.next_run_at)),
        "next_run_at": iso(row.next_run_at),
        "next_run_local": row.next_run_at_utc().map(|t| view.local(t)),
        "last_run_at": iso(row.last_run_at),
        "total_run_count": row.total_run_count.unwrap_or(0),
        "last_error": row.last_error,
        "args": parse(row.args.as_deref()),
        "kwargs": parse(row.kwargs.as_deref()),
        "options": parse(row.options.as_deref()),
        "run_requested_at": iso(row.run_requested_at),
    })
}

pub const RUN_HEADER: [&str; 9] = [
    "ID",
    "ROUTINE",
    "DUE (UTC)",
    "DISPATCHED (UTC)",
    "TARGET",
    "OUTCOME",
    "ATTEMPTS",
    "TOOK",
    "ERROR",
];

pub fn run_cells(run: &RunRow) -> Vec<String> {
    let took = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => format!(
            "{:.3}s",
            (end - start).num_microseconds().unwrap_or(0) as f64 / 1e6
        ),
        _ => "-".to_owned(),
    };
    let target = match (run.on_demand, run.backfill) {
        (true, _) => format!("{} (sent)", run.target),
        (false, true) => format!("{} (backfill)", run.target),
        (false, false) => run.target.to_string(),
    };
    vec![
        run.id.to_string(),
        run.routine.clone(),
        naive(run.due_at),
        naive(run.dispatched_at),
        target,
        run.outcome.to_string(),
        run.attempts
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        took,
        run.error
            .as_deref()
            .map_or_else(|| "-".to_owned(), first_line),
    ]
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

pub fn run_json(run: &RunRow) -> Value {
    json!({
        "id": run.id,
        "routine_id": run.routine_id,
        "routine": run.routine,
        "task": run.task,
        "due_at": iso(run.due_at),
        "dispatched_at": iso(run.dispatched_at),
        "task_id": run.task_id,
        "target": run.target.as_str(),
        "on_demand": run.on_demand,
        "backfill": run.backfill,
        "beat_id": run.beat_id,
        "outcome": run.outcome.as_str(),
        "attempts": run.attempts,
        "error": run.error,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    })
}

pub const EDIT_HEADER: [&str; 6] = ["ID", "WHEN (UTC)", "ROUTINE", "ACTION", "WHO", "CHANGES"];

/// A changed value, short: JSON for JSON, a string as it is.
fn value_text(value: &Option<Value>) -> String {
    match value {
        None => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(value) => value.to_string(),
    }
}

/// Who made an edit, and how: `alice (cli)`, `postgres (sql, psql)`.
fn who(edit: &EditRow) -> String {
    let actor = edit.actor.as_deref().unwrap_or("?");
    match &edit.application {
        Some(app) => format!("{actor} ({}, {app})", edit.via),
        None => format!("{actor} ({})", edit.via),
    }
}

pub fn edit_cells(edit: &EditRow) -> Vec<String> {
    let changes: Vec<String> = edit
        .changes
        .iter()
        .map(|c| match edit.action {
            EditAction::Insert => format!("{}={}", c.column, value_text(&c.new)),
            EditAction::Delete => format!("{}={}", c.column, value_text(&c.old)),
            _ => format!(
                "{}: {} -> {}",
                c.column,
                value_text(&c.old),
                value_text(&c.new)
            ),
        })
        .collect();
    vec![
        edit.id.to_string(),
        naive(edit.edited_at),
        edit.routine.clone(),
        edit.action.to_string(),
        first_line(&who(edit)),
        first_line(&changes.join("; ")),
    ]
}

pub fn edit_json(edit: &EditRow) -> Value {
    let changes: serde_json::Map<String, Value> = edit
        .changes
        .iter()
        .map(|c| {
            let mut change = serde_json::Map::new();
            if let Some(old) = &c.old {
                change.insert("old".into(), old.clone());
            }
            if let Some(new) = &c.new {
                change.insert("new".into(), new.clone());
            }
            (c.column.clone(), Value::Object(change))
        })
        .collect();
    json!({
        "id": edit.id,
        "routine_id": edit.routine_id,
        "routine": edit.routine,
        "edited_at": iso(edit.edited_at),
        "action": edit.action.as_str(),
        "actor": edit.actor,
        "via": edit.via.as_str(),
        "application": edit.application,
        "changes": changes,
    })
}

pub const BEAT_HEADER: [&str; 8] = [
    "ID",
    "HOST",
    "PID",
    "VERSION",
    "STARTED (UTC)",
    "LAST HEARTBEAT",
    "STATUS",
    "TASKS",
];

pub fn beat_status(beat: &BeatRow, alive: bool) -> &'static str {
    match (beat.stopped_at.is_some(), alive) {
        (true, _) => "stopped",
        (false, true) => "alive",
        (false, false) => "dead",
    }
}

pub fn beat_cells(beat: &BeatRow, alive: bool) -> Vec<String> {
    let silent = match beat.silent_for.as_secs() {
        s if s >= 86_400 * 365 => "-".to_owned(),
        _ => format!("{:.1}s ago", beat.silent_for.as_secs_f64()),
    };
    let mut tasks = beat.tasks.join(",");
    if beat.broker {
        tasks = match tasks.is_empty() {
            true => "(celery)".to_owned(),
            false => format!("{tasks} (+celery)"),
        };
    }
    vec![
        beat.id.clone(),
        beat.host.clone(),
        beat.pid.to_string(),
        beat.version.clone(),
        naive(beat.started_at),
        silent,
        beat_status(beat, alive).to_owned(),
        tasks,
    ]
}

pub fn beat_json(beat: &BeatRow, alive: bool) -> Value {
    json!({
        "id": beat.id,
        "host": beat.host,
        "pid": beat.pid,
        "version": beat.version,
        "started_at": iso(beat.started_at),
        "heartbeat_at": iso(beat.heartbeat_at),
        "stopped_at": iso(beat.stopped_at),
        "silent_for_seconds": beat.silent_for.as_secs_f64().min(1e12),
        "status": beat_status(beat, alive),
        "tasks": beat.tasks,
        "broker": beat.broker,
    })
}

/// A time on a zone's wall clock, and in UTC unless the zone is UTC.
pub(crate) fn local_and_utc(local: String, t: DateTime<Utc>, zone: chrono_tz::Tz) -> String {
    if zone == chrono_tz::UTC {
        local
    } else {
        format!("{local}  ({} UTC)", t.format("%Y-%m-%d %H:%M:%S"))
    }
}
