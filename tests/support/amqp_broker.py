"""
The RabbitMQ this machine runs on 127.0.0.1:5672 (guest/guest), as the tests see it:
queue and exchange names with a uuid suffix for each test, deleted afterwards; a
blocking pika client to fill and inspect queues the way another program would; and
C{rabbitmqctl} to drop a connection from the broker's side.

Import the C{broker} fixture; the tests using it are skipped, with the reason, when
nothing listens on the port.
"""

from __future__ import annotations

import socket
import subprocess
import uuid

import pika
import pytest

HOST, PORT = "127.0.0.1", 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"


def listening() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


class Broker:
    """One test's view of the broker: its names, cleaned up by L{close}."""

    url = URL

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.channel = self.conn.channel()
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def name(self, what: str = "q") -> str:
        name = f"streamd-test-{what}-{uuid.uuid4().hex[:12]}"
        (self.exchanges if what == "x" else self.queues).append(name)
        return name

    def queue(self) -> str:
        """A new durable queue, declared here (as another program would have)."""
        name = self.name()
        self.channel.queue_declare(name, durable=True)
        return name

    def publish(self, queue: str, bodies, exchange: str = "", **properties) -> list[str]:
        """Publish each body (str or bytes) with a message_id; returns the ids."""
        ids = []
        for body in bodies:
            mid = uuid.uuid4().hex
            props = pika.BasicProperties(message_id=mid, delivery_mode=2, **properties)
            self.channel.basic_publish(exchange, queue, body, props)
            ids.append(mid)
        return ids

    def ready(self, queue: str) -> int:
        """Messages ready in the queue (not held unacked by a consumer)."""
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def consumers(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.consumer_count

    def drain(self, queue: str) -> list[tuple[str, bytes, bool]]:
        """Take (and ack) every ready message: (message_id, body, redelivered)."""
        out = []
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.message_id, body, method.redelivered))

    def close(self) -> None:
        for q in self.queues:
            self.channel.queue_delete(q)
        for x in self.exchanges:
            self.channel.exchange_delete(x)
        self.conn.close()


def ctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def close_connections(name_part: str, reason: str = "test drop") -> int:
    """Close, from the broker's side, every connection whose name contains C{name_part}."""
    closed = 0
    for line in ctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, props = line.partition("\t")
        if name_part in props:
            ctl("close_connection", pid, reason)
            closed += 1
    return closed


@pytest.fixture
def broker():
    if not listening():
        pytest.skip(f"no RabbitMQ listening on {HOST}:{PORT} (the amqp source's tests "
                    "need one, guest/guest)")
    b = Broker()
    yield b
    b.close()
