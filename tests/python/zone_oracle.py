"""Crontab fire times in a time zone, by the README's rules, over Python's
zoneinfo: an oracle for tests/timezones.rs written apart from the crate
(and from chrono-tz's copy of the zone database).

Reads JSON lines on stdin: {"zone": ..., "fields": {...}, "from": "YYYY-MM-DD
HH:MM", "count": n}. Writes one JSON line per input: the next n fire times
after "from", in UTC, as "YYYY-MM-DD HH:MM". The rules, minute by minute in
UTC: a minute fires if its wall-clock time matches, unless that wall-clock
time occurs twice and this is the second time (and the hour field is not
every hour); the first minute after a jump of the wall clock fires if any
minute it skipped matched.
"""

import json
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "day_of_month": (1, 31),
    "month_of_year": (1, 12),
}


def expand(spec, lo, hi):
    if isinstance(spec, int):
        return {spec}
    out = set()
    for part in str(spec).split(","):
        step = 1
        if "/" in part:
            part, step = part.split("/")
            step = int(step)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a, b = (int(x) for x in part.split("-"))
        else:
            a = b = int(part)
        out.update(range(a, b + 1, step))
    return out


def fire_times(zone, fields, start, count):
    sets = {f: expand(fields.get(f, "*"), *RANGES[f]) for f in RANGES}
    every_hour = len(sets["hour"]) == 24

    def matches(wall):
        return (
            wall.minute in sets["minute"]
            and wall.hour in sets["hour"]
            # Celery counts days of the week from Sunday (0).
            and (wall.weekday() + 1) % 7 in sets["day_of_week"]
            and wall.day in sets["day_of_month"]
            and wall.month in sets["month_of_year"]
        )

    def wall(u):
        local = u.astimezone(zone)
        other = local.replace(fold=1 - local.fold)
        twice = other.utcoffset() != local.utcoffset()
        return local.replace(tzinfo=None, fold=0), twice, local.fold

    minute = timedelta(minutes=1)
    u = start + minute
    previous = wall(u - minute)[0]
    fires = []
    while len(fires) < count:
        local, twice, fold = wall(u)
        fire = matches(local) and (not twice or every_hour or fold == 0)
        skipped = previous + minute
        while not fire and skipped < local:
            fire = matches(skipped)
            skipped += minute
        if fire:
            fires.append(u.strftime("%Y-%m-%d %H:%M"))
        previous = local
        u += minute
    return fires


def main():
    for line in sys.stdin:
        case = json.loads(line)
        start = datetime.strptime(case["from"], "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
        print(json.dumps(fire_times(ZoneInfo(case["zone"]), case["fields"], start, case["count"])), flush=True)


main()
