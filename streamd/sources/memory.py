"""
The in-process broker: a memory stream fans each published message out to every
subscriber and keeps the last C{buffer} messages (for C{buffer_ttl} seconds) so that a
client can resume by id.

Publishing never waits for a reader: a paused subscriber's messages queue in its
L{streamd.stream.Stream}, bounded by C{max_pending} and its slow policy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from streamd.coalesce import Coalescer
from streamd.errors import InvalidRequest
from streamd.interfaces import ISource, ISubscription
from streamd.message import Message
from streamd.sources.unacknowledged import Unacknowledged

log = Logger()


@implementer(ISubscription)
class MemorySubscription(Unacknowledged):
    """A subscriber of a memory stream: pause and ack cost nothing here."""

    __slots__ = ("source", "consumer")

    def __init__(self, source: MemorySource, consumer) -> None:
        self.source = source
        self.consumer = consumer

    def cancel(self) -> None:
        self.source.subscribers.discard(self)


@implementer(ISource)
class MemorySource:
    """
    One memory stream.

    @ivar seq: the id of the last published message; ids are consecutive integers
        (as strings) so a resume can tell exactly how many messages it missed.
    @ivar recent: C{(seq, published_at, message)} for the last C{buffer} messages.
    """

    kind = "memory"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    durable = False
    config_keys: list = []

    def __init__(self, name: str, clock, buffer: int = 100, buffer_ttl: float = 300.0,
                 coalesce: float = 0.0):
        self.name = name
        self.clock = clock
        self.buffer = buffer
        self.buffer_ttl = buffer_ttl
        self.seq = 0
        self.recent: deque[tuple[int, float, Message]] = deque(maxlen=buffer or None)
        self.subscribers: set[MemorySubscription] = set()
        # Publishes of one reactor turn (or of coalesce seconds) reach a stream together.
        self.outgoing = Coalescer(clock, self._deliver, coalesce)

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], services):
        broker = getattr(services, "broker", None)
        if broker is not None:  # a worker: the stream lives in the parent's broker
            return broker.memory_source(settings["name"])
        return cls(settings["name"], services.reactor, settings["buffer"],
                   settings["buffer_ttl"], settings["coalesce_ms"] / 1000)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.outgoing.flush()
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")

    def status(self) -> tuple[str, str | None]:
        return ("ok", None)

    def expire(self) -> None:
        """Drop buffered messages older than C{buffer_ttl} (no longer resumable)."""
        horizon = self.clock.seconds() - self.buffer_ttl
        recent = self.recent
        while recent and recent[0][1] < horizon:
            recent.popleft()

    def publish(self, payloads: list[bytes], params=None) -> list[str]:
        now = self.clock.seconds()
        batch = []
        for data in payloads:
            self.seq += 1
            msg = Message(str(self.seq), self.name, data)
            batch.append(msg)
            if self.buffer:
                self.recent.append((self.seq, now, msg))
        self.expire()
        self.outgoing.add(batch)
        return [m.id for m in batch]

    def _deliver(self, batch) -> None:
        fan_out(self.name, self.subscribers, batch)

    def subscribe(self, consumer, since: str | None = None) -> MemorySubscription:
        sub, gap, replay = self.attach(consumer, since)
        if gap is not None:
            consumer.gap(gap)
        if replay:
            consumer.deliver(replay)
        return sub

    def attach(self, consumer, since: str | None = None, subscribe: bool = True):
        """
        What L{subscribe} does, with the resume's gap notice and replay returned rather
        than delivered: C{(subscription or None, gap or None, replay)}. The parent of
        several workers answers a worker's subscription with them (only the first of a
        worker's readers of this stream subscribes, C{subscribe}).
        """
        # What was published before this subscriber came is not for it (a resume
        # replays it from the buffer): deliver it to the others first.
        self.outgoing.flush()
        gap, replay = (None, []) if since is None else self.replay(since)
        sub = None
        if subscribe:
            sub = MemorySubscription(self, consumer)
            self.subscribers.add(sub)
        return sub, gap, replay

    def replay(self, since: str) -> tuple[dict | None, list[Message]]:
        """The gap notice (or None) and the buffered messages after id C{since}."""
        check_since(since)
        after = int(since)
        self.expire()
        if after > self.seq:
            # An id from before a restart (ids start again at 1): what followed it
            # cannot be known, so say so rather than pretend nothing was missed.
            return {"since": since, "missed": None, "reason": "unknown id"}, []
        first_kept = self.recent[0][0] if self.recent else self.seq + 1
        gap = None
        if first_kept > after + 1:
            gap = {"since": since, "missed": first_kept - after - 1,
                   "reason": "no longer buffered"}
        return gap, [m for seq, _, m in self.recent if seq > after]


def fan_out(name: str, subscribers: set, batch) -> None:
    """Hand C{batch} to every subscriber's consumer; one that fails is detached."""
    # A consumer may end its stream (limit, slow policy) while we deliver.
    for sub in list(subscribers):
        try:
            sub.consumer.deliver(batch)
        except Exception:
            # A bug in one stream must not cost the publisher or other readers.
            log.failure("stream of {name} failed; detaching it", name=name)
            subscribers.discard(sub)


def check_since(since: str) -> None:
    """A memory stream's ids are integers: anything else is a bad request."""
    try:
        int(since)
    except ValueError:
        raise InvalidRequest(f"since: {since!r} is not a message id of this stream") from None
