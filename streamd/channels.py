"""
Value channels and channel subscriptions with snapshots.

A value channel holds one current JSON value; setting it publishes the change. A
subscription names a set of channels: its stream starts with one snapshot line of their
current values, then one line per change, and says C{{"Updates": false}} after C{idle}
seconds without one. Channels can be added to and removed from an open subscription.

L{MemoryChannels} keeps values in this process. A store shared by several instances
(e.g. Redis: a hash plus pub/sub) implements the same three methods: C{get}, C{set},
C{watch}.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from streamd.errors import UnknownSubscription
from streamd.interfaces import ISource, ISubscription
from streamd.message import Message
from streamd.sources.unacknowledged import Unacknowledged

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

Watcher = Callable[[str, bytes], None]


class Watched:
    """Who watches which channel: the part every channel store shares."""

    def __init__(self) -> None:
        self.watchers: dict[str, set[Watcher]] = {}

    def watch(self, name: str, watcher: Watcher) -> Callable[[], None]:
        """Call C{watcher(name, value)} on each change; returns the unwatch function."""
        self.watchers.setdefault(name, set()).add(watcher)

        def unwatch() -> None:
            group = self.watchers.get(name)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self.watchers[name]

        return unwatch

    def notify(self, name: str, value: bytes) -> None:
        for watcher in list(self.watchers.get(name, ())):
            watcher(name, value)


class MemoryChannels(Watched):
    """Current values by channel name, in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, bytes] = {}

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)

    def set(self, name: str, value: bytes) -> None:
        self.values[name] = value
        self.notify(name, value)


def _line(values: dict[str, bytes | None]) -> bytes:
    """C{{"X": 2, "Y": null}} from raw JSON values, without re-encoding them."""
    import json

    parts = [json.dumps(k).encode() + b":" + (v if v is not None else b"null")
             for k, v in values.items()]
    return b"{" + b",".join(parts) + b"}"


@implementer(ISubscription)
class _SubscriptionReader(Unacknowledged):
    """
    One open stream of a channel subscription (its L{ISubscription}): the consumer, and
    what it watches.
    """

    __slots__ = ("subscription", "consumer", "unwatch")

    def __init__(self, subscription: SubscriptionSource, consumer) -> None:
        self.subscription = subscription
        self.consumer = consumer
        self.unwatch: dict[str, Callable[[], None]] = {}

    def cancel(self) -> None:
        for unwatch in self.unwatch.values():
            unwatch()
        self.unwatch.clear()
        self.subscription._reader_ended(self)


@implementer(ISource)
class SubscriptionSource:
    """
    A channel subscription (a named set of channels), as the L{ISource} of its streams:
    L{streamd.stream.Stream} reads it like any other source, so limit, heartbeat and flow
    control apply.

    @ivar owner: the name of the identity that created it, the only one that may read,
        change or delete it (when auth is on); None for one created with no identity
        name, which anybody may use.
    @ivar announced: with several worker processes (L{streamd.workers.remote}), fires
        once every worker knows of it, so that the next request may land on any of
        them: the 201 waits for it. None in one process.
    """

    kind = "channels"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    durable = False

    def __init__(self, id: str, channels: Iterable[str], store, clock) -> None:
        self.id = id
        self.name = id
        self.channels: list[str] = list(dict.fromkeys(channels))
        self.store = store
        self.clock = clock
        self.readers: set[_SubscriptionReader] = set()
        self.last_active = clock.seconds()
        self.seq = 0
        self.owner: str | None = None
        self.announced: Deferred[Any] | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for reader in list(self.readers):
            reader.consumer.source_ended("shutdown")

    def status(self):
        return ("ok", None)

    def publish(self, payloads, params=None):  # pragma: no cover - not routed
        raise NotImplementedError

    def _message(self, values: dict[str, bytes | None]) -> Message:
        self.seq += 1
        return Message(str(self.seq), self.id, _line(values))

    def subscribe(self, consumer, since=None) -> _SubscriptionReader:
        reader = _SubscriptionReader(self, consumer)
        self.readers.add(reader)
        self.last_active = self.clock.seconds()
        consumer.deliver([self._message({c: self.store.get(c) for c in self.channels})])
        for name in self.channels:
            self._watch(reader, name)
        return reader

    def _watch(self, reader: _SubscriptionReader, name: str) -> None:
        def changed(channel: str, value: bytes) -> None:
            reader.consumer.deliver([self._message({channel: value})])

        reader.unwatch[name] = self.store.watch(name, changed)

    def _reader_ended(self, reader: _SubscriptionReader) -> None:
        self.readers.discard(reader)
        self.last_active = self.clock.seconds()

    def change(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add and remove channels; open streams get the added channels' values."""
        added = [c for c in dict.fromkeys(add) if c not in self.channels]
        removed = set(remove) & set(self.channels)
        self.channels = [c for c in self.channels if c not in removed] + added
        self.last_active = self.clock.seconds()
        for reader in list(self.readers):
            for name in removed:
                unwatch = reader.unwatch.pop(name, None)
                if unwatch is not None:
                    unwatch()
            for name in added:
                self._watch(reader, name)
            if added:
                reader.consumer.deliver([self._message({c: self.store.get(c) for c in added})])

    def end(self) -> None:
        for reader in list(self.readers):
            reader.consumer.source_ended("subscription deleted")


class Subscriptions:
    """
    Every subscription of this instance, by id. One that has no open stream for
    C{expire} seconds is forgotten (L{expire}).
    """

    def __init__(self, store, clock, expire: float = 3600.0, max_channels: int = 1000):
        self.store = store
        self.clock = clock
        self.expire_after = expire
        self.max_channels = max_channels
        self.by_id: dict[str, SubscriptionSource] = {}
        self._sweep = None

    def make(self, id: str, channels: Iterable[str]) -> SubscriptionSource:
        return SubscriptionSource(id, channels, self.store, self.clock)

    def create(self, channels: Iterable[str], owner: str | None = None) -> SubscriptionSource:
        sub = self.make(secrets.token_urlsafe(12), channels)
        if owner is not None:
            sub.owner = owner
        self.by_id[sub.id] = sub
        if self._sweep is None:
            self._schedule()
        return sub

    def _schedule(self) -> None:
        self._sweep = self.clock.callLater(min(self.expire_after, 60.0), self._swept)

    def _swept(self) -> None:
        self.expire()
        self._sweep = None
        if self.by_id:
            self._schedule()

    def close(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def get(self, id: str) -> SubscriptionSource:
        sub = self.by_id.get(id)
        if sub is None:
            raise UnknownSubscription(f"no subscription {id!r} (it may have expired)")
        return sub

    def delete(self, id: str) -> None:
        self.get(id).end()
        del self.by_id[id]

    def expire(self) -> list[str]:
        """Forget subscriptions idle (no open stream) for longer than C{expire}."""
        horizon = self.clock.seconds() - self.expire_after
        gone = [i for i, s in self.by_id.items() if not s.readers and s.last_active < horizon]
        for i in gone:
            del self.by_id[i]
        return gone
