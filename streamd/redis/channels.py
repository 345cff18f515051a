"""
Value channels kept in Redis, so that several streamd instances agree: the values in one
hash, changes announced on one pub/sub channel that every instance listens to.

Each instance keeps a copy of the hash (read whole at start and again after every
reconnection, when changes made meanwhile are passed on to its watchers), so a snapshot
is read without a round trip. A change reaches the local watchers through pub/sub like
everyone else's, so each watcher sees it once.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import defer
from twisted.logger import Logger

from streamd.channels import Watched
from streamd.redis.connection import RedisConnection
from streamd.redis.hub import Hub

log = Logger()


class RedisChannels(Watched):
    """
    The C{[channels] backend = "redis"} store: C{get}, C{set} and C{watch} like
    L{streamd.channels.MemoryChannels}.

    @ivar channels: what the shared pub/sub L{Hub} subscribes for us (the hub calls
        L{received} and L{outage}).
    """

    def __init__(self, conn: RedisConnection, clock, prefix: str = "streamd:channels"):
        self.conn = conn
        self.clock = clock
        self.hash = prefix.encode()
        self.topic = prefix.encode() + b":changes"
        self.channels = [self.topic]
        self.patterns: list[bytes] = []
        super().__init__()
        self.values: dict[str, bytes] = {}
        self.hub: Hub | None = None

    def start(self):
        self.hub = Hub.of(self.conn, self.clock)
        self.hub.add(self)
        return self.refresh()

    def stop(self):
        if self.hub is not None:
            self.hub.remove(self)
            self.hub = None

    def status(self) -> tuple[str, str | None]:
        return self.conn.status()

    @defer.inlineCallbacks
    def refresh(self):
        """Read the whole hash; tell watchers of every value that changed meanwhile."""
        reply = yield self.conn.command("HGETALL", self.hash)
        items: Iterable[tuple[bytes, bytes]]
        if isinstance(reply, dict):
            items = reply.items()
        else:  # a flat [k1, v1, k2, v2, ...] reply
            items = zip(reply[::2], reply[1::2], strict=True)
        fresh = {k.decode(): v for k, v in items}
        for name, value in fresh.items():
            if self.values.get(name) != value:
                self.values[name] = value
                self.notify(name, value)

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)

    @defer.inlineCallbacks
    def set(self, name: str, value: bytes):
        self.values[name] = value  # read-your-writes on this instance
        yield self.conn.command("HSET", self.hash, name.encode(), value)
        yield self.conn.command("PUBLISH", self.topic, name.encode() + b"\n" + value)

    # -- called by the Hub ---------------------------------------------------------

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        name, sep, value = data.partition(b"\n")
        if not sep:
            return
        self.values[name.decode()] = value
        self.notify(name.decode(), value)

    def outage(self, since: float, until: float) -> None:
        # Changes published while we were away are lost to pub/sub; the hash has them.
        self.refresh().addErrback(lambda f: log.failure("channel refresh failed", f))
