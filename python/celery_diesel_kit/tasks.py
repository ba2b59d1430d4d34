"""Drop-in replacements for celery-sqlalchemy-kit's task classes.

Declare a periodic task as with the kit:

    class Report(SyncTask):
        name = "report"
        schedule = 15                        # seconds, or a crontab dict
        kwargs = {"to": "ops"}
        options = {"queue": "reports"}

        def run(self, to):
            ...

    app.register_task(Report())

Unlike the kit's, these classes do not call `app.add_periodic_task`: the
`beat` binary schedules them, not `celery beat`. `python -m
celery_diesel_kit sync -A proj` reads each registered class's `schedule`,
`kwargs` and `options` into the beat's `routines` table; Celery workers run
the tasks as any other.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from celery import Task
from celery.exceptions import Retry
from celery.schedules import BaseSchedule
from celery.utils.log import get_logger

logger = get_logger(__name__)


class SyncTask(Task):
    """A task with a schedule of its own, as celery-sqlalchemy-kit's SyncTask.

    Write the task's body as `run`. `schedule` is a number of seconds, a
    crontab dict (`{"minute": 0, "hour": 9}`, the fields of Celery's
    `crontab()`), one of the beat's schedule JSON objects (`{"timedelta":
    90}`, `{"clocked": ...}`), a timedelta or a Celery schedule object; None
    (the default) leaves the task unscheduled. The beat reads it, with
    `kwargs` and `options`, through `python -m celery_diesel_kit sync`; this
    class never adds itself to `beat_schedule`.

    The task can also be run on demand (`delay()`, `apply_async()`,
    `send_task()`), as any Celery task.
    """

    name: str
    schedule: int | float | dict | timedelta | BaseSchedule | None = None
    kwargs: dict = {}
    options: dict = {}
    max_retries: int
    retry_delay: int

    def __init__(self):
        super().__init__()
        # The kit's settings: the app's configuration, else its
        # DEFAULT_-prefixed environment variables.
        conf = self.app.conf
        self.max_retries = _setting(conf, "celery_max_retry", 3)
        self.retry_delay = _setting(conf, "celery_retry_delay", 300)
        # The kit passes retry_delay to retry(), which does not read it (the
        # wait was Celery's 180 s default); it is the countdown here.
        self.default_retry_delay = self.retry_delay

    def run(self, *args, **kwargs):
        """The body of the task executed by workers."""
        raise NotImplementedError("Synchronous Tasks must define the run method.")


class AsyncTask(SyncTask):
    """A task whose body is a coroutine, as celery-sqlalchemy-kit's AsyncTask.

    Write the body as `async def execute`; each run drives it with
    `asyncio.run` and, if it raises, retries the task up to `max_retries`
    times, `retry_delay` seconds apart. Scheduling is as for SyncTask: the
    beat reads `schedule`; this class never adds itself to `beat_schedule`.
    """

    def run(self, *args, **kwargs):
        try:
            asyncio.run(self.run_execute(*args, **kwargs))
        except Retry:
            # execute() asked for a retry of its own.
            raise
        except Exception as exc:
            raise self.retry(exc=exc, max_retries=self.max_retries, countdown=self.retry_delay)

    async def run_execute(self, *args, **kwargs):
        """Awaits `execute`, logging its error or its result. The kit's hook:
        override it to wrap every run (open and roll back a session, ...)."""
        try:
            result = await self.execute(*args, **kwargs)
        except Exception as exc:
            logger.error(exc, exc_info=True)
            raise
        if result:
            logger.info(result)

    async def execute(self, *args, **kwargs):
        """The body of the task executed by workers."""
        raise NotImplementedError("Asynchronous Tasks must define the execute method.")


def _setting(conf, key, default):
    value = conf.get(key)
    if value is None:
        value = os.getenv(f"DEFAULT_{key.upper()}") or default
    return int(value)
