"""
Live Redis connections over txredisapi, shared by the Redis sources.

One L{RedisConnection} per C{[redis.NAME]} table (see L{streamd.redis_settings}),
created on first use and kept in C{services.shared}. It holds:

  - a small pool for ordinary commands (publish, ack, heartbeats), whose
    up/down state is the sources' L{status};
  - on request, dedicated connections for blocking reads (BLMOVE, XREAD BLOCK):
    a blocking command holds its connection, and on a pooled one it would delay
    every unrelated command behind it;
  - on request, subscriber connections for pub/sub.

Also here: how a Redis value becomes a message body (L{as_json}), and the bookkeeping
of the sources that share it (L{acquire}, L{release}, L{Faults}).

Every connection is bytes-exact (C{charset=None}: no decoding;
C{convertNumbers=False}: "007" stays "007") and reconnects with a short backoff
(C{reconnect_initial}, growing to C{reconnect_max}: txredisapi's own default grows
to 10 s, far too slow for a live stream). A command issued while Redis is away
waits for the reconnection rather than failing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from streamd import resp
from streamd.config import ConfigError
from streamd.message import InvalidPayload, normalize_json
from streamd.net import client_endpoint

log = Logger()


class _Factory(txredisapi.RedisFactory):
    """
    A txredisapi factory that reports its pool going empty or non-empty to its
    owner (txredisapi tracks the pool but tells nobody).
    """

    def __init__(self, settings: dict[str, Any], poolsize: int, reply_timeout: float | None,
                 on_change: Callable[[], None], protocol=None) -> None:
        super().__init__(
            None, settings["db"] or None, poolsize, isLazy=True, charset=None,
            password=settings["password"], replyTimeout=reply_timeout or None,
            convertNumbers=False, username=settings["username"],
        )
        self.protocol = protocol or resp.Protocol
        self.initialDelay = settings["reconnect_initial"]
        self.maxDelay = settings["reconnect_max"]
        self.on_change = on_change
        self.error: str | None = None

    def addConnection(self, conn) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.error = None
            self.on_change()

    def delConnection(self, conn) -> None:
        super().delConnection(conn)
        self.on_change()

    def connectionError(self, why) -> None:
        # Failed AUTH or SELECT: txredisapi stops retrying; keep the reason for status().
        self.error = str(why)
        super().connectionError(why)
        self.on_change()


class Dedicated:
    """
    One connection of its own, for blocking reads. Commands wait while it is down
    and run once it is back; a command in flight when it drops fails with
    L{txredisapi.ConnectionError}.
    """

    def __init__(self, owner: RedisConnection, factory: _Factory) -> None:
        self.owner = owner
        self.factory = factory

    def command(self, *args):
        """Send one command; a Deferred of its reply (bytes, ints, lists)."""
        return self.factory.handler.execute_command(*args)

    def close(self):
        """Close the connection (aborting a blocked command) and stop reconnecting."""
        if self.factory.disconnectCalled:
            return None
        self.owner.forget(self.factory)
        return self.factory.disconnect()


class RedisConnection:
    """
    A named Redis server: a pool for ordinary commands, dedicated connections for
    blocking reads and subscribers, and whether Redis answers right now.

    @ivar users: sources holding this connection; the last L{release} closes it.
    """

    def __init__(self, settings: dict[str, Any], reactor) -> None:
        self.settings = settings
        self.name = settings["name"]
        self.reactor = reactor
        self.users = 0
        self.factories: list[_Factory] = []
        self.listeners: list[Callable[[bool], None]] = []
        self.waiters: list[tuple[Callable[[], bool], Deferred]] = []
        self._was_up = False
        #: closed on purpose (shutdown, last source gone): no longer "down", just gone
        self.closing = False
        #: objects built on this connection by the sources (the pub/sub hub), closed
        #: and dropped with it
        self.shared: dict[str, Any] = {}
        self.pool = self._factory(settings["pool_size"], settings["command_timeout"])

    @property
    def where(self) -> str:
        s = self.settings
        return f"{'rediss' if s['tls'] else 'redis'}://{s['host']}:{s['port']}/{s['db']}"

    def _endpoint(self):
        s = self.settings
        return client_endpoint(self.reactor, s["host"], s["port"], s["connect_timeout"],
                               s["tls"], s["tls_ca"])

    def _factory(self, poolsize: int, reply_timeout: float | None, protocol=None) -> _Factory:
        factory = _Factory(self.settings, poolsize, reply_timeout, self._changed, protocol)
        factory.startConnecting(self._endpoint())
        self.factories.append(factory)
        return factory

    def wait_for(self, predicate: Callable[[], bool]) -> Deferred:
        """
        A Deferred that fires (with True) once C{predicate()} holds, checked at each
        change of connection state (L{changed}), or (with False) after
        C{connect_timeout}: start-up waits a little for Redis, never for ever.
        """
        if predicate():
            return succeed(True)
        d = Deferred()
        entry = (predicate, d)
        self.waiters.append(entry)

        def give_up():
            if entry in self.waiters:
                self.waiters.remove(entry)
                d.callback(False)
        self.reactor.callLater(self.settings["connect_timeout"], give_up)
        return d

    def changed(self) -> None:
        """Something connected or disconnected: wake the waiters whose wait is over."""
        for entry in list(self.waiters):
            predicate, d = entry
            if predicate():
                self.waiters.remove(entry)
                d.callback(True)

    def _changed(self) -> None:
        self.changed()
        if self.closing:
            # Our own close() dropped the connections: that is no outage to report,
            # nor one for the sources to count.
            return
        up = self.up
        if up != self._was_up:
            self._was_up = up
            log.info("redis {name} ({where}) is {state}", name=self.name, where=self.where,
                     state="up" if up else "down")
            for listener in list(self.listeners):
                listener(up)

    @property
    def up(self) -> bool:
        return self.pool.size > 0

    def status(self) -> tuple[str, str | None]:
        """C{("ok", None)} while the pool has a live connection, else C{("down", why)}."""
        if self.up:
            return ("ok", None)
        if self.pool.error:
            return ("down", f"redis {self.name}: {self.pool.error}")
        return ("down", f"redis {self.name}: cannot reach {self.where}")

    def command(self, *args):
        """Run one non-blocking command on the pool: a Deferred of its reply."""
        return self.pool.handler.execute_command(*args)

    def dedicated(self, block: float) -> Dedicated:
        """
        A new connection for blocking reads that wait up to C{block} seconds: its
        reply timeout is that plus C{command_timeout}, so a dead peer is noticed.
        """
        timeout = self.settings["command_timeout"]
        return Dedicated(self, self._factory(1, block + timeout if timeout else None))

    def subscriber(self, protocol) -> _Factory:
        """A pub/sub connection speaking C{protocol} (a L{resp.SubscriberProtocol} subclass)."""
        return self._factory(1, None, protocol)

    def forget(self, factory: _Factory) -> None:
        """A dedicated or subscriber connection was closed by its user."""
        if factory in self.factories:
            self.factories.remove(factory)

    def close(self):
        self.closing = True
        factories, self.factories = self.factories, []
        return gatherResults([f.disconnect() for f in factories], consumeErrors=True)


def as_json(raw: bytes) -> bytes:
    """
    A Redis value as one line of JSON: JSON text stays the publisher's bytes; any
    other value (C{hello}, C{007}, written by a program that is not streamd) becomes
    a JSON string, so that a stream never carries a line its clients cannot parse.
    """
    try:
        return normalize_json(raw)
    except InvalidPayload:
        return json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False).encode()


def json_object(value: dict[str, Any]) -> bytes:
    """A dict as one line of JSON text."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def param(params: dict[str, str] | None, name: str) -> str | None:
    """One query parameter of a publish request."""
    return (params or {}).get(name)


def default_instance(settings: dict[str, Any]) -> str:
    """
    This streamd's name in Redis: host name plus the first listen address, stable
    across restarts (so a restarted streamd recognises its own processing lists) and
    distinct for two streamd processes on one host.
    """
    listen = settings.get("listen") or ["tcp:8080"]
    return f"{socket.gethostname()}-{listen[0]}"


def acquire(services, stream: dict[str, Any]) -> RedisConnection:
    """
    The shared connection a stream's C{connection} key names, created on first use.
    Release it with L{release} when the source stops.
    """
    name = stream["connection"]
    declared = services.settings.get("redis") or {}
    if name not in declared:
        raise ConfigError(f"streams.{stream['name']}.connection",
                          f"no Redis connection named {name!r} (declare [redis.{name}])")
    shared = services.shared.setdefault("redis", {})
    conn = shared.get(name)
    if conn is None:
        conn = shared[name] = RedisConnection(declared[name], services.reactor)
    conn.users += 1
    return conn


class Faults:
    """
    A Redis source's reconnections and errors, counted in C{/metrics}
    (C{streamd_source_reconnects}, C{streamd_source_errors}) when the app has metrics.
    """

    def __init__(self, services, stream: str, kind: str, conn: RedisConnection) -> None:
        m = getattr(services, "metrics", None)
        self.reconnects = m.source_reconnects.labels(stream, kind) if m else None
        self.errors = m.source_errors.labels(stream, kind) if m else None
        self.conn = conn
        self.was_down = False
        conn.listeners.append(self._changed)

    def _changed(self, up: bool) -> None:
        if not up:
            self.was_down = True
        elif self.was_down:
            self.was_down = False
            if self.reconnects is not None:
                self.reconnects.inc()

    def error(self) -> None:
        if self.errors is not None:
            self.errors.inc()

    def close(self) -> None:
        if self._changed in self.conn.listeners:
            self.conn.listeners.remove(self._changed)


def release(services, conn: RedisConnection):
    """Give back a connection from L{acquire}; the last user closes it."""
    conn.users -= 1
    if conn.users > 0:
        return None
    services.shared.get("redis", {}).pop(conn.name, None)
    return conn.close()
