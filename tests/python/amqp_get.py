"""Takes every message waiting in a RabbitMQ queue, as py-amqp (Celery's
client) decodes it, and prints them as JSON: the delivery info, each
property and each header with the Python type it decodes to, and the body.

Usage: amqp_get.py BROKER_URL QUEUE
"""

import json
import sys

from amqp_connection import connect

url, queue = sys.argv[1], sys.argv[2]
connection = connect(url)
channel = connection.channel()


def typed(value):
    if isinstance(value, dict):
        return ["dict", {k: typed(v) for k, v in value.items()}]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [typed(v) for v in value]]
    if isinstance(value, bytes):
        return ["bytes", value.decode("utf-8", "replace")]
    return [type(value).__name__, value]


messages = []
while True:
    message = channel.basic_get(queue, no_ack=True)
    if message is None:
        break
    properties = dict(message.properties)
    headers = properties.pop("application_headers", {})
    info = message.delivery_info
    body = message.body.decode("utf-8") if isinstance(message.body, bytes) else message.body
    messages.append({
        "exchange": info["exchange"],
        "routing_key": info["routing_key"],
        "properties": {k: typed(v) for k, v in properties.items()},
        "header_order": list(headers),
        "headers": {k: typed(v) for k, v in headers.items()},
        "body": body,
    })
connection.close()
print(json.dumps(messages))
