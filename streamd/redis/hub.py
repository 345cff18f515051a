"""
L{Hub}: the subscriber connection of one L{RedisConnection}, shared by everything that
subscribes on it (the C{redis-pubsub} sources, the channel store, the event store's
insert notices, the client's L{streamd.client.RedisLink.subscribe}).

A channel is subscribed while at least one member wants it and unsubscribed when the
last leaves. txredisapi does not restore subscriptions after a reconnect: the hub
subscribes again, and tells each member of the outage (what was published meanwhile
is gone: pub/sub is at-most-once).

Sharded pub/sub (C{SSUBSCRIBE}, Redis 7; L{Hub.sharded}): a hub per channel slot, whose
connection goes to the primary that serves the slot (on a cluster). When that primary
dies, or the slot moves away (Redis then ends the subscription with C{sunsubscribe}),
the hub reconnects to the slot's new primary, subscribes again, and tells its members
of the outage.
"""

from __future__ import annotations

from typing import Protocol

import txredisapi
from twisted.internet.defer import Deferred, gatherResults, succeed

from streamd.redis.connection import RedisConnection


class Member(Protocol):
    """What the hub needs of a subscriber."""

    #: channel names (SUBSCRIBE) and glob patterns (PSUBSCRIBE)
    channels: list[bytes]
    patterns: list[bytes]

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        """One message; C{pattern} is the pattern it matched, or None."""

    def outage(self, since: float, until: float) -> None:
        """The subscriber connection was lost from C{since} to C{until} (clock seconds)."""


def _quiet(d: Deferred) -> Deferred:
    # A (un)subscribe cut short by a lost connection is redone on reconnection, and so
    # is an SSUBSCRIBE sent to a node that no longer serves the slot (MOVED).
    def trap(f):
        if f.check(txredisapi.ResponseError) and str(f.value).startswith("MOVED"):
            return None
        return f.trap(txredisapi.ConnectionError)
    return d.addErrback(trap)


class _Protocol(txredisapi.SubscriberProtocol):
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


class _ShardProtocol(_Protocol):
    """SSUBSCRIBE / SUNSUBSCRIBE, C{smessage}; a slot that moved away drops the link."""

    def replyReceived(self, reply):
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[-3]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "smessage":
                self.messageReceived(None, reply[-2], reply[-1])
                return
            if kind == "sunsubscribe" and reply[-2] in self.factory.hub.channels:
                # Not ours: the slot moved (or its node became a replica).
                self.transport.loseConnection()
                return
            if kind in ("ssubscribe", "sunsubscribe"):
                if not self.replyQueue.waiting:
                    return
                self.replyQueue.put(reply[-3:])
                return
        if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("MOVED"):
            self.moved = True  # not subscribed here: reconnect to the slot's primary
            self.transport.loseConnection()
        super().replyReceived(reply)

    def subscribe(self, channels):
        return self.execute_command("SSUBSCRIBE", *channels, apply_timeout=False)

    def unsubscribe(self, channels):
        return self.execute_command("SUNSUBSCRIBE", *channels)


class Hub:
    """
    The subscriber connection of one Redis connection (L{of}), shared by its members.

    @ivar channels: channel -> the members that want it; the channel is subscribed in
        Redis exactly while this set is not empty (likewise C{patterns}).
    @ivar outage_since: when the connection was lost (clock seconds), or None.
    @ivar waiting: Deferreds of L{add} calls made while the connection was down.
    """

    def __init__(self, conn: RedisConnection, clock, factory=None) -> None:
        self.clock = clock
        self.channels: dict[bytes, set[Member]] = {}
        self.patterns: dict[bytes, set[Member]] = {}
        self.proto: _Protocol | None = None
        self.conn = conn
        self.outage_since: float | None = None
        self.waiting: list[Deferred] = []
        self.subscribed = False  # the current connection's SUBSCRIBEs are confirmed
        self.factory = factory or conn.subscriber(_Protocol)
        self.factory.hub = self

    @classmethod
    def of(cls, conn: RedisConnection, clock) -> Hub:
        """The hub of C{conn}, opened on first use."""
        hub = conn.shared.get("pubsub")
        if hub is None:
            hub = conn.shared["pubsub"] = cls(conn, clock)
        return hub

    @classmethod
    def sharded(cls, conn: RedisConnection, clock, slot: int) -> Hub:
        """
        The sharded pub/sub hub of the channels in C{slot} (all of them on one Redis):
        on a cluster, connected to the slot's primary.
        """
        key = f"spubsub:{slot}" if conn.clustered else "spubsub"
        hub = conn.shared.get(key)
        if hub is None:
            factory = (conn.shard_subscriber(_ShardProtocol, slot) if conn.clustered
                       else conn.subscriber(_ShardProtocol))
            hub = conn.shared[key] = cls(conn, clock, factory)
        return hub

    @property
    def up(self) -> bool:
        return self.proto is not None and self.subscribed

    def _change(self, table: dict, names: list[bytes], member, add: bool) -> list[bytes]:
        """Update the reference counts; return the names whose count left or hit 0."""
        changed = []
        for name in names:
            wanted = table.get(name)
            if add:
                if not wanted:
                    wanted = table[name] = set()
                    changed.append(name)
                wanted.add(member)
            elif wanted is not None and member in wanted:
                wanted.discard(member)
                if not wanted:
                    del table[name]
                    changed.append(name)
        return changed

    def add(self, member: Member) -> Deferred:
        """
        Subscribe what C{member} wants and nobody wanted yet. The Deferred fires once
        Redis confirmed (at the next connection, if the hub is down now).
        """
        new = self._change(self.channels, member.channels, member, True)
        pnew = self._change(self.patterns, member.patterns, member, True)
        if self.proto is None:
            d = Deferred()
            self.waiting.append(d)
            return d
        sent = []
        if new:
            sent.append(_quiet(self.proto.subscribe(new)))
        if pnew:
            sent.append(_quiet(self.proto.psubscribe(pnew)))
        return gatherResults(sent).addCallback(lambda _: None) if sent else succeed(None)

    def remove(self, member: Member) -> None:
        """C{member} is done: unsubscribe what nobody wants any more."""
        gone = self._change(self.channels, member.channels, member, False)
        pgone = self._change(self.patterns, member.patterns, member, False)
        if self.proto is not None:
            if gone:
                _quiet(self.proto.unsubscribe(gone))
            if pgone:
                _quiet(self.proto.punsubscribe(pgone))

    def connected(self, proto: _Protocol) -> None:
        self.proto = proto
        sent = []
        if self.channels:
            sent.append(_quiet(proto.subscribe(list(self.channels))))
        if self.patterns:
            sent.append(_quiet(proto.psubscribe(list(self.patterns))))
        gatherResults(sent).addBoth(lambda _: self._subscribed(proto))

    def _subscribed(self, proto: _Protocol) -> None:
        # Up only once Redis confirmed the SUBSCRIBE: a message published after that is
        # one we receive, so a member that looks in its store now misses nothing.
        if proto is not self.proto or getattr(proto, "moved", False):
            return  # lost again meanwhile, or (sharded) the wrong node
        self.subscribed = True
        self.conn.changed()
        since, self.outage_since = self.outage_since, None
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)
        if since is not None:
            now = self.clock.seconds()
            for member in self._members():
                member.outage(since, now)

    def lost(self, proto: _Protocol) -> None:
        if proto is self.proto:
            self.proto = None
            self.subscribed = False
            if self.outage_since is None:  # not when lost again before resubscribing
                self.outage_since = self.clock.seconds()

    def _members(self) -> set[Member]:
        out: set[Member] = set()
        for table in (self.channels, self.patterns):
            for members in table.values():
                out |= members
        return out

    def message(self, pattern: bytes | None, channel: bytes, data: bytes) -> None:
        members = self.channels.get(channel) if pattern is None else self.patterns.get(pattern)
        if members:
            for member in list(members):
                member.received(channel, data, pattern)
