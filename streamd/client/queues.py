"""
Where a client hands its records: a queue that other code (L{MemoryQueue}) or other
processes (L{RedisQueue}) consume.

A queue tells the client when it is full (the client then pauses the HTTP transport:
the server sees its stream paused, and nothing is dropped) and when there is room
again, and reports each record a consumer took, so that the client can acknowledge it
to an C{ack=client} stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredQueue, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from streamd.client.records import Record

log = Logger()


class IRecordQueue(Interface):
    """A FIFO of records between one client and its consumers."""

    def put(record):
        """Append a record (the client calls this only when not L{full})."""

    def full():
        """True when the client must wait before the next L{put}."""

    def wait_room():
        """A Deferred that fires when L{full} may have become false."""

    def watch_taken(callback):
        """Call C{callback(records)} with records a consumer took, in order."""


class _Waiters:
    def __init__(self) -> None:
        self.room: list[Deferred] = []
        self.taken: list[Callable[[list[Record]], None]] = []

    def notify_room(self) -> None:
        room, self.room = self.room, []
        for d in room:
            d.callback(None)

    def notify_taken(self, records: list[Record]) -> None:
        for callback in list(self.taken):
            callback(records)


@implementer(IRecordQueue)
class MemoryQueue:
    """
    A L{twisted.internet.defer.DeferredQueue} of records in this process: C{await queue.get()}.

    @param maxsize: records it holds at most before the client pauses (None: no
        bound, the client never pauses for it).
    """

    def __init__(self, maxsize: int | None = None) -> None:
        self.maxsize = maxsize
        self._queue: DeferredQueue[Record] = DeferredQueue()
        self._w = _Waiters()

    def __len__(self) -> int:
        return len(self._queue.pending)

    def put(self, record: Record) -> None:
        self._queue.put(record)

    def full(self) -> bool:
        return self.maxsize is not None and len(self._queue.pending) >= self.maxsize

    def wait_room(self) -> Deferred:
        if not self.full():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._w.room.append(d)
        return d

    def watch_taken(self, callback) -> None:
        self._w.taken.append(callback)

    def get(self) -> Deferred[Record]:
        """A Deferred of the next record (waits for one if the queue is empty)."""
        return self._queue.get().addCallback(self._took)

    def get_nowait(self) -> list[Record]:
        """Every record the queue holds now, taken at once."""
        records = list(self._queue.pending)
        self._queue.pending.clear()
        if records:
            self._w.notify_taken(records)
            self._w.notify_room()
        return records

    def _took(self, record: Record) -> Record:
        self._w.notify_taken([record])
        if not self.full():
            self._w.notify_room()
        return record


@implementer(IRecordQueue)
class RedisQueue:
    """
    A Redis list (RPUSH by the client, each record as one line of JSON,
    L{Record.line}) that any process consumes from its head: C{LPOP}, C{BLPOP},
    C{LMOVE} (or L{get} with a link of its own).

    Redis tells nobody when a record is popped, so the queue watches the list's length
    (LLEN every C{poll_interval} seconds, only while the client waits for room or for
    records to be taken). That is exact as long as the client is the list's only
    producer: when the list holds L of the P records pushed so far, the first P - L
    were taken.

    @param maxsize: the list's length at which the client pauses (None: no bound).
    """

    def __init__(self, link, key: str, maxsize: int | None = None,
                 poll_interval: float = 0.05) -> None:
        self.link = link
        self.key = key.encode() if isinstance(key, str) else key
        self.maxsize = maxsize
        self.poll_interval = poll_interval
        self.length = 0  # our estimate: last known length, plus pushes in flight
        self._sent = 0  # RPUSHes sent so far
        self._taken = 0  # records known taken
        self._in_list: deque[Record] = deque()  # sent, not known taken, in order
        self._w = _Waiters()
        self._poll = None
        self._closed = False
        self._ackable = 0  # records in _in_list that an ack=client stream waits for

    def put(self, record: Record) -> Deferred:
        self._sent += 1
        self.length += 1
        self._in_list.append(record)
        if record.session is not None:
            self._ackable += 1
        sent = self._sent
        d = self.link.command("RPUSH", self.key, record.line)
        return d.addCallback(self._observed, sent)

    def full(self) -> bool:
        return self.maxsize is not None and self.length >= self.maxsize

    def wait_room(self) -> Deferred:
        if not self.full():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._w.room.append(d)
        self._schedule()
        return d

    def watch_taken(self, callback) -> None:
        self._w.taken.append(callback)

    def get(self, timeout: float = 0) -> Deferred[Record | None]:
        """
        BLPOP the next record (None after C{timeout} seconds; 0 waits forever). For a
        consumer: give it a link of its own, since BLPOP holds the connection.
        """
        d = self.link.command("BLPOP", self.key, timeout)
        return d.addCallback(lambda r: Record.from_line(r[1]) if r else None)

    # -- watching the length ---------------------------------------------------------

    def _observed(self, length: int, sent: int) -> int:
        """The list had C{length} items when C{sent} of our pushes had been made."""
        taken = sent - int(length)
        new = taken - self._taken
        if new > 0:
            self._taken = taken
            records = [self._in_list.popleft() for _ in range(min(new, len(self._in_list)))]
            self._ackable -= sum(1 for r in records if r.session is not None)
            self._w.notify_taken(records)
        # Pushes sent after this reply's command are still in flight.
        self.length = int(length) + (self._sent - sent)
        if not self.full():
            self._w.notify_room()
        self._schedule()
        return length

    def _schedule(self) -> None:
        # Poll only while someone waits: the client for room, or for acks it owes.
        wanted = self._w.room or (self._w.taken and self._ackable)
        if wanted and self._poll is None and not self._closed:
            self._poll = self.link.reactor.callLater(self.poll_interval, self._check)

    def _check(self) -> None:
        self._poll = None
        sent = self._sent
        d = self.link.command("LLEN", self.key)
        d.addCallback(self._observed, sent)
        d.addErrback(lambda f: log.info("LLEN {key}: {e}", key=self.key, e=f.getErrorMessage()))

    def close(self) -> None:
        """Stop watching the list."""
        self._closed = True
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
