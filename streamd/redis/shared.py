"""
What the Redis sources (and the channel store) share: one L{RedisConnection} per
C{[redis.NAME]} table, created on first use and kept in C{services.shared} (L{acquire},
L{release}), their fault counters (L{Faults}) and this streamd's name in Redis
(L{default_instance}), and how a Redis source kind is built from its stream table
(L{RedisKind}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from streamd.redis.cluster import open_connection
from streamd.redis.connection import RedisConnection
from streamd.redis.settings import declared_in

if TYPE_CHECKING:  # streamd.config imports streamd.redis.settings
    from streamd.config import Settings
    from streamd.sources import Services


def default_instance(settings: Settings) -> str:
    """
    This streamd's name in Redis: host name plus the first listen address, stable
    across restarts (so a restarted streamd recognises its own processing lists) and
    distinct for two streamd processes on one host.
    """
    listen = settings.listen or ("tcp:8080",)
    return f"{socket.gethostname()}-{listen[0]}"


def instance_name(table: Mapping[str, Any], services: Services) -> str:
    """
    The stream's C{instance} key, or L{default_instance}; in a worker of several,
    followed by C{-w} and the worker's index, so that the workers never share a
    processing list or a consumer name, and a worker restarted in the same place
    takes its own back at once.
    """
    instance = table.get("instance") or default_instance(services.settings)
    worker = getattr(services, "worker", None)
    return instance if worker is None else f"{instance}-w{worker}"


def declared(settings, name: str, key: str):
    """
    The settings of the C{[redis.NAME]} named C{name} by the config key C{key};
    L{streamd.keys.ConfigError} naming C{key} if there is none.
    """
    return declared_in(settings.redis, name, key)


def acquire(services: Services, name: str, key: str) -> RedisConnection:
    """
    The shared connection to the C{[redis.NAME]} named C{name} (by the config key
    C{key}, named in the error if there is none), created on first use. Release it
    with L{release} when the source stops.
    """
    table = declared(services.settings, name, key)
    shared = services.shared.setdefault("redis", {})
    conn = shared.get(name)
    if conn is None:
        conn = shared[name] = open_connection(table, services.reactor)
    conn.users += 1
    return conn


def release(services, conn: RedisConnection):
    """Give back a connection from L{acquire}; the last user closes it."""
    conn.users -= 1
    if conn.users > 0:
        return None
    services.shared.get("redis", {}).pop(conn.name, None)
    return conn.close()


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


class RedisKind:
    """
    C{from_config} of the Redis source kinds: the shared connection the stream table
    names, this streamd's instance name (for the kinds that keep per-instance state),
    the fault counters; the kind's own C{build} makes the source from its keys.
    """

    kind: str

    @classmethod
    def build(cls, table: Mapping[str, Any], clock, conn: RedisConnection, instance: str,
              on_stop: Callable[[], Any]):
        raise NotImplementedError

    @classmethod
    def from_config(cls, table: Mapping[str, Any], services: Services):
        conn = acquire(services, table["connection"], f"streams.{table['name']}.connection")
        instance = instance_name(table, services)
        source = cls.build(table, services.reactor, conn, instance,
                           lambda: release(services, conn))
        source.faults = Faults(services, table["name"], cls.kind, conn)
        return source
