"""From a Celery app to the beat: the routines it declares, and its settings.

`load_app` loads an app as `celery -A` does and as `celery beat` sees it;
`export` reads its periodic tasks (`beat_schedule`, and the task classes of
celery-sqlalchemy-kit and of this package) and returns them as the beat's
routines, in the schedule JSON the kit writes to the `routines` table:

    {"routines": [...], "refused": [...], "config": {...}}

A periodic task the beat cannot run as Celery would (a solar schedule, a
custom schedule class, kwargs that are not JSON, ...) is listed in `refused`
with the reason; it never stops the others.
"""

import json
import math
import os
import sys
from collections.abc import Mapping
from datetime import timedelta, timezone

from celery.schedules import BaseSchedule, crontab, schedule, solar

# The crontab fields, in the order of Celery's `crontab()` arguments; the
# kit writes all five.
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")

# The kit's settings the beat reads under the same names.
KIT_SETTINGS = (
    "scheduler_db_uri",
    "scheduler_max_interval",
    "scheduler_sync_every",
    "celery_max_retry",
    "celery_retry_delay",
    "create_table",
)

# Celery's broker when `broker_url` is unset (kombu's default transport).
CELERY_DEFAULT_BROKER = "amqp://guest:guest@localhost:5672//"

# The packages whose SyncTask/AsyncTask classes declare a periodic task with a
# `schedule` class attribute.
TASK_PACKAGES = ("celery_sqlalchemy_kit", "celery_diesel_kit")

NO_ZONE = (
    "Celery matches this crontab on a zone with no IANA name (the machine's local "
    "time when app.conf.timezone is unset and enable_utc is False); set "
    'app.conf.timezone to an IANA name such as "Europe/Berlin"'
)


class Refused(ValueError):
    """A periodic task the beat cannot run as Celery would; the reason."""


def load_app(spec):
    """The Celery app `spec` names (`proj.celery:app`, `proj.celery`, `proj`),
    loaded as `celery -A` does and configured as `celery beat` sees it."""
    from celery import Celery
    from celery.app.utils import find_app

    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    try:
        app = find_app(spec)
    except ModuleNotFoundError as exc:
        # find_app, not finding the attribute after the colon, tries the
        # whole of "module:attribute" as a module name.
        if exc.name == spec and ":" in spec:
            module, _, attribute = spec.partition(":")
            raise ImportError(f"module {module!r} has no attribute {attribute!r}") from None
        raise
    if not isinstance(app, Celery):
        raise TypeError(f"{spec} is a {_class_name(type(app))}, not a Celery app")
    # The modules of `include` and `imports`, where tasks are often declared.
    app.loader.import_default_modules()
    # Reading the configuration configures the app, which moves the pending
    # add_periodic_task() calls (the kit's task classes make them) into
    # beat_schedule and sends on_after_configure.
    app.conf.beat_schedule
    # Evaluates the @app.task decorators and sends on_after_finalize, where
    # Celery's documentation adds periodic tasks.
    app.finalize(auto=True)
    return app


def export(app):
    """The routines `app` declares, those refused, and its settings for the beat."""
    zone = app_zone(app)
    routines = []
    refused = []
    beat_schedule = app.conf.beat_schedule or {}
    kit_tasks = {
        task.name: task for task in app.tasks.values() if _kit_package(type(task)) is not None
    }
    # The kit's task classes put themselves in beat_schedule, but the kit
    # turns any schedule other than an int or a dict into None there; for
    # those the class's own `schedule` says what was meant.
    left_to_class = {
        name
        for name, entry in beat_schedule.items()
        if isinstance(entry, Mapping)
        and entry.get("schedule") is None
        and name in kit_tasks
        and kit_tasks[name].schedule
    }

    for name, entry in beat_schedule.items():
        if name in left_to_class:
            continue
        try:
            routines.append(entry_routine(name, entry, zone))
        except Refused as why:
            refused.append({"name": str(name), "source": "beat_schedule", "reason": str(why)})

    # The task classes beat_schedule does not answer for: this package's
    # (which never add themselves there) and the kit's left to them above.
    for name, task in kit_tasks.items():
        if not task.schedule or (name in beat_schedule and name not in left_to_class):
            continue
        try:
            ours = _kit_package(type(task)) == "celery_diesel_kit"
            routines.append(task_class_routine(task, zone, ours))
        except Refused as why:
            source = f"task class {_class_name(type(task))}"
            refused.append({"name": str(name), "source": source, "reason": str(why)})

    return {"routines": routines, "refused": refused, "config": beat_config(app, zone)}


def entry_routine(name, entry, zone):
    """The routine of one beat_schedule entry; raises Refused."""
    if not isinstance(entry, Mapping):
        raise Refused(f"the entry is a {_class_name(type(entry))}, not a dict")
    return routine(
        name,
        entry.get("task"),
        schedule_json(entry.get("schedule"), zone, relative=bool(entry.get("relative"))),
        args=entry.get("args"),
        kwargs=entry.get("kwargs"),
        options=entry.get("options"),
    )


def task_class_routine(task, zone, ours):
    """The routine of a kit task class (`ours`: this package's); raises Refused."""
    return routine(
        task.name,
        task.name,
        class_schedule_json(task.schedule, zone, ours),
        kwargs=getattr(task, "kwargs", None),
        options=getattr(task, "options", None),
    )


def routine(name, task, schedule_doc, args=None, kwargs=None, options=None):
    """A routine object for the beat; raises Refused if a field is not
    what the table holds."""
    if not isinstance(name, str):
        raise Refused(f"the name is a {_class_name(type(name))}, not a str")
    if not isinstance(task, str) or not task:
        raise Refused(f"task must be a non-empty str, got {task!r}")
    if args is not None and not isinstance(args, (list, tuple)):
        raise Refused(f"args must be a list or tuple, got a {_class_name(type(args))}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise Refused(f"kwargs must be a dict, got a {_class_name(type(kwargs))}")
    if options is not None and not isinstance(options, Mapping):
        raise Refused(f"options must be a dict, got a {_class_name(type(options))}")

    out = {"name": name, "task": task, "schedule": _json_field("schedule", schedule_doc)}
    # No args leaves the column NULL, as the kit (which has no args column)
    # leaves it.
    if args:
        out["args"] = _json_field("args", list(args))
    out["kwargs"] = _json_field("kwargs", dict(kwargs or {}))
    out["options"] = _json_field("options", dict(options or {}))
    return out


def schedule_json(value, zone, relative=False):
    """The schedule JSON of a beat_schedule `schedule` value: a number of
    seconds, a timedelta, or one of Celery's schedule objects. `zone` is the
    app's zone name (None if it has none). Raises Refused."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _interval(value, relative)
    if isinstance(value, timedelta):
        return _interval(_seconds(value), relative)
    # Exact types: a subclass exists to change when the task is due, which
    # the beat cannot know.
    if type(value) is schedule and isinstance(value.run_every, timedelta):
        return _interval(_seconds(value.run_every), relative or value.relative)
    if type(value) is crontab:
        return _crontab(value, zone)
    if type(value) is solar:
        raise Refused(
            f"a solar schedule ({value.event!r}, lat {value.lat}, lon {value.lon}): "
            "the beat runs intervals, crontabs and clocked times only"
        )
    if value is None:
        raise Refused("the entry has no schedule")
    if isinstance(value, BaseSchedule):
        raise Refused(
            f"a custom schedule class ({_class_name(type(value))}): the beat runs "
            "intervals, crontabs and clocked times only"
        )
    raise Refused(
        f"not a schedule: a {_class_name(type(value))} (expected seconds, a timedelta, "
        "or a Celery schedule, crontab)"
    )


def class_schedule_json(value, zone, ours):
    """The schedule JSON of a task class's `schedule` attribute. The kit
    reads a dict as `crontab(**dict)`; this package's classes may also give a
    schedule JSON of ours (`timedelta` or `clocked`). Raises Refused."""
    if not isinstance(value, Mapping):
        return schedule_json(value, zone)
    if ours and ("timedelta" in value or "clocked" in value):
        return dict(value)
    unknown = [key for key in value if key not in CRONTAB_FIELDS]
    if unknown:
        raise Refused(
            f"a schedule dict is crontab(**dict), whose fields are {', '.join(CRONTAB_FIELDS)}; "
            f"got {', '.join(repr(key) for key in unknown)}"
        )
    try:
        cron = crontab(**value)
    except Exception as exc:  # Celery raises ValueError, TypeError, ParseException
        reason = f"Celery rejects crontab(**{dict(value)!r}): {type(exc).__name__}: {exc}"
        raise Refused(reason) from None
    return _crontab(cron, zone)


def app_zone(app):
    """The IANA name of the zone Celery matches the app's crontabs on, or
    None (the machine's local time, or a tzinfo with no name)."""
    tz = app.conf.timezone
    if not tz:
        return "UTC" if app.conf.enable_utc else None
    if isinstance(tz, str):
        return tz
    if tz is timezone.utc:
        return "UTC"
    # zoneinfo names its zone `key`, pytz `zone`.
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if isinstance(name, str):
        return name
    return None


def beat_config(app, zone):
    """The app's settings the beat reads (those that are set)."""
    conf = app.conf
    config = {}
    for key in KIT_SETTINGS:
        value = conf.get(key)
        if value is None:
            continue
        if key == "scheduler_db_uri" and isinstance(value, str):
            value = beat_db_uri(value)
        config[key] = _scalar(value)

    broker = conf.broker_url
    if isinstance(broker, (list, tuple)):
        broker = broker[0] if broker else None
    # kombu reads "url1;url2" as the same failover list.
    if isinstance(broker, str):
        broker = broker.split(";")[0].strip()
    config["broker_url"] = broker or CELERY_DEFAULT_BROKER

    if zone is not None:
        config["timezone"] = zone
    return config


def beat_db_uri(uri):
    """`scheduler_db_uri` as SQLAlchemy reads it, written as the beat reads it."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    base = scheme.split("+")[0].lower()
    if base == "postgresql":
        return f"postgresql://{rest}"
    if base in ("mysql", "mariadb") and "+" in scheme:
        return f"mysql://{rest}"
    # SQLAlchemy's sqlite:///x.db is the relative path x.db and
    # sqlite:////x.db the absolute /x.db; the beat reads sqlite:///x.db as
    # /x.db, so hand it the plain path.
    if base == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return rest[1:]
    return uri


def _interval(seconds, relative):
    # Only what JSON cannot carry is refused here; the beat judges the rest
    # (a zero or negative interval), in its own words.
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise Refused(f"the interval must be a finite number of seconds, got {seconds!r}")
    if relative:
        raise Refused(
            "relative=True aligns runs to the interval's resolution, which the beat "
            f"cannot represent; remove it to run every {seconds} s"
        )
    return {"timedelta": seconds}


def _seconds(delta):
    """A timedelta in seconds: an int when whole."""
    if delta.microseconds == 0:
        return delta.days * 86400 + delta.seconds
    return delta.total_seconds()


def _crontab(cron, zone):
    doc = {
        field: _crontab_field(field, getattr(cron, f"_orig_{field}")) for field in CRONTAB_FIELDS
    }
    # Celery's crontab() (every field "*") fires every minute, but the kit's
    # JSON refuses an all-"*" crontab (and so does the beat): minute "*/1"
    # gives the beat the same times.
    if all(doc[field] == "*" for field in CRONTAB_FIELDS):
        doc["minute"] = "*/1"
    if zone is None:
        raise Refused(NO_ZONE)
    if zone not in ("UTC", "Etc/UTC"):
        doc["timezone"] = zone
    return doc


def _crontab_field(field, value):
    """A crontab field as the kit writes it: a str or an int as given, a
    collection of ints as a sorted list."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (set, frozenset, list, tuple, range)):
        numbers = set()
        for item in value:
            if not isinstance(item, int):
                raise Refused(f"crontab field {field} holds {item!r}, not an integer")
            numbers.add(int(item))
        return sorted(numbers)
    kind = _class_name(type(value))
    raise Refused(f"crontab field {field} is a {kind}, not a str, an int or ints")


def _json_field(field, value):
    """`value` if it is JSON (as the table's column holds it); raises Refused."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Refused(f"{field} is not JSON: {exc}") from None
    return value


def _scalar(value):
    """A setting as a JSON scalar (anything else as its text, for the beat to
    reject with the value in its message)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _kit_package(cls):
    """The package (of TASK_PACKAGES) whose SyncTask or AsyncTask `cls`
    derives from, or None."""
    for base in cls.__mro__:
        if base.__name__ in ("SyncTask", "AsyncTask"):
            for package in TASK_PACKAGES:
                if base.__module__ == package or base.__module__.startswith(package + "."):
                    return package
    return None


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"
