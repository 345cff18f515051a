"""
The client's Redis connection (txredisapi), for L{RedisState} and L{RedisQueue}.

A L{RedisLink} is built with the reactor it runs on (an endpoint of that reactor), is
bytes-exact (no decoding, "007" stays "007") and reconnects quickly (0.1 s growing to
2 s; txredisapi's own default grows to 10 s). Commands issued while Redis is away wait
for the reconnection. A blocking command (BLPOP) holds the connection: a consumer that
blocks should use a link of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import txredisapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint


def _factory(factory: txredisapi.RedisFactory) -> txredisapi.RedisFactory:
    factory.initialDelay = 0.1
    factory.maxDelay = 2.0
    return factory


class _Subscriber(txredisapi.SubscriberProtocol):
    """Subscribes on every (re)connection: txredisapi does not restore subscriptions."""

    def connectionMade(self):
        d = super().connectionMade()
        self.whenConnected().addCallback(self._subscribe)
        return d

    def _subscribe(self, _):
        f = self.factory
        f.on_connect(self.subscribe([f.channel]))

    def messageReceived(self, pattern, channel, message):
        self.factory.callback(message)


class RedisLink:
    """
    One Redis server: a connection for commands, plus a subscriber connection per
    L{subscribe} call.
    """

    def __init__(self, reactor, host: str = "127.0.0.1", port: int = 6379,
                 db: int = 0, password: str | None = None) -> None:
        self.reactor = reactor
        self._endpoint = HostnameEndpoint(reactor, host, port)
        self._password = password
        self._db = db
        self._factories: list[txredisapi.RedisFactory] = []
        self._commands = self._start(txredisapi.RedisFactory(
            None, db or None, 1, isLazy=True, charset=None, convertNumbers=False,
            password=password))

    @classmethod
    def from_url(cls, reactor, url: str) -> RedisLink:
        """C{redis://[:password@]host[:port][/db]}."""
        u = urlsplit(url)
        if u.scheme != "redis":
            raise ValueError(f"expected a redis:// URL, got {url!r}")
        db = int(u.path.strip("/") or 0)
        return cls(reactor, u.hostname or "127.0.0.1", u.port or 6379, db, u.password)

    def _start(self, factory):
        _factory(factory).startConnecting(self._endpoint)
        self._factories.append(factory)
        return factory

    def command(self, *args) -> Deferred:
        """Run one command: a Deferred of its reply (bytes, ints, lists)."""
        return self._commands.handler.execute_command(*args)

    def subscribe(self, channel: bytes, callback: Callable[[bytes], None]) -> Deferred:
        """
        Call C{callback(message)} for every message on C{channel}, across reconnections.
        The Deferred fires once the first SUBSCRIBE is confirmed.
        """
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = _Subscriber
        factory.charset = None
        factory.password = self._password
        factory.channel = channel
        factory.callback = callback
        first = Deferred()

        def on_connect(d: Deferred) -> None:
            if not first.called:
                d.chainDeferred(first)
            else:  # a resubscription after a reconnection; a failure is retried by it
                d.addErrback(lambda f: None)

        factory.on_connect = on_connect
        self._start(factory)
        return first

    def close(self) -> Deferred:
        """Close every connection and stop reconnecting."""
        factories, self._factories = self._factories, []
        return gatherResults([f.disconnect() for f in factories], consumeErrors=True)
