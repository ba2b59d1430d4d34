//! The chaos soak's accounting: every run the beats recorded, checked
//! against what reached the broker and the Celery worker, what the
//! in-process task logged, the table, the routines' edits and the fault
//! log. Pure: the soak gathers the facts, [`account`] judges them, and
//! its own tests feed it made-up facts to see it fail.

use super::faults::Happened;
use celery_diesel_kit::Schedule;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A routine of the soak, as the test made and edited it.
#[derive(Debug, Clone)]
pub struct Routine {
    pub id: String,
    /// Its first name, carried in its kwargs: what its messages and its
    /// task's log lines name it by, whatever it is renamed to.
    pub tag: String,
    /// Sent to Celery (else run in-process).
    pub celery: bool,
    /// Sent to the queue a real Celery worker consumes (else to the queue
    /// the test drains).
    pub worker: bool,
    /// Its schedule JSON when it was inserted.
    pub schedule: String,
    /// When it was inserted, if during the soak (before and after the SQL).
    pub born: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Its edits, in order.
    pub changes: Vec<Change>,
}

impl Routine {
    /// Its schedule JSON after its last edit.
    pub fn schedule_now(&self) -> &str {
        self.changes
            .iter()
            .rev()
            .find_map(|c| match &c.what {
                Changed::Schedule(s) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or(&self.schedule)
    }

    pub fn deleted(&self) -> bool {
        self.changes.iter().any(|c| c.what == Changed::Deleted)
    }

    /// Whether it runs after its last edit: not deleted, nor disabled.
    pub fn active(&self) -> bool {
        !self.deleted()
            && self.changes.iter().rev().find_map(|c| match c.what {
                Changed::Active(a) => Some(a),
                _ => None,
            }) != Some(false)
    }
}

/// An edit by plain SQL: just before the statement, and once it committed.
#[derive(Debug, Clone)]
pub struct Change {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub what: Changed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    Schedule(String),
    Active(bool),
    Renamed(String),
    Deleted,
}

impl Changed {
    /// Whether the beats plan the routine anew after it (a rename keeps
    /// its planned run).
    fn replans(&self) -> bool {
        !matches!(self, Changed::Renamed(_))
    }
}

/// A record of the history.
#[derive(Debug, Clone)]
pub struct Run {
    pub routine_id: String,
    pub due: DateTime<Utc>,
    pub dispatched: DateTime<Utc>,
    pub task_id: String,
    pub outcome: String,
    /// When an in-process run ended (or was found lost).
    pub finished: Option<DateTime<Utc>>,
}

/// Everything the soak gathered.
pub struct Facts<'a> {
    pub routines: &'a [Routine],
    pub runs: &'a [Run],
    /// Task ids of the messages taken off the drained queue, with the tag
    /// their kwargs carry.
    pub messages: &'a [(String, String)],
    /// Task ids the Celery worker ran, with their tag.
    pub worker_calls: &'a [(String, String)],
    /// Log lines of the in-process `demo.hello` runs: (tag, due time).
    pub hello_lines: &'a [(String, DateTime<Utc>)],
    /// The table at the end: each routine's next due time (active rows)
    /// and its `total_run_count`.
    pub next_due: &'a HashMap<String, DateTime<Utc>>,
    pub total_run_count: &'a HashMap<String, i64>,
    pub faults: &'a [Happened],
    /// When some beat was alive, not frozen, and reached its database and
    /// broker: sorted, apart.
    pub able: &'a [(DateTime<Utc>, DateTime<Utc>)],
    /// Whether the broker may hold a run twice (RabbitMQ cannot drop a
    /// repeat; Redis does).
    pub repeats_allowed: bool,
    pub db_timeout: Duration,
    /// How long an in-process run's end may take to reach the database: a
    /// beat's housekeeper writes outcomes after whatever it is doing, and
    /// again after a failed write.
    pub outcome_lag: Duration,
    /// How long a silent beat's in-process runs stay open (and its
    /// routines skip their next runs) before another beat marks them lost.
    pub dead_after: Duration,
    /// How long an edit may take to reach the beats: the watch interval.
    pub lag: Duration,
}

/// What the accounting found.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Distinct Celery runs recorded, and in-process runs made.
    pub celery_runs: usize,
    pub in_process_runs: usize,
    /// Extra copies of a Celery run the broker or worker got.
    pub repeats: usize,
    /// Due times with no run, each with the fault that explains it.
    pub missed: Vec<(String, DateTime<Utc>, &'static str)>,
    /// In-process runs skipped because their previous run was still open,
    /// and runs lost with their beat.
    pub skipped: usize,
    pub lost: usize,
    /// Of the skipped: those whose previous run had ended, its end not yet
    /// written (see `skipped_for_an_open_run`), and the longest such wait.
    pub skipped_after_end: usize,
    pub longest_unseen_end: TimeDelta,
    /// Messages with no record: published by a claim a fault undid, whose
    /// routine was edited before another claim recorded it.
    pub unrecorded_after_edit: usize,
    /// The longest wait past a due time while some beat was alive, and
    /// while no fault was under way (routine, due time, wait).
    pub longest_wait: Option<(String, DateTime<Utc>, TimeDelta)>,
    pub longest_calm_wait: Option<(String, DateTime<Utc>, TimeDelta)>,
    /// What is wrong, one line each.
    pub violations: Vec<String>,
}

/// Runs due outside every fault's window wait no longer than this.
pub const CALM_WAIT: TimeDelta = TimeDelta::seconds(3);

/// Judges the facts.
pub fn account(facts: &Facts) -> Accounting {
    let mut acc = Accounting::default();
    let windows = windows(facts);
    let by_id: HashMap<&str, &Routine> =
        facts.routines.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut runs_of: HashMap<&str, Vec<&Run>> = HashMap::new();
    for run in facts.runs {
        match by_id.get(run.routine_id.as_str()) {
            Some(_) => runs_of
                .entry(run.routine_id.as_str())
                .or_default()
                .push(run),
            None => acc
                .violations
                .push(format!("a run of no routine of the soak: {run:?}")),
        }
    }
    check_deliveries(facts, &by_id, &runs_of, &windows, &mut acc);
    for routine in facts.routines {
        let mut runs = runs_of.remove(routine.id.as_str()).unwrap_or_default();
        runs.sort_by_key(|r| (r.due, r.dispatched));
        check_routine(facts, routine, &runs, &windows, &mut acc);
        waits(facts, routine, &runs, &windows, &mut acc);
    }
    check_hello_lines(facts, &by_id, &mut acc);
    acc
}

/// A fault's window of explanation (see [`Happened::window`]).
struct Window<'a> {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    happened: &'a Happened,
}

fn windows<'a>(facts: &Facts<'a>) -> Vec<Window<'a>> {
    let celery: std::collections::HashSet<&str> = facts
        .routines
        .iter()
        .filter(|r| r.celery)
        .map(|r| r.id.as_str())
        .collect();
    let mut all: Vec<DateTime<Utc>> = facts.runs.iter().map(|r| r.dispatched).collect();
    let mut published: Vec<DateTime<Utc>> = facts
        .runs
        .iter()
        .filter(|r| celery.contains(r.routine_id.as_str()))
        .map(|r| r.dispatched)
        .collect();
    all.sort();
    published.sort();
    let first_after =
        |times: &[DateTime<Utc>], t| times.get(times.partition_point(|d| *d < t)).copied();
    let mut windows: Vec<Window> = facts
        .faults
        .iter()
        .map(|happened| {
            let times = if happened.fault.broker_only() {
                &published
            } else {
                &all
            };
            let (from, until) = happened.window(facts.db_timeout, first_after(times, happened.to));
            Window {
                from,
                until,
                happened,
            }
        })
        .collect();
    windows.sort_by_key(|w| !w.happened.fault.global());
    windows
}

/// The fault that explains what befell a run due at `due`, the global
/// ones first. A broker's fault explains an in-process run's too: one
/// claim takes both kinds of rows, and in-process rows wait on the Celery
/// rows' publish (a slow broker holds them; a lost one, until the beat
/// notices and claims the in-process rows alone).
fn explain<'a>(windows: &'a [Window], due: DateTime<Utc>) -> Option<&'a Happened> {
    windows
        .iter()
        .find(|w| w.from <= due && due <= w.until)
        .map(|w| w.happened)
}

/// Every Celery record has its message (or its worker call), every message
/// its record, and copies beyond one only where the broker cannot drop
/// them, each explained by a fault begun between the run's due time and
/// its record.
fn check_deliveries(
    facts: &Facts,
    by_id: &HashMap<&str, &Routine>,
    runs_of: &HashMap<&str, Vec<&Run>>,
    windows: &[Window],
    acc: &mut Accounting,
) {
    let (mut messages, mut calls) = (copies(facts.messages), copies(facts.worker_calls));
    let mut recorded: HashMap<&str, usize> = HashMap::new();
    for run in facts.runs.iter().filter(|r| r.outcome == "published") {
        let Some(routine) = by_id.get(run.routine_id.as_str()) else {
            continue;
        };
        *recorded.entry(run.task_id.as_str()).or_default() += 1;
        if recorded[run.task_id.as_str()] > 1 {
            acc.violations.push(format!(
                "{}: run due {} recorded twice",
                routine.tag, run.due
            ));
            continue;
        }
        acc.celery_runs += 1;
        let got = if routine.worker {
            &mut calls
        } else {
            &mut messages
        };
        let copies = got.remove(run.task_id.as_str()).unwrap_or(0);
        let place = if routine.worker {
            "the Celery worker"
        } else {
            "the broker"
        };
        if copies == 0 {
            acc.violations.push(format!(
                "{}: run due {} recorded, never reached {place}",
                routine.tag, run.due
            ));
        }
        if copies > 1 {
            acc.repeats += copies - 1;
            // A fault under way between the due time and the record.
            let cause = windows
                .iter()
                .find(|w| w.from <= run.dispatched + TimeDelta::seconds(1) && w.until >= run.due)
                .map(|w| w.happened);
            if !facts.repeats_allowed || cause.is_none() {
                acc.violations.push(format!(
                    "{}: run due {} reached {place} {copies} times (fault under way since it fell due: {:?})",
                    routine.tag, run.due, cause.map(|h| super::faults::describe(&h.fault))
                ));
            }
        }
    }
    // What reached the broker or the worker with no record.
    let tags: HashMap<&str, &Routine> =
        facts.routines.iter().map(|r| (r.tag.as_str(), r)).collect();
    for (items, left) in [(facts.messages, messages), (facts.worker_calls, calls)] {
        for (id, n) in left {
            let tag = items
                .iter()
                .find(|(i, _)| i == id)
                .map_or("", |(_, t)| t.as_str());
            match tags
                .get(tag)
                .and_then(|r| undone_then_edited(r, runs_of, id, windows))
            {
                Some(_) => acc.unrecorded_after_edit += 1,
                None => acc.violations.push(format!(
                    "task id {id} (routine {tag:?}) reached the broker {n} time(s) with no record"
                )),
            }
        }
    }
}

/// How many times each task id came.
fn copies(items: &[(String, String)]) -> HashMap<&str, usize> {
    let mut n: HashMap<&str, usize> = HashMap::new();
    for (id, _) in items {
        *n.entry(id.as_str()).or_default() += 1;
    }
    n
}

/// For a message of `routine` with no record: the due time it stands for
/// if it is the run after one recorded, a fault's window covers that due
/// time, and the routine was planned anew (rescheduled, disabled, deleted)
/// within a minute after it, so that no claim came back to that due time.
fn undone_then_edited(
    routine: &Routine,
    runs_of: &HashMap<&str, Vec<&Run>>,
    task_id: &str,
    windows: &[Window],
) -> Option<DateTime<Utc>> {
    let schedules = schedules(routine);
    let runs = runs_of.get(routine.id.as_str())?;
    let due = runs.iter().find_map(|run| {
        schedules
            .iter()
            .filter_map(|s| s.next_after(run.due))
            .find(|next| celery_diesel_kit::task_id(&routine.id, *next) == task_id)
    })?;
    explain(windows, due)?;
    routine
        .changes
        .iter()
        .any(|c| c.what.replans() && c.from > due && c.from < due + TimeDelta::minutes(1))
        .then_some(due)
}

/// Every schedule a routine had.
fn schedules(routine: &Routine) -> Vec<Schedule> {
    std::iter::once(routine.schedule.as_str())
        .chain(routine.changes.iter().filter_map(|c| match &c.what {
            Changed::Schedule(s) => Some(s.as_str()),
            _ => None,
        }))
        .filter_map(|s| Schedule::parse(s).ok())
        .collect()
}

/// How late after its recorded time a run may have been claimed. A run
/// records the time its pass began: the pass plans edited rows, then
/// claims batch after batch, each waiting for a connection and for its
/// broker. A normal pass lasts well under a second; one that a fault
/// drew out (a slow or lost database or broker, a frozen beat) may claim
/// as late as the fault lasted, and a few seconds more.
fn claimed_by(windows: &[Window], dispatched: DateTime<Utc>) -> DateTime<Utc> {
    let drawn_out = windows
        .iter()
        .filter(|w| w.from <= dispatched && dispatched <= w.until)
        .map(|w| w.happened.to - w.happened.from + TimeDelta::seconds(3))
        .max()
        .unwrap_or(TimeDelta::zero());
    dispatched + drawn_out.max(TimeDelta::seconds(1))
}

/// Where a run stands among its routine's edits: in the stretch after
/// the `k`th edit that planned it anew, or in the moments an edit was
/// reaching the beats (`None`). The run was claimed between `dispatched`
/// and `claimed_by`.
fn stretch(
    routine: &Routine,
    (dispatched, claimed_by): (DateTime<Utc>, DateTime<Utc>),
    lag: TimeDelta,
) -> Option<usize> {
    let mut k = 0;
    for change in routine.changes.iter().filter(|c| c.what.replans()) {
        if dispatched > change.to + lag {
            k += 1;
        } else if claimed_by >= change.from {
            return None;
        }
    }
    Some(k)
}

/// When the routine's runs are owed from, for a run dispatched at
/// `dispatched`: the last edit that planned it anew, begun before. A new
/// plan counts from the last run, so its first due time may be past (the
/// routine fires once for it, as after any outage); the due times before
/// the edit were never owed.
fn owed_from(routine: &Routine, dispatched: DateTime<Utc>) -> Option<DateTime<Utc>> {
    routine
        .changes
        .iter()
        .rev()
        .find(|c| c.what.replans() && c.from <= dispatched)
        .map(|c| c.to)
}

/// The schedule of a routine in its `k`th stretch.
fn schedule_in(routine: &Routine, k: usize) -> Option<Schedule> {
    let text = routine
        .changes
        .iter()
        .filter(|c| c.what.replans())
        .take(k)
        .filter_map(|c| match &c.what {
            Changed::Schedule(s) => Some(s.as_str()),
            _ => None,
        })
        .last()
        .unwrap_or(&routine.schedule);
    Schedule::parse(text).ok()
}

/// One routine's runs: none early, none before it existed or while it was
/// disabled or deleted, one record per due time, each stretch's due times
/// on its schedule's grid with every gap a missed due time some fault
/// explains, in-process outcomes that faults explain, and the table's
/// `total_run_count`.
fn check_routine(
    facts: &Facts,
    routine: &Routine,
    runs: &[&Run],
    windows: &[Window],
    acc: &mut Accounting,
) {
    let lag = TimeDelta::from_std(facts.lag).unwrap_or(TimeDelta::MAX);
    let tag = &routine.tag;
    // Disabled or deleted, from the edit's commit (and the lag) until an
    // enable began.
    let mut off: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for (i, change) in routine.changes.iter().enumerate() {
        if matches!(change.what, Changed::Active(false) | Changed::Deleted) {
            let until = routine.changes[i + 1..]
                .iter()
                .find(|c| c.what == Changed::Active(true))
                .map_or(DateTime::<Utc>::MAX_UTC, |c| c.from);
            off.push((change.to + lag, until));
        }
    }
    let mut last: Option<(&Run, usize)> = None;
    // The last in-process run before this one that was not skipped.
    let mut open: Option<&Run> = None;
    for run in runs {
        if run.dispatched < run.due {
            acc.violations.push(format!(
                "{tag}: run due {} dispatched early, at {}",
                run.due, run.dispatched
            ));
        }
        let claimed = (run.dispatched, claimed_by(windows, run.dispatched));
        if routine.born.is_some_and(|(from, _)| claimed.1 < from) {
            acc.violations.push(format!(
                "{tag}: run due {} dispatched before the routine was inserted",
                run.due
            ));
        }
        if let Some((_, until)) = off
            .iter()
            .find(|(from, until)| claimed.0 > *from && claimed.1 < *until)
        {
            acc.violations.push(format!(
                "{tag}: run due {} dispatched at {}, while disabled or deleted (until {until})",
                run.due, run.dispatched
            ));
        }
        if !routine.celery {
            in_process_outcome(facts, routine, run, windows, acc);
            if run.outcome == "skipped" {
                skipped_for_an_open_run(facts, routine, run, open.as_ref(), acc);
            } else {
                open = Some(run);
            }
        } else if run.outcome != "published" {
            acc.violations
                .push(format!("{tag}: Celery run due {} {}", run.due, run.outcome));
        }
        let Some(k) = stretch(routine, claimed, lag) else {
            last = None;
            continue;
        };
        if let Some((prev, pk)) = last {
            if prev.due == run.due {
                acc.violations
                    .push(format!("{tag}: two records of the run due {}", run.due));
            } else if pk == k {
                let owed = owed_from(routine, run.dispatched);
                gaps(routine, k, (prev.due, run.due), owed, windows, acc);
            }
        }
        last = Some((run, k));
    }
    // The tail: from the last run to the next due time the table holds.
    if let (Some((prev, k)), Some(next)) = (last, facts.next_due.get(&routine.id)) {
        let now_k = routine.changes.iter().filter(|c| c.what.replans()).count();
        if k == now_k {
            let owed = owed_from(routine, prev.dispatched);
            gaps(routine, k, (prev.due, *next), owed, windows, acc);
        }
    }
    if let Some(count) = facts.total_run_count.get(&routine.id) {
        let made = runs.iter().filter(|r| r.outcome != "skipped").count() as i64;
        if *count != made {
            acc.violations.push(format!(
                "{tag}: total_run_count {count}, {made} runs recorded"
            ));
        }
    }
}

/// The due times of stretch `k`'s schedule strictly between `from` and
/// `to`: each owed one (not before `owed`) is missed, and must be
/// explained; `to` must be on the grid.
fn gaps(
    routine: &Routine,
    k: usize,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    owed: Option<DateTime<Utc>>,
    windows: &[Window],
    acc: &mut Accounting,
) {
    let Some(schedule) = schedule_in(routine, k) else {
        acc.violations
            .push(format!("{}: a schedule the test cannot read", routine.tag));
        return;
    };
    let mut next = schedule.next_after(from);
    while let Some(due) = next.filter(|d| *d < to) {
        next = schedule.next_after(due);
        if owed.is_some_and(|owed| due < owed) {
            continue;
        }
        match explain(windows, due) {
            Some(h) => acc
                .missed
                .push((routine.tag.clone(), due, super::faults::kind(&h.fault))),
            None => acc.violations.push(format!(
                "{}: run due {due} missed with no fault under way",
                routine.tag
            )),
        }
    }
    if next != Some(to) {
        acc.violations.push(format!(
            "{}: due time {to} off the grid of its schedule after {from} (next would be {next:?})",
            routine.tag
        ));
    }
}

/// Whether a fault of any kind (a slow or lost broker too: on MariaDB a
/// claim waiting on its broker holds locks the outcome writes wait on)
/// may have held up the in-process bookkeeping at `t`: its window, widened
/// by `before` and `after`, covers `t`.
fn held_up(windows: &[Window], t: DateTime<Utc>, before: TimeDelta, after: TimeDelta) -> bool {
    windows
        .iter()
        .any(|w| w.from - before <= t && t <= w.until + after)
}

/// How long an in-process run's end may take to reach the database
/// (`outcome_lag`).
fn in_transit(facts: &Facts) -> TimeDelta {
    TimeDelta::from_std(facts.outcome_lag).unwrap_or(TimeDelta::MAX)
}

/// How long after a fault another beat may find a dead beat's runs open
/// (until it is found dead: `dead_after`, and a heartbeat).
fn found_dead(facts: &Facts) -> TimeDelta {
    TimeDelta::from_std(facts.dead_after).unwrap_or(TimeDelta::MAX) + TimeDelta::seconds(2)
}

/// An in-process run skipped because its previous run was still open as
/// the database saw it: that run had not ended when the skipping pass
/// began, or its end was still on its way to the database. Its beat's
/// housekeeper writes it ([`in_transit`]); a housekeeper held up longer
/// also stops heartbeating, and its beat is found dead and its runs lost
/// ([`found_dead`]): past both, the end was there to be seen.
fn skipped_for_an_open_run(
    facts: &Facts,
    routine: &Routine,
    run: &Run,
    previous: Option<&&Run>,
    acc: &mut Accounting,
) {
    acc.skipped += 1;
    let ended = previous
        .and_then(|p| p.finished)
        .filter(|f| *f <= run.dispatched);
    let Some(end) = ended else {
        if previous.is_none() {
            acc.violations.push(format!(
                "{}: run due {} skipped, with no run before it",
                routine.tag, run.due
            ));
        }
        return;
    };
    let unseen = run.dispatched - end;
    acc.skipped_after_end += 1;
    if acc.longest_unseen_end < unseen {
        acc.longest_unseen_end = unseen;
    }
    if unseen > in_transit(facts) + found_dead(facts) {
        acc.violations.push(format!(
            "{}: run due {} skipped, its previous run ended long before ({:?})",
            routine.tag,
            run.due,
            previous.map(|p| (p.due, p.finished))
        ));
    }
}

/// An in-process run ended well; it was lost (its beat gone before its end
/// was written) only where a fault explains it: one begun before its end
/// could be written ([`in_transit`]), or under way until the dead beat was
/// found dead ([`found_dead`]).
fn in_process_outcome(
    facts: &Facts,
    routine: &Routine,
    run: &Run,
    windows: &[Window],
    acc: &mut Accounting,
) {
    match run.outcome.as_str() {
        "succeeded" => acc.in_process_runs += 1,
        "skipped" => {}
        "lost" => {
            acc.lost += 1;
            acc.in_process_runs += 1;
            if !held_up(
                windows,
                run.dispatched,
                in_transit(facts),
                found_dead(facts),
            ) {
                acc.violations.push(format!(
                    "{}: run due {} lost with no fault under way",
                    routine.tag, run.due
                ));
            }
        }
        other => acc.violations.push(format!(
            "{}: in-process run due {} ended {other:?} after every beat stopped",
            routine.tag, run.due
        )),
    }
}

/// The in-process task's own log: each run it made once, and each run
/// recorded as succeeded made.
fn check_hello_lines(facts: &Facts, by_id: &HashMap<&str, &Routine>, acc: &mut Accounting) {
    let mut lines: BTreeMap<(&str, DateTime<Utc>), usize> = BTreeMap::new();
    for (tag, due) in facts.hello_lines {
        *lines.entry((tag.as_str(), *due)).or_default() += 1;
    }
    for ((tag, due), n) in &lines {
        if *n > 1 {
            acc.violations
                .push(format!("{tag}: in-process run due {due} ran {n} times"));
        }
    }
    let hello: std::collections::HashSet<&str> = facts
        .routines
        .iter()
        .filter(|r| !r.celery && r.tag.starts_with("hello"))
        .map(|r| r.id.as_str())
        .collect();
    for run in facts
        .runs
        .iter()
        .filter(|r| r.outcome == "succeeded" && hello.contains(r.routine_id.as_str()))
    {
        let tag = by_id[run.routine_id.as_str()].tag.as_str();
        if !lines.contains_key(&(tag, run.due)) {
            acc.violations.push(format!(
                "{tag}: run due {} recorded as succeeded, never logged",
                run.due
            ));
        }
    }
}

/// How long the routine's runs waited past their due times (or past the
/// edit that made them due): the longest while a beat was able to serve,
/// and the longest of those due with no fault under way (bounded by
/// [`CALM_WAIT`]).
fn waits(
    facts: &Facts,
    routine: &Routine,
    runs: &[&Run],
    windows: &[Window],
    acc: &mut Accounting,
) {
    let longer = |best: &Option<(String, DateTime<Utc>, TimeDelta)>, wait| {
        best.as_ref().is_none_or(|(_, _, w)| wait > *w)
    };
    for run in runs.iter().filter(|r| r.outcome != "skipped") {
        let due = owed_from(routine, run.dispatched).map_or(run.due, |owed| owed.max(run.due));
        let wait = run.dispatched - due;
        let span = facts.able.partition_point(|(_, to)| *to < due);
        let alive = facts.able.get(span).is_some_and(|(from, _)| *from <= due);
        if alive && longer(&acc.longest_wait, wait) {
            acc.longest_wait = Some((routine.tag.clone(), due, wait));
        }
        if explain(windows, due).is_none() && alive {
            if longer(&acc.longest_calm_wait, wait) {
                acc.longest_calm_wait = Some((routine.tag.clone(), due, wait));
            }
            if wait > CALM_WAIT {
                acc.violations.push(format!(
                    "{}: run due {due} waited {:.1} s with no fault under way",
                    routine.tag,
                    wait.num_milliseconds() as f64 / 1000.0
                ));
            }
        }
    }
}
