//! Schedules: the kit's JSON, Celery's crontab semantics, next-run math.
//! Pure calculation with explicit times: no clock, no sleeping.

mod common;

use celery_diesel_kit::{Schedule, ScheduleError};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::utc;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn cron(value: Value) -> Schedule {
    Schedule::from_json(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn next(schedule: &Schedule, after: &str) -> String {
    schedule.next_after(utc(after)).map_or("never".into(), |t| {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    })
}

fn fields(schedule: &Schedule) -> [Vec<u32>; 5] {
    let Schedule::Crontab(c) = schedule else {
        panic!("not a crontab: {schedule}")
    };
    [
        c.minutes(),
        c.hours(),
        c.days_of_week(),
        c.days_of_month(),
        c.months_of_year(),
    ]
}

#[test]
fn interval_json_is_read_in_seconds_integer_or_float() {
    assert_eq!(
        cron(json!({"timedelta": 15})),
        Schedule::Interval(Duration::from_secs(15))
    );
    assert_eq!(
        cron(json!({"timedelta": 7.5})),
        Schedule::Interval(Duration::from_millis(7500))
    );
    assert_eq!(
        next(&cron(json!({"timedelta": 90})), "2026-11-25 10:00:00"),
        "2026-11-25 10:01:30"
    );
    assert_eq!(
        cron(json!({"timedelta": 15})).to_json(),
        json!({"timedelta": 15})
    );
    assert_eq!(
        cron(json!({"timedelta": 0.25})).to_json(),
        json!({"timedelta": 0.25})
    );
}

#[test]
fn bad_intervals_are_rejected() {
    for bad in [
        json!({"timedelta": 0}),
        json!({"timedelta": -5}),
        json!({"timedelta": "15"}),
        json!({"timedelta": null}),
        json!({"timedelta": 1e300}),
    ] {
        assert!(
            matches!(
                Schedule::from_json(&bad),
                Err(ScheduleError::BadInterval(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn an_interval_that_fell_behind_keeps_its_phase() {
    let every_10s = cron(json!({"timedelta": 10}));
    let last = utc("2026-11-25 10:00:00");
    assert_eq!(
        every_10s.next_after_catching_up(last, utc("2026-11-25 10:00:03")),
        Some(utc("2026-11-25 10:00:10"))
    );
    // 35 s behind: the next run stays on the 10 s grid, after now.
    assert_eq!(
        every_10s.next_after_catching_up(last, utc("2026-11-25 10:00:35")),
        Some(utc("2026-11-25 10:00:40"))
    );
    assert_eq!(
        every_10s.next_after_catching_up(last, utc("2026-11-25 10:00:40")),
        Some(utc("2026-11-25 10:00:50"))
    );
    let hourly = cron(json!({"minute": 0}));
    assert_eq!(
        hourly.next_after_catching_up(last, utc("2026-11-25 13:20:00")),
        Some(utc("2026-11-25 14:00:00"))
    );
}

#[test]
fn malformed_schedules_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (r#"{"minutes": 5}"#, "unknown schedule key \"minutes\""),
        (
            r#"{"timedelta": 5, "minute": 1}"#,
            "schedule mixes \"timedelta\" with crontab fields",
        ),
        (r#"{"minute": 60}"#, "minute: 60 is out of range 0-59"),
        (
            r#"{"hour": "24"}"#,
            "hour: invalid end range: 24 must be 23 or less",
        ),
        (
            r#"{"day_of_week": 7}"#,
            "day_of_week: 7 is out of range 0-6",
        ),
        (
            r#"{"day_of_week": "7"}"#,
            "day_of_week: invalid end range: 7 must be 6 or less",
        ),
        (
            r#"{"day_of_month": 0}"#,
            "day_of_month: 0 is out of range 1-31",
        ),
        (
            r#"{"month_of_year": "13"}"#,
            "month_of_year: invalid end range: 13 must be 12 or less",
        ),
        (r#"{"minute": 1.5}"#, "1.5 is not an integer"),
        (r#"{"minute": ["5"]}"#, "list item \"5\" is not an integer"),
        (
            r#"{"minute": null}"#,
            "minute: null is not an integer, a list of integers or a string",
        ),
        (r#"{"minute": "5/10"}"#, "invalid literal \"5/10\""),
        (r#"{"minute": "*/0"}"#, "step must be positive"),
        (r#"{"minute": "*/"}"#, "empty filter"),
        (r#"{"minute": "1,,2"}"#, "empty part"),
        (r#"{"minute": ""}"#, "empty part"),
        (r#"{"minute": "-5"}"#, "negative numbers not supported"),
        (r#"{"minute": "* "}"#, "invalid literal"),
    ];
    for (text, expected) in cases {
        let err = Schedule::parse(text).expect_err(text).to_string();
        assert!(err.contains(expected), "{text}: {err:?} lacks {expected:?}");
    }
    let long = format!(r#"{{"minute": "{}"}}"#, "x".repeat(10_000));
    let err = Schedule::parse(&long).unwrap_err().to_string();
    assert!(
        err.len() < 300,
        "an error repeats at most a bounded part of the input: {} bytes",
        err.len()
    );
}

#[test]
fn all_star_crontabs_are_rejected_as_the_kit_rejects_them() {
    for all_star in [
        json!({}),
        json!({"minute": "*"}),
        json!({"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}),
    ] {
        assert_eq!(
            Schedule::from_json(&all_star),
            Err(ScheduleError::AllStars),
            "{all_star}"
        );
    }
    // The kit compares with the string "*" only: these are every minute.
    let every_minute = cron(json!({"minute": "*/1"}));
    assert_eq!(
        next(&every_minute, "2026-11-25 10:00:30"),
        "2026-11-25 10:01:00"
    );
    assert_eq!(fields(&cron(json!({"minute": "0-59"})))[0].len(), 60);
}

#[test]
fn crontab_strings_follow_celerys_parser() {
    let f = |field: &str, spec: Value| -> Vec<u32> {
        let idx = [
            "minute",
            "hour",
            "day_of_week",
            "day_of_month",
            "month_of_year",
        ]
        .iter()
        .position(|x| *x == field)
        .unwrap();
        fields(&cron(json!({ field: spec })))[idx].clone()
    };
    assert_eq!(f("minute", json!("*/15")), [0, 15, 30, 45]);
    assert_eq!(
        f("minute", json!("1,13,30-45,50-59/2")),
        [
            1, 13, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 50, 52, 54, 56,
            58
        ]
    );
    assert_eq!(f("day_of_week", json!("mon-fri")), [1, 2, 3, 4, 5]);
    assert_eq!(
        f("day_of_week", json!("fri-mon")),
        [0, 1, 5, 6],
        "ranges wrap"
    );
    assert_eq!(f("day_of_week", json!("sun")), [0], "Sunday is 0");
    assert_eq!(f("day_of_week", json!("Saturday")), [6]);
    assert_eq!(f("day_of_week", json!([0, 6])), [0, 6]);
    assert_eq!(f("day_of_month", json!("28-3")), [1, 2, 3, 28, 29, 30, 31]);
    assert_eq!(f("month_of_year", json!("*/3")), [1, 4, 7, 10]);
    assert_eq!(f("month_of_year", json!("jun-aug")), [6, 7, 8]);
    assert_eq!(f("hour", json!(9)), [9]);
    // Celery's quirks, kept: names in any field, Python int() forms,
    // prefix matching that ignores what follows a match.
    assert_eq!(f("minute", json!("jun")), [6]);
    assert_eq!(f("minute", json!(" 5")), [5]);
    assert_eq!(f("minute", json!("+5")), [5]);
    assert_eq!(f("minute", json!("1_0")), [10]);
    assert_eq!(f("minute", json!("1-5/2/3")), [1, 3, 5]);
    assert_eq!(
        f("minute", json!("10-5/20")),
        [10, 30, 50],
        "steps over a wrapped range"
    );
}

#[test]
fn a_day_fires_only_when_month_day_and_weekday_all_match() {
    // Friday the 13th: Celery ANDs day_of_month with day_of_week.
    let friday_13th =
        cron(json!({"minute": 0, "hour": 0, "day_of_month": 13, "day_of_week": "fri"}));
    assert_eq!(
        next(&friday_13th, "2026-01-01 00:00:00"),
        "2026-02-13 00:00:00"
    );
    assert_eq!(
        next(&friday_13th, "2026-02-13 00:00:00"),
        "2026-03-13 00:00:00"
    );
    assert_eq!(
        next(&friday_13th, "2026-03-13 00:00:00"),
        "2026-11-13 00:00:00"
    );
    // saffron alone ORs them (Vixie cron) and numbers Sunday 1, Friday 6:
    // it would fire on Friday 2 January. This is what the bridge corrects.
    let vixie: saffron::Cron = "0 0 13 * 6".parse().unwrap();
    assert_eq!(
        vixie.next_after(utc("2026-01-01 00:00:00")),
        Some(utc("2026-01-02 00:00:00"))
    );

    let sundays = cron(json!({"minute": 0, "hour": 0, "day_of_week": 0}));
    assert_eq!(
        next(&sundays, "2026-11-25 12:00:00"),
        "2026-11-29 00:00:00",
        "Wednesday → Sunday"
    );
    let first_monday_in_june = cron(
        json!({"minute": 30, "hour": 8, "day_of_week": "mon", "day_of_month": "1-7", "month_of_year": 6}),
    );
    assert_eq!(
        next(&first_monday_in_june, "2026-01-01 00:00:00"),
        "2026-06-01 08:30:00"
    );
    assert_eq!(
        next(&first_monday_in_june, "2026-06-01 08:30:00"),
        "2027-06-07 08:30:00"
    );
}

#[test]
fn month_ends_and_leap_days() {
    let the_31st = cron(json!({"minute": 0, "hour": 0, "day_of_month": 31}));
    assert_eq!(
        next(&the_31st, "2026-01-31 00:00:00"),
        "2026-03-31 00:00:00",
        "skips February"
    );
    assert_eq!(
        next(&the_31st, "2026-05-31 00:00:00"),
        "2026-07-31 00:00:00",
        "skips June"
    );
    let leap_day = cron(json!({"minute": 0, "hour": 12, "day_of_month": 29, "month_of_year": 2}));
    assert_eq!(
        next(&leap_day, "2026-01-01 00:00:00"),
        "2028-02-29 12:00:00"
    );
    assert_eq!(
        next(&leap_day, "2028-02-29 12:00:00"),
        "2032-02-29 12:00:00"
    );
    assert_eq!(
        next(&leap_day, "2096-03-01 00:00:00"),
        "2104-02-29 12:00:00",
        "2100 is no leap year"
    );
    let leap_monday = cron(
        json!({"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2, "day_of_week": "mon"}),
    );
    assert_eq!(
        next(&leap_monday, "2026-01-01 00:00:00"),
        "2044-02-29 00:00:00"
    );
    let new_year = cron(json!({"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": 1}));
    assert_eq!(
        next(&new_year, "2026-12-31 23:59:59"),
        "2027-01-01 00:00:00"
    );
    // Strictly after: a time on the schedule gives the following run.
    assert_eq!(
        next(&new_year, "2027-01-01 00:00:00"),
        "2028-01-01 00:00:00"
    );
    assert_eq!(
        next(&cron(json!({"minute": "*/15"})), "2026-11-25 10:15:00"),
        "2026-11-25 10:30:00"
    );
    assert_eq!(
        next(&cron(json!({"minute": "*/15"})), "2026-11-25 10:14:59"),
        "2026-11-25 10:15:00"
    );
}

#[test]
fn schedules_that_never_fire_are_rejected_at_once() {
    for never in [
        json!({"day_of_month": 30, "month_of_year": 2}),
        json!({"day_of_month": "31", "month_of_year": "4,6,9,11"}),
        json!({"minute": []}),
    ] {
        assert!(
            matches!(
                Schedule::from_json(&never),
                Err(ScheduleError::NeverFires(_))
            ),
            "{never}"
        );
    }
    // February 29 does come round, even on a given weekday (above).
    assert!(Schedule::from_json(&json!({"day_of_month": 29, "month_of_year": 2})).is_ok());
}

#[test]
fn crontab_json_round_trips_as_written() {
    let kit_row = json!({"minute": 0, "hour": 9, "day_of_week": "*", "day_of_month": 15, "month_of_year": "*"});
    assert_eq!(cron(kit_row.clone()).to_json(), kit_row);
    let built = Schedule::crontab("*/15", "9-17", "mon-fri", "*", "*").unwrap();
    assert_eq!(
        built.to_json(),
        json!({"minute": "*/15", "hour": "9-17", "day_of_week": "mon-fri"})
    );
}

// ---------------------------------------------------------------------------
// Differential test: our crontab against Celery's own, on random specs.

use common::Rng;

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// One random field spec for a field with values `min..min+count`.
fn random_spec(rng: &mut Rng, field: &str, min: u64, count: u64) -> Value {
    let value = |rng: &mut Rng| -> String {
        let v = min + rng.below(count);
        match field {
            "day_of_week" if rng.chance(30) => DAY_NAMES[v as usize].to_owned(),
            "month_of_year" if rng.chance(30) => MONTH_NAMES[(v - 1) as usize].to_owned(),
            _ => v.to_string(),
        }
    };
    match rng.below(10) {
        0 => json!(min + rng.below(count)),
        1 => {
            let n = 1 + rng.below(4);
            json!((0..n).map(|_| min + rng.below(count)).collect::<Vec<_>>())
        }
        2 if rng.chance(20) => json!(min + count + rng.below(3)), // out of range
        _ => {
            let parts = 1 + rng.below(3);
            let text: Vec<String> = (0..parts)
                .map(|_| match rng.below(6) {
                    0 => value(rng),
                    1 | 2 => format!("{}-{}", value(rng), value(rng)),
                    3 => format!(
                        "{}-{}/{}",
                        value(rng),
                        value(rng),
                        1 + rng.below(count / 2 + 1)
                    ),
                    4 => format!("*/{}", 1 + rng.below(count / 2 + 1)),
                    _ => match rng.below(6) {
                        0 => "*".to_owned(),
                        1 => format!("{}/{}", value(rng), 2), // Celery rejects N/step
                        2 => (min + count).to_string(),       // just out of range
                        3 => "*/0".to_owned(),
                        4 => format!(" {}", value(rng)), // Python int() strips
                        _ => format!("{}-{}/{}/9", value(rng), value(rng), 2), // prefix match
                    },
                })
                .collect();
            json!(text.join(","))
        }
    }
}

fn random_fields(rng: &mut Rng) -> Value {
    let mut map = serde_json::Map::new();
    for (field, min, count, present) in [
        ("minute", 0, 60, 80),
        ("hour", 0, 24, 60),
        ("day_of_week", 0, 7, 45),
        ("day_of_month", 1, 31, 45),
        ("month_of_year", 1, 12, 30),
    ] {
        if rng.chance(present) {
            map.insert(field.to_owned(), random_spec(rng, field, min, count));
        }
    }
    Value::Object(map)
}

fn random_times(rng: &mut Rng) -> Vec<String> {
    let base = utc("2024-01-01 00:00:00");
    let mut times: Vec<DateTime<Utc>> = (0..5)
        .map(|_| base + TimeDelta::seconds(rng.below(6 * 365 * 86_400) as i64))
        .collect();
    // Month and year ends, where calendars go wrong.
    times.push(utc([
        "2024-02-28 23:59:30",
        "2024-12-31 23:59:59",
        "2025-02-28 23:59:00",
        "2026-04-30 23:30:00",
        "2027-12-31 23:00:00",
    ][rng.below(5) as usize]));
    times
        .iter()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .collect()
}

#[test]
fn crontabs_match_celery_on_random_specs() {
    let Some(python) = common::celery_python("crontabs_match_celery_on_random_specs") else {
        return;
    };
    let oracle = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/crontab_oracle.py"
    );
    let mut child = Command::new(&python)
        .arg(oracle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Celery oracle");
    let mut rng = Rng(0x0dd_ba11);
    let cases: Vec<(Value, Vec<String>)> = (0..400)
        .map(|_| (random_fields(&mut rng), random_times(&mut rng)))
        .collect();
    {
        let mut stdin = child.stdin.take().unwrap();
        for (fields, after) in &cases {
            writeln!(stdin, "{}", json!({"fields": fields, "after": after})).unwrap();
        }
    }
    let answers: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(answers.len(), cases.len());

    let (mut valid, mut rejected, mut and_cases) = (0, 0, 0);
    for ((spec, after), celery) in cases.iter().zip(&answers) {
        let ours = Schedule::from_json(spec);
        let all_star = spec.as_object().unwrap().values().all(|v| v == "*");
        match (ours, celery.get("error")) {
            (Err(ScheduleError::AllStars), _) => assert!(all_star, "{spec}"),
            (Err(ScheduleError::NeverFires(_)), None) => {
                // Celery accepts the fields but cannot compute a next run.
                let nexts = celery["next"].as_array().unwrap();
                assert!(
                    nexts
                        .iter()
                        .all(|n| n.as_str().unwrap().starts_with("error")),
                    "{spec}: {celery}"
                );
                rejected += 1;
            }
            (Err(e), Some(celery_error)) => {
                // The same kind of error: a bad field, one Celery rejects too.
                let theirs = celery["fields"].as_array().unwrap();
                match &e {
                    ScheduleError::BadField { field, .. } => assert!(
                        theirs.iter().any(|f| f == field),
                        "{spec}: we reject {field} ({e}), Celery rejects {theirs:?} ({celery_error})"
                    ),
                    _ => panic!("{spec}: we reject with {e:?}, Celery with {celery_error}"),
                }
                rejected += 1;
            }
            (Err(e), None) => panic!("{spec}: we reject ({e}), Celery accepts: {celery}"),
            (Ok(_), Some(err)) => panic!("{spec}: we accept, Celery rejects: {err}"),
            (Ok(schedule), None) => {
                if all_star {
                    panic!("{spec}: the kit rejects an all-* crontab");
                }
                valid += 1;
                let [m, h, dow, dom, moy] = fields(&schedule);
                for (name, ours) in [
                    ("minute", m),
                    ("hour", h),
                    ("day_of_week", dow.clone()),
                    ("day_of_month", dom.clone()),
                    ("month_of_year", moy),
                ] {
                    let theirs: Vec<u32> = serde_json::from_value(celery[name].clone()).unwrap();
                    assert_eq!(ours, theirs, "{spec}: field {name}");
                }
                if dow.len() < 7 && dom.len() < 31 {
                    and_cases += 1;
                }
                for (t, theirs) in after.iter().zip(celery["next"].as_array().unwrap()) {
                    assert_eq!(
                        next(&schedule, t),
                        theirs.as_str().unwrap(),
                        "{spec}: next after {t}"
                    );
                }
            }
        }
    }
    eprintln!("compared with Celery: {valid} valid specs, {rejected} rejected by both, {and_cases} with day-of-month AND day-of-week");
    // The generator must exercise what matters, or the test proves little.
    assert!(
        valid >= 150 && rejected >= 50 && and_cases >= 20,
        "valid {valid}, rejected {rejected}, AND {and_cases}"
    );
}

#[test]
fn misfire_keys_extend_the_kits_json_without_changing_it() {
    use celery_diesel_kit::{Misfire, MisfirePolicy};
    let with = json!({"timedelta": 15, "misfire_policy": "skip", "misfire_grace_time": 2.5});
    assert_eq!(
        cron(with.clone()),
        Schedule::Interval(Duration::from_secs(15))
    );
    assert_eq!(
        Misfire::from_json(&with).unwrap(),
        Misfire {
            policy: Some(MisfirePolicy::Skip),
            grace_time: Some(Duration::from_millis(2500))
        }
    );
    let crontab = json!({"minute": 5, "misfire_policy": "fire_once"});
    assert_eq!(fields(&cron(crontab.clone()))[0], [5]);
    assert_eq!(
        Misfire::from_json(&crontab).unwrap().policy,
        Some(MisfirePolicy::FireOnce)
    );
    assert_eq!(
        Misfire::from_json(&json!({"timedelta": 1})).unwrap(),
        Misfire::default()
    );
    for (bad, expected) in [
        (
            json!({"misfire_policy": "sometimes"}),
            "misfire_policy \"sometimes\": expected \"fire_once\" or \"skip\"",
        ),
        (
            json!({"misfire_policy": 1}),
            "misfire_policy must be a string, got 1",
        ),
        (
            json!({"misfire_grace_time": -1}),
            "misfire_grace_time must be seconds ≥ 0, got -1",
        ),
    ] {
        let err = Misfire::from_json(&bad).unwrap_err().to_string();
        assert_eq!(err, expected, "{bad}");
    }
    let mut written = json!({"timedelta": 15});
    Misfire {
        policy: Some(MisfirePolicy::Skip),
        grace_time: Some(Duration::from_secs(3)),
    }
    .write_into(&mut written);
    assert_eq!(
        written,
        json!({"timedelta": 15, "misfire_policy": "skip", "misfire_grace_time": 3.0})
    );
}
