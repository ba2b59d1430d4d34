"""Declares, with py-amqp, what a test's routines publish to, as a Celery
user would have declared it: each argument is one of

  queue:NAME:MAX_PRIORITY        a durable queue with x-max-priority
  exchange:NAME:TYPE             a durable exchange (direct, topic, fanout)
  bind:QUEUE:EXCHANGE:KEY        a durable queue bound to an exchange

Usage: amqp_setup.py BROKER_URL SPEC...
"""

import sys

from amqp_connection import connect

url, specs = sys.argv[1], sys.argv[2:]
connection = connect(url)
channel = connection.channel()
for spec in specs:
    kind, *args = spec.split(":")
    if kind == "queue":
        name, most = args
        channel.queue_declare(
            name, durable=True, auto_delete=False, arguments={"x-max-priority": int(most)}
        )
    elif kind == "exchange":
        name, type_ = args
        channel.exchange_declare(name, type_, durable=True, auto_delete=False)
    elif kind == "bind":
        queue, exchange, key = args
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.queue_bind(queue, exchange, key)
    else:
        raise SystemExit(f"unknown spec {spec}")
connection.close()
