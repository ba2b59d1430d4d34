//! The dashboard's pages, rendered on the server (maud escapes every value
//! it is given; nothing here writes raw HTML but the style sheet).
//!
//! - `/`: the routines, searched by name or task, filtered by state, a
//!   page at a time (keyset pages: as cheap on the last page as the first);
//! - `/routine?name=` (`routine`): one routine: its schedule in words,
//!   zone, next 10 fire times, last runs, last edits (who changed what);
//!   enable, disable, run now, edit with a preview, backfill with a
//!   preview (`backfill`);
//! - `/beats`: the beats, and the database and broker as this beat sees
//!   them;
//! - `/login`.
//!
//! Every action calls the same [`Operator`](crate::ops::Operator) function
//! as the `beat` command line, as the operator logged in.

mod backfill;
mod routine;

pub(super) use routine::{act, routine};

use super::auth::Caller;
use super::{encode, App, Reply, Request};
use crate::ops::RoutineView;
use crate::store::{RoutineCounts, RoutineQuery, RoutineState};
use chrono::NaiveDateTime;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Routines per page.
const PAGE_SIZE: usize = 50;

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
del{color:#a4161a}ins{color:#1b7f3b;text-decoration:none}
";

/// The form token of a caller who may change things (`""` for a bearer
/// caller, who needs none); `None` for a read-only caller.
fn csrf(r: &Request) -> Option<&str> {
    match &r.caller {
        Caller::Session { csrf, .. } => Some(csrf),
        Caller::Bearer { .. } => Some(""),
        _ => None,
    }
}

/// A page: the header (for a caller who may read: the links, and the
/// database's and broker's state), a banner saying what the caller may do,
/// the title and `body`.
fn layout(app: &App, r: &Request, title: &str, body: Markup) -> String {
    let health = app.monitor.health();
    let reader = app.auth.may_read(&r.caller);
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
                    @if reader {
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
                    } @else {
                        span.state { "beat" }
                    }
                    @match &r.caller {
                        Caller::Session { csrf, operator, .. } => form method="post" action="/logout" {
                            span #operator { (operator) } " "
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        },
                        Caller::Bearer { operator } => span #operator { (operator) },
                        _ if app.auth.has_operators() => a href="/login" { "Log in" },
                        _ => {},
                    }
                }
                main {
                    @if !app.auth.has_operators() {
                        p.banner { "Read-only: no http_token or http_tokens is configured, so nothing can be changed here." }
                    } @else if reader && csrf(r).is_none() {
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
    let counts = app.prometheus.db_counts();
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
                    filter_link(&search, state),
                    encode(&v.row.name),
                    encode(&v.row.id)
                )
            });
            (
                200,
                html! {
                    (search_form(&search, state))
                    @if let Some(c) = counts { (state_counts(&search, &c.routines)) }
                    (routines_table(&views))
                    @if views.is_empty() { p { "No routine matches." } }
                    p {
                        @if after.is_some() { a href=(filter_link(&search, state)) { "« first page" } " " }
                        @if let Some(next) = next { a #next href=(next) { "next page »" } }
                    }
                },
            )
        }
    };
    Reply::html(status, layout(app, r, "Routines", body))
}

/// The first page of the routines matching `search`, in `state` (any if
/// `None`).
fn filter_link(search: &str, state: Option<RoutineState>) -> String {
    format!(
        "/?q={}&state={}",
        encode(search),
        state.map_or("", RoutineState::as_str)
    )
}

/// The search box and the state filter.
fn search_form(search: &str, state: Option<RoutineState>) -> Markup {
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
    }
}

/// The routines by state (from the database's counts), each a link to
/// the routines in that state that match `search`.
fn state_counts(search: &str, c: &RoutineCounts) -> Markup {
    html! {
        p {
            a href=(filter_link(search, Some(RoutineState::Active))) { (c.active) " active" } " · "
            a href=(filter_link(search, Some(RoutineState::Inactive))) { (c.inactive) " inactive" } " · "
            a href=(filter_link(search, Some(RoutineState::Error))) { (c.error) " in error" }
            " (counted within the last 15 s)"
        }
    }
}

/// One page of routines, a row each.
fn routines_table(views: &[RoutineView]) -> Markup {
    html! {
        table #routines {
            thead { tr {
                th { "Name" } th { "Task" } th { "Schedule" } th { "Zone" } th { "State" }
                th { "Next run" } th { "Last run" } th { "Runs" } th { "Error" }
            } }
            tbody {
                @for v in views {
                    tr {
                        td { a href=(routine_link(&v.row.name)) { (v.row.name) } }
                        td { code { (v.row.task) } }
                        td { (v.words) }
                        td { (v.zone.name()) }
                        td {
                            (pill(state_of(v.row.active, v.row.last_error.is_some())))
                            @if let Some(end) = &v.over { " " (end.word()) }
                        }
                        td { @if let Some(t) = v.row.next_run_at_utc() { (v.local(t)) } @else { "–" } }
                        td { @if let Some(t) = v.row.last_run_at_utc() { (v.local(t)) } @else { "–" } }
                        td { (v.row.total_run_count.unwrap_or(0)) }
                        td.error { (v.row.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
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

/// `/login`: `failed` says why the last try did not log in.
pub(super) fn login(app: &App, r: &Request, failed: Option<&str>) -> Reply {
    let body = html! {
        @if let Some(why) = failed { p.message.bad { (why) } }
        @if app.auth.has_operators() {
            form method="post" action="/login" {
                label { "Operator token " input type="password" name="token" autocomplete="current-password" autofocus; }
                " "
                button type="submit" #login { "Log in" }
            }
        } @else {
            p { "There is nothing to log in to: no http_token or http_tokens is configured." }
        }
    };
    let status = if failed.is_some() { 401 } else { 200 };
    Reply::html(status, layout(app, r, "Log in", body))
}
