//! The dashboard's pages, rendered on the server (maud escapes every value
//! it is given; nothing here writes raw HTML but the style sheet).
//!
//! - `/`: the routines, searched by name or task, filtered by state, a
//!   page at a time (keyset pages: as cheap on the last page as the first);
//! - `/routine?name=`: one routine: its schedule in words, zone, next 10
//!   fire times, last runs; enable, disable, run now, edit with a preview;
//! - `/beats`: the beats, and the database and broker as this beat sees
//!   them;
//! - `/login`.
//!
//! Every action calls the same [`Operator`](crate::ops::Operator) function
//! as the `beat` command line.

use super::auth::Caller;
use super::{encode, App, Reply, Request};
use crate::ops::{self, Change, Sent};
use crate::store::{RoutineQuery, RoutineState, RunRow};
use chrono::{NaiveDateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::time::Duration;

/// Routines per page.
const PAGE_SIZE: usize = 50;
/// Next fire times shown (and previewed).
const NEXT_TIMES: usize = 10;
/// Last runs shown on a routine's page.
const LAST_RUNS: usize = 20;
/// How long "run now" waits for a serving beat to take the request.
const RUN_WAIT: Duration = Duration::from_secs(5);

const CSS: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d2330;color:#e8ebf0}
header a{color:#fff;text-decoration:none;font-weight:600}
header .state{margin-left:auto;font-size:13px}
header form{display:inline}
main{padding:1em 1.2em;max-width:1400px}
h1{font-size:20px;margin:.2em 0 .6em}
h2{font-size:16px;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef0f4;font-weight:600}
td.error,.error{color:#a4161a}
.ok{color:#1b7f3b}
.banner{background:#fff4d6;border:1px solid #f0d58c;padding:.5em .8em}
.message{padding:.5em .8em;border:1px solid #9bd1ad;background:#e9f7ee}
.message.bad{border-color:#e5a3a5;background:#fbeaea}
form.inline{display:inline}
textarea{width:100%;font:13px ui-monospace,monospace}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1em;background:#fff;padding:.8em}
dt{font-weight:600}
dd{margin:0}
code{font:13px ui-monospace,monospace}
.pill{display:inline-block;padding:0 .5em;border-radius:1em;font-size:12px;background:#e3e6eb}
.pill.active{background:#d3f0dc}.pill.inactive{background:#e3e6eb}.pill.error{background:#f7d4d5}
";

/// The form token of a caller who may change things (`""` for a bearer
/// caller, who needs none); `None` for a read-only caller.
fn csrf(r: &Request) -> Option<&str> {
    match &r.caller {
        Caller::Session { csrf, .. } => Some(csrf),
        Caller::Bearer => Some(""),
        _ => None,
    }
}

fn layout(app: &App, r: &Request, title: &str, body: Markup) -> String {
    let health = app.monitor.health();
    let up = |ok: bool| match ok {
        true => html! { span.ok { "up" } },
        false => html! { span.error { "down" } },
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · beat" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a href="/" { "Routines" }
                    a href="/beats" { "Beats" }
                    span.state {
                        "database " (up(health.database_up))
                        " · broker "
                        @match health.broker_up {
                            Some(ok) => (up(ok)),
                            None => "not configured",
                        }
                        " · "
                        @match &health.reason {
                            None => span.ok { "healthy" },
                            Some(reason) => span.error title=(reason) { "unhealthy" },
                        }
                    }
                    @match &r.caller {
                        Caller::Session { csrf, .. } => form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        },
                        _ if app.auth.has_token() => a href="/login" { "Log in" },
                        _ => {},
                    }
                }
                main {
                    @if !app.auth.has_token() {
                        p.banner { "Read-only: no http_token is configured, so nothing can be changed here." }
                    } @else if csrf(r).is_none() {
                        p.banner { "Read-only until you " a href="/login" { "log in" } "." }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
    .into_string()
}

fn time(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(
        || "–".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn state_of(active: bool, error: bool) -> RoutineState {
    match (active, error) {
        (false, _) => RoutineState::Inactive,
        (true, true) => RoutineState::Error,
        (true, false) => RoutineState::Active,
    }
}

fn pill(state: RoutineState) -> Markup {
    html! { span class={ "pill " (state.as_str()) } { (state.as_str()) } }
}

fn routine_link(name: &str) -> String {
    format!("/routine?name={}", encode(name))
}

/// `/`: the routines.
pub(super) fn routines(app: &App, r: &Request) -> Reply {
    let search = r.field("q").unwrap_or("").trim().to_owned();
    let state = r.field("state").and_then(RoutineState::parse);
    let after = match (r.field("after_name"), r.field("after_id")) {
        (Some(name), Some(id)) => Some((name.to_owned(), id.to_owned())),
        _ => None,
    };
    let query = RoutineQuery {
        search: search.clone(),
        state,
        after: after.clone(),
        limit: PAGE_SIZE + 1,
    };
    let found = app.operator.find(&query);
    let counts = app.prometheus.db_counts(&app.operator);
    let filter_link = |s: Option<RoutineState>| {
        format!(
            "/?q={}&state={}",
            encode(&search),
            s.map_or("", RoutineState::as_str)
        )
    };
    let (status, body) = match found {
        Err(e) => (
            503,
            html! { p.message.bad { "Cannot read the routines: " (e) } },
        ),
        Ok(mut views) => {
            let more = views.len() > PAGE_SIZE;
            views.truncate(PAGE_SIZE);
            let next = views.last().filter(|_| more).map(|v| {
                format!(
                    "{}&after_name={}&after_id={}",
                    filter_link(state),
                    encode(&v.row.name),
                    encode(&v.row.id)
                )
            });
            (
                200,
                html! {
                    form method="get" action="/" {
                        input type="search" name="q" value=(search) placeholder="name or task contains…" autofocus;
                        " "
                        select name="state" {
                            option value="" selected[state.is_none()] { "any state" }
                            @for s in [RoutineState::Active, RoutineState::Inactive, RoutineState::Error] {
                                option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                            }
                        }
                        " "
                        button type="submit" { "Search" }
                    }
                    @if let Some(c) = counts {
                        p {
                            a href=(filter_link(Some(RoutineState::Active))) { (c.routines.active) " active" } " · "
                            a href=(filter_link(Some(RoutineState::Inactive))) { (c.routines.inactive) " inactive" } " · "
                            a href=(filter_link(Some(RoutineState::Error))) { (c.routines.error) " in error" }
                            " (counted within the last 15 s)"
                        }
                    }
                    table #routines {
                        thead { tr {
                            th { "Name" } th { "Task" } th { "Schedule" } th { "Zone" } th { "State" }
                            th { "Next run" } th { "Last run" } th { "Runs" } th { "Error" }
                        } }
                        tbody {
                            @for v in &views {
                                tr {
                                    td { a href=(routine_link(&v.row.name)) { (v.row.name) } }
                                    td { code { (v.row.task) } }
                                    td { (v.words) }
                                    td { (v.zone.name()) }
                                    td { (pill(state_of(v.row.active, v.row.last_error.is_some()))) }
                                    td { @if let Some(t) = v.row.next_run_at_utc() { (v.local(t)) } @else { "–" } }
                                    td { @if let Some(t) = v.row.last_run_at_utc() { (v.local(t)) } @else { "–" } }
                                    td { (v.row.total_run_count.unwrap_or(0)) }
                                    td.error { (v.row.last_error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                    @if views.is_empty() { p { "No routine matches." } }
                    p {
                        @if after.is_some() { a href=(filter_link(state)) { "« first page" } " " }
                        @if let Some(next) = next { a #next href=(next) { "next page »" } }
                    }
                },
            )
        }
    };
    Reply::html(status, layout(app, r, "Routines", body))
}

/// What the edit form holds: the row's values, or what was typed.
struct Draft {
    schedule: String,
    kwargs: String,
    options: String,
}

/// A line at the top of a routine's page.
enum Said {
    Done(String),
    Failed(String),
}

/// `/routine?name=`: one routine. A GET with `preview` shows the next fire
/// times of the typed schedule without saving it.
pub(super) fn routine(app: &App, r: &Request) -> Reply {
    routine_with(app, r, None, None)
}

fn routine_with(app: &App, r: &Request, said: Option<Said>, draft: Option<Draft>) -> Reply {
    let name = r.field("name").unwrap_or("").to_owned();
    let shown = match app.operator.show(&name, NEXT_TIMES, LAST_RUNS, Utc::now()) {
        Ok(shown) => shown,
        Err(e) => {
            let status = match e {
                crate::error::Error::Routine(_) => 404,
                _ => 503,
            };
            return Reply::html(
                status,
                layout(app, r, "Routine", html! { p.message.bad { (e) } }),
            );
        }
    };
    let row = &shown.view.row;
    let done = r.field("done").and_then(|d| match d {
        "enabled" => Some("Enabled: the serving beats will run it."),
        "disabled" => Some("Disabled: the serving beats will not run it."),
        "saved" => Some("Saved: the serving beats plan it again within their watch interval."),
        "run" => Some("Run requested: see it in the last runs below."),
        _ => None,
    });
    let said = said.or_else(|| done.map(|d| Said::Done(d.to_owned())));
    let draft = draft.unwrap_or_else(|| Draft {
        schedule: r.field("schedule").unwrap_or(&row.schedule).to_owned(),
        kwargs: r
            .field("kwargs")
            .unwrap_or(row.kwargs.as_deref().unwrap_or("{}"))
            .to_owned(),
        options: r
            .field("options")
            .unwrap_or(row.options.as_deref().unwrap_or("{}"))
            .to_owned(),
    });
    let preview = (r.field("preview").is_some()).then(|| {
        ops::preview(
            &draft.schedule,
            app.operator.zone().name(),
            NEXT_TIMES,
            Utc::now(),
        )
    });
    let token = csrf(r);
    let state = state_of(row.active, row.last_error.is_some());
    let view = &shown.view;
    let body = html! {
        @match &said {
            Some(Said::Done(text)) => p.message { (text) },
            Some(Said::Failed(text)) => p.message.bad #problem { (text) },
            None => {},
        }
        dl {
            dt { "Task" } dd { code { (row.task) } }
            dt { "State" } dd { (pill(state)) }
            dt { "Schedule" } dd { (view.words) " " code { (row.schedule) } }
            dt { "Zone" } dd { (view.zone.name()) }
            dt { "Kwargs" } dd { code { (row.kwargs.as_deref().unwrap_or("{}")) } }
            dt { "Options" } dd { code { (row.options.as_deref().unwrap_or("{}")) } }
            dt { "Last run" } dd { @if let Some(t) = row.last_run_at_utc() { (view.local(t)) } @else { "never" } }
            dt { "Runs" } dd { (row.total_run_count.unwrap_or(0)) }
            dt { "Error" } dd.error #last-error { (row.last_error.as_deref().unwrap_or("none")) }
            dt { "Id" } dd { code { (row.id) } }
        }
        @if let Some(csrf) = token {
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
        h2 { "Next " (NEXT_TIMES) " fire times" }
        @if shown.next.is_empty() {
            p { "None: the routine is disabled, in error, or its schedule has no more runs." }
        } @else {
            ol #next-times { @for t in &shown.next { li { (view.local(*t)) " (" (t.format("%Y-%m-%d %H:%M:%S UTC")) ")" } } }
        }
        h2 { "Edit" }
        form method="post" action="/routine/edit" {
            input type="hidden" name="name" value=(row.name);
            @if let Some(csrf) = token { input type="hidden" name="csrf" value=(csrf); }
            label { "Schedule (the kit's JSON: " code { "{\"timedelta\": 30}" } ", or crontab fields, with an optional " code { "timezone" } ")"
                textarea name="schedule" rows="2" { (draft.schedule) } }
            label { "Kwargs" textarea name="kwargs" rows="2" { (draft.kwargs) } }
            label { "Options" textarea name="options" rows="2" { (draft.options) } }
            button type="submit" formmethod="get" formaction="/routine" name="preview" value="1" #preview { "Preview" }
            " "
            @if token.is_some() { button type="submit" #save { "Save" } }
            @else { " (saving needs a login)" }
        }
        @match &preview {
            Some(Ok((_, times))) => {
                h2 { "Preview: next " (times.len()) " fire times of the schedule above" }
                ol #preview-times { @for t in times { li { (t.format("%Y-%m-%d %H:%M:%S UTC")) } } }
            },
            Some(Err(e)) => p.message.bad #preview-error { (e) },
            None => {},
        }
        h2 { "Last runs" }
        (runs_table(&shown.runs))
    };
    let status = match said {
        Some(Said::Failed(_)) => 422,
        _ => 200,
    };
    Reply::html(status, layout(app, r, &row.name, body))
}

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
                            td { (time(run.due_at)) @if run.on_demand { " (on demand)" } }
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

/// A POST that changes a routine (the caller is allowed: see `Auth`).
pub(super) fn act(app: &App, r: &Request) -> Reply {
    let name = r.field("name").unwrap_or("").to_owned();
    let op = &app.operator;
    let result = match r.path.as_str() {
        "/routine/enable" => op.set_active(&name, true).map(|()| "enabled"),
        "/routine/disable" => op.set_active(&name, false).map(|()| "disabled"),
        "/routine/run" => op.send(&name, Utc::now(), RUN_WAIT).map(|sent| {
            match sent {
                Sent::Published { task_id } => {
                    log::info!("http: routine {name}: sent on demand as task {task_id}")
                }
                _ => log::info!("http: routine {name}: run requested"),
            }
            "run"
        }),
        _ => return edit(app, r, &name),
    };
    match result {
        Ok(done) => {
            app.prometheus.forget_counts();
            log::info!("http: routine {name}: {done} from the dashboard");
            Reply::see_other(format!("{}&done={done}", routine_link(&name)))
        }
        Err(e) => routine_with(app, r, Some(Said::Failed(e.to_string())), None),
    }
}

fn edit(app: &App, r: &Request, name: &str) -> Reply {
    let draft = Draft {
        schedule: r.field("schedule").unwrap_or("").to_owned(),
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
            ..Change::default()
        })
    })();
    let result =
        change.and_then(|change| app.operator.edit(name, &change).map_err(|e| e.to_string()));
    match result {
        Ok(()) => {
            app.prometheus.forget_counts();
            log::info!("http: routine {name}: edited from the dashboard");
            Reply::see_other(format!("{}&done=saved", routine_link(name)))
        }
        Err(e) => routine_with(app, r, Some(Said::Failed(e)), Some(draft)),
    }
}

/// `/beats`: the beats, and this beat's view of the database and broker.
pub(super) fn beats(app: &App, r: &Request) -> Reply {
    let health = app.monitor.health();
    let beats = app.operator.beats();
    let body = html! {
        h2 { "This beat" }
        dl {
            dt { "Id" } dd { code { (app.monitor.beat_id()) } }
            dt { "Health" } dd {
                @match &health.reason { None => span.ok { "healthy" }, Some(reason) => span.error { (reason) } }
            }
            dt { "Database" } dd { (app.operator.store().url()) " — "
                @if health.database_up { span.ok { "up" } } @else { span.error { "down" } } }
            dt { "Broker" } dd { @match health.broker_up {
                None => "not configured",
                Some(true) => span.ok { "up" },
                Some(false) => span.error { "down" },
            } }
            dt { "Last good pass" } dd { @match health.last_pass { Some(t) => (t.format("%Y-%m-%d %H:%M:%S%.3f UTC")), None => "none yet" } }
            @if let Some(e) = &health.last_error { dt { "Last error" } dd.error { (e) } }
        }
        h2 { "Beats" }
        @match &beats {
            Err(e) => p.message.bad { "Cannot read the beats: " (e) },
            Ok(beats) => table #beats {
                thead { tr {
                    th { "Beat" } th { "Host" } th { "Pid" } th { "Version" } th { "Started" }
                    th { "Heartbeat" } th { "State" } th { "Broker" } th { "In-process tasks" }
                } }
                tbody { @for b in beats {
                    tr {
                        td { code { (b.id) } }
                        td { (b.host) } td { (b.pid) } td { (b.version) }
                        td { (time(b.started_at)) } td { (time(b.heartbeat_at)) }
                        td { @if app.operator.is_alive(b) { span.ok { "alive" } }
                             @else if b.stopped_at.is_some() { "stopped" }
                             @else { span.error { "dead" } } }
                        td { @if b.broker { "yes" } @else { "no" } }
                        td { (b.tasks.join(", ")) }
                    }
                } }
            },
        }
    };
    Reply::html(200, layout(app, r, "Beats", body))
}

/// `/login`.
pub(super) fn login(app: &App, r: &Request, failed: Option<&str>) -> Reply {
    let body = html! {
        @if let Some(why) = failed { p.message.bad { (why) } }
        @if app.auth.has_token() {
            form method="post" action="/login" {
                label { "Operator token " input type="password" name="token" autocomplete="current-password" autofocus; }
                " "
                button type="submit" #login { "Log in" }
            }
        } @else {
            p { "There is nothing to log in to: no http_token is configured." }
        }
    };
    let status = if failed.is_some() { 401 } else { 200 };
    Reply::html(status, layout(app, r, "Log in", body))
}
