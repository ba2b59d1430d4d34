//! The subcommands: each calls `celery_diesel_kit::ops` and prints the
//! outcome as aligned text or one JSON document.

use crate::celery_app::CeleryApp;
use crate::declared;
use crate::output::{self, Table};
use crate::serve::Source;
use crate::{CeleryAppArgs, Cli, Command, ScheduleArgs, SyncArgs};
use anyhow::Context;
use celery_diesel_kit::ops::{self, Change, NewRoutineSpec, Operator, Sent};
use celery_diesel_kit::{Actor, Config, OperatorToken, Via};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// Runs the command line; returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::from_env()?,
    };
    let json = cli.json;
    let me = match &cli.as_name {
        Some(name) => Actor::new(name, Via::Cli),
        None => Actor::os_user(Via::Cli),
    };
    let command = match cli.command {
        None => {
            let source = source(cli.routines, cli.celery);
            return crate::serve::serve(config, source, cli.http).map(|()| 0);
        }
        Some(Command::Serve(args)) => {
            let celery = CeleryAppArgs {
                celery_app: args.celery.celery_app.or(cli.celery.celery_app),
                python: args.celery.python.or(cli.celery.python),
            };
            let source = source(args.routines.or(cli.routines), celery);
            return crate::serve::serve(config, source, args.http.or(cli.http)).map(|()| 0);
        }
        Some(Command::Sync(args)) => return sync(config, &me, args, json),
        Some(Command::Next(args)) => return next(&config, args, json),
        Some(Command::Token { name }) => return token(&name, json),
        Some(Command::Migrate) => return migrate(config, json),
        Some(command) => command,
    };
    let op = Operator::connect(config)?;
    match command {
        Command::Serve(_)
        | Command::Sync(_)
        | Command::Next(_)
        | Command::Migrate
        | Command::Token { .. } => {
            unreachable!("handled above")
        }
        Command::List(args) => list(&op, args.errors, args.inactive, json),
        Command::Show { name } => show(&op, &name, json),
        Command::History(args) => history(&op, args, json),
        Command::Log(args) => log(&op, args, json),
        Command::Add(args) => add(&op, &me, args, json),
        Command::Edit(args) => edit(&op, &me, args, json),
        Command::Enable { name } => {
            op.set_active(&me, &name, true)?;
            done(json, "enabled", &name)
        }
        Command::Disable { name } => {
            op.set_active(&me, &name, false)?;
            done(json, "disabled", &name)
        }
        Command::Remove { name } => {
            op.remove(&me, &name)?;
            done(json, "removed", &name)
        }
        Command::Send(args) => send(&op, &me, &args.name, args.wait, json),
        Command::Backfill(args) => crate::backfill::backfill(&op, args, json),
        Command::Check => check(&op, json),
        Command::Beats => beats(&op, json),
    }
}

/// Where a serving beat's routines are declared: a Celery app, or a file.
fn source(routines: Option<std::path::PathBuf>, celery: CeleryAppArgs) -> Source {
    match celery.celery_app {
        Some(app) => Source::CeleryApp(CeleryApp {
            app,
            python: celery.python,
        }),
        None => Source::File(routines),
    }
}

/// `beat sync`: the routines of a file or a Celery app (whose
/// configuration applies, under the environment) synced now.
fn sync(mut config: Config, me: &Actor, args: SyncArgs, json: bool) -> anyhow::Result<i32> {
    let declared = match (args.celery.celery_app, args.routines) {
        (Some(app), _) => {
            let app = CeleryApp {
                app,
                python: args.celery.python,
            };
            let exported = app.export()?;
            exported.configure(&mut config)?;
            exported.declared
        }
        (None, Some(path)) => declared::one_by_one(&declared::read_array(&path)?),
        (None, None) => anyhow::bail!("beat sync needs --routines FILE or --celery-app APP"),
    };
    // The tables are created or upgraded first, as a starting beat does.
    let op = if config.create_table {
        Operator::migrate(config)?
    } else {
        Operator::connect(config)?
    };
    declared::sync(&op, me, declared, &args.keep, json)
}

/// `beat migrate`: creates or updates the tables.
fn migrate(config: Config, json: bool) -> anyhow::Result<i32> {
    let op = Operator::migrate(config)?;
    if json {
        println!("{}", json!({ "ok": true, "migrated": op.store().url() }));
    } else {
        println!("{}: tables are up to date", op.store().url());
    }
    Ok(0)
}

/// `beat add`: a new routine, from the flags.
fn add(op: &Operator, me: &Actor, args: crate::AddArgs, json: bool) -> anyhow::Result<i32> {
    let Some(schedule) = schedule(&args.schedule, args.fields.timezone.as_deref()) else {
        return usage("beat add needs a schedule: --every or --crontab");
    };
    let mut spec = NewRoutineSpec::new(&args.name, &args.task, schedule);
    if let Some(text) = &args.fields.args {
        spec.args = Some(ops::parse_args(&args.name, text)?);
    }
    if let Some(kwargs) = args.fields.kwargs {
        spec.kwargs = kwargs;
    }
    if let Some(options) = args.fields.options {
        spec.options = options;
    }
    spec.active = !args.inactive;
    op.add(me, &spec)?;
    done(json, "added", &args.name)
}

/// `beat edit`: changes the columns the flags give (at least one).
fn edit(op: &Operator, me: &Actor, args: crate::EditArgs, json: bool) -> anyhow::Result<i32> {
    let mut change = Change::default();
    change.task = args.task;
    change.schedule = schedule(&args.schedule, None);
    change.timezone = args.fields.timezone;
    change.kwargs = args.fields.kwargs;
    change.options = args.fields.options;
    let nothing = change.task.is_none()
        && change.schedule.is_none()
        && change.timezone.is_none()
        && change.kwargs.is_none()
        && change.options.is_none()
        && args.fields.args.is_none();
    if nothing {
        return usage(
            "nothing to change: give --task, --every, --crontab, --timezone, --args, --kwargs or --options",
        );
    }
    if let Some(text) = &args.fields.args {
        change.args = Some(ops::parse_args(&args.name, text)?);
    }
    op.edit(me, &args.name, &change)?;
    done(json, "edited", &args.name)
}

/// The schedule JSON the flags give, if any.
fn schedule(args: &ScheduleArgs, timezone: Option<&str>) -> Option<Value> {
    let mut json = match (&args.every, &args.crontab) {
        (Some(seconds), _) => json!({ "timedelta": seconds }),
        (None, Some(crontab)) => crontab.clone(),
        (None, None) => return None,
    };
    if let (Some(zone), Some(map)) = (timezone, json.as_object_mut()) {
        map.insert("timezone".to_owned(), Value::String(zone.to_owned()));
    }
    Some(json)
}

/// A usage error: exit status 2, as for the ones clap finds.
fn usage(message: &str) -> anyhow::Result<i32> {
    eprintln!("error: {message}\n\nFor more information, try '--help'.");
    Ok(2)
}

fn done(json: bool, what: &str, name: &str) -> anyhow::Result<i32> {
    if json {
        println!("{}", json!({ "ok": true, "routine": name, "action": what }));
    } else {
        println!("routine {name}: {what}; serving beats act on it within their watch interval");
    }
    Ok(0)
}

fn list(op: &Operator, errors: bool, inactive: bool, json: bool) -> anyhow::Result<i32> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut table: Option<Table> = None;
    let mut first = true;
    let mut failed: Option<std::io::Error> = None;
    if json {
        write!(out, "[")?;
    }
    op.list(|views| {
        let views: Vec<_> = views
            .into_iter()
            .filter(|v| !errors || v.row.last_error.is_some())
            .filter(|v| !inactive || !v.row.active)
            .collect();
        let written = (|| -> std::io::Result<()> {
            if json {
                for view in &views {
                    let sep = if first { "\n" } else { ",\n" };
                    first = false;
                    write!(out, "{sep}{}", output::routine_json(view))?;
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = views.iter().map(output::routine_cells).collect();
            // Widths from the first page: a small table is aligned
            // exactly, a million rows are streamed.
            let table = table.get_or_insert_with(|| {
                let table = Table::fit(&output::ROUTINE_HEADER, &rows);
                let _ = table.header(&mut out, &output::ROUTINE_HEADER);
                table
            });
            for row in &rows {
                table.line(&mut out, row)?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        // A closed pipe (`beat list | head`) is not a failure.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(0);
        }
        return Err(e.into());
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    } else if table.is_none() {
        output::Table::fit(&output::ROUTINE_HEADER, &[])
            .header(&mut out, &output::ROUTINE_HEADER)?;
    }
    out.flush()?;
    Ok(0)
}

fn show(op: &Operator, name: &str, json: bool) -> anyhow::Result<i32> {
    let ops::Shown {
        view,
        next,
        runs,
        edits,
        ..
    } = op.show(name, 5, 10, 5, Utc::now())?;
    if json {
        let next: Vec<Value> = next
            .iter()
            .map(|t| json!({ "utc": output::iso_utc(*t), "local": view.local(*t) }))
            .collect();
        let runs: Vec<Value> = runs.iter().map(output::run_json).collect();
        let edits: Vec<Value> = edits.iter().map(output::edit_json).collect();
        println!(
            "{}",
            json!({ "routine": output::routine_json(&view), "next": next, "runs": runs, "edits": edits })
        );
        return Ok(0);
    }
    let row = &view.row;
    let fields = [
        ("name", row.name.clone()),
        ("id", row.id.clone()),
        ("task", row.task.clone()),
        ("schedule", format!("{} {}", view.words, row.schedule)),
        ("zone", view.zone.name().to_owned()),
        ("active", if row.active { "yes" } else { "no" }.to_owned()),
        ("args", row.args.clone().unwrap_or_else(|| "[]".to_owned())),
        (
            "kwargs",
            row.kwargs.clone().unwrap_or_else(|| "{}".to_owned()),
        ),
        (
            "options",
            row.options.clone().unwrap_or_else(|| "{}".to_owned()),
        ),
        ("last run (UTC)", output::naive(row.last_run_at)),
        ("runs", row.total_run_count.unwrap_or(0).to_string()),
        (
            "last error",
            row.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ),
    ];
    for (key, value) in fields {
        println!("{key:<15} {value}");
    }
    println!();
    println!("next runs:");
    match (&view.over, next.is_empty()) {
        (Some(end), _) => println!("  none: {}, {end}", end.word()),
        (None, true) => println!("  none (inactive, invalid, or the schedule has ended)"),
        (None, false) => {}
    }
    if let (Some(due), Some(dispatch)) = (row.next_due_at, row.next_run_at) {
        println!(
            "  (the next, due {}, is dispatched at {} by its jitter)",
            output::naive(Some(due)),
            output::naive(Some(dispatch))
        );
    }
    for t in &next {
        println!("  {}", output::local_and_utc(view.local(*t), *t, view.zone));
    }
    println!();
    println!("last runs:");
    if runs.is_empty() {
        println!("  none recorded");
    } else {
        let rows: Vec<Vec<String>> = runs.iter().map(output::run_cells).collect();
        output::print_table(&output::RUN_HEADER, &rows)?;
    }
    println!();
    println!("last changes:");
    if edits.is_empty() {
        println!("  none recorded");
    } else {
        let rows: Vec<Vec<String>> = edits.iter().map(output::edit_cells).collect();
        output::print_table(&output::EDIT_HEADER, &rows)?;
    }
    Ok(0)
}

fn log(op: &Operator, args: crate::LogArgs, json: bool) -> anyhow::Result<i32> {
    let edits = op.edits(args.name.as_deref(), args.since, args.limit)?;
    if json {
        let edits: Vec<Value> = edits.iter().map(output::edit_json).collect();
        println!("{}", Value::Array(edits));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = edits.iter().map(output::edit_cells).collect();
    output::print_table(&output::EDIT_HEADER, &rows)?;
    Ok(0)
}

/// `beat token NAME`: a new random token, and its line for the tokens file.
fn token(name: &str, json: bool) -> anyhow::Result<i32> {
    use sha2::Digest;
    // Two version-4 uuids: 244 random bits, as 64 hex digits.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let operator = OperatorToken::hashed(name, sha2::Sha256::digest(token.as_bytes()).into())?;
    let line = operator.file_line().unwrap_or_default();
    if json {
        println!("{}", json!({ "name": name, "token": token, "line": line }));
    } else {
        println!("token for {name} (give it to them; it is not kept anywhere):\n  {token}");
        println!("line for http_tokens_file:\n  {line}");
    }
    Ok(0)
}

fn history(op: &Operator, args: crate::HistoryArgs, json: bool) -> anyhow::Result<i32> {
    let runs = op.history(args.name.as_deref(), args.failed, args.since, args.limit)?;
    if json {
        let runs: Vec<Value> = runs.iter().map(output::run_json).collect();
        println!("{}", Value::Array(runs));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = runs.iter().map(output::run_cells).collect();
    output::print_table(&output::RUN_HEADER, &rows)?;
    Ok(0)
}

fn send(op: &Operator, me: &Actor, name: &str, wait: f64, json: bool) -> anyhow::Result<i32> {
    let wait =
        Duration::try_from_secs_f64(wait).context("--wait must be a number of seconds ≥ 0")?;
    let sent = op.send(me, name, Utc::now(), wait)?;
    let (task_id, via, outcome, error) = match &sent {
        Sent::Published { task_id } => (Some(task_id.clone()), "celery", None, None),
        Sent::Taken { run } => (
            run.as_ref().map(|r| r.task_id.clone()),
            "beat",
            run.as_ref().map(|r| r.outcome.as_str()),
            run.as_ref().and_then(|r| r.error.clone()),
        ),
        _ => (None, "beat", None, None),
    };
    let failed = outcome == Some("failed");
    if json {
        println!(
            "{}",
            json!({ "ok": !failed, "routine": name, "via": via, "task_id": task_id,
                    "outcome": outcome, "error": error })
        );
    } else if failed {
        eprintln!(
            "error: routine {name}: a beat took the request but could not run it: {}",
            error.unwrap_or_default()
        );
    } else {
        match (via, task_id) {
            ("celery", Some(id)) => println!("routine {name}: published to Celery as task {id}"),
            (_, Some(id)) => println!(
                "routine {name}: taken by a beat as task {id} ({})",
                outcome.unwrap_or_default()
            ),
            (_, None) => println!("routine {name}: taken by a beat"),
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn check(op: &Operator, json: bool) -> anyhow::Result<i32> {
    let (problems, tasks_checked) = op.check()?;
    if json {
        let list: Vec<Value> = problems
            .iter()
            .map(|p| json!({ "name": p.name, "id": p.id, "reason": p.reason }))
            .collect();
        println!(
            "{}",
            json!({ "ok": problems.is_empty(), "problems": list, "tasks_checked": tasks_checked })
        );
    } else {
        if !tasks_checked {
            eprintln!(
                "note: no beat is alive and no broker_url is set: task names were not checked"
            );
        }
        if problems.is_empty() {
            println!("every routine is valid");
        } else {
            let rows: Vec<Vec<String>> = problems
                .iter()
                .map(|p| vec![p.name.clone(), p.reason.clone()])
                .collect();
            output::print_table(&["NAME", "PROBLEM"], &rows)?;
        }
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

fn beats(op: &Operator, json: bool) -> anyhow::Result<i32> {
    let beats = op.beats()?;
    if json {
        let list: Vec<Value> = beats
            .iter()
            .map(|b| output::beat_json(b, op.is_alive(b)))
            .collect();
        println!("{}", Value::Array(list));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = beats
        .iter()
        .map(|b| output::beat_cells(b, op.is_alive(b)))
        .collect();
    output::print_table(&output::BEAT_HEADER, &rows)?;
    Ok(0)
}

fn next(config: &Config, args: crate::NextArgs, json: bool) -> anyhow::Result<i32> {
    let zone = match &args.timezone {
        Some(name) => name
            .parse::<chrono_tz::Tz>()
            .map_err(|_| anyhow::anyhow!("unknown time zone {name:?}"))?,
        None => config.timezone,
    };
    let (schedule, runs) = ops::preview(
        &args.schedule,
        zone,
        args.count,
        args.after.unwrap_or_else(Utc::now),
    )?;
    let shown = schedule
        .timezone()
        .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
        .unwrap_or(zone);
    let words = ops::describe(&serde_json::from_str(&args.schedule).unwrap_or(Value::Null));
    let local = |t: DateTime<Utc>| {
        t.with_timezone(&shown)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    };
    if json {
        let list: Vec<Value> = runs
            .iter()
            .map(|t| json!({ "utc": output::iso_utc(*t), "local": local(*t) }))
            .collect();
        println!(
            "{}",
            json!({ "schedule": words, "timezone": shown.name(), "runs": list })
        );
        return Ok(0);
    }
    println!("{words} (times in {})", shown.name());
    for t in runs {
        println!("  {}", output::local_and_utc(local(t), t, shown));
    }
    Ok(0)
}
