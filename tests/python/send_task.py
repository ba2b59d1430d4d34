"""Sends one task with Celery's own `app.send_task`, for comparison.

Usage: send_task.py BROKER_URL JSON, where JSON holds send_task's
arguments: {"name": ..., "args": [...]?, "kwargs": {...}, "task_id": ...,
"options": {...}}.
"""

import json
import sys

from celery import Celery

broker, spec = sys.argv[1], json.loads(sys.argv[2])
app = Celery("cdk-sender", broker=broker)
app.conf.update(enable_utc=True, timezone="UTC")
app.send_task(spec["name"], args=spec.get("args", []), kwargs=spec["kwargs"], task_id=spec["task_id"], **spec["options"])
