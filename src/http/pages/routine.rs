//! One routine's page (`/routine?name=`): its row, schedule in words,
//! next fire times, last runs and last edits; and the changes made from
//! it (enable, disable, run now, edit; backfill is `backfill`'s), each as
//! the operator logged in.

use super::{csrf, layout, pill, routine_link, state_of, time};
use crate::error::Error;
use crate::http::{App, Reply, Request};
use crate::ops::{self, Change, RoutineView, Shown};
use crate::schedule::Schedule;
use crate::store::{EditAction, EditRow, RoutineRow, RunRow};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// Next fire times shown (and previewed).
const NEXT_TIMES: usize = 10;
/// Last runs shown.
const LAST_RUNS: usize = 20;
/// Last edits shown.
const LAST_EDITS: usize = 20;

/// What the edit form holds: the row's values, or what was typed.
struct Draft {
    schedule: String,
    args: String,
    kwargs: String,
    options: String,
}

/// What `ops::preview` gives: the typed schedule and its next fire times,
/// or why it does not parse.
type Preview = Result<(Schedule, Vec<DateTime<Utc>>), Error>;

/// A line at the top of a routine's page.
enum Said {
    Done(String),
    Failed(String),
}

/// `/routine?name=`: one routine. A GET with `preview` shows the next fire
/// times of the typed schedule without saving it.
pub(in crate::http) fn routine(app: &App, r: &Request) -> Reply {
    routine_with(app, r, None, None)
}

fn routine_with(app: &App, r: &Request, said: Option<Said>, draft: Option<Draft>) -> Reply {
    let name = r.field("name").unwrap_or("").to_owned();
    let shown = match app
        .operator
        .show(&name, NEXT_TIMES, LAST_RUNS, LAST_EDITS, Utc::now())
    {
        Ok(shown) => shown,
        Err(e) => return not_shown(app, r, &e),
    };
    let row = &shown.view.row;
    let said = said.or_else(|| done(r).map(|d| Said::Done(d.to_owned())));
    let draft = draft.unwrap_or_else(|| Draft::typed_or_saved(r, row));
    let preview = (r.field("preview").is_some())
        .then(|| ops::preview(&draft.schedule, app.operator.zone(), NEXT_TIMES, Utc::now()));
    let token = csrf(r);
    let body = html! {
        (said_line(said.as_ref()))
        (facts(&shown.view))
        @if let Some(csrf) = token { (actions(row, csrf)) }
        (next_times(&shown))
        (edit_form(row, token, &draft))
        (preview_times(preview.as_ref()))
        @if let Some(csrf) = token { (super::backfill::form(row, csrf)) }
        h2 { "Last runs" }
        (runs_table(&shown.runs))
        h2 { "Last changes" }
        (edits_table(&shown.edits))
    };
    let status = match said {
        Some(Said::Failed(_)) => 422,
        _ => 200,
    };
    Reply::html(status, layout(app, r, &row.name, body))
}

/// The page for a routine that cannot be shown: 404 if there is no such
/// routine, 400 if it is invalid, 503 if the database cannot be read.
fn not_shown(app: &App, r: &Request, e: &Error) -> Reply {
    let status = match e {
        Error::NoSuchRoutine(_) => 404,
        Error::Routine(_) => 400,
        _ => 503,
    };
    Reply::html(
        status,
        layout(app, r, "Routine", html! { p.message.bad { (e) } }),
    )
}

/// The line saying what the last change did, from the `done` field of the
/// redirect that follows it.
fn done(r: &Request) -> Option<&'static str> {
    r.field("done").and_then(|d| match d {
        "enabled" => Some("Enabled: the serving beats will run it."),
        "disabled" => Some("Disabled: the serving beats will not run it."),
        "saved" => Some("Saved: the serving beats plan it again within their watch interval."),
        "backfilled" => Some(
            "Backfilled: the runs sent are in the last runs below, marked (backfill).",
        ),
        "run" => Some(
            "Run requested: it appears in the last runs below once a beat has taken it (within its watch interval).",
        ),
        _ => None,
    })
}

impl Draft {
    /// What was typed (a preview), else the row's values.
    fn typed_or_saved(r: &Request, row: &RoutineRow) -> Self {
        Draft {
            schedule: r.field("schedule").unwrap_or(&row.schedule).to_owned(),
            args: r
                .field("args")
                .unwrap_or(row.args.as_deref().unwrap_or("[]"))
                .to_owned(),
            kwargs: r
                .field("kwargs")
                .unwrap_or(row.kwargs.as_deref().unwrap_or("{}"))
                .to_owned(),
            options: r
                .field("options")
                .unwrap_or(row.options.as_deref().unwrap_or("{}"))
                .to_owned(),
        }
    }
}

/// The line at the top: what was done, or why it failed.
fn said_line(said: Option<&Said>) -> Markup {
    html! {
        @match said {
            Some(Said::Done(text)) => p.message { (text) },
            Some(Said::Failed(text)) => p.message.bad #problem { (text) },
            None => {},
        }
    }
}

/// The routine's row, its schedule in words and its zone.
fn facts(view: &RoutineView) -> Markup {
    let row = &view.row;
    let state = state_of(row.active, row.last_error.is_some());
    html! {
        dl {
            dt { "Task" } dd { code { (row.task) } }
            dt { "State" } dd {
                (pill(state))
                @if let Some(end) = &view.over { " " span #over { (end.word()) ": " (end.to_string()) } }
            }
            dt { "Schedule" } dd { (view.words) " " code { (row.schedule) } }
            dt { "Zone" } dd { (view.zone.name()) }
            dt { "Args" } dd { code #args { (row.args.as_deref().unwrap_or("[]")) } }
            dt { "Kwargs" } dd { code { (row.kwargs.as_deref().unwrap_or("{}")) } }
            dt { "Options" } dd { code { (row.options.as_deref().unwrap_or("{}")) } }
            dt { "Last run" } dd { @if let Some(t) = row.last_run_at_utc() { (view.local(t)) } @else { "never" } }
            dt { "Runs" } dd { (row.total_run_count.unwrap_or(0)) }
            dt { "Error" } dd.error #last-error { (row.last_error.as_deref().unwrap_or("none")) }
            dt { "Id" } dd { code { (row.id) } }
        }
    }
}

/// The buttons of a caller who may change things: enable or disable, and
/// run now.
fn actions(row: &RoutineRow, csrf: &str) -> Markup {
    html! {
        p {
            @for (action, label) in [(if row.active { "disable" } else { "enable" }, if row.active { "Disable" } else { "Enable" }), ("run", "Run now")] {
                form.inline method="post" action={ "/routine/" (action) } {
                    input type="hidden" name="name" value=(row.name);
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" #{ "action-" (action) } { (label) }
                }
                " "
            }
        }
    }
}

/// The routine's next fire times, in its zone and in UTC.
fn next_times(shown: &Shown) -> Markup {
    let view = &shown.view;
    html! {
        h2 { "Next " (NEXT_TIMES) " fire times" }
        @if shown.next.is_empty() {
            p { "None: the routine is disabled, in error, or its schedule has no more runs." }
        } @else {
            ol #next-times { @for t in &shown.next { li { (view.local(*t)) " (" (t.format("%Y-%m-%d %H:%M:%S UTC")) ")" } } }
        }
    }
}

/// The edit form: Preview for anyone who may read, Save for a caller with
/// a form token (`token`).
fn edit_form(row: &RoutineRow, token: Option<&str>, draft: &Draft) -> Markup {
    html! {
        h2 { "Edit" }
        form method="post" action="/routine/edit" {
            input type="hidden" name="name" value=(row.name);
            @if let Some(csrf) = token { input type="hidden" name="csrf" value=(csrf); }
            label { "Schedule (the kit's JSON: " code { "{\"timedelta\": 30}" } ", or crontab fields, with an optional " code { "timezone" } ")"
                textarea name="schedule" rows="2" { (draft.schedule) } }
            label { "Args (a JSON array)" textarea name="args" rows="2" { (draft.args) } }
            label { "Kwargs" textarea name="kwargs" rows="2" { (draft.kwargs) } }
            label { "Options" textarea name="options" rows="2" { (draft.options) } }
            button type="submit" formmethod="get" formaction="/routine" name="preview" value="1" #preview { "Preview" }
            " "
            @if token.is_some() { button type="submit" #save { "Save" } }
            @else { " (saving needs a login)" }
        }
    }
}

/// The previewed schedule's next fire times, or why it does not parse.
fn preview_times(preview: Option<&Preview>) -> Markup {
    html! {
        @match preview {
            Some(Ok((_, times))) => {
                h2 { "Preview: next " (times.len()) " fire times of the schedule above" }
                ol #preview-times { @for t in times { li { (t.format("%Y-%m-%d %H:%M:%S UTC")) } } }
            },
            Some(Err(e)) => p.message.bad #preview-error { (e) },
            None => {},
        }
    }
}

/// The routine's last runs: when, the outcome, and how long it took.
fn runs_table(runs: &[RunRow]) -> Markup {
    html! {
        @if runs.is_empty() { p { "No recorded runs." } }
        @else {
            table #runs {
                thead { tr {
                    th { "Dispatched" } th { "Due" } th { "Outcome" } th { "Target" }
                    th { "Attempts" } th { "Duration" } th { "Error" } th { "Task id" }
                } }
                tbody {
                    @for run in runs {
                        tr {
                            td { (time(run.dispatched_at)) }
                            td { (time(run.due_at)) @if run.on_demand { " (on demand)" } @if run.backfill { " (backfill)" } }
                            td.outcome { (run.outcome) }
                            td { (run.target) }
                            td { (run.attempts.map_or_else(String::new, |a| a.to_string())) }
                            td { @if let (Some(s), Some(f)) = (run.started_at, run.finished_at) {
                                (format!("{:.3} s", (f - s).num_microseconds().unwrap_or(0) as f64 / 1e6))
                            } }
                            td.error { (run.error.as_deref().unwrap_or("")) }
                            td { code { (run.task_id) } }
                        }
                    }
                }
            }
        }
    }
}

/// A POST that changes a routine, as its caller (allowed: see `Auth`).
/// "Run now" asks the serving beats and answers at once.
pub(in crate::http) fn act(app: &App, r: &Request) -> Reply {
    let Some(by) = r.caller.actor() else {
        return crate::http::auth::refusal(&r.caller);
    };
    let name = r.field("name").unwrap_or("").to_owned();
    let op = &app.operator;
    let result = match r.path.as_str() {
        "/routine/enable" => op.set_active(&by, &name, true).map(|()| "enabled"),
        "/routine/disable" => op.set_active(&by, &name, false).map(|()| "disabled"),
        "/routine/run" => op.request(&by, &name).map(|()| "run"),
        "/routine/backfill" => return super::backfill::backfill(app, r, &by, &name),
        _ => return edit(app, r, &by, &name),
    };
    match result {
        Ok(done) => {
            app.prometheus.forget_counts();
            log::info!(
                "http: routine {name}: {done} from the dashboard by {}",
                by.name()
            );
            Reply::see_other(format!("{}&done={done}", routine_link(&name)))
        }
        Err(e) => routine_with(app, r, Some(Said::Failed(e.to_string())), None),
    }
}

fn edit(app: &App, r: &Request, by: &crate::store::Actor, name: &str) -> Reply {
    let draft = Draft {
        schedule: r.field("schedule").unwrap_or("").to_owned(),
        args: r.field("args").unwrap_or("[]").to_owned(),
        kwargs: r.field("kwargs").unwrap_or("{}").to_owned(),
        options: r.field("options").unwrap_or("{}").to_owned(),
    };
    let parse = |what: &str, text: &str| {
        ops::parse_json(text).map_err(|e| format!("routine {name}: {what}: {e}"))
    };
    let change = (|| {
        Ok::<_, String>(Change {
            schedule: Some(parse("schedule", &draft.schedule)?),
            kwargs: Some(parse("kwargs", &draft.kwargs)?),
            options: Some(parse("options", &draft.options)?),
            // A form without the field (an older page) keeps the args.
            args: match r.field("args") {
                Some(_) => Some(ops::parse_args(name, &draft.args).map_err(|e| e.to_string())?),
                None => None,
            },
            ..Change::default()
        })
    })();
    let result = change.and_then(|change| {
        app.operator
            .edit(by, name, &change)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            app.prometheus.forget_counts();
            log::info!(
                "http: routine {name}: edited from the dashboard by {}",
                by.name()
            );
            Reply::see_other(format!("{}&done=saved", routine_link(name)))
        }
        Err(e) => routine_with(app, r, Some(Said::Failed(e)), Some(draft)),
    }
}

/// The audit trail's last edits of the routine: when, who (and how), and
/// each changed column's old and new value.
fn edits_table(edits: &[EditRow]) -> Markup {
    let value = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    html! {
        @if edits.is_empty() { p { "No recorded changes." } }
        @else {
            table #edits {
                thead { tr { th { "When" } th { "Who" } th { "Via" } th { "Action" } th { "Changes" } } }
                tbody {
                    @for edit in edits {
                        tr {
                            td { (time(edit.edited_at)) }
                            td.who {
                                (edit.actor.as_deref().unwrap_or("(unknown)"))
                                @if let Some(app) = &edit.application { " (" (app) ")" }
                            }
                            td { (edit.via) }
                            td { (edit.action) }
                            td.changes {
                                @for change in &edit.changes {
                                    div {
                                        code { (change.column) } ": "
                                        @match edit.action {
                                            EditAction::Insert => ins { (value(&change.new)) },
                                            EditAction::Delete => del { (value(&change.old)) },
                                            EditAction::Update => {
                                                del { (value(&change.old)) } " → " ins { (value(&change.new)) }
                                            },
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
