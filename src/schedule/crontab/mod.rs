//! Celery's crontab: field syntax and next-run math, in a time zone.
//!
//! Field strings follow `celery.schedules.crontab_parser` to the letter,
//! quirks included (prefix matching, wrapped ranges such as `fri-mon`,
//! weekday and month names accepted in every field). The next run is
//! computed by saffron where its semantics are Celery's, and bridged where
//! they are not:
//!
//! * saffron numbers Sunday 1..Saturday 7, Celery 0..6: we renumber;
//! * when both day-of-month and day-of-week are restricted, saffron fires on
//!   either (Vixie cron's OR), Celery only when both match: we give saffron
//!   the day-of-month alone and filter its candidates by weekday;
//! * saffron computes in UTC only: we give it the zone's wall-clock time as
//!   if it were UTC (calendar math, where it is right), and turn each match
//!   into instants with the zone database, by the rules for the changes of
//!   offset (see [`Crontab::next_after`]).

mod fields;

use super::{truncated, ScheduleError};
use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use fields::{
    days_in_month_max, expand_spec, full, list, star_or_list, Field, DAY_OF_MONTH, DAY_OF_WEEK,
    FIELDS, HOUR, MINUTE, MONTH_OF_YEAR,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// How far ahead a crontab is searched. Every valid (month, day) pair
/// falls on every weekday within one 400-year Gregorian cycle, so a search
/// that finds nothing in that span never will.
const HORIZON_DAYS: i64 = 146_097;

/// More than a zone's clock ever moves at one change of offset (two hours,
/// in the tz database): near a change, matches this far either side of the
/// answer are looked at.
const REACH: TimeDelta = TimeDelta::hours(3);

pub(super) fn is_field(key: &str) -> bool {
    FIELDS.iter().any(|f| f.name == key)
}

/// A Celery crontab, parsed and expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Crontab {
    /// The fields exactly as given, for writing back.
    source: Map<String, Value>,
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days_of_week: BTreeSet<u32>,
    days_of_month: BTreeSet<u32>,
    months_of_year: BTreeSet<u32>,
    cron: saffron::Cron,
    /// saffron was given `*` for day-of-week; candidates must be filtered.
    filter_weekday: bool,
    /// The zone whose wall clock the fields match.
    zone: Tz,
}

impl Crontab {
    /// The crontab of `map` (its fields only), matched on `zone`'s wall
    /// clock; `source` is what `to_json` writes back.
    pub(super) fn from_json(
        map: &Map<String, Value>,
        zone: Tz,
        source: Map<String, Value>,
    ) -> Result<Self, ScheduleError> {
        if let Some(unknown) = map.keys().find(|k| !is_field(k)) {
            return Err(ScheduleError::UnknownKey(truncated(unknown.clone())));
        }
        // The kit's rule, to the letter: every field missing or the string
        // "*" (so `{"minute": "*/1"}` is allowed and fires every minute).
        if FIELDS
            .iter()
            .all(|f| map.get(f.name).is_none_or(|v| v == "*"))
        {
            return Err(ScheduleError::AllStars);
        }
        let expand = |field: &Field| match map.get(field.name) {
            None => Ok(full(field)),
            Some(spec) => expand_spec(field, spec),
        };
        let minutes = expand(&MINUTE)?;
        let hours = expand(&HOUR)?;
        let days_of_week = expand(&DAY_OF_WEEK)?;
        let days_of_month = expand(&DAY_OF_MONTH)?;
        let months_of_year = expand(&MONTH_OF_YEAR)?;

        check_fires([
            &minutes,
            &hours,
            &days_of_week,
            &days_of_month,
            &months_of_year,
        ])?;

        let dom_is_star = days_of_month == full(&DAY_OF_MONTH);
        let dow_is_star = days_of_week == full(&DAY_OF_WEEK);
        // saffron's day-of-week is Sunday = 1; and it is given only when
        // day-of-month is `*`, where OR and AND agree.
        let saffron_dow = if dow_is_star || !dom_is_star {
            "*".to_owned()
        } else {
            days_of_week
                .iter()
                .map(|d| (d + 1).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let expr = format!(
            "{} {} {} {} {}",
            star_or_list(&minutes, &MINUTE),
            star_or_list(&hours, &HOUR),
            star_or_list(&days_of_month, &DAY_OF_MONTH),
            star_or_list(&months_of_year, &MONTH_OF_YEAR),
            saffron_dow,
        );
        let cron: saffron::Cron = expr.parse().map_err(|e| {
            // Our own expression from validated sets: failing here is a bug,
            // reported as a schedule error rather than a panic.
            ScheduleError::NeverFires(format!("internal cron expression {expr:?}: {e:?}"))
        })?;
        Ok(Crontab {
            source,
            zone,
            minutes,
            hours,
            days_of_week,
            days_of_month,
            months_of_year,
            cron,
            filter_weekday: !dom_is_star && !dow_is_star,
        })
    }

    pub(super) fn to_json(&self) -> Value {
        Value::Object(self.source.clone())
    }

    /// The first fire time strictly after `t`.
    ///
    /// The fields match the zone's wall-clock time. Where the zone's clock
    /// changes: a match time that does not exist (skipped by a spring
    /// change) fires once, at the first instant after the gap (several
    /// such matches fire once together); a match time that occurs twice
    /// (a fall change) fires at its first occurrence only, unless the hour
    /// field is every hour, which fires at both.
    pub(super) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.zone == Tz::UTC {
            return self.next_local_after(t.naive_utc()).map(|l| l.and_utc());
        }
        let local_t = t.with_timezone(&self.zone).naive_local();
        let candidate = self.next_local_after(local_t)?;
        // Away from a change of offset the wall clock is UTC shifted: the
        // first match's one instant is the answer.
        if let LocalResult::Single(at) = self.zone.from_local_datetime(&candidate) {
            let at = at.with_timezone(&Utc);
            let before = t.checked_sub_signed(REACH).map(|u| self.offset(u));
            let after = at.checked_add_signed(REACH).map(|u| self.offset(u));
            if at > t && before.is_some() && before == after {
                return Some(at);
            }
        }
        self.next_after_near_a_change(t, local_t)
    }

    /// `next_after` where the offset changes: every match from `REACH`
    /// before `t`'s wall-clock time on, each turned into its instants, until
    /// no later match can come earlier than the best so far.
    fn next_after_near_a_change(
        &self,
        t: DateTime<Utc>,
        local_t: NaiveDateTime,
    ) -> Option<DateTime<Utc>> {
        let mut from = local_t.checked_sub_signed(REACH)?;
        let mut best: Option<DateTime<Utc>> = None;
        while let Some(local) = self.next_local_after(from) {
            if let Some(best) = best {
                let best_local = best.with_timezone(&self.zone).naive_local();
                if best_local
                    .checked_add_signed(REACH)
                    .is_none_or(|limit| local > limit)
                {
                    break;
                }
            }
            for at in self.instants(local).into_iter().flatten() {
                if at > t && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
            from = local;
        }
        best
    }

    /// The instants a matching wall-clock time fires at (see `next_after`).
    fn instants(&self, local: NaiveDateTime) -> [Option<DateTime<Utc>>; 2] {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(at) => [Some(at.with_timezone(&Utc)), None],
            LocalResult::Ambiguous(a, b) => {
                let (first, second) = if a <= b { (a, b) } else { (b, a) };
                let every_hour = self.hours == full(&HOUR);
                [
                    Some(first.with_timezone(&Utc)),
                    every_hour.then(|| second.with_timezone(&Utc)),
                ]
            }
            LocalResult::None => [self.end_of_gap(local), None],
        }
    }

    /// The first instant after the gap that holds `local`: the first whole
    /// minute of wall-clock time that exists again.
    fn end_of_gap(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut next = local;
        for _ in 0..REACH.num_minutes() {
            next = next.checked_add_signed(TimeDelta::minutes(1))?;
            match self.zone.from_local_datetime(&next) {
                LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                    return Some(at.with_timezone(&Utc))
                }
                LocalResult::None => {}
            }
        }
        None
    }

    /// The zone's offset from UTC at `t`, in seconds.
    fn offset(&self, t: DateTime<Utc>) -> i32 {
        self.zone
            .offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The first matching wall-clock minute strictly after `t`: calendar
    /// math on the fields alone (saffron, bridged), with no zone.
    fn next_local_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let t = t.and_utc();
        let horizon = t.checked_add_signed(TimeDelta::days(HORIZON_DAYS))?;
        let mut from = t;
        loop {
            let candidate = self.cron.next_after(from)?;
            if candidate > horizon {
                return None;
            }
            let weekday = candidate.weekday().num_days_from_sunday();
            if !self.filter_weekday || self.days_of_week.contains(&weekday) {
                return Some(candidate.naive_utc());
            }
            // Skip the rest of that day: saffron continues after 23:59.
            from = candidate.date_naive().and_hms_opt(23, 59, 0)?.and_utc();
        }
    }

    /// The IANA name of the zone its fields are read in.
    pub fn timezone(&self) -> &'static str {
        self.zone.name()
    }

    /// The minutes this crontab fires at, ascending (Celery's `crontab.minute`).
    pub fn minutes(&self) -> Vec<u32> {
        self.minutes.iter().copied().collect()
    }
    /// The hours (0–23), ascending.
    pub fn hours(&self) -> Vec<u32> {
        self.hours.iter().copied().collect()
    }
    /// The days of the week, Sunday = 0, ascending.
    pub fn days_of_week(&self) -> Vec<u32> {
        self.days_of_week.iter().copied().collect()
    }
    /// The days of the month (1–31), ascending.
    pub fn days_of_month(&self) -> Vec<u32> {
        self.days_of_month.iter().copied().collect()
    }
    /// The months (1–12), ascending.
    pub fn months_of_year(&self) -> Vec<u32> {
        self.months_of_year.iter().copied().collect()
    }
}

/// Refuses fields that can never fire: a field that matches no value, or
/// days of the month that none of the months has. `sets` are the expanded
/// fields, in the order of `FIELDS`.
fn check_fires(sets: [&BTreeSet<u32>; 5]) -> Result<(), ScheduleError> {
    if let Some((field, _)) = FIELDS.iter().zip(sets).find(|(_, set)| set.is_empty()) {
        return Err(ScheduleError::NeverFires(format!(
            "{} matches no value",
            field.name
        )));
    }
    let [_, _, _, days_of_month, months_of_year] = sets;
    let longest_month = months_of_year.iter().map(|&m| days_in_month_max(m)).max();
    if days_of_month.first().copied() > longest_month {
        return Err(ScheduleError::NeverFires(format!(
            "day_of_month {} never occurs in month_of_year {}",
            list(days_of_month),
            list(months_of_year)
        )));
    }
    Ok(())
}
