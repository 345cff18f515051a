"""
The on/off switch and the counter of a client, as one state object.

L{MemoryState} lives in the process. L{RedisState} lives in Redis, so that another
process can switch a running client off at once (a pub/sub message reaches it while it
waits for data, not only at its next record) and read an exact count of the records it
handed over.

A client reads C{on} before handing over each record (a plain attribute: no I/O per
record), adds to the counter once per batch, and is called back by L{IClientState.watch} when the
switch changes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer


class IClientState(Interface):
    """A switch and a counter that clients share."""

    on = Attribute("True while the switch is on (as this process last learned)")

    def turn_on():
        """Switch on; a Deferred (or None) that fires once it is recorded."""

    def turn_off():
        """Switch off: every running client that shares this state stops."""

    def add(n):
        """Add C{n} to the counter; a Deferred (or None) that fires once recorded."""

    def count():
        """A Deferred of the counter's value."""

    def watch(callback):
        """Call C{callback(on)} when the switch changes; a Deferred fires once watching."""

    def unwatch(callback):
        """Stop calling C{callback}."""


@implementer(IClientState)
class MemoryState:
    """
    The switch and counter in this process: share the object to share them.

    @ivar counter: records handed over, across every client and run that used it.
    """

    def __init__(self, on: bool = True) -> None:
        self.on = on
        self.counter = 0
        self._watchers: list[Callable[[bool], None]] = []

    def _set(self, on: bool) -> None:
        changed = on != self.on
        self.on = on
        if changed:
            for callback in list(self._watchers):
                callback(on)

    def turn_on(self) -> None:
        self._set(True)

    def turn_off(self) -> None:
        self._set(False)

    def add(self, n: int) -> None:
        self.counter += n

    def count(self) -> Deferred:
        return succeed(self.counter)

    def watch(self, callback) -> Deferred:
        self._watchers.append(callback)
        return succeed(None)

    def unwatch(self, callback) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)


@implementer(IClientState)
class RedisState:
    """
    The switch and counter in Redis, under C{name}: the key C{NAME:on} ("1" or "0"),
    the key C{NAME:count} (an integer, INCRBY per batch) and the channel
    C{NAME:switch}, on which L{turn_on}/L{turn_off} publish "on"/"off".

    Another process stops a running client with C{RedisState(link, NAME).turn_off()},
    or from a shell with C{redis-cli PUBLISH NAME:switch off}; it reads the count with
    L{count} or C{redis-cli GET NAME:count}. The count is exact once the client's
    C{start()} Deferred has fired (every increment is sent before it fires, on one
    ordered connection); while it runs, it lags by at most the increment in flight.

    @param link: a L{streamd.client.redis.RedisLink}.
    """

    def __init__(self, link, name: str) -> None:
        self.link = link
        self.name = name
        self.on = True
        self._on_key = f"{name}:on".encode()
        self._count_key = f"{name}:count".encode()
        self._channel = f"{name}:switch".encode()
        self._watchers: list[Callable[[bool], None]] = []
        self._subscribed: Deferred | None = None

    def _heard(self, message: bytes) -> None:
        on = message.strip().lower() in (b"on", b"1")
        if on != self.on:
            self.on = on
            for callback in list(self._watchers):
                callback(on)

    def _switch(self, on: bool) -> Deferred:
        value = b"1" if on else b"0"
        self._heard(b"on" if on else b"off")
        # Both commands go out on one ordered connection: a reader of NAME:on after
        # the publish sees the new value.
        self.link.command("SET", self._on_key, value)
        return self.link.command("PUBLISH", self._channel, b"on" if on else b"off")

    def turn_on(self) -> Deferred:
        return self._switch(True)

    def turn_off(self) -> Deferred:
        return self._switch(False)

    def add(self, n: int) -> Deferred:
        return self.link.command("INCRBY", self._count_key, n)

    def count(self) -> Deferred:
        d = self.link.command("GET", self._count_key)
        return d.addCallback(lambda v: int(v) if v is not None else 0)

    def reset(self) -> Deferred:
        """Set the counter to 0."""
        return self.link.command("SET", self._count_key, b"0")

    def watch(self, callback) -> Deferred:
        self._watchers.append(callback)
        if self._subscribed is None:
            self._subscribed = self.link.subscribe(self._channel, self._heard)
        d: Deferred[None] = Deferred()

        def relay(result):
            # Each watcher learns whether the subscription holds; the shared Deferred
            # keeps its result for the next watcher.
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
            return result

        self._subscribed.addBoth(relay)
        return d

    def unwatch(self, callback) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)
