"""A Celery app for the interop tests: its tasks record each call in Redis.

The broker is CDK_BROKER_URL. Each call of `tasks.record` RPUSHes one
JSON line to the list `calls` in the Redis at CDK_CALLS_URL (the broker,
when it is Redis), which is also the result backend.
"""

import json
import os

import redis
from celery import Celery

BROKER = os.environ["CDK_BROKER_URL"]
CALLS = os.environ.get("CDK_CALLS_URL", BROKER)

app = Celery("cdk", broker=BROKER, backend=CALLS)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_default_queue="celery",
    enable_utc=True,
    timezone="UTC",
)

_redis = redis.Redis.from_url(CALLS)


@app.task(name="tasks.record", bind=True)
def record(self, *args, **kwargs):
    _redis.rpush(
        "calls",
        json.dumps(
            {
                "task": self.name,
                "id": self.request.id,
                "args": list(args),
                "kwargs": kwargs,
                "delivery_info": self.request.delivery_info,
                "timelimit": [self.request.timelimit[0], self.request.timelimit[1]]
                if self.request.timelimit
                else None,
                # A custom message header: Celery 5 puts it on the request.
                "x_trace": getattr(self.request, "x_trace", None)
                or (self.request.headers or {}).get("x_trace"),
            }
        ),
    )
    return "ok"
