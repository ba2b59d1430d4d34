//! Schedules beyond the kit, as pure calculation with explicit times:
//! clocked times, start and end, run limits, jitter, and the due times of
//! a backfill. No clock, no database (the rules end to end are in
//! tests/bounds.rs).

mod common;

use celery_diesel_kit::{End, Next, Schedule, ScheduleError, Timing};
use chrono::{DateTime, Duration as TimeDelta, Utc};
use common::utc;
use serde_json::{json, Value};
use std::collections::HashSet;

fn timing(value: Value) -> Timing {
    Timing::from_json_in(&value, chrono_tz::UTC).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn timing_in(value: Value, zone: chrono_tz::Tz) -> Timing {
    Timing::from_json_in(&value, zone).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn error(value: Value) -> String {
    match Timing::from_json_in(&value, chrono_tz::UTC) {
        Ok(t) => panic!("{value} was accepted: {t:?}"),
        Err(e) => e.to_string(),
    }
}

fn texts(times: &[DateTime<Utc>]) -> Vec<String> {
    times
        .iter()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .collect()
}

#[test]
fn a_clocked_time_is_read_in_its_zone_else_the_configured_one_and_an_offset_is_that_instant() {
    let berlin = chrono_tz::Europe::Berlin;
    for (json, zone, expected) in [
        // Its own zone: 09:00 CET is 08:00 UTC.
        (
            json!({"clocked": "2027-03-01T09:00:00", "timezone": "Europe/Berlin"}),
            chrono_tz::UTC,
            "2027-03-01 08:00:00",
        ),
        // No zone of its own: the configured one.
        (
            json!({"clocked": "2027-03-01T09:00:00"}),
            berlin,
            "2027-03-01 08:00:00",
        ),
        (
            json!({"clocked": "2027-03-01 09:00"}),
            chrono_tz::UTC,
            "2027-03-01 09:00:00",
        ),
        // An offset is that instant, whatever the zones.
        (
            json!({"clocked": "2027-03-01T09:00:00+05:30", "timezone": "Europe/Berlin"}),
            berlin,
            "2027-03-01 03:30:00",
        ),
        (
            json!({"clocked": "2027-03-01T09:00:00Z"}),
            berlin,
            "2027-03-01 09:00:00",
        ),
        // In the spring gap (02:30 does not exist in Berlin on 28 March
        // 2027): the first instant after it, 03:00 CEST.
        (
            json!({"clocked": "2027-03-28T02:30:00", "timezone": "Europe/Berlin"}),
            chrono_tz::UTC,
            "2027-03-28 01:00:00",
        ),
        // Twice in the fall (02:30 on 31 October 2027): the first.
        (
            json!({"clocked": "2027-10-31T02:30:00", "timezone": "Europe/Berlin"}),
            chrono_tz::UTC,
            "2027-10-31 00:30:00",
        ),
    ] {
        let t = timing_in(json.clone(), zone);
        let Schedule::Clocked(clocked) = &t.schedule else {
            panic!("{json}: not clocked")
        };
        assert_eq!(texts(&[clocked.at]), [expected], "{json}");
        // It fires once: at its time, after any earlier instant.
        assert_eq!(
            texts(&t.next_runs(utc("2027-01-01 00:00:00"), 5, 0)),
            [expected],
            "{json}"
        );
        assert!(t.next_runs(clocked.at, 5, 0).is_empty(), "{json}");
        // Written back as given.
        assert_eq!(t.schedule.to_json(), json, "{json}");
    }
}

#[test]
fn a_clocked_routine_is_due_at_its_time_until_it_has_run_then_ends() {
    let t = timing(json!({"clocked": "2030-01-01T10:00:00"}));
    let ten = utc("2030-01-01 10:00:00");
    // Planned before or after its time (a row that appears late): due at
    // its time, and the misfire policy decides.
    assert_eq!(
        t.planned(None, 0, utc("2030-01-01 09:00:00")),
        Next::At(ten)
    );
    assert_eq!(
        t.planned(None, 0, utc("2030-01-01 11:00:00")),
        Next::At(ten)
    );
    // A run before its time (run on demand) does not count.
    assert_eq!(
        t.planned(Some(utc("2030-01-01 09:00:00")), 1, ten),
        Next::At(ten)
    );
    // Once it ran at (or after) its time: over.
    assert_eq!(t.planned(Some(ten), 1, ten), Next::Ends(End::Clocked(ten)));
    assert_eq!(t.after(ten, ten, Some(1)), Next::Ends(End::Clocked(ten)));
    // Missed (skip policy): over too.
    assert_eq!(
        t.after(ten, utc("2030-01-02 00:00:00"), None),
        Next::Ends(End::Clocked(ten))
    );
}

#[test]
fn one_off_and_max_runs_end_a_routine_after_its_runs_and_only_runs_count() {
    let one = timing(json!({"timedelta": 60, "one_off": true}));
    let t0 = utc("2030-01-01 00:00:00");
    let t1 = utc("2030-01-01 00:01:00");
    assert_eq!(one.planned(None, 0, t0), Next::At(t1));
    assert_eq!(one.after(t1, t1, Some(1)), Next::Ends(End::OneOff));
    // Skipped or missed: not a run; it goes on.
    assert_eq!(
        one.after(t1, t1, None),
        Next::At(utc("2030-01-01 00:02:00"))
    );
    assert_eq!(texts(&one.next_runs(t0, 5, 0)), ["2030-01-01 00:01:00"]);

    let three = timing(json!({"minute": "*/15", "max_runs": 3}));
    assert_eq!(
        three.after(t1, t1, Some(2)),
        Next::At(utc("2030-01-01 00:15:00"))
    );
    assert_eq!(three.after(t1, t1, Some(3)), Next::Ends(End::MaxRuns(3)));
    // A routine planned with its runs made (an edit, a restart) stays over.
    assert_eq!(three.planned(Some(t1), 3, t1), Next::Ends(End::MaxRuns(3)));
    assert_eq!(
        texts(&three.next_runs(t0, 10, 1)),
        ["2030-01-01 00:15:00", "2030-01-01 00:30:00"]
    );
}

#[test]
fn start_and_end_bound_the_runs_in_the_routines_zone_across_a_daylight_saving_change() {
    // 02:30 daily in Berlin from 27 to 29 March 2027 (02:30, on the 29th):
    // the 28th's 02:30 is in the spring gap and fires at 03:00 CEST.
    let json = json!({
        "minute": 30, "hour": 2, "timezone": "Europe/Berlin",
        "start_at": "2027-03-27T00:00:00", "end_at": "2027-03-29T02:30:00"
    });
    let t = timing(json.clone());
    assert_eq!(
        texts(&t.next_runs(utc("2027-03-01 00:00:00"), 10, 0)),
        [
            "2027-03-27 01:30:00",
            "2027-03-28 01:00:00",
            "2027-03-29 00:30:00"
        ]
    );
    // Planned before its start: its first run is the first due time at or
    // after the start.
    assert_eq!(
        t.planned(None, 0, utc("2027-03-01 00:00:00")),
        Next::At(utc("2027-03-27 01:30:00"))
    );
    // After its last run: over, with the end it reached.
    let end = utc("2027-03-29 00:30:00");
    assert_eq!(t.after(end, end, Some(3)), Next::Ends(End::EndAt(end)));
    // The same across the fall change: 02:30 on 31 October 2027 occurs
    // twice and fires at the first; the end at 01:00 UTC, between the two
    // 02:30s, is in the routine's zone with its offset.
    let fall = timing(json!({
        "minute": 30, "hour": 2, "timezone": "Europe/Berlin",
        "start_at": "2027-10-30T12:00:00", "end_at": "2027-10-31T03:00:00+01:00"
    }));
    assert_eq!(
        texts(&fall.next_runs(utc("2027-10-01 00:00:00"), 10, 0)),
        ["2027-10-31 00:30:00"]
    );
    // An interval's grid starts at its start.
    let hourly = timing(
        json!({"timedelta": 3600, "start_at": "2030-01-01T10:15:00", "end_at": "2030-01-01T12:15:00"}),
    );
    assert_eq!(
        texts(&hourly.next_runs(utc("2030-01-01 00:00:00"), 10, 0)),
        [
            "2030-01-01 10:15:00",
            "2030-01-01 11:15:00",
            "2030-01-01 12:15:00"
        ]
    );
    // An interval's times in a zone of their own (the zone serves them only).
    let zoned = timing(
        json!({"timedelta": 60, "start_at": "2030-01-01T10:00:00", "timezone": "Europe/Berlin"}),
    );
    assert_eq!(zoned.bounds.start_at, Some(utc("2030-01-01 09:00:00")));
}

#[test]
fn bad_extension_values_are_the_rows_errors_naming_the_key() {
    for (json, needle) in [
        (
            json!({"minute": 0, "start_at": "2030-01-02T00:00", "end_at": "2030-01-01T00:00"}),
            "end_at (2030-01-01 00:00:00 UTC) is before start_at",
        ),
        (
            json!({"minute": 0, "end_at": "next week"}),
            "end_at must be a time",
        ),
        (
            json!({"minute": 0, "start_at": 1_700_000_000}),
            "start_at must be a time",
        ),
        (
            json!({"minute": 0, "max_runs": 0}),
            "max_runs must be a whole number ≥ 1",
        ),
        (
            json!({"minute": 0, "max_runs": 2.5}),
            "max_runs must be a whole number ≥ 1",
        ),
        (
            json!({"minute": 0, "one_off": "yes"}),
            "one_off must be true or false",
        ),
        (
            json!({"minute": 0, "jitter": -1}),
            "jitter must be seconds ≥ 0",
        ),
        (
            json!({"minute": 0, "jitter": "60"}),
            "jitter must be seconds ≥ 0",
        ),
        (
            json!({"clocked": "2030-02-30T00:00:00"}),
            "clocked must be a time",
        ),
        (
            json!({"clocked": "2030-01-01T00:00:00", "minute": 5}),
            "cannot be mixed with \"minute\"",
        ),
        (
            json!({"clocked": "2030-01-01T00:00:00", "timedelta": 5}),
            "cannot be mixed with \"timedelta\"",
        ),
        (
            json!({"clocked": "2030-01-01T00:00:00", "max_runs": 2}),
            "max_runs does not apply to a clocked schedule",
        ),
        (
            json!({"timedelta": 60, "timezone": "Europe/Berlin"}),
            "timezone applies to crontab schedules only",
        ),
    ] {
        let message = error(json.clone());
        assert!(
            message.contains(needle),
            "{json}: {message:?} lacks {needle:?}"
        );
    }
    // The kit ignores the extensions; its own schedule keeps its meaning.
    let plain = timing(json!({"minute": "*/5", "jitter": 10, "one_off": false}));
    assert_eq!(
        plain.schedule,
        Schedule::crontab("*/5", "*", "*", "*", "*").unwrap()
    );
    assert!(matches!(
        Timing::from_json_in(&json!({"minute": 0, "jitters": 5}), chrono_tz::UTC),
        Err(ScheduleError::UnknownKey(key)) if key == "jitters"
    ));
}

#[test]
fn jitter_is_the_same_for_a_routine_and_due_time_and_spreads_a_herd_over_its_window() {
    let t = timing(json!({"minute": 0, "jitter": 60}));
    let due = utc("2030-01-01 10:00:00");
    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let offsets: Vec<i64> = ids
        .iter()
        .map(|id| (t.dispatch_at(id, due) - due).num_microseconds().unwrap())
        .collect();
    // The same in every call (every beat computes it alone).
    for (id, offset) in ids.iter().zip(&offsets).take(100) {
        assert_eq!(
            (t.dispatch_at(id, due) - due).num_microseconds(),
            Some(*offset)
        );
    }
    // Within [0, 60 s], and spread: each tenth of the window holds a tenth
    // of the herd, give or take 15% (a uniform spread's deviation is 3%).
    assert!(offsets.iter().all(|o| (0..=60_000_000).contains(o)));
    let mut tenths = [0usize; 10];
    for o in &offsets {
        tenths[usize::try_from(o / 6_000_001).unwrap()] += 1;
    }
    assert!(
        tenths.iter().all(|n| (850..=1150).contains(n)),
        "{tenths:?}"
    );
    // Another due time gives another offset (not one fixed per routine).
    let next_hour = due + TimeDelta::hours(1);
    let moved = ids
        .iter()
        .zip(&offsets)
        .filter(|(id, o)| {
            (t.dispatch_at(id, next_hour) - next_hour).num_microseconds() != Some(**o)
        })
        .count();
    assert!(moved > 9_900, "{moved}");
    // No jitter: dispatched at the due time.
    assert_eq!(timing(json!({"minute": 0})).dispatch_at(&ids[0], due), due);
    assert_eq!(
        timing(json!({"minute": 0, "jitter": 0})).dispatch_at(&ids[0], due),
        due
    );
}

#[test]
fn jitter_never_reaches_the_next_due_time() {
    // A 1 s interval with a 5 s jitter: capped below the 1 s gap, so
    // every run is dispatched before the next is due.
    let t = timing(json!({"timedelta": 1, "jitter": 5}));
    let start = utc("2030-01-01 00:00:00");
    let mut seen = HashSet::new();
    for k in 0..5_000 {
        let due = start + TimeDelta::seconds(k);
        let offset = (t.dispatch_at("r", due) - due).num_microseconds().unwrap();
        assert!((0..1_000_000).contains(&offset), "{due}: {offset} µs");
        seen.insert(offset / 100_000);
    }
    // And spread over the whole of the gap, not bunched at its start.
    assert_eq!(seen.len(), 10, "{seen:?}");
    // A crontab's gaps vary (minute 0 and 5: gaps of 5 and 55 minutes).
    let uneven = timing(json!({"minute": "0,5", "jitter": 3600}));
    for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let due = utc("2030-01-01 10:00:00");
        let at = uneven.dispatch_at(id, due);
        assert!(at < utc("2030-01-01 10:05:00"), "{id}: {at}");
        let due = utc("2030-01-01 10:05:00");
        assert!(uneven.dispatch_at(id, due) < utc("2030-01-01 11:00:00"));
    }
}

#[test]
fn a_backfill_range_has_the_due_times_the_schedule_had_within_its_bounds() {
    let quarter = timing(json!({"minute": "*/15", "start_at": "2030-01-01T10:20:00"}));
    let due = quarter.due_between(
        (utc("2030-01-01 10:00:00"), utc("2030-01-01 11:00:00")),
        None,
        100,
    );
    assert_eq!(
        texts(&due),
        [
            "2030-01-01 10:30:00",
            "2030-01-01 10:45:00",
            "2030-01-01 11:00:00"
        ]
    );
    // An interval keeps the grid through its anchor (a due time of its own).
    let every = timing(json!({"timedelta": 600}));
    let due = every.due_between(
        (utc("2030-01-01 10:00:00"), utc("2030-01-01 10:30:00")),
        Some(utc("2030-01-01 12:05:00")),
        100,
    );
    assert_eq!(
        texts(&due),
        [
            "2030-01-01 10:05:00",
            "2030-01-01 10:15:00",
            "2030-01-01 10:25:00"
        ]
    );
    // At most `limit`.
    assert_eq!(
        every
            .due_between(
                (utc("2030-01-01 00:00:00"), utc("2031-01-01 00:00:00")),
                None,
                7
            )
            .len(),
        7
    );
}
