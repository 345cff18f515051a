"""
The C{redis-pubsub} source: a stream of what is published on Redis channels
(C{channels}, SUBSCRIBE) and glob patterns (C{patterns}, PSUBSCRIBE).

Broadcast and at-most-once: every client gets every message published while it is
connected, nothing is kept, and nothing is delivered twice. Redis cannot be paused
per subscriber without starving the others, so a slow client's messages queue in its
stream (C{max_pending}) and its C{slow_policy} decides what it gets when the queue is
full: disconnected, or the oldest messages dropped (it is told how many).

One subscriber connection per Redis connection serves every pub/sub stream on it
(L{Hub}); a channel is subscribed while at least one client wants it and
unsubscribed when the last leaves. txredisapi does not restore subscriptions after
a reconnect: the hub subscribes again, and each client is told of the outage with a
gap notice (what was published meanwhile is gone).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import gatherResults
from zope.interface import implementer

from streamd import redis, redis_settings, resp
from streamd.coalesce import Coalescer
from streamd.config import ConfigError
from streamd.errors import BadRequest, Unavailable
from streamd.interfaces import ISource
from streamd.message import Message
from streamd.sources.memory import MemorySubscription


def _quiet(d) -> None:
    # A (un)subscribe cut short by a lost connection is redone on reconnection.
    d.addErrback(lambda f: f.trap(txredisapi.ConnectionError))


class _Protocol(resp.SubscriberProtocol):
    """Hands messages and connection changes to the factory's L{Hub}."""

    def connectionMade(self):
        d = super().connectionMade()
        self.whenConnected().addCallback(self.factory.hub.connected)
        return d

    def connectionLost(self, why):
        self.factory.hub.lost(self)
        super().connectionLost(why)

    def messageReceived(self, pattern, channel, message):
        self.factory.hub.message(pattern, channel, message)


class Hub:
    """
    The subscriber connection of one Redis connection, shared by its pub/sub sources.

    @ivar channels: channel -> the sources that want it; the channel is subscribed in
        Redis exactly while this set is not empty (likewise C{patterns}).
    @ivar outage_since: when the connection was lost (reactor seconds), or None.
    """

    def __init__(self, conn: redis.RedisConnection, clock) -> None:
        self.clock = clock
        self.channels: dict[bytes, set[RedisPubSubSource]] = {}
        self.patterns: dict[bytes, set[RedisPubSubSource]] = {}
        self.proto: _Protocol | None = None
        self.conn = conn
        self.outage_since: float | None = None
        self.factory = conn.subscriber(_Protocol)
        self.factory.hub = self

    @classmethod
    def of(cls, conn: redis.RedisConnection, clock) -> Hub:
        hub = conn.shared.get("pubsub")
        if hub is None:
            hub = conn.shared["pubsub"] = cls(conn, clock)
        return hub

    @property
    def up(self) -> bool:
        return self.proto is not None

    def _change(self, table: dict, names: list[bytes], source, add: bool) -> list[bytes]:
        """Update the reference counts; return the names whose count left or hit 0."""
        changed = []
        for name in names:
            wanted = table.get(name)
            if add:
                if not wanted:
                    wanted = table[name] = set()
                    changed.append(name)
                wanted.add(source)
            elif wanted is not None and source in wanted:
                wanted.discard(source)
                if not wanted:
                    del table[name]
                    changed.append(name)
        return changed

    def add(self, source: RedisPubSubSource) -> None:
        """C{source} has a client: subscribe what nobody wanted yet."""
        new = self._change(self.channels, source.channels, source, True)
        pnew = self._change(self.patterns, source.patterns, source, True)
        if self.proto is not None:
            if new:
                _quiet(self.proto.subscribe(new))
            if pnew:
                _quiet(self.proto.psubscribe(pnew))

    def remove(self, source: RedisPubSubSource) -> None:
        """C{source}'s last client left: unsubscribe what nobody wants any more."""
        gone = self._change(self.channels, source.channels, source, False)
        pgone = self._change(self.patterns, source.patterns, source, False)
        if self.proto is not None:
            if gone:
                _quiet(self.proto.unsubscribe(gone))
            if pgone:
                _quiet(self.proto.punsubscribe(pgone))

    def connected(self, proto: _Protocol) -> None:
        self.proto = proto
        self.conn.changed()
        if self.channels:
            _quiet(proto.subscribe(list(self.channels)))
        if self.patterns:
            _quiet(proto.psubscribe(list(self.patterns)))
        since, self.outage_since = self.outage_since, None
        if since is not None:
            # Sent as the SUBSCRIBE goes out: every message after the notice is one
            # published after the reconnection.
            now = self.clock.seconds()
            for source in self._sources():
                source.outage(since, now)

    def lost(self, proto: _Protocol) -> None:
        if proto is self.proto:
            self.proto = None
            self.outage_since = self.clock.seconds()

    def _sources(self) -> set[RedisPubSubSource]:
        out: set[RedisPubSubSource] = set()
        for table in (self.channels, self.patterns):
            for sources in table.values():
                out |= sources
        return out

    def message(self, pattern: bytes | None, channel: bytes, data: bytes) -> None:
        sources = self.channels.get(channel) if pattern is None else self.patterns.get(pattern)
        if sources:
            for source in list(sources):
                source.received(channel, data, pattern)


class PubSubSubscription(MemorySubscription):
    """
    A client of a pub/sub stream: like a memory stream's, pause and ack cost nothing
    (see the module doc); leaving may unsubscribe Redis.
    """

    __slots__ = ()

    def cancel(self) -> None:
        self.source.leave(self)


@implementer(ISource)
class RedisPubSubSource:
    """
    One pub/sub stream: its channels and patterns, and its clients.

    @ivar seq: the id of the last message; ids are only for the clients' bookkeeping
        (pub/sub keeps nothing to resume from).
    """

    kind = "redis-pubsub"
    config_keys = redis_settings.PUBSUB_KEYS
    durable = False
    faults: redis.Faults | None = None

    def __init__(self, name: str, conn: redis.RedisConnection, channels: list[str],
                 patterns: list[str], clock, on_stop=None, coalesce: float = 0.0) -> None:
        self.name = name
        self.conn = conn
        self.channels = [c.encode() for c in channels]
        self.patterns = [p.encode() for p in patterns]
        self.clock = clock
        self.on_stop = on_stop
        self.seq = 0
        self.subscribers: set[PubSubSubscription] = set()
        self.hub: Hub | None = None
        # Reads of one reactor turn (or of coalesce seconds) reach a stream together.
        self.outgoing = Coalescer(clock, self._deliver, coalesce)

    @staticmethod
    def check_config(settings: dict[str, Any], where: str) -> None:
        if not settings["channels"] and not settings["patterns"]:
            raise ConfigError(f"{where}.channels",
                              "give channels and/or patterns to subscribe to")

    @classmethod
    def from_config(cls, settings: dict[str, Any], services) -> RedisPubSubSource:
        conn = redis.acquire(services, settings)
        source = cls(settings["name"], conn, settings["channels"], settings["patterns"],
                     services.reactor, lambda: redis.release(services, conn),
                     settings["coalesce_ms"] / 1000)
        source.faults = redis.Faults(services, settings["name"], cls.kind, conn)
        return source

    def start(self):
        """Open the subscriber connection; fires once up (or after connect_timeout)."""
        hub = self.hub = Hub.of(self.conn, self.clock)
        return self.conn.wait_for(lambda: self.conn.up and hub.up)

    def stop(self):
        self.outgoing.flush()
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")
        for sub in list(self.subscribers):
            self.leave(sub)
        if self.faults is not None:
            self.faults.close()
        return self.on_stop() if self.on_stop else None

    def status(self) -> tuple[str, str | None]:
        state = self.conn.status()
        if state[0] == "ok" and (self.hub is None or not self.hub.up):
            return ("down", f"redis {self.conn.name}: subscriber connection is down")
        return state

    def subscribe(self, consumer, since: str | None = None) -> PubSubSubscription:
        if self.hub is None or not self.hub.up:
            raise Unavailable(self.status()[1] or "redis is down")
        if since is not None:
            consumer.gap({"since": since, "missed": None,
                          "reason": "pub/sub keeps no history"})
        self.outgoing.flush()  # what came before this subscriber is not for it
        sub = PubSubSubscription(self, consumer)
        if not self.subscribers:
            self.hub.add(self)
        self.subscribers.add(sub)
        return sub

    def leave(self, sub: PubSubSubscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            if not self.subscribers and self.hub is not None:
                self.hub.remove(self)

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """One message from Redis: out with the reactor turn's others (L{Coalescer})."""
        self.seq += 1
        attributes = {"channel": channel.decode("utf-8", "replace")}
        if pattern is not None:
            attributes["pattern"] = pattern.decode("utf-8", "replace")
        self.outgoing.add([Message(str(self.seq), self.name, redis.as_json(data),
                                   attributes)])

    def _deliver(self, batch) -> None:
        # Each message encoded once, one batch per client. A consumer may end its stream
        # (slow policy) while we deliver.
        for sub in list(self.subscribers):
            sub.consumer.deliver(batch)

    def outage(self, since: float, until: float) -> None:
        info = {"missed": None, "reason": "redis was unavailable",
                "seconds": round(until - since, 3)}
        for sub in list(self.subscribers):
            sub.consumer.gap(dict(info))

    def publish(self, payloads: list[bytes], params=None):
        """PUBLISH each payload to C{?channel=} or the stream's first channel."""
        channel = redis.param(params, "channel")
        if channel is None:
            if not self.channels:
                raise BadRequest("channel: this stream only has patterns; "
                                 "say which channel to publish to (?channel=NAME)")
            channel = self.channels[0]
        if not self.conn.up:
            raise Unavailable(self.conn.status()[1] or "redis is down")
        # Pipelined on one pooled connection; pub/sub messages have no ids to return.
        d = gatherResults([self.conn.command("PUBLISH", channel, p) for p in payloads],
                          consumeErrors=True)
        return d.addCallback(lambda _: [None for _ in payloads])
