"""
The client's Redis connection, for L{RedisState} and L{RedisQueue}.

A L{RedisLink} is built with the reactor it runs on, is bytes-exact (no decoding, "007"
stays "007") and reconnects quickly (0.1 s growing to 2 s; txredisapi's own default
grows to 10 s). Commands issued while Redis is away wait for the reconnection. A
blocking command (BLPOP) holds the connection: a consumer that blocks should use a link
of its own. It is a L{streamd.redis.connection.RedisConnection}, as the server's are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from streamd.redis.cluster import open_connection
from streamd.redis.connection import DEFAULTS
from streamd.redis.hub import Hub
from streamd.redis.settings import RedisConnectionSettings
from streamd.redis.url import parse_url

#: How the client's connections differ from L{DEFAULTS}.
CLIENT: dict[str, Any] = {"name": "client", "connect_timeout": 30.0, "reconnect_max": 2.0}


class _Listener:
    """One L{RedisLink.subscribe} call, as a member of the link's pub/sub hub."""

    patterns: list[bytes] = []

    def __init__(self, channel: bytes, callback: Callable[[bytes], None]) -> None:
        self.channels = [channel]
        self.callback = callback

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        self.callback(data)

    def outage(self, since: float, until: float) -> None:
        pass  # pub/sub is at-most-once: what was published meanwhile is gone


class RedisLink:
    """
    One Redis server: a connection for commands, plus one subscriber connection shared
    by every L{subscribe} call.
    """

    def __init__(self, reactor, host: str = "127.0.0.1", port: int = 6379,
                 db: int = 0, password: str | None = None, username: str | None = None,
                 tls: bool = False, tls_ca: str = "", cluster: bool = False,
                 urls=()) -> None:
        self.reactor = reactor
        # On a cluster (cluster=True; urls: more seed nodes), commands go to the
        # primary of their key's slot (L{streamd.redis.cluster}).
        self._conn = open_connection(RedisConnectionSettings(**{
            **DEFAULTS, **CLIENT, "host": host, "port": port, "db": db,
            "username": username, "password": password, "tls": tls, "tls_ca": tls_ca,
            "url": "",  # not made from a URL
            "cluster": cluster, "urls": tuple(urls),
        }), reactor)
        self._hub: Hub | None = None

    @classmethod
    def from_url(cls, reactor, url: str, tls_ca: str = "", cluster: bool = False,
                 urls=()) -> RedisLink:
        """
        C{redis://[[user]:password@]host[:port][/db]}, or C{rediss://} for TLS (the
        server's certificate checked against C{tls_ca}, a PEM file, or the system's CAs).
        Without a host (C{redis:///1}), 127.0.0.1.
        """
        return cls(reactor, **parse_url(url, default_host="127.0.0.1"), tls_ca=tls_ca,
                   cluster=cluster, urls=urls)

    def command(self, *args) -> Deferred:
        """Run one command: a Deferred of its reply (bytes, ints, lists)."""
        return self._conn.command(*args)

    def subscribe(self, channel: bytes, callback: Callable[[bytes], None]) -> Deferred:
        """
        Call C{callback(message)} for every message on C{channel}, across reconnections.
        The Deferred fires once the SUBSCRIBE is confirmed.
        """
        if self._hub is None:
            self._hub = Hub.of(self._conn, self.reactor)
        return self._hub.add(_Listener(channel, callback))

    def close(self) -> Deferred:
        """Close every connection and stop reconnecting."""
        return self._conn.close()
