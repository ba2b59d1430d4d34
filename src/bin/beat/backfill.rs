//! `beat backfill NAME --from T1 --to T2 [--dry-run]`: a routine's past
//! due times that have no run in the history, dispatched once each (see
//! `celery_diesel_kit::ops::Backfilled`).

use crate::flags;
use crate::output::{self, iso_utc};
use celery_diesel_kit::ops::{Backfilled, Cut, Operator, BACKFILL_LIMIT};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
#[command(after_help = format!(
    "Times: a UTC time (2026-11-27T09:00, 2026-11-27 09:00:30) or RFC 3339 with its offset \
(2026-11-27T09:00:00+01:00). Only due times before the routine's next planned one (the beats \
dispatch that one and those after) and not after now are taken; a range of more than \
{BACKFILL_LIMIT} due times is refused. Celery tasks only: published from this process \
(CELERY_BROKER_URL)."
))]
pub struct BackfillArgs {
    /// The routine's name.
    name: String,
    /// The first due time to look at.
    #[arg(long, value_name = "TIME", value_parser = flags::parse_after)]
    from: DateTime<Utc>,
    /// The last due time to look at (included).
    #[arg(long, value_name = "TIME", value_parser = flags::parse_after)]
    to: DateTime<Utc>,
    /// Only list the due times it would dispatch; send nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the backfill (or its dry run) and prints what it did.
pub fn backfill(op: &Operator, args: BackfillArgs, json: bool) -> anyhow::Result<i32> {
    let done = op.backfill(&args.name, (args.from, args.to), Utc::now(), args.dry_run)?;
    if json {
        println!("{}", to_json(&done));
        return Ok(0);
    }
    let name = &done.routine;
    let times = |n: usize| match n {
        1 => "1 due time".to_owned(),
        n => format!("{n} due times"),
    };
    let verb = if done.dry_run {
        "would backfill"
    } else {
        "backfilled"
    };
    let ran = match done.already_run {
        0 => String::new(),
        n => format!(" ({} already ran)", times(n)),
    };
    println!(
        "routine {name}: {verb} {} of {} in the range{ran}{}",
        done.runs.len(),
        times(done.due),
        if done.dry_run { "; nothing sent" } else { "" }
    );
    match done.cut {
        Some(Cut::NextDue(t)) => println!(
            "the range stops before {}, the routine's next due time: the beats dispatch from there",
            utc(t)
        ),
        Some(Cut::Now(t)) => println!("the range stops now ({})", utc(t)),
        _ => {}
    }
    if !done.runs.is_empty() {
        let rows: Vec<Vec<String>> = done
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.due_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.task_id.clone(),
                ]
            })
            .collect();
        output::print_table(&["DUE (UTC)", "TASK ID"], &rows)?;
    }
    Ok(0)
}

/// One JSON document: the range, where it was cut, and the runs.
fn to_json(done: &Backfilled) -> Value {
    let cut = done.cut.map(|cut| {
        let why = match cut {
            Cut::NextDue(_) => "next_due",
            _ => "now",
        };
        json!({ "at": iso_utc(cut.at()), "why": why })
    });
    let runs: Vec<Value> = done
        .runs
        .iter()
        .map(|r| json!({ "due_at": iso_utc(r.due_at), "task_id": r.task_id }))
        .collect();
    json!({
        "ok": true,
        "routine": done.routine,
        "dry_run": done.dry_run,
        "from": iso_utc(done.from),
        "to": iso_utc(done.to),
        "cut": cut,
        "due": done.due,
        "already_run": done.already_run,
        "runs": runs,
    })
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
