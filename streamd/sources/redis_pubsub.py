"""
The C{redis-pubsub} source: a stream of what is published on Redis channels
(C{channels}, SUBSCRIBE) and glob patterns (C{patterns}, PSUBSCRIBE).

Broadcast and at-most-once: every client gets every message published while it is
connected, nothing is kept, and nothing is delivered twice. Redis cannot be paused
per subscriber without starving the others, so a slow client's messages queue in its
stream (C{max_pending}) and its C{slow_policy} decides what it gets when the queue is
full: disconnected, or the oldest messages dropped (it is told how many).

One subscriber connection per Redis connection serves every pub/sub stream on it
(L{streamd.redis.hub.Hub}); a channel is subscribed while at least one client wants
it and unsubscribed when the last leaves. After a reconnection the hub subscribes
again, and each client is told of the outage with a gap notice (what was published
meanwhile is gone).

With C{sharded = true} the stream uses sharded pub/sub (C{SSUBSCRIBE}, C{SPUBLISH}):
on a Redis Cluster each channel lives on the primary of its slot, and one subscriber
connection per primary serves every slot of that primary in use
(L{streamd.redis.hub.ShardedPubSub}, reached through L{Hub.sharded}); a channel follows
its slot to a new primary across failovers and resharding, with a gap notice each time.
Patterns have no sharded form: a stream with patterns uses classic pub/sub, which a
cluster carries to every node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import gatherResults
from zope.interface import implementer

from streamd.coalesce import Coalescer
from streamd.errors import InvalidRequest, SourceDown
from streamd.interfaces import ISource
from streamd.keys import ConfigError
from streamd.message import Message
from streamd.redis import settings as redis_settings
from streamd.redis.connection import RedisConnection
from streamd.redis.hub import Hub, SlotHub
from streamd.redis.shared import Faults, RedisKind
from streamd.redis.slots import key_slot
from streamd.redis.values import as_json, param
from streamd.sources.unacknowledged import Unacknowledged


class _Part:
    """The channels of a sharded stream that share one slot: a member of its hub."""

    patterns: list[bytes] = []

    def __init__(self, source: RedisPubSubSource, channels: list[bytes]) -> None:
        self.source = source
        self.channels = channels

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        self.source.received(channel, data, pattern)

    def outage(self, since: float, until: float) -> None:
        self.source.outage(since, until)


class PubSubSubscription(Unacknowledged):
    """
    A client of a pub/sub stream: like a memory stream's, pause and ack cost nothing
    (see the module doc); leaving may unsubscribe Redis.
    """

    __slots__ = ("source", "consumer")

    def __init__(self, source: RedisPubSubSource, consumer) -> None:
        self.source = source
        self.consumer = consumer

    def cancel(self) -> None:
        self.source.leave(self)


@implementer(ISource)
class RedisPubSubSource(RedisKind):
    """
    One pub/sub stream: its channels and patterns, and its clients.

    @ivar seq: the id of the last message; ids are only for the clients' bookkeeping
        (pub/sub keeps nothing to resume from).
    """

    kind = "redis-pubsub"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    config_keys = redis_settings.PUBSUB_KEYS
    durable = False
    faults: Faults | None = None

    def __init__(self, name: str, conn: RedisConnection, channels: list[str],
                 patterns: list[str], clock, on_stop=None, coalesce: float = 0.0,
                 sharded: bool = False) -> None:
        self.name = name
        self.conn = conn
        self.channels = [c.encode() for c in channels]
        self.patterns = [p.encode() for p in patterns]
        self.clock = clock
        self.on_stop = on_stop
        self.seq = 0
        self.subscribers: set[PubSubSubscription] = set()
        self.sharded = sharded
        #: (hub, member) per subscriber connection: sharded, one per slot of our channels
        #: (a L{_Part} each); classic, the connection's hub with this source as member
        self.parts: list[tuple[Hub | SlotHub, Any]] = []
        # Reads of one reactor turn (or of coalesce seconds) reach a stream together.
        self.outgoing = Coalescer(clock, self._deliver, coalesce)

    @staticmethod
    def check_config(settings: Mapping[str, Any], where: str) -> None:
        if not settings["channels"] and not settings["patterns"]:
            raise ConfigError(f"{where}.channels",
                              "give channels and/or patterns to subscribe to")
        if settings.get("sharded") and settings["patterns"]:
            raise ConfigError(f"{where}.patterns", "sharded pub/sub has no patterns: "
                              "use classic pub/sub (sharded = false) for patterns")

    @classmethod
    def build(cls, table: Mapping[str, Any], clock, conn, instance,
              on_stop) -> RedisPubSubSource:
        # No per-instance state: a subscriber holds nothing in Redis.
        return cls(table["name"], conn, table["channels"], table["patterns"], clock, on_stop,
                   table["coalesce_ms"] / 1000, table.get("sharded", False))

    def start(self):
        """Open the subscriber connection; fires once up (or after connect_timeout)."""
        if self.sharded:
            by_slot: dict[int, list[bytes]] = {}
            for channel in self.channels:
                by_slot.setdefault(key_slot(channel), []).append(channel)
            self.parts = [(Hub.sharded(self.conn, self.clock, slot), _Part(self, channels))
                          for slot, channels in sorted(by_slot.items())]
        else:
            self.parts = [(Hub.of(self.conn, self.clock), self)]
        return self.conn.wait_for(lambda: self.conn.up and self._hubs_up())

    def _hubs_up(self) -> bool:
        return bool(self.parts) and all(hub.up for hub, _ in self.parts)

    def _join(self) -> None:
        assert self.parts, "joined before start()"
        for hub, member in self.parts:
            hub.add(member)

    def _part(self) -> None:
        for hub, member in self.parts:
            hub.remove(member)

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
        if state[0] == "ok" and not self._hubs_up():
            return ("down", f"redis {self.conn.name}: subscriber connection is down")
        return state

    def subscribe(self, consumer, since: str | None = None) -> PubSubSubscription:
        if not self._hubs_up():
            raise SourceDown(self.status()[1] or "redis is down")
        if since is not None:
            consumer.gap({"since": since, "missed": None,
                          "reason": "pub/sub keeps no history"})
        self.outgoing.flush()  # what came before this subscriber is not for it
        sub = PubSubSubscription(self, consumer)
        if not self.subscribers:
            self._join()
        self.subscribers.add(sub)
        return sub

    def leave(self, sub: PubSubSubscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            if not self.subscribers:
                self._part()

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """One message from Redis: out with the reactor turn's others (L{Coalescer})."""
        self.seq += 1
        attributes = {"channel": channel.decode("utf-8", "replace")}
        if pattern is not None:
            attributes["pattern"] = pattern.decode("utf-8", "replace")
        self.outgoing.add([Message(str(self.seq), self.name, as_json(data),
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
        channel: str | bytes | None = param(params, "channel")
        if channel is None:
            if not self.channels:
                raise InvalidRequest("channel: this stream only has patterns; "
                                     "say which channel to publish to (?channel=NAME)")
            channel = self.channels[0]
        if not self.conn.up:
            raise SourceDown(self.conn.status()[1] or "redis is down")
        # Pipelined on one pooled connection; pub/sub messages have no ids to return.
        verb = "SPUBLISH" if self.sharded else "PUBLISH"
        d = gatherResults([self.conn.command(verb, channel, p) for p in payloads],
                          consumeErrors=True)
        return d.addCallback(lambda _: [None for _ in payloads])
