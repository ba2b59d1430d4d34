"""A py-amqp connection to a Celery broker URL, as kombu reads the URL;
for the tests' scripts that read and declare on RabbitMQ."""

import amqp
from kombu.utils.url import url_to_parts


def connect(url):
    """An open connection to the broker `url` names (guest/guest and the
    virtual host `/` where it names none)."""
    parts = url_to_parts(url)
    connection = amqp.Connection(
        f"{parts.hostname}:{parts.port or 5672}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        virtual_host=parts.path or "/",
    )
    connection.connect()
    return connection
