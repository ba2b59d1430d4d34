//! The routine page's "Backfill" (`beat backfill` from the dashboard): a
//! form for the range, a preview of the due times it would send (a dry
//! run), and the backfill itself once the preview is confirmed. Both are
//! changes (`POST /routine/backfill`): they need a login and the form
//! token, as "Run now" does.

use super::{layout, routine_link};
use crate::http::{App, Reply, Request};
use crate::ops::{self, Backfilled, Cut, BACKFILL_LIMIT};
use crate::store::{Actor, RoutineRow};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// The form on the routine page, for a caller with a form token.
pub(super) fn form(row: &RoutineRow, csrf: &str) -> Markup {
    html! {
        h2 { "Backfill" }
        p { "Send, once each, the past due times from FROM to TO (UTC) that have no run in the history, \
             with the task ids the scheduled runs would have had. Only due times before the routine's \
             next due time and not after now; at most " (BACKFILL_LIMIT) ". Celery tasks only." }
        form method="post" action="/routine/backfill" #backfill {
            input type="hidden" name="name" value=(row.name);
            input type="hidden" name="csrf" value=(csrf);
            label { "From (UTC) " input type="datetime-local" step="1" name="from" required; }
            " "
            label { "To (UTC) " input type="datetime-local" step="1" name="to" required; }
            " "
            button type="submit" #backfill-preview { "Preview" }
        }
    }
}

/// `POST /routine/backfill`: without `confirm`, the preview (what it would
/// send) with a button to confirm; with it, the backfill, then back to the
/// routine's page.
pub(super) fn backfill(app: &App, r: &Request, by: &Actor, name: &str) -> Reply {
    let field = |key: &str| r.field(key).unwrap_or("").to_owned();
    let (from_text, to_text) = (field("from"), field("to"));
    let range = match (ops::parse_time(&from_text), ops::parse_time(&to_text)) {
        (Some(from), Some(to)) => (from, to),
        _ => {
            let e = format!(
                "routine {name}: cannot backfill: from and to must be times such as 2026-11-27T09:00 (UTC), \
                 got {from_text:?} and {to_text:?}"
            );
            return page(app, r, name, Err(e));
        }
    };
    let confirmed = r.field("confirm") == Some("1");
    let done = app
        .operator
        .backfill(name, range, Utc::now(), !confirmed)
        .map_err(|e| e.to_string());
    match done {
        Ok(done) if confirmed => {
            app.prometheus.forget_counts();
            log::info!(
                "http: routine {name}: backfilled {} due time(s) from the dashboard by {}",
                done.runs.len(),
                by.name()
            );
            Reply::see_other(format!("{}&done=backfilled", routine_link(name)))
        }
        other => page(app, r, name, other),
    }
}

/// The preview, or why there is none (status 422).
fn page(app: &App, r: &Request, name: &str, done: Result<Backfilled, String>) -> Reply {
    let csrf = super::csrf(r).unwrap_or("");
    let body = html! {
        @match &done {
            Err(e) => p.message.bad #problem { (e) },
            Ok(done) => (preview(done, csrf)),
        }
        p { a href=(routine_link(name)) { "Back to " (name) } }
    };
    let status = if done.is_ok() { 200 } else { 422 };
    Reply::html(status, layout(app, r, &format!("Backfill {name}"), body))
}

/// The due times a backfill would send, and the button that sends them.
fn preview(done: &Backfilled, csrf: &str) -> Markup {
    let utc = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let field = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    html! {
        p #backfill-summary {
            "From " (utc(done.from)) " to " (utc(done.to)) ": "
            (done.runs.len()) " of " (done.due) " due time(s) have no run and would be sent ("
            (done.already_run) " already ran)."
        }
        @match done.cut {
            Some(Cut::NextDue(t)) => p { "The range stops before " (utc(t)) ", the routine's next due time: the beats dispatch from there." },
            Some(Cut::Now(t)) => p { "The range stops now (" (utc(t)) ")." },
            _ => {},
        }
        @if !done.runs.is_empty() {
            table #backfill-times {
                thead { tr { th { "Due" } th { "Task id" } } }
                tbody { @for run in &done.runs { tr { td { (utc(run.due_at)) } td { code { (run.task_id) } } } } }
            }
            form method="post" action="/routine/backfill" {
                input type="hidden" name="name" value=(done.routine);
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="from" value=(field(done.from));
                input type="hidden" name="to" value=(field(done.to));
                input type="hidden" name="confirm" value="1";
                button type="submit" #backfill-confirm { "Backfill " (done.runs.len()) " due time(s)" }
            }
        }
    }
}
