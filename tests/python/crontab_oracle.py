"""Celery's own crontab, as an oracle for tests/schedules.rs.

Reads JSON lines on stdin: {"fields": {...}, "after": ["YYYY-MM-DD HH:MM:SS", ...]}.
Writes one JSON line per input: {"error": "...", "fields": [...]} if Celery
rejects the fields (with the fields it rejects, each tried alone), else the expanded fields and, for each "after" time t, the next run
Celery's beat computes for an entry whose last run was t (with "now" = t).
"""

import json
import sys
from datetime import datetime, timezone

from celery import Celery
from celery.schedules import crontab

app = Celery("oracle", set_as_current=True)
app.conf.timezone = "UTC"
app.conf.enable_utc = True

FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def main():
    for line in sys.stdin:
        request = json.loads(line)
        fields = request["fields"]
        try:
            cron = crontab(**{f: fields.get(f, "*") for f in FIELDS}, app=app)
        except Exception as exc:  # Celery raises ValueError, TypeError, ParseException
            # Which fields Celery rejects, each alone (the others "*").
            bad = []
            for f in FIELDS:
                if f in fields:
                    try:
                        crontab(**{f: fields[f]}, app=app)
                    except Exception:
                        bad.append(f)
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "fields": bad}), flush=True)
            continue
        out = {f: sorted(getattr(cron, f)) for f in FIELDS}
        nexts = []
        for text in request["after"]:
            last = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            cron.nowfun = lambda last=last: last
            try:
                nxt = last + cron.remaining_estimate(last)
                nexts.append(nxt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
            except Exception as exc:
                nexts.append(f"error: {type(exc).__name__}: {exc}")
        out["next"] = nexts
        print(json.dumps(out), flush=True)


main()
