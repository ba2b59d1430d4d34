"""Celery's crontab against the bridge's schedule JSON, as an oracle for a
differential test of the beat.

    python bridge_oracle.py SEED COUNT      (python/ on PYTHONPATH)

Draws COUNT random crontabs, each built as a user writes it: `crontab(...)`
with Python objects (ints, cron strings, sets, lists, ranges), in a Celery
app whose `timezone` is one of a few zones without daylight saving time. For
each, writes one JSON line:

    {"zone": ..., "python": "minute={1, 5}, hour='9-17'", "schedule": {...},
     "after": "2027-03-01T09:30:12.000000Z", "celery": [5 times]}

`schedule` is what celery_diesel_kit.bridge writes to the table for that
crontab; `celery` the next 5 runs Celery's beat computes after `after` (each
from the one before, UTC, in the format of `beat next --json`), or null if
Celery cannot compute one. The beat, given `schedule`, must find the same
runs. Crontabs Celery rejects are drawn again and counted; all-"*" ones
(every minute in Celery; the bridge writes minute "*/1") stay. Last line: {"done": true,
"cases": COUNT, "rejected_by_celery": M}.
"""

import json
import random
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import crontab

from celery_diesel_kit.bridge import Refused, schedule_json

# Zones without daylight saving time (now or between 2024 and 2030): the
# runs do not depend on the beat's rules for gaps and repeated hours.
ZONES = ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "America/Bogota", "Africa/Lagos"]

# Each field's range, as Celery numbers it (Sunday is day 0).
RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "day_of_month": (1, 31),
    "month_of_year": (1, 12),
}

# Cron strings beyond the random ones: steps, lists, wrapping ranges, names.
STRINGS = {
    "minute": ["*", "*/15", "1,13,30-45,50-59/2", "0-59/7", "5-10", "*/1", "45-15", "mon", "*/0"],
    "hour": ["*", "*/4", "9-17", "22-2", "0,12", "1-23/5", "3"],
    "day_of_week": [
        "*",
        "mon-fri",
        "fri-mon",
        "sun",
        "sat,sun",
        "tue-thu",
        "1-5/2",
        "*/2",
        "wed,0",
        "7",
    ],
    "day_of_month": ["*", "1", "1,15", "*/10", "25-5", "28-31", "29", "31", "1-31/7"],
    "month_of_year": ["*", "jan-mar", "*/3", "2", "nov-feb", "jun,dec", "2-12/2", "feb"],
}

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
END = datetime(2030, 1, 1, tzinfo=timezone.utc)
RUNS = 5


def utc_text(moment):
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def random_string(rng, lo, hi):
    """A cron string of 1 to 3 parts: numbers, ranges (maybe wrapping),
    steps; now and then a number one past the end, for Celery to reject."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        top = hi + (1 if rng.random() < 0.03 else 0)
        a, b = rng.randint(lo, top), rng.randint(lo, top)
        kind = rng.choice(["number", "range", "range/step", "*/step"])
        if kind == "number":
            parts.append(str(a))
        elif kind == "range":
            parts.append(f"{a}-{b}")
        elif kind == "range/step":
            parts.append(f"{a}-{b}/{rng.randint(1, 10)}")
        else:
            parts.append(f"*/{rng.randint(1, hi - lo + 1)}")
    return ",".join(parts)


def random_field(rng, field):
    """A value for one crontab argument, or None to leave it out."""
    lo, hi = RANGES[field]
    kind = rng.choice(["absent", "absent", "int", "string", "string", "set", "list", "range"])
    if kind == "absent":
        return None
    if kind == "int":
        # Now and then one past the end, for Celery to reject.
        return rng.randint(lo, hi + (1 if rng.random() < 0.05 else 0))
    if kind == "string":
        if rng.random() < 0.5:
            return rng.choice(STRINGS[field])
        return random_string(rng, lo, hi)
    if kind == "set":
        return set(rng.sample(range(lo, hi + 1), rng.randint(1, min(6, hi - lo + 1))))
    if kind == "list":
        return [rng.randint(lo, hi) for _ in range(rng.randint(1, 5))]
    start = rng.randint(lo, hi)
    return range(start, rng.randint(start, hi) + 1, rng.randint(1, 5))


def celery_runs(cron, after, zone):
    """The next RUNS runs Celery's beat computes after `after`, each from the
    run before it (the beat's last_run_at), with "now" at that run. Celery's
    beat keeps last_run_at on the app's clock (`app.now()`, aware, in the
    app's zone), and some Celery releases (5.5) match the fields on the
    clock of the time they are given: so is it given here."""
    runs = []
    last = after.astimezone(ZoneInfo(zone))
    for _ in range(RUNS):
        cron.nowfun = lambda last=last: last
        last = last + cron.remaining_estimate(last)
        runs.append(utc_text(last))
    return runs


def main():
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    apps = {}
    cases = rejected = 0
    while cases < count:
        zone = rng.choice(ZONES)
        if zone not in apps:
            app = Celery(set_as_current=False)
            app.conf.timezone = zone
            app.conf.enable_utc = True
            apps[zone] = app
        app = apps[zone]

        kwargs = {}
        for field in RANGES:
            value = random_field(rng, field)
            if value is not None:
                kwargs[field] = value
        try:
            cron = crontab(**kwargs, app=app)
        except Exception:  # Celery raises ValueError, TypeError, ParseException
            rejected += 1
            continue

        seconds = rng.randrange(int((END - START).total_seconds()))
        after = START + timedelta(seconds=seconds)
        try:
            runs = celery_runs(cron, after, zone)
        except Exception:
            runs = None
        case = {
            "zone": zone,
            "python": ", ".join(f"{field}={value!r}" for field, value in kwargs.items()),
        }
        try:
            case["schedule"] = schedule_json(cron, zone)
        except Refused as why:
            # Not expected for a crontab Celery accepts: the test fails on it.
            case["schedule"] = None
            case["refused"] = str(why)
        case["after"] = utc_text(after)
        case["celery"] = runs
        print(json.dumps(case), flush=True)
        cases += 1
    print(json.dumps({"done": True, "cases": cases, "rejected_by_celery": rejected}), flush=True)


if __name__ == "__main__":
    main()
