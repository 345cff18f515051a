"""
L{Hub}: the subscriber connection of one L{RedisConnection}, shared by everything that
subscribes on it (the C{redis-pubsub} sources, the channel store, the event store's
insert notices, the client's L{streamd.client.RedisLink.subscribe}).

A channel is subscribed while at least one member wants it and unsubscribed when the
last leaves. txredisapi does not restore subscriptions after a reconnect: the hub
subscribes again, and tells each member of the outage (what was published meanwhile
is gone: pub/sub is at-most-once).

Sharded pub/sub (C{SSUBSCRIBE}, Redis 7; L{Hub.sharded}): on one server, one hub; on a
cluster, L{ShardedPubSub}: one hub (one connection) per primary that serves a slot with
channels, whatever the number of slots. When a primary dies (its replica takes over) or
a slot moves away (Redis then ends its subscriptions with C{sunsubscribe}, and answers an
C{SSUBSCRIBE} with C{MOVED}), the channels of that slot move to the hub of the slot's
new primary, are subscribed there, and their members are told of the outage; the other
slots' channels keep their connection and hear of nothing.
"""

from __future__ import annotations

from typing import Protocol

import txredisapi
from twisted.internet.defer import Deferred, gatherResults, succeed

from streamd.redis.cluster import parse_redirect
from streamd.redis.connection import RedisConnection
from streamd.redis.slots import key_slot

#: Seconds between two re-placements of sharded subscriptions asked for by MOVED or an
#: unasked sunsubscribe: two nodes that disagree for a moment cannot make a busy loop.
REPLACE_SOONEST = 0.05


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


def _by_slot(channels: list[bytes]) -> list[list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel), []).append(channel)
    return list(groups.values())


class _ShardProtocol(_Protocol):
    """
    SSUBSCRIBE / SUNSUBSCRIBE (one per slot: a cluster refuses channels of several
    slots in one), C{smessage}; a subscription Redis ended, and a MOVED, go to the
    hub's L{ShardedPubSub} (C{router}), which moves the slot's channels.
    """

    def replyReceived(self, reply):
        hub = self.factory.hub
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[-3]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "smessage":
                self.messageReceived(None, reply[-2], reply[-1])
                return
            if kind == "sunsubscribe" and reply[-2] in hub.channels:
                # Not asked for: the slot moved (or its node became a replica).
                if hub.router is not None:
                    hub.router.displaced(hub, reply[-2])
                return
            if kind in ("ssubscribe", "sunsubscribe"):
                if not self.replyQueue.waiting:
                    return
                self.replyQueue.put(reply[-3:])
                return
        if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("MOVED") \
                and hub.router is not None:
            hub.router.moved(str(reply))  # before the SSUBSCRIBE's Deferred fires
        super().replyReceived(reply)

    def subscribe(self, channels):
        return gatherResults([
            _quiet(self.execute_command("SSUBSCRIBE", *group, apply_timeout=False))
            for group in _by_slot(channels)])

    def unsubscribe(self, channels):
        return gatherResults([_quiet(self.execute_command("SUNSUBSCRIBE", *group))
                              for group in _by_slot(channels)])


class Hub:
    """
    The subscriber connection of one Redis connection (L{of}), shared by its members.

    @ivar channels: channel -> the members that want it; the channel is subscribed in
        Redis exactly while this set is not empty (likewise C{patterns}).
    @ivar outage_since: when the connection was lost (clock seconds), or None.
    @ivar waiting: Deferreds of L{add} calls made while the connection was down.
    @ivar router: the L{ShardedPubSub} of a cluster's sharded hub (its node's address
        is C{addr}), else None.
    """

    router: ShardedPubSub | None = None
    addr: tuple[str, int] | None = None

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
    def sharded(cls, conn: RedisConnection, clock, slot: int) -> Hub | SlotHub:
        """
        Where the sharded pub/sub channels of C{slot} are subscribed: on one server,
        its one sharded hub; on a cluster, a L{SlotHub} of the connection's
        L{ShardedPubSub}. Either has C{add}, C{remove} and C{up}.
        """
        if conn.clustered:
            router = conn.shared.get("spubsub")
            if router is None:
                router = conn.shared["spubsub"] = ShardedPubSub(conn, clock)
            return router.view(slot)
        hub = conn.shared.get("spubsub")
        if hub is None:
            hub = conn.shared["spubsub"] = cls(conn, clock, conn.subscriber(_ShardProtocol))
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
            d: Deferred[None] = Deferred()
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
        if proto is not self.proto:
            return  # lost again meanwhile
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


class SlotHub:
    """What a sharded stream sees of L{ShardedPubSub} for one slot: a hub's interface."""

    def __init__(self, router: ShardedPubSub, slot: int) -> None:
        self.router = router
        self.slot = slot

    @property
    def up(self) -> bool:
        return self.router.slot_up(self.slot)

    def add(self, member: Member) -> None:
        """Subscribe C{member}'s channels (all of this slot) on the slot's primary."""
        self.router.add(member, self.slot)

    def remove(self, member: Member) -> None:
        self.router.remove(member)


class ShardedPubSub:
    """
    Sharded pub/sub on a Redis Cluster: a L{Hub} per primary that serves a slot in use,
    each member (the channels of one slot) on the hub of its slot's primary.

    L{place} runs after every reading of the slot map, and soon after a C{MOVED} or a
    C{sunsubscribe} Redis sent unasked: a member whose slot now has another primary
    leaves its hub for that primary's (a failover, a resharding), and one whose
    subscription Redis ended is subscribed again; once Redis confirmed, it is told of
    the outage. A hub that serves nothing any more is closed.

    @ivar members: member -> its slot; C{placed}: member -> the address of its hub.
    @ivar pending: member -> where its SSUBSCRIBE is in flight (None: gone astray).
    @ivar since: member -> when it lost its subscription (a gap notice is owed).
    """

    def __init__(self, conn, clock) -> None:
        self.conn = conn
        self.clock = clock
        self.hubs: dict[tuple[str, int], Hub] = {}
        self.slots: set[int] = set()
        self.members: dict[Member, int] = {}
        self.placed: dict[Member, tuple[str, int]] = {}
        self.pending: dict[Member, tuple[str, int] | None] = {}
        self.since: dict[Member, float] = {}
        self.call = None
        self.last = -1.0
        conn.map_listeners.append(self.place)

    def view(self, slot: int) -> SlotHub:
        self.slots.add(slot)
        self.place()
        return SlotHub(self, slot)

    def hub(self, addr: tuple[str, int]) -> Hub:
        hub = self.hubs.get(addr)
        if hub is None:
            hub = self.hubs[addr] = Hub(self.conn, self.clock,
                                        self.conn.node_subscriber(_ShardProtocol, addr))
            hub.router, hub.addr = self, addr
        return hub

    def slot_up(self, slot: int) -> bool:
        """
        Connected to the slot's primary, and no member of the slot has lost its
        subscription. A first SSUBSCRIBE in flight does not count: as on one Redis,
        a stream is up while its subscriber connection is (readers that open it
        meanwhile would otherwise wait for the source, and miss what is published).
        """
        addr = self.conn.slots[slot]
        hub = self.hubs.get(addr) if addr is not None else None
        if hub is None or not hub.up:
            return False
        return not any(s == slot and m in self.since for m, s in self.members.items())

    def add(self, member: Member, slot: int) -> None:
        self.members[member] = slot
        self.place()

    def remove(self, member: Member) -> None:
        self.members.pop(member, None)
        self.pending.pop(member, None)
        self.since.pop(member, None)
        addr = self.placed.pop(member, None)
        if addr in self.hubs:
            self.hubs[addr].remove(member)
        self._close_idle()

    def place(self) -> None:
        """Each member on the hub of its slot's primary (see the class doc)."""
        if self.conn.closing:
            return
        for slot in self.slots:
            if self.conn.slots[slot] is not None:
                self.hub(self.conn.slots[slot])
        for member, slot in list(self.members.items()):
            want = self.conn.slots[slot]
            cur = self.placed.get(member)
            if want is None or (cur == want and (
                    member not in self.since or self.pending.get(member) == want)):
                continue  # map unknown, in place, or being subscribed there
            hub = self.hub(want)
            if cur != want:
                if cur is not None and cur in self.hubs:
                    old = self.hubs[cur]
                    old.remove(member)
                    if member not in self.since:  # lost with its primary, or moved
                        self.since[member] = (old.outage_since if old.outage_since
                                              is not None else self.clock.seconds())
                hub.add(member)  # what the hub subscribes (again) at each connection
            self.placed[member] = self.pending[member] = want
            self._confirm(hub, member).addCallback(
                lambda _, m, a: self._arrived(m, a), member, want)
        self._close_idle()

    @staticmethod
    def _confirm(hub: Hub, member: Member) -> Deferred:
        """
        Fires once Redis confirmed C{member}'s channels on C{hub}: at the hub's next
        connection, or now with an SSUBSCRIBE of its own (its channels may be another
        member's too, already in the hub's tables; or Redis ended them here).
        """
        if hub.proto is None:
            d: Deferred[None] = Deferred()
            hub.waiting.append(d)
            return d
        return _quiet(hub.proto.subscribe(list(member.channels)))

    def _arrived(self, member: Member, addr: tuple[str, int]) -> None:
        if self.pending.get(member) != addr or self.placed.get(member) != addr:
            return  # moved on meanwhile (MOVED), or gone
        del self.pending[member]
        since = self.since.pop(member, None)
        if since is not None:
            member.outage(since, self.clock.seconds())
        self.conn.changed()

    def _close_idle(self) -> None:
        wanted = {self.conn.slots[s] for s in self.slots} | set(self.placed.values())
        for addr in [a for a in self.hubs if a not in wanted]:
            hub = self.hubs.pop(addr)
            self.conn.forget(hub.factory)
            hub.factory.disconnect()

    def moved(self, text: str) -> None:
        """An SSUBSCRIBE answered C{MOVED}: its slot has another primary."""
        redirect = parse_redirect(text)
        if redirect is None:
            return
        _, slot, addr = redirect
        self.conn.redirected(slot, addr)
        for member, s in self.members.items():
            if s == slot:
                self.pending[member] = None  # the SSUBSCRIBE in flight went astray
                self.since.setdefault(member, self.clock.seconds())
        self._soon()

    def displaced(self, hub: Hub, channel: bytes) -> None:
        """Redis ended C{channel}'s subscription on C{hub}'s node (the slot moved)."""
        for member in self.members:
            if self.placed.get(member) == hub.addr and channel in member.channels:
                self.since.setdefault(member, self.clock.seconds())
                self.pending.pop(member, None)
        self.conn.refresh_soon()
        self._soon()

    def _soon(self) -> None:
        if self.call is not None and self.call.active():
            return
        delay = max(0.0, self.last + REPLACE_SOONEST - self.clock.seconds())
        self.call = self.clock.callLater(delay, self._replace)

    def _replace(self) -> None:
        self.last = self.clock.seconds()
        self.place()
