"""
The C{amqp} source: a RabbitMQ (AMQP 0-9-1) queue or exchange as a stream, at least
once, through pika's Twisted client. Installed with C{pip install 'streamd[amqp]'} and
registered by entry point like any plugin's kind.

Every client gets a channel of its own on the source's one connection, with
C{basic.qos(prefetch)}: at most C{prefetch} messages are in flight per client.

  - C{queue = "jobs"} (queue mode): each client is a consumer of the queue (declared
    durable if missing), so the broker hands each message to one client.
  - C{exchange = "events"} (broadcast): each client gets a server-named exclusive queue
    bound to the exchange with C{routing_key}, so every client gets every message
    published while it is connected. The queue keeps at most C{max_length} messages
    for a paused client (the oldest are dropped beyond that).

A message is C{basic.ack}ed once the stream wrote it (or once the client acknowledged
it, C{ack = "client"}), and C{basic.nack(requeue=true)}ed when the stream gives it back
(client gone, C{limit} reached, shutdown). A paused client's consumer is cancelled
(C{basic.cancel}): the broker sends it nothing more and hands the queue's messages to
the other clients; it consumes again on resume. Acks are accepted at any time after
delivery: a client that leaves keeps its channel until what it holds is settled (at
most C{LINGER} seconds). What a lost connection or a killed streamd held unacked is
requeued by the broker itself.

L{AMQPSource} keeps the streams, the declarations, publishing and the shutdown order;
the connection and its reconnection are L{streamd.sources.amqp_connection}'s, each
client's channel L{streamd.sources.amqp_subscription}'s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Mapping
from itertools import count
from typing import Any
from urllib.parse import urlsplit

import pika
from pika import exceptions as amqp_errors
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer, provider

from streamd.errors import InvalidRequest, Refused, SourceDown
from streamd.interfaces import ISource, ISourceKind
from streamd.keys import ConfigError, Key, check_ca
from streamd.message import Message
from streamd.sources.amqp_connection import BrokerConnection
from streamd.sources.amqp_subscription import AMQPSubscription, delivery_message, describe

log = Logger()

#: Seconds stop() waits for the streams' last acks before closing the connection.
STOP_GRACE = 2.0


def _check_url(value: str) -> str | None:
    # The URL may hold a password: a problem is described without echoing it.
    parts = urlsplit(value)
    if parts.scheme not in ("amqp", "amqps"):
        return "expected amqp://user:password@host:port/vhost (or amqps://)"
    try:
        if not parts.hostname:
            return "no host in the URL"
        pika.URLParameters(value)
    except ValueError as e:
        return f"bad URL: {str(e).replace(value, '...')}"
    return None


CONFIG_KEYS = [
    Key("url", "str", "amqp://guest:guest@127.0.0.1:5672/%2F",
        "the AMQP URI (amqps:// for TLS; ?heartbeat=S and pika's other options)",
        check=_check_url),
    Key("queue", "str", "", "queue mode: each message to one client (declared durable if "
        "missing)"),
    Key("exchange", "str", "", "broadcast mode: a server-named exclusive queue per client"),
    Key("routing_key", "str", "#", "broadcast: the binding of each client's queue"),
    Key("exchange_type", "enum", "topic", "broadcast: the type streamd declares a missing "
        "exchange with", choices=("topic", "fanout", "direct", "headers")),
    Key("prefetch", "int", 100, "messages in flight per client (basic.qos)", minimum=1,
        maximum=65535),
    Key("max_length", "int", 10000, "broadcast: messages a paused client's queue keeps "
        "(the oldest are dropped beyond)", minimum=1),
    Key("connect_timeout", "number", 5.0, "seconds for a connection and its handshake",
        minimum=0.01),
    Key("reconnect_initial", "number", 0.1, "seconds before the first reconnection "
        "attempt", minimum=0.01),
    Key("reconnect_max", "number", 5.0, "longest wait between reconnection attempts",
        minimum=0.01),
    Key("tls_ca", "str", "", "PEM file of the CA that signed an amqps:// broker's "
        "certificate (default: the system's CAs)", check=check_ca),
]


@provider(ISourceKind)
@implementer(ISource)
class AMQPSource:
    """
    One AMQP-backed stream (see the module doc).

    @ivar connection: the broker connection, kept up with backoff, and whether the
        broker can be used (L{BrokerConnection}).
    @ivar publisher: the channel of this process's publishes (with publisher confirms),
        opened on each new connection.
    @ivar links: every subscription channel still open (a client that left keeps its
        own until its messages are settled): what stop() waits for.
    """

    kind = "amqp"
    durable = True
    resumes_by_id = False  # what was not acked comes back by itself
    config_keys = CONFIG_KEYS

    @staticmethod
    def check_config(settings: Mapping[str, Any], where: str) -> None:
        if bool(settings["queue"]) == bool(settings["exchange"]):
            raise ConfigError(f"{where}.queue", "give queue (queue mode: each message to "
                              "one client) or exchange (broadcast), not both")
        if settings["reconnect_max"] < settings["reconnect_initial"]:
            raise ConfigError(f"{where}.reconnect_max", "must be at least reconnect_initial")
        if settings["url"].startswith("amqp://") and settings["tls_ca"]:
            raise ConfigError(f"{where}.tls_ca", "only for an amqps:// URL")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], services) -> AMQPSource:
        return cls(settings["name"], settings, services.reactor, services.metrics)

    def __init__(self, name: str, settings: Mapping[str, Any], reactor, metrics=None) -> None:
        self.name = name
        self.reactor = reactor
        self.metrics = metrics
        self.url: str = settings["url"]
        params = pika.URLParameters(self.url)
        # What `rabbitmqctl list_connections client_properties` (and the management
        # page) show: which streamd, which stream.
        params.client_properties = {
            "connection_name": f"streamd {name} {socket.gethostname()}:{os.getpid()}",
            "product": "streamd",
        }
        self.queue: str = settings.get("queue", "")
        self.exchange: str = settings.get("exchange", "")
        self.broadcast = bool(self.exchange)
        self.routing_key: str = settings.get("routing_key", "#")
        self.exchange_type: str = settings.get("exchange_type", "topic")
        self.prefetch: int = settings.get("prefetch", 100)
        self.max_length: int = settings.get("max_length", 10000)
        self.connection = BrokerConnection(
            name, params, reactor, tls=self.url.startswith("amqps://"),
            tls_ca=settings.get("tls_ca", ""),
            connect_timeout=settings.get("connect_timeout", 5.0),
            reconnect_initial=settings.get("reconnect_initial", 0.1),
            reconnect_max=settings.get("reconnect_max", 5.0), setup=self._setup,
            on_up=self._connected, on_lost=self._lost, count=self._count_series)
        self.publisher: Any = None
        self.subscribers: list[AMQPSubscription] = []
        self.links: set = set()
        # Ids for messages published without a message_id: unique per source instance.
        self._prefix = uuid.uuid4().hex[:8] + "-"
        self._seq = count(1)
        self._counter = None
        if metrics is not None:
            self._counter = metrics.counter(
                "streamd_amqp_messages", "AMQP messages by what happened to them "
                "(delivered, acked, nacked, stale: settled after their channel closed, "
                "published, refused)", ["stream", "event"])

    @property
    def conn(self) -> Any:
        """The open connection (set-up done), or None: L{BrokerConnection.conn}."""
        return self.connection.conn

    def count(self, event: str, n: int = 1) -> None:
        if self._counter is not None and n:
            self._counter.labels(self.name, event).inc(n)

    def _count_series(self, series: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, series).labels(self.name, self.kind).inc()

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Deferred:
        """Connect (and keep reconnecting); fires once the first attempt ended."""
        return self.connection.start()

    async def _setup(self, conn) -> None:
        """Declare what is missing (never redeclare what exists), open the publisher."""
        if self.broadcast:
            await _ensure(conn, f"exchange {self.exchange!r}",
                          lambda ch: ch.exchange_declare(self.exchange, passive=True),
                          lambda ch: ch.exchange_declare(self.exchange, self.exchange_type,
                                                         durable=True))
        else:
            await _ensure(conn, f"queue {self.queue!r}",
                          lambda ch: ch.queue_declare(self.queue, passive=True),
                          lambda ch: ch.queue_declare(self.queue, durable=True))
        self.publisher = await self._open_publisher(conn)

    async def _open_publisher(self, conn):
        ch = await conn.channel()
        await ch.confirm_delivery()
        return ch

    def _connected(self) -> None:
        for sub in list(self.subscribers):
            sub.open()

    def _lost(self) -> None:
        self.publisher = None
        for sub in list(self.subscribers):
            sub.connection_lost()

    def reconnect(self, why: str) -> None:
        """Something only a new connection mends (the queue was deleted): start over."""
        self.connection.reconnect(why)

    def stop(self) -> Deferred:
        """End the streams, let their last acks out, close the connection."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.connection.running:
            return
        self.connection.halt()
        for sub in list(self.subscribers):
            # The stream writes what it can, acks that and nacks the rest.
            sub.consumer.source_ended("shutdown")
        waits = [_when(link.released) for link in self.links] if self.conn else []
        if waits:
            # Past the grace, closing the connection requeues what is still unacked.
            with contextlib.suppress(Exception):
                await DeferredList(waits, consumeErrors=True).addTimeout(
                    STOP_GRACE, self.reactor)
        await self.connection.close()

    def status(self) -> tuple[str, str | None]:
        down = self.connection.down
        return ("down", down) if down else ("ok", None)

    def subscribe(self, consumer, since: str | None = None) -> AMQPSubscription:
        if since is not None:
            raise InvalidRequest("since: an amqp stream cannot resume by id (the broker "
                                 "redelivers what was not acknowledged instead)")
        if self.connection.down or self.conn is None:
            raise SourceDown(f"stream {self.name!r} is down: {self.connection.down}")
        sub = AMQPSubscription(self, consumer)
        self.subscribers.append(sub)
        sub.open()
        return sub

    # -- messages -------------------------------------------------------------------

    def message(self, handle, method, properties, body: bytes) -> Message:
        mid = properties.message_id or f"{self._prefix}{next(self._seq)}"
        return delivery_message(self.name, str(mid), handle, method, properties, body)

    # -- publish --------------------------------------------------------------------

    def publish(self, payloads: list[bytes], params: dict[str, str]) -> Deferred:
        """
        To the queue (through the default exchange) or to the exchange, with publisher
        confirms: the answer comes once the broker has taken every message. Query
        parameter (broadcast): C{routing_key} (default empty).
        """
        return ensureDeferred(self._publish(payloads, params or {}))

    async def _publish(self, payloads: list[bytes], params: dict[str, str]) -> list[str]:
        if self.conn is None:
            raise SourceDown(f"stream {self.name!r} is down: {self.connection.down}")
        if self.publisher is None or self.publisher.is_closed:
            self.publisher = await self._open_publisher(self.conn)
        if self.broadcast:
            exchange, routing_key = self.exchange, params.get("routing_key", "")
        else:
            exchange, routing_key = "", self.queue
        ids = [uuid.uuid4().hex for _ in payloads]
        sent = [
            self.publisher.basic_publish(
                exchange, routing_key, payload,
                pika.BasicProperties(message_id=mid, content_type="application/json",
                                     delivery_mode=1 if self.broadcast else 2),
                # Queue mode: a deleted queue is an error, not a silent drop.
                mandatory=not self.broadcast)
            for mid, payload in zip(ids, payloads, strict=True)
        ]
        results = await DeferredList(sent, consumeErrors=True)
        failed = [(n, f.value) for n, (ok, f) in enumerate(results, 1) if not ok]
        self.count("published", len(payloads) - len(failed))
        if not failed:
            return ids
        self.count("refused", len(failed))
        if any(isinstance(e, (amqp_errors.ChannelClosed, amqp_errors.ConnectionClosed))
               for _, e in failed):
            raise SourceDown(f"stream {self.name!r}: the broker connection closed "
                             f"during the publish ({describe(failed[0][1])}); "
                             f"{len(payloads) - len(failed)} of {len(payloads)} were "
                             "confirmed")
        detail = "; ".join(f"line {n}: {_refusal(e)}" for n, e in failed[:5])
        raise Refused(f"{len(failed)} of {len(payloads)} messages refused by the broker "
                      f"({detail}); the others were confirmed")


async def _ensure(conn, what: str, check, declare) -> None:
    """C{check} (a passive declare) on a new channel; C{declare} if it is not found."""
    ch = await conn.channel()
    try:
        await check(ch)
    except amqp_errors.ChannelClosedByBroker as e:
        if e.reply_code != 404:  # the broker closed that channel: 403, 406, ...
            raise RuntimeError(f"{what}: {describe(e)}") from None
        ch = await conn.channel()
        try:
            await declare(ch)
        except amqp_errors.ChannelClosedByBroker as e2:
            raise RuntimeError(f"{what}: {describe(e2)}") from None
    ch.close()


def _when(d: Deferred) -> Deferred:
    """A Deferred that fires with C{d}, and that cancelling leaves C{d} alone."""
    out: Deferred = Deferred()

    def fired(result: Any) -> Any:
        if not out.called:
            out.callback(None)
        return result

    d.addBoth(fired)
    return out


def _refusal(error: Exception) -> str:
    if isinstance(error, amqp_errors.UnroutableError):
        return "unroutable (no queue bound)"
    if isinstance(error, amqp_errors.NackError):
        return "nacked by the broker"
    return describe(error)
