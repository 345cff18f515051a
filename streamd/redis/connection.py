"""
Live Redis connections over txredisapi: the one place where streamd sets up a txredisapi
factory, for the Redis sources, the channel store, the event store and the client.

A L{RedisConnection} is one Redis server. It holds:

  - a small pool for ordinary commands (publish, ack, heartbeats, scripts), whose
    up/down state is its L{RedisConnection.status};
  - on request, dedicated connections for blocking reads (BLMOVE, XREAD BLOCK):
    a blocking command holds its connection, and on a pooled one it would delay
    every unrelated command behind it;
  - on request, subscriber connections for pub/sub (see L{streamd.redis.hub}).

Every connection is bytes-exact (C{charset=None}: no decoding;
C{convertNumbers=False}: "007" stays "007") and reconnects with a short backoff
(C{reconnect_initial}, growing to C{reconnect_max}: txredisapi's own default grows
to 10 s, far too slow for a live stream). A command issued while Redis is away
waits for the reconnection rather than failing.

Replies are read by hiredis (a dependency: with it installed, txredisapi's protocols
read with it). Measured with C{bench/redis_bench.py} (bench/RESULTS.md, "Issue 13:
Redis reply reader"), it reads lists and streams at least as fast as streamd's former
hand-written reader, without that reader's quadratic re-parse of large replies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import txredisapi
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from streamd.net import client_endpoint
from streamd.redis.settings import RedisConnectionSettings
from streamd.redis.url import parse_url

log = Logger()

#: The keys of L{RedisConnection}'s settings besides the URL's parts, with the values
#: that programs which do not read streamd's C{[redis]} table (the event store, the
#: client) start from (L{connection_settings}).
DEFAULTS: dict[str, Any] = {
    "name": "default",
    "tls_ca": "",
    "connect_timeout": 2.0,
    "command_timeout": 0.0,
    "reconnect_initial": 0.1,
    "reconnect_max": 0.5,
    "pool_size": 1,
    "cluster": False,
    "urls": (),
}


def connection_settings(url: str, **keys: Any) -> RedisConnectionSettings:
    """The settings of a L{RedisConnection} to C{url}: L{DEFAULTS}, then C{keys}."""
    unknown = set(keys) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown Redis connection settings: {sorted(unknown)}")
    return RedisConnectionSettings(**{**DEFAULTS, **keys}, **parse_url(url), url=url)


def address(settings: RedisConnectionSettings) -> str:
    """Where a connection goes, without its user name and password (for logs, /health)."""
    s = settings
    return f"{'rediss' if s.tls else 'redis'}://{s.host}:{s.port}/{s.db}"


class Factory(txredisapi.RedisFactory):
    """
    The one adapter to txredisapi's internals, so that nothing else in streamd touches
    them. txredisapi keeps the state of its pool to itself; streamd needs to know
    when the pool goes empty or non-empty (a source's status, waking whoever waits for
    Redis) and why a connection was refused (a failed AUTH or SELECT stops retrying).
    So this subclass:

      - overrides C{addConnection}, C{delConnection} and C{connectionError} (the hooks
        txredisapi calls as connections come and go) to call C{on_change};
      - replaces C{retryDelay} (txredisapi's retry policy for its C{ClientService})
        with Twisted's C{backoffPolicy}, from C{reconnect_initial} to C{reconnect_max};
      - reads C{pool} and C{handler} (the pool's live connections, and the object
        that runs a command on one of them) for L{command}, L{eval} and L{up}, and
        C{disconnectCalled} (set by its C{disconnect}) for L{closed}.

    Connect it with C{startConnecting(endpoint)}, the only way txredisapi 1.6
    documents (hence C{txredisapi>=1.6}).
    """

    def __init__(self, settings: RedisConnectionSettings, poolsize: int,
                 reply_timeout: float | None, on_change: Callable[[], None],
                 protocol=None) -> None:
        super().__init__(
            None, settings.db or None, poolsize, isLazy=True, charset=None,
            password=settings.password, replyTimeout=reply_timeout or None,
            convertNumbers=False, username=settings.username,
        )
        if protocol is not None:
            self.protocol = protocol
        policy = backoffPolicy(settings.reconnect_initial, settings.reconnect_max,
                               factor=math.e, jitter=lambda: 0.0)
        # txredisapi counts attempts from 1, backoffPolicy from 0.
        self.retryDelay = lambda attempt: policy(max(0, attempt - 1))
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

    @property
    def up(self) -> bool:
        return bool(self.pool)

    @property
    def closed(self) -> bool:
        return self.disconnectCalled

    def command(self, *args) -> Deferred:
        return self.handler.execute_command(*args)

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        # txredisapi's eval sends EVALSHA once the script is known to the connection.
        return self.handler.eval(script, keys, args)

    def asking(self, *args) -> Deferred:
        """
        C{ASKING} then C{args} on one connection of the pool, back to back (Redis
        Cluster's ASK redirection: the flag holds for the next command only).
        """
        def send(conn):
            conn.execute_command("ASKING").addErrback(lambda _: None)
            return conn.execute_command(*args)
        return self.getConnection(peek=True).addCallback(send)

    def local_ports(self) -> list[int]:
        """The local ports of the live connections (to find them in CLIENT LIST)."""
        return [conn.transport.getHost().port for conn in self.pool]


class BlockingConnection(Protocol):
    """
    What L{RedisConnection.dedicated} returns: a L{Dedicated}, or on a cluster a
    L{streamd.redis.cluster.ClusterDedicated} (one connection per primary it reads from).
    """

    def command(self, *args) -> Deferred: ...

    def local_ports(self) -> list[int]: ...

    def close(self) -> Deferred | None: ...


class Dedicated:
    """
    One connection of its own, for blocking reads. Commands wait while it is down
    and run once it is back; a command in flight when it drops fails with
    L{txredisapi.ConnectionError}.
    """

    def __init__(self, owner: RedisConnection, factory: Factory) -> None:
        self.owner = owner
        self.factory = factory

    def command(self, *args) -> Deferred:
        """Send one command; a Deferred of its reply (bytes, ints, lists)."""
        return self.factory.command(*args)

    def local_ports(self) -> list[int]:
        return self.factory.local_ports()

    def close(self):
        """Close the connection (aborting a blocked command) and stop reconnecting."""
        if self.factory.closed:
            return None
        self.owner.forget(self.factory)
        return self.factory.disconnect()


class RedisConnection:
    """
    A named Redis server: a pool for ordinary commands, dedicated connections for
    blocking reads and subscribers, and whether Redis answers right now.

    @param settings: a validated C{[redis.NAME]} table (L{RedisConnectionSettings}), or
        L{connection_settings}'s.
    @ivar users: sources holding this connection (see L{streamd.redis.shared}).
    """

    #: a Redis Cluster (L{streamd.redis.cluster.ClusterConnection}): keys a command
    #: uses together must share a slot (hash tags)
    clustered = False

    def __init__(self, settings: RedisConnectionSettings, reactor) -> None:
        self.settings = settings
        self.name = settings.name
        self.reactor = reactor
        self.users = 0
        self.factories: list[Factory] = []
        self.listeners: list[Callable[[bool], None]] = []
        self.waiters: list[tuple[Callable[[], bool], Deferred]] = []
        self._was_up = False
        #: closed on purpose (shutdown, last source gone): no longer "down", just gone
        self.closing = False
        #: objects built on this connection (the pub/sub hub), closed and dropped with it
        self.shared: dict[str, Any] = {}
        self._connect()

    def _connect(self) -> None:
        """Open the command pool (a cluster opens one per primary instead)."""
        self.pool = self._factory(self.settings.pool_size, self.settings.command_timeout)

    @property
    def where(self) -> str:
        return address(self.settings)

    def _factory(self, poolsize: int, reply_timeout: float | None, protocol=None,
                 host: str | None = None, port: int | None = None,
                 endpoint=None) -> Factory:
        """A new txredisapi factory to C{host:port} (default: the settings'), or C{endpoint}."""
        s = self.settings
        factory = Factory(s, poolsize, reply_timeout, self._changed, protocol)
        factory.startConnecting(endpoint or client_endpoint(
            self.reactor, host or s.host, port or s.port, s.connect_timeout, s.tls, s.tls_ca))
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
        d: Deferred[bool] = Deferred()
        entry = (predicate, d)
        self.waiters.append(entry)

        def give_up():
            if entry in self.waiters:
                self.waiters.remove(entry)
                d.callback(False)
        self.reactor.callLater(self.settings.connect_timeout, give_up)
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
        return self.pool.up

    def status(self) -> tuple[str, str | None]:
        """C{("ok", None)} while the pool has a live connection, else C{("down", why)}."""
        if self.up:
            return ("ok", None)
        if self.pool.error:
            return ("down", f"redis {self.name}: {self.pool.error}")
        return ("down", f"redis {self.name}: cannot reach {self.where}")

    def command(self, *args) -> Deferred:
        """Run one non-blocking command on the pool: a Deferred of its reply."""
        return self.pool.command(*args)

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        """Run a Lua script on the pool (EVALSHA once Redis knows it)."""
        return self.pool.eval(script, keys, args)

    def dedicated(self, block: float) -> BlockingConnection:
        """
        A new connection for blocking reads that wait up to C{block} seconds: its
        reply timeout is that plus C{command_timeout}, so a dead peer is noticed.
        """
        timeout = self.settings.command_timeout
        return Dedicated(self, self._factory(1, block + timeout if timeout else None))

    def subscriber(self, protocol) -> Factory:
        """A pub/sub connection speaking C{protocol} (a L{txredisapi.SubscriberProtocol})."""
        return self._factory(1, None, protocol)

    def forget(self, factory: Factory) -> None:
        """A dedicated or subscriber connection was closed by its user."""
        if factory in self.factories:
            self.factories.remove(factory)

    def close(self) -> Deferred:
        """Close every connection and stop reconnecting."""
        self.closing = True
        factories, self.factories = self.factories, []
        return gatherResults([f.disconnect() for f in factories], consumeErrors=True)
