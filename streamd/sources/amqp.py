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
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Mapping
from itertools import count
from typing import Any
from urllib.parse import urlsplit

import pika
from pika import exceptions as amqp_errors
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer, provider

from streamd.errors import BadRequest, HTTPError, Unavailable
from streamd.interfaces import ISource, ISourceKind
from streamd.keys import ConfigError, Key, check_ca
from streamd.message import Message, body_json
from streamd.net import client_endpoint
from streamd.sources.amqp_subscription import AMQPSubscription, describe

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


def _connection_class():
    # Imported when first needed: pika's Twisted module imports the global reactor.
    from pika.adapters.twisted_connection import TwistedProtocolConnection

    class Connection(TwistedProtocolConnection):
        """
        Keeps why the connection failed or ended: pika's Twisted adapter reports a
        failed handshake as "1 attempt", and replaces the reason the broker gave in
        its Connection.Close (CONNECTION_FORCED, ACCESS_REFUSED) with the
        ConnectionDone of the socket that followed.
        """

        failure: Exception | None = None

        def _on_connection_failed(self, connection, error=None):
            if self.failure is None and isinstance(error, Exception):
                self.failure = error
            return super()._on_connection_failed(connection, error)

        def connectionLost(self, reason=None):
            pending = getattr(self._impl, "_error", None)
            if self.failure is None and isinstance(pending, amqp_errors.AMQPError):
                self.failure = pending
            return super().connectionLost(reason) if reason else super().connectionLost()

    return Connection


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # Decimal, datetime


@provider(ISourceKind)
@implementer(ISource)
class AMQPSource:
    """
    One AMQP-backed stream (see the module doc).

    @ivar conn: the open connection (pika's C{TwistedProtocolConnection}), or None.
    @ivar down: why the broker cannot be used, or None.
    @ivar links: every subscription channel still open (a client that left keeps its
        own until its messages are settled): what stop() waits for.
    """

    kind = "amqp"
    durable = True
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
        self.params = pika.URLParameters(self.url)
        # What `rabbitmqctl list_connections client_properties` (and the management
        # page) show: which streamd, which stream.
        self.params.client_properties = {
            "connection_name": f"streamd {name} {socket.gethostname()}:{os.getpid()}",
            "product": "streamd",
        }
        self.tls = self.url.startswith("amqps://")
        self.tls_ca: str = settings.get("tls_ca", "")
        self.queue: str = settings.get("queue", "")
        self.exchange: str = settings.get("exchange", "")
        self.broadcast = bool(self.exchange)
        self.routing_key: str = settings.get("routing_key", "#")
        self.exchange_type: str = settings.get("exchange_type", "topic")
        self.prefetch: int = settings.get("prefetch", 100)
        self.max_length: int = settings.get("max_length", 10000)
        self.connect_timeout: float = settings.get("connect_timeout", 5.0)
        self.reconnect_initial: float = settings.get("reconnect_initial", 0.1)
        self.reconnect_max: float = settings.get("reconnect_max", 5.0)

        self.conn: Any = None
        self.publisher: Any = None
        self.down: str | None = "not connected yet"
        self.running = False
        self.subscribers: list[AMQPSubscription] = []
        self.links: set = set()
        self._loop: Deferred | None = None
        self._first: Deferred | None = None
        self._wait: Deferred | None = None
        # Ids for messages published without a message_id: unique per source instance.
        self._prefix = uuid.uuid4().hex[:8] + "-"
        self._seq = count(1)
        self._counter = None
        if metrics is not None:
            self._counter = metrics.counter(
                "streamd_amqp_messages", "AMQP messages by what happened to them "
                "(delivered, acked, nacked, stale: settled after their channel closed, "
                "published, refused)", ["stream", "event"])

    def count(self, event: str, n: int = 1) -> None:
        if self._counter is not None and n:
            self._counter.labels(self.name, event).inc(n)

    def _count_series(self, series: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, series).labels(self.name, self.kind).inc()

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Deferred:
        """Connect (and keep reconnecting); fires once the first attempt ended."""
        self.running = True
        self._first = Deferred()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("amqp {name}: connection loop failed",
                                                    f, name=self.name))
        return self._first

    async def _run(self) -> None:
        delay = self.reconnect_initial
        while self.running:
            conn = None
            try:
                conn = await self._connect()
                await self._setup(conn)
            except CancelledError:
                if conn is not None:
                    conn.close()
                return
            except Exception as e:
                self._set_down(describe(e))
                if conn is not None and not conn.is_closed:
                    conn.close()
            else:
                delay = self.reconnect_initial
                closed = conn.closed  # fires (with the reason) when the connection ends
                self.conn = conn
                self._set_up()
                for sub in list(self.subscribers):
                    sub.open()
                reason = await closed
                reason = conn.failure or reason
                self.conn = self.publisher = None
                if not self.running:
                    return
                self._set_down(describe(reason))
                for sub in list(self.subscribers):
                    sub.connection_lost()
            self._first_done()
            if not self.running:
                return
            self._wait = deferLater(self.reactor, delay, lambda: None)
            try:
                await self._wait
            except CancelledError:
                return
            finally:
                self._wait = None
            delay = min(self.reconnect_max, delay * 2)

    async def _connect(self):
        conn = _connection_class()(self.params, custom_reactor=self.reactor)
        endpoint = client_endpoint(self.reactor, self.params.host, self.params.port,
                                   self.connect_timeout, self.tls, self.tls_ca)
        await connectProtocol(endpoint, conn)
        try:
            await conn.ready.addTimeout(self.connect_timeout, self.reactor)
        except Exception as e:
            conn.transport.abortConnection()
            failure = conn.failure or e
            if isinstance(failure, ConnectionDone):
                # RabbitMQ just hangs up on a refused login (pika sees no reason).
                raise RuntimeError("the broker closed the connection during the "
                                   "handshake (user or password refused?)") from None
            raise failure from None
        return conn

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

    def _first_done(self) -> None:
        d, self._first = self._first, None
        if d is not None:
            d.callback(None)

    def _set_up(self) -> None:
        if self.down is not None and self.down != "not connected yet":
            self._count_series("source_reconnects")
            log.info("amqp {name} is up again", name=self.name)
        self.down = None
        self._first_done()

    def _set_down(self, reason: str) -> None:
        if self.down != reason:
            log.warn("amqp {name} is down: {reason}", name=self.name, reason=reason)
        if self.down is None:
            self._count_series("source_errors")
        self.down = reason

    def reconnect(self, why: str) -> None:
        """Something only a new connection mends (the queue was deleted): start over."""
        log.warn("amqp {name}: {why}; reconnecting", name=self.name, why=why)
        self._count_series("source_errors")
        if self.conn is not None and not self.conn.is_closed:
            self.conn.close(320, why[:200])

    def stop(self) -> Deferred:
        """End the streams, let their last acks out, close the connection."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self._wait is not None:
            self._wait.cancel()
        for sub in list(self.subscribers):
            # The stream writes what it can, acks that and nacks the rest.
            sub.consumer.source_ended("shutdown")
        conn = self.conn
        if conn is not None:
            waits = [_when(link.released) for link in self.links]
            if waits:
                # Past the grace, closing the connection requeues what is still unacked.
                with contextlib.suppress(Exception):
                    await DeferredList(waits, consumeErrors=True).addTimeout(
                        STOP_GRACE, self.reactor)
            if not conn.is_closed:
                closed = conn.closed
                conn.close()
                await closed
        elif self._loop is not None:
            self._loop.cancel()
        self._first_done()

    def status(self) -> tuple[str, str | None]:
        return ("down", self.down) if self.down else ("ok", None)

    def subscribe(self, consumer, since: str | None = None) -> AMQPSubscription:
        if since is not None:
            raise BadRequest("since: an amqp stream cannot resume by id (the broker "
                             "redelivers what was not acknowledged instead)")
        if self.down or self.conn is None:
            raise Unavailable(f"stream {self.name!r} is down: {self.down}")
        sub = AMQPSubscription(self, consumer)
        self.subscribers.append(sub)
        sub.open()
        return sub

    # -- messages -------------------------------------------------------------------

    def message(self, handle, method, properties, body: bytes) -> Message:
        attributes: dict[str, Any] = {"routing_key": method.routing_key,
                                      "redelivered": method.redelivered}
        if method.exchange:
            attributes["exchange"] = method.exchange
        if properties.headers:
            attributes["headers"] = _jsonable(properties.headers)
        for name in ("content_type", "correlation_id", "app_id", "timestamp", "type"):
            value = getattr(properties, name)
            if value is not None:
                attributes[name] = value
        try:
            data = body_json(body.decode("utf-8"))
        except UnicodeDecodeError:
            data = json.dumps(base64.b64encode(body).decode()).encode()
            attributes["body_encoding"] = "base64"
        mid = properties.message_id or f"{self._prefix}{next(self._seq)}"
        return Message(str(mid), self.name, data, attributes, handle)

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
            raise Unavailable(f"stream {self.name!r} is down: {self.down}")
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
            raise Unavailable(f"stream {self.name!r}: the broker connection closed "
                              f"during the publish ({describe(failed[0][1])}); "
                              f"{len(payloads) - len(failed)} of {len(payloads)} were "
                              "confirmed")
        detail = "; ".join(f"line {n}: {_refusal(e)}" for n, e in failed[:5])
        raise HTTPError(f"{len(failed)} of {len(payloads)} messages refused by the broker "
                        f"({detail}); the others were confirmed", status=502)


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
    d.addBoth(lambda result: (None if out.called else out.callback(None), result)[1])
    return out


def _refusal(error: Exception) -> str:
    if isinstance(error, amqp_errors.UnroutableError):
        return "unroutable (no queue bound)"
    if isinstance(error, amqp_errors.NackError):
        return "nacked by the broker"
    return describe(error)
