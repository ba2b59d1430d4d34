//! Time zones: a crontab's fields match its zone's wall clock, by the
//! README's rules at every change of offset (a match time skipped by a
//! spring change fires once, at the first instant after the gap; a time that
//! occurs twice fires at its first occurrence, unless the hour field is
//! every hour). Three checks:
//!
//! * tables of exact UTC fire times around real changes, 2027 to 2029, for
//!   zones with 30- and 45-minute offsets and shifts, both hemispheres and
//!   changes at midnight, each also checked against an oracle written apart
//!   from this crate, over Python's `zoneinfo` (tests/python/zone_oracle.py);
//! * a randomized differential test against a brute-force enumerator in
//!   this file, which walks UTC minute by minute and applies the rules;
//! * the beat itself, end to end on every backend, with a clock set just
//!   before a change.

mod common;

use celery_diesel_kit::{Beat, Routine, Schedule};
use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use common::{utc, wait_until, Recorder, Rng};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

fn minute(text: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .and_utc()
}

fn show(times: &[DateTime<Utc>]) -> Vec<String> {
    times
        .iter()
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .collect()
}

/// A crontab in `zone`, from `fields` (the kit's crontab keys).
fn crontab(fields: Value, zone: &str) -> Schedule {
    let mut json = fields;
    json["timezone"] = Value::from(zone);
    Schedule::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

// ---------------------------------------------------------------------------
// Tables at real changes.

/// (zone, crontab fields, from (UTC), the next fire times (UTC)).
type Case = (&'static str, Value, &'static str, &'static [&'static str]);

fn check_table(cases: &[Case]) {
    for (zone, fields, from, expected) in cases {
        let schedule = crontab(fields.clone(), zone);
        let got = show(&schedule.next_runs(minute(from), expected.len()));
        assert_eq!(got, *expected, "{zone} {fields} from {from}");
    }
}

#[test]
fn fire_times_around_changes_in_berlin() {
    check_table(&table_berlin());
}

fn table_berlin() -> Vec<Case> {
    vec![
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2027-03-27 00:00",
            &["2027-03-27 01:30", "2027-03-28 01:00", "2027-03-29 00:30"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2027-10-30 00:00",
            &["2027-10-30 00:30", "2027-10-31 00:30", "2027-11-01 01:30"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30}),
            "2027-03-27 23:00",
            &[
                "2027-03-27 23:30",
                "2027-03-28 00:30",
                "2027-03-28 01:00",
                "2027-03-28 01:30",
            ],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30}),
            "2027-10-30 23:00",
            &[
                "2027-10-30 23:30",
                "2027-10-31 00:30",
                "2027-10-31 01:30",
                "2027-10-31 02:30",
                "2027-10-31 03:30",
            ],
        ),
        (
            "Europe/Berlin",
            json!({"minute": "*/15", "hour": 2}),
            "2027-03-27 23:00",
            &["2027-03-28 01:00", "2027-03-29 00:00", "2027-03-29 00:15"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": "*/15", "hour": 2}),
            "2027-10-30 23:00",
            &[
                "2027-10-31 00:00",
                "2027-10-31 00:15",
                "2027-10-31 00:30",
                "2027-10-31 00:45",
                "2027-11-01 01:00",
            ],
        ),
        (
            "Europe/Berlin",
            json!({"minute": "*/15"}),
            "2027-10-30 23:50",
            &[
                "2027-10-31 00:00",
                "2027-10-31 00:15",
                "2027-10-31 00:30",
                "2027-10-31 00:45",
                "2027-10-31 01:00",
                "2027-10-31 01:15",
                "2027-10-31 01:30",
                "2027-10-31 01:45",
                "2027-10-31 02:00",
                "2027-10-31 02:15",
            ],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 0, "hour": 9, "day_of_week": "1-5"}),
            "2027-03-25 00:00",
            &["2027-03-25 08:00", "2027-03-26 08:00", "2027-03-29 07:00"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 0, "hour": 9, "day_of_week": "1-5"}),
            "2027-10-28 00:00",
            &["2027-10-28 07:00", "2027-10-29 07:00", "2027-11-01 08:00"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2028-03-25 00:00",
            &["2028-03-25 01:30", "2028-03-26 01:00"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2028-10-28 00:00",
            &["2028-10-28 00:30", "2028-10-29 00:30"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2029-03-24 00:00",
            &["2029-03-24 01:30", "2029-03-25 01:00"],
        ),
        (
            "Europe/Berlin",
            json!({"minute": 30, "hour": 2}),
            "2029-10-27 00:00",
            &["2029-10-27 00:30", "2029-10-28 00:30"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_sydney() {
    check_table(&table_sydney());
}

fn table_sydney() -> Vec<Case> {
    vec![
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2027-04-02 12:00",
            &["2027-04-02 15:30", "2027-04-03 15:30", "2027-04-04 16:30"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2027-10-01 12:00",
            &["2027-10-01 16:30", "2027-10-02 16:00", "2027-10-03 15:30"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30}),
            "2027-04-03 13:00",
            &[
                "2027-04-03 13:30",
                "2027-04-03 14:30",
                "2027-04-03 15:30",
                "2027-04-03 16:30",
                "2027-04-03 17:30",
            ],
        ),
        (
            "Australia/Sydney",
            json!({"minute": "*/15", "hour": 2}),
            "2027-10-02 14:00",
            &["2027-10-02 16:00", "2027-10-03 15:00", "2027-10-03 15:15"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 0, "hour": 9, "day_of_week": "1-5"}),
            "2027-10-01 00:00",
            &["2027-10-03 22:00", "2027-10-04 22:00", "2027-10-05 22:00"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2028-03-31 12:00",
            &["2028-03-31 15:30", "2028-04-01 15:30"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2028-09-29 12:00",
            &["2028-09-29 16:30", "2028-09-30 16:00"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2029-03-30 12:00",
            &["2029-03-30 15:30", "2029-03-31 15:30"],
        ),
        (
            "Australia/Sydney",
            json!({"minute": 30, "hour": 2}),
            "2029-10-05 12:00",
            &["2029-10-05 16:30", "2029-10-06 16:00"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_lord_howe_half_hour_shift() {
    check_table(&table_lord_howe());
}

fn table_lord_howe() -> Vec<Case> {
    vec![
        (
            "Australia/Lord_Howe",
            json!({"minute": 45, "hour": 1}),
            "2027-04-02 12:00",
            &["2027-04-02 14:45", "2027-04-03 14:45", "2027-04-04 15:15"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 15, "hour": 2}),
            "2027-10-01 12:00",
            &["2027-10-01 15:45", "2027-10-02 15:30", "2027-10-03 15:15"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": "*/15"}),
            "2027-04-03 14:20",
            &[
                "2027-04-03 14:30",
                "2027-04-03 14:45",
                "2027-04-03 15:00",
                "2027-04-03 15:15",
                "2027-04-03 15:30",
                "2027-04-03 15:45",
                "2027-04-03 16:00",
                "2027-04-03 16:15",
            ],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": "*/15", "hour": 2}),
            "2027-10-02 14:00",
            &["2027-10-02 15:30", "2027-10-02 15:45", "2027-10-03 15:00"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 45}),
            "2027-04-03 13:00",
            &[
                "2027-04-03 13:45",
                "2027-04-03 14:45",
                "2027-04-03 15:15",
                "2027-04-03 16:15",
            ],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 45, "hour": 1}),
            "2028-03-31 12:00",
            &["2028-03-31 14:45", "2028-04-01 14:45"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 15, "hour": 2}),
            "2028-09-29 12:00",
            &["2028-09-29 15:45", "2028-09-30 15:30"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 45, "hour": 1}),
            "2029-03-30 12:00",
            &["2029-03-30 14:45", "2029-03-31 14:45"],
        ),
        (
            "Australia/Lord_Howe",
            json!({"minute": 15, "hour": 2}),
            "2029-10-05 12:00",
            &["2029-10-05 15:45", "2029-10-06 15:30"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_chatham_quarter_hour_offset() {
    check_table(&table_chatham());
}

fn table_chatham() -> Vec<Case> {
    vec![
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2027-04-02 12:00",
            &["2027-04-02 13:15", "2027-04-03 13:15", "2027-04-04 14:15"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2027-09-24 12:00",
            &["2027-09-24 14:15", "2027-09-25 14:00", "2027-09-26 13:15"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0}),
            "2027-04-03 11:00",
            &[
                "2027-04-03 11:15",
                "2027-04-03 12:15",
                "2027-04-03 13:15",
                "2027-04-03 14:15",
                "2027-04-03 15:15",
            ],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": "*/15", "hour": 3}),
            "2027-09-25 12:00",
            &["2027-09-25 14:00", "2027-09-26 13:15", "2027-09-26 13:30"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2028-03-31 12:00",
            &["2028-03-31 13:15", "2028-04-01 13:15"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2028-09-22 12:00",
            &["2028-09-22 14:15", "2028-09-23 14:00"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2029-03-30 12:00",
            &["2029-03-30 13:15", "2029-03-31 13:15"],
        ),
        (
            "Pacific/Chatham",
            json!({"minute": 0, "hour": 3}),
            "2029-09-28 12:00",
            &["2029-09-28 14:15", "2029-09-29 14:00"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_kathmandu_quarter_hour_offset_no_changes() {
    check_table(&table_kathmandu());
}

fn table_kathmandu() -> Vec<Case> {
    vec![
        (
            "Asia/Kathmandu",
            json!({"minute": 0, "hour": 9}),
            "2027-03-27 00:00",
            &["2027-03-27 03:15", "2027-03-28 03:15"],
        ),
        (
            "Asia/Kathmandu",
            json!({"minute": 0}),
            "2028-10-29 00:00",
            &["2028-10-29 00:15", "2028-10-29 01:15", "2028-10-29 02:15"],
        ),
        (
            "Asia/Kathmandu",
            json!({"minute": "*/15"}),
            "2029-06-01 00:00",
            &["2029-06-01 00:15", "2029-06-01 00:30", "2029-06-01 00:45"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_santiago_changes_at_midnight() {
    check_table(&table_santiago());
}

fn table_santiago() -> Vec<Case> {
    vec![
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 23}),
            "2027-04-02 12:00",
            &["2027-04-03 02:30", "2027-04-04 02:30", "2027-04-05 03:30"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 0}),
            "2027-09-03 12:00",
            &["2027-09-04 04:30", "2027-09-05 04:00", "2027-09-06 03:30"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30}),
            "2027-04-04 01:00",
            &[
                "2027-04-04 01:30",
                "2027-04-04 02:30",
                "2027-04-04 03:30",
                "2027-04-04 04:30",
                "2027-04-04 05:30",
            ],
        ),
        (
            "America/Santiago",
            json!({"minute": "*/15", "hour": 0}),
            "2027-09-05 02:00",
            &["2027-09-05 04:00", "2027-09-06 03:00", "2027-09-06 03:15"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 23}),
            "2028-03-31 12:00",
            &["2028-04-01 02:30", "2028-04-02 02:30"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 0}),
            "2028-09-01 12:00",
            &["2028-09-02 04:30", "2028-09-03 04:00"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 23}),
            "2029-04-06 12:00",
            &["2029-04-07 02:30", "2029-04-08 02:30"],
        ),
        (
            "America/Santiago",
            json!({"minute": 30, "hour": 0}),
            "2029-08-31 12:00",
            &["2029-09-01 04:30", "2029-09-02 04:00"],
        ),
    ]
}

#[test]
fn fire_times_around_changes_in_havana_changes_at_midnight() {
    check_table(&table_havana());
}

fn table_havana() -> Vec<Case> {
    vec![
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2027-03-13 00:00",
            &["2027-03-13 05:30", "2027-03-14 05:00", "2027-03-15 04:30"],
        ),
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2027-11-06 00:00",
            &["2027-11-06 04:30", "2027-11-07 04:30", "2027-11-08 05:30"],
        ),
        (
            "America/Havana",
            json!({"minute": 0, "hour": 0}),
            "2027-03-13 00:00",
            &["2027-03-13 05:00", "2027-03-14 05:00", "2027-03-15 04:00"],
        ),
        (
            "America/Havana",
            json!({"minute": 30}),
            "2027-11-07 03:00",
            &[
                "2027-11-07 03:30",
                "2027-11-07 04:30",
                "2027-11-07 05:30",
                "2027-11-07 06:30",
            ],
        ),
        (
            "America/Havana",
            json!({"minute": "*/15", "hour": 0}),
            "2027-03-14 03:00",
            &["2027-03-14 05:00", "2027-03-15 04:00", "2027-03-15 04:15"],
        ),
        (
            "America/Havana",
            json!({"minute": 0, "hour": 9, "day_of_week": "1-5"}),
            "2027-11-04 00:00",
            &["2027-11-04 13:00", "2027-11-05 13:00", "2027-11-08 14:00"],
        ),
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2028-03-11 00:00",
            &["2028-03-11 05:30", "2028-03-12 05:00"],
        ),
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2028-11-04 00:00",
            &["2028-11-04 04:30", "2028-11-05 04:30"],
        ),
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2029-03-10 00:00",
            &["2029-03-10 05:30", "2029-03-11 05:00"],
        ),
        (
            "America/Havana",
            json!({"minute": 30, "hour": 0}),
            "2029-11-03 00:00",
            &["2029-11-03 04:30", "2029-11-04 04:30"],
        ),
    ]
}

/// Every table above, against tests/python/zone_oracle.py: the README's
/// rules written again in Python over `zoneinfo` and the system's zone
/// database, apart from this crate and chrono-tz.
#[test]
fn the_tables_agree_with_an_oracle_over_pythons_zoneinfo() {
    let test = "timezone_tables_oracle";
    let Some(python) = common::celery_python(test) else {
        return;
    };
    let cases: Vec<Case> = [
        table_berlin(),
        table_sydney(),
        table_lord_howe(),
        table_chatham(),
        table_kathmandu(),
        table_santiago(),
        table_havana(),
    ]
    .concat();
    let input: String = cases
        .iter()
        .map(|(zone, fields, from, expected)| {
            format!(
                "{}\n",
                json!({"zone": zone, "fields": fields, "from": from, "count": expected.len()})
            )
        })
        .collect();
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/zone_oracle.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the oracle");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the oracle failed");
    let answers: Vec<Vec<String>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len(), "one answer per case");
    for ((zone, fields, from, expected), oracle) in cases.iter().zip(&answers) {
        assert_eq!(oracle, expected, "{zone} {fields} from {from}: the oracle");
    }
    assert_eq!(cases.len(), 60);
}

// ---------------------------------------------------------------------------
// Random crontabs near random changes, against a brute-force enumerator.

/// The fire times in (`from`, `until`], by the rules, minute by minute:
/// at each UTC minute, the zone's wall clock is read; a match fires unless
/// its wall-clock time occurs twice and this is the second time (and the
/// hour field is not every hour); and the first minute after a jump of the
/// wall clock fires if any minute it skipped matched.
fn brute_force(
    schedule: &Schedule,
    zone: Tz,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let Schedule::Crontab(cron) = schedule else {
        panic!("a crontab");
    };
    let sets: [BTreeSet<u32>; 5] = [
        cron.minutes().into_iter().collect(),
        cron.hours().into_iter().collect(),
        cron.days_of_week().into_iter().collect(),
        cron.days_of_month().into_iter().collect(),
        cron.months_of_year().into_iter().collect(),
    ];
    let every_hour = sets[1].len() == 24;
    let matches = |local: NaiveDateTime| {
        sets[0].contains(&local.minute())
            && sets[1].contains(&local.hour())
            && sets[2].contains(&local.weekday().num_days_from_sunday())
            && sets[3].contains(&local.day())
            && sets[4].contains(&local.month())
    };
    let wall = |u: DateTime<Utc>| u.with_timezone(&zone).naive_local();
    let mut fires = Vec::new();
    let mut u = from.with_second(0).unwrap().with_nanosecond(0).unwrap() + TimeDelta::minutes(1);
    let mut previous = wall(u - TimeDelta::minutes(1));
    while u <= until {
        let local = wall(u);
        let mut fire = matches(local)
            && match zone.from_local_datetime(&local) {
                LocalResult::Ambiguous(a, b) => every_hour || u == a.min(b).with_timezone(&Utc),
                _ => true,
            };
        let mut skipped = previous + TimeDelta::minutes(1);
        while !fire && skipped < local {
            fire = matches(skipped);
            skipped += TimeDelta::minutes(1);
        }
        if fire {
            fires.push(u);
        }
        previous = local;
        u += TimeDelta::minutes(1);
    }
    fires
}

/// The instants in 2027-2029 at which `zone`'s offset changes.
fn changes(zone: Tz) -> Vec<DateTime<Utc>> {
    let offset = |u: DateTime<Utc>| u.with_timezone(&zone).naive_local() - u.naive_utc();
    let mut found = Vec::new();
    let mut u = utc("2027-01-01 00:00:00");
    while u < utc("2030-01-01 00:00:00") {
        let next = u + TimeDelta::hours(1);
        if offset(u) != offset(next) {
            let mut m = u;
            while offset(m) == offset(u) {
                m += TimeDelta::minutes(1);
            }
            found.push(m);
        }
        u = next;
    }
    found
}

fn random_field(rng: &mut Rng, choices: &[&str], numbers: u64) -> Value {
    match rng.below(choices.len() as u64 + 1) {
        0 => Value::from(rng.below(numbers)),
        n => Value::from(choices[n as usize - 1]),
    }
}

#[test]
fn random_crontabs_near_changes_fire_as_the_brute_force_enumerator_says() {
    const ZONES: [&str; 10] = [
        "Europe/Berlin",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "Asia/Kathmandu",
        "America/Santiago",
        "America/Havana",
        "America/New_York",
        "Europe/London",
        "Antarctica/Troll",
    ];
    let mut rng = Rng(0x7a0e5);
    let changes: Vec<(Tz, Vec<DateTime<Utc>>)> = ZONES
        .iter()
        .map(|name| {
            let zone: Tz = name.parse().unwrap();
            (zone, changes(zone))
        })
        .collect();
    let mut checked = 0;
    let mut fires = 0;
    while checked < 400 {
        let (zone, zone_changes) = &changes[rng.below(ZONES.len() as u64) as usize];
        let around = if zone_changes.is_empty() {
            utc("2028-06-01 00:00:00") + TimeDelta::hours(rng.below(24 * 365) as i64)
        } else {
            zone_changes[rng.below(zone_changes.len() as u64) as usize]
        };
        let from = around - TimeDelta::minutes(rng.below(36 * 60) as i64 - 6 * 60)
            + TimeDelta::seconds(rng.below(60) as i64);
        let fields = json!({
            "minute": random_field(&mut rng, &["*", "*/15", "0,30", "*/7", "45", "0-10", "59"], 60),
            "hour": random_field(&mut rng, &["*", "*", "*/2", "0-3", "1,2,3", "22-23,0-2", "2"], 24),
            "day_of_week": random_field(&mut rng, &["*", "*", "*", "mon-fri", "sun", "sat,sun"], 7),
            "day_of_month": if rng.chance(15) { Value::from(1 + rng.below(31)) } else { Value::from("*") },
        });
        let schedule = match Schedule::from_json(&{
            let mut j = fields.clone();
            j["timezone"] = Value::from(zone.name());
            j
        }) {
            Ok(schedule) => schedule,
            // Every field "*": the kit's error, not a schedule. Any other
            // error is a valid crontab refused.
            Err(_) if fields.as_object().unwrap().values().all(|v| v == "*") => continue,
            Err(e) => panic!("{} {fields}: {e}", zone.name()),
        };
        let until = from + TimeDelta::days(2);
        let expected = brute_force(&schedule, *zone, from, until);
        let got: Vec<_> = schedule
            .next_runs(from, expected.len() + 1)
            .into_iter()
            .filter(|t| *t <= until)
            .collect();
        assert_eq!(
            show(&got),
            show(&expected),
            "{} {fields} from {from} (case {checked})",
            zone.name()
        );
        checked += 1;
        fires += expected.len();
    }
    common::report(&format!(
        "{checked} random crontabs near changes of offset: {fires} fire times, all as enumerated"
    ));
}

// ---------------------------------------------------------------------------
// Zones through the beat.

#[test]
fn the_readme_names_the_zone_database_compiled_in() {
    let readme = include_str!("../README.md");
    let release = format!("tzdata {}", chrono_tz::IANA_TZDB_VERSION);
    assert!(
        readme.contains(&release),
        "README.md must name {release}, the release chrono-tz compiles in"
    );
}

#[test]
fn an_interval_is_elapsed_time_and_takes_no_zone() {
    let err = Schedule::from_json(&json!({"timedelta": 60, "timezone": "Europe/Berlin"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("crontab schedules only"), "{err}");
    let err = Schedule::from_json(&json!({"minute": 0, "timezone": "Europe/Atlantis"}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown time zone") && err.contains("Europe/Atlantis"),
        "{err}"
    );
    let every = Schedule::every(Duration::from_secs(3600)).unwrap();
    assert_eq!(every.timezone(), None);
    assert_eq!(
        every.next_after(utc("2027-10-31 00:30:00")),
        Some(utc("2027-10-31 01:30:00")),
        "an hour later by the clock on the wall or not"
    );
}

#[test]
fn the_default_zone_applies_to_crontabs_without_their_own() {
    let fields = json!({"minute": 30, "hour": 2});
    let berlin = Schedule::from_json_in_timezone(&fields, "Europe/Berlin").unwrap();
    assert_eq!(berlin.timezone(), Some("Europe/Berlin"));
    assert_eq!(
        berlin.to_json(),
        fields,
        "the default is not written into the row"
    );
    let own = json!({"minute": 30, "hour": 2, "timezone": "Asia/Kathmandu"});
    let kathmandu = Schedule::from_json_in_timezone(&own, "Europe/Berlin").unwrap();
    assert_eq!(kathmandu.timezone(), Some("Asia/Kathmandu"));
    assert_eq!(kathmandu.to_json(), own);
    assert_eq!(
        kathmandu.next_after(utc("2027-01-01 00:00:00")),
        Some(utc("2027-01-01 20:45:00")),
        "02:30 at +05:45"
    );
}

backend_tests! {
    fn a_routine_in_a_zone_fires_at_its_utc_instants_through_the_changes(db) {
        let rec = Recorder::new("record");
        let clock = common::TestClock::at(minute("2027-03-27 23:00"));
        let config = { let mut c = db.config(); c.timezone = chrono_tz::Europe::Berlin; c };
        let daily = |fields: Value| Schedule::from_json(&fields).unwrap();
        let mut beat = Beat::builder(config)
            .clock(clock.clone())
            .task(rec.clone())
            .routine(Routine::new("berlin", "record", crontab(json!({"minute": 30, "hour": 2}), "Europe/Berlin")))
            .routine(Routine::new("default zone", "record", daily(json!({"minute": 30, "hour": 2}))))
            .routine(Routine::new("lord howe", "record", crontab(json!({"minute": 15, "hour": 2}), "Australia/Lord_Howe")))
            .start_manual()
            .unwrap();
        // (UTC time of the pass, routines fired). 02:30 in Berlin is in the
        // spring gap on 28 March 2027 (it fires at 03:00 CEST, 01:00 UTC)
        // and occurs twice on 31 October (it fires at the first, 00:30
        // UTC); 02:15 on Lord Howe Island is in its half-hour gap on
        // 3 October (02:30 local, 15:30 UTC). The passes on 2 and 30
        // October come after months without one: each routine fires once.
        let passes = [
            ("2027-03-27 23:00", 0),
            ("2027-03-28 01:00", 2),
            ("2027-03-28 15:15", 1),
            ("2027-03-29 00:30", 2),
            ("2027-10-02 14:00", 3),
            ("2027-10-02 15:30", 1),
            ("2027-10-03 00:30", 2),
            ("2027-10-30 23:00", 3),
            ("2027-10-31 00:30", 2),
            ("2027-10-31 01:30", 0),
            ("2027-10-31 15:15", 1),
            ("2027-11-01 01:30", 2),
        ];
        let mut fired = 0;
        for (at, expected) in passes {
            let t = minute(at);
            clock.set(t);
            let tick = beat.tick(t).unwrap();
            assert_eq!(tick.fired, expected, "at {at} UTC: {tick:?}");
            fired += expected as u64;
            assert!(wait_until(Duration::from_secs(10), || beat.stats().succeeded == fired));
        }
        let due = |routine: &str| -> Vec<String> {
            rec.runs_of(routine).iter().map(|r| r.scheduled_at.format("%Y-%m-%d %H:%M").to_string()).collect()
        };
        let berlin = [
            "2027-03-28 01:00", "2027-03-29 00:30", "2027-03-30 00:30", "2027-10-03 00:30",
            "2027-10-04 00:30", "2027-10-31 00:30", "2027-11-01 01:30",
        ];
        assert_eq!(due("berlin"), berlin);
        assert_eq!(due("default zone"), berlin, "the timezone setting applies to a crontab without its own");
        assert_eq!(due("lord howe"), ["2027-03-28 15:15", "2027-03-29 15:15", "2027-10-02 15:30", "2027-10-03 15:15", "2027-10-31 15:15"]);
    }
}
