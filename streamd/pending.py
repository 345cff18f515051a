"""
L{Pending}: what one stream took from its source but has not yet written, in the order
it came, and the counts its slow-reader policy (L{streamd.slow}) judges.

A broadcast source hands every stream the same L{SharedBatch}. Queued in twenty
streams, a publish is one set of messages, not twenty: a delivery is queued as a
L{Run}, the list it came in (not a copy) with this queue's place in it, and a shared
batch counts against a queue's bounds (C{own}, C{own_bytes}) only while no other queue
holds it (issue 20): the one left holding it alone is the one behind. A queue's own
messages (a durable source's delivery, a resume's replay) and its part of a shared
batch (what its filter or limit kept) always count.

No clock, no I/O: the stream decides when to take, the policy what to drop.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from streamd.message import Message

#: Who holds a shared batch queued: id(batch) -> {Pending: its Run}. The run keeps the
#: batch, so the id is not reused while the entry lives.
_HOLDERS: dict[int, dict[Pending, Run]] = {}

#: The queue of a stream that has never queued anything (a deque costs 600 bytes); only
#: ever read, never changed, and read only when it is true.
_NOTHING: Any = ()


class Run:
    """
    Messages a queue took from one delivery, and how far it has written them: a shared
    batch is queued as it is (one object however many queues hold it); C{i} is this
    queue's place in it.

    @ivar broadcast: from a shared batch (a publish), whole or in part.
    @ivar shared: the whole batch, down in C{_HOLDERS}: other queues may hold it too.
    @ivar counted: counts against the queue's bounds (see the module).
    """

    __slots__ = ("messages", "i", "n", "size", "broadcast", "shared", "counted")

    def __init__(self, messages: list[Message], size: int, broadcast: bool) -> None:
        self.messages = messages
        self.i = 0
        self.n = len(messages)  # left to write
        self.size = size  # their payload bytes
        self.broadcast = broadcast
        self.shared = False
        self.counted = True


class Pending:
    """
    One stream's queue: L{Run}s of messages and notices (bytes), oldest first.

    @ivar items: the queue; an empty tuple until something first queues (a deque costs
        600 bytes, and most streams of a fast reader never queue).
    @ivar queued: messages in C{items}; C{bytes}: their payload bytes.
    @ivar own: what of them counts against the bounds; C{own_bytes}: their payload bytes.
    @ivar dropped: messages dropped since the last notice of it (the next L{take}
        writes that notice first); C{dropped_total}: since the stream began.
    @ivar policy: told (C{judge_soon()}) when a shared batch this queue holds comes to
        count against it (the other queues are done with it); None: nobody is told.
    """

    __slots__ = ("items", "queued", "bytes", "own", "own_bytes", "dropped", "dropped_total",
                 "policy")

    def __init__(self, policy=None) -> None:
        self.items: deque[Any] = _NOTHING
        self.queued = self.bytes = self.own = self.own_bytes = 0
        self.dropped = self.dropped_total = 0
        self.policy = policy

    def __bool__(self) -> bool:
        return bool(self.items)

    def _deque(self) -> deque[Any]:
        if self.items is _NOTHING:
            self.items = deque()
        return self.items

    def notice(self, data: bytes) -> None:
        """Queue a notice (a gap), written in its place among the messages."""
        self._deque().append(data)

    def add(self, messages: list[Message], batch: list[Message] | None) -> Run:
        """
        Queue C{messages}: C{batch} is the shared batch they are (the whole of it, or a
        part: a filter's, a limit's), or None for the stream's own.
        """
        if batch is None:
            messages = list(messages)  # the source's list: it may go on using it
        size = sum([len(m.data) for m in messages])
        run = Run(messages, size, batch is not None)
        self._deque().append(run)
        self.queued += run.n
        self.bytes += size
        self.own += run.n
        self.own_bytes += size
        return run

    def hold(self, run: Run) -> None:
        """
        Say that this queue holds C{run}, a whole shared batch: once the stream has
        written what it could at once (most streams then hold nothing).
        """
        if not run.n:
            return
        holders = _HOLDERS.setdefault(id(run.messages), {})
        if self in holders:  # the same batch twice: the second is its own
            return
        run.shared = True
        if holders:
            self._shared(run)
            if len(holders) == 1:
                ((other, theirs),) = holders.items()
                other._shared(theirs)
        holders[self] = run

    def holds_shared(self) -> bool:
        """Whether this queue is down as holding part of a shared batch."""
        return any(self in holders for holders in _HOLDERS.values())

    def take(self, parts: list[bytes], framing, room: int, limit: int
             ) -> tuple[list[Message], int]:
        """
        Take the next chunk off the queue into C{parts}: the notice of what was
        dropped, then notices and message frames in order, up to C{limit} bytes, at
        most C{room} messages (-1: any number). Returns the messages and the bytes
        taken (the dropped notice aside).
        """
        if self.dropped:
            parts.append(framing.control("dropped", self.dropped))
            self.dropped = 0
        items = self.items
        frame_of = framing.message
        batch: list[Message] = []
        size = 0
        while items and size < limit and len(batch) != room:
            item = items[0]
            if type(item) is bytes:
                items.popleft()
                parts.append(item)
                size += len(item)
                continue
            messages = item.messages
            i = start = item.i
            end = len(messages)
            payload = 0
            while i < end and size < limit and len(batch) != room:
                m = messages[i]
                frame = frame_of(m)
                parts.append(frame)
                batch.append(m)
                size += len(frame)
                payload += len(m.data)
                i += 1
            self._took(item, i - start, payload)
        return batch, size

    def drop(self, max_n: int, max_bytes: int, everything: bool) -> list[Message]:
        """
        Drop the oldest messages until what counts (or, C{everything}) is within
        C{max_n} messages and C{max_bytes} bytes; notices stay, ahead of the rest.
        Returns the messages dropped, for the source to have back.
        """
        items = self.items
        dropped = []
        notices = []
        while True:
            if everything:
                n, size = self.queued, self.bytes
            else:
                n, size = self.own, self.own_bytes
            if n <= max_n and size <= max_bytes:
                break
            item = items[0]
            if type(item) is bytes:
                notices.append(items.popleft())  # a gap notice: kept
                continue
            m = item.messages[item.i]
            dropped.append(m)
            self._took(item, 1, len(m.data))
        if notices:
            items.extendleft(reversed(notices))
        self.dropped += len(dropped)
        self.dropped_total += len(dropped)
        return dropped

    def clear(self) -> list[Message]:
        """Empty the queue (leaving every shared batch); return the messages it held."""
        items = self.items
        messages = [m for item in items if type(item) is Run for m in item.messages[item.i:]]
        for item in items:
            if type(item) is Run and item.shared:
                self._leave(item)
        self.items = _NOTHING
        self.queued = self.bytes = self.own = self.own_bytes = 0
        return messages

    def _took(self, run: Run, n: int, size: int) -> None:
        """The next C{n} messages of C{run}, the head of the queue, are gone."""
        run.i += n
        run.n -= n
        run.size -= size
        self.queued -= n
        self.bytes -= size
        if run.counted:
            self.own -= n
            self.own_bytes -= size
        if not run.n:
            self.items.popleft()
            if run.shared:
                self._leave(run)

    def _leave(self, run: Run) -> None:
        key = id(run.messages)
        holders = _HOLDERS.get(key)
        if holders is None or holders.get(self) is not run:
            return
        del holders[self]
        if not holders:
            del _HOLDERS[key]
        elif len(holders) == 1:
            ((other, theirs),) = holders.items()
            other._alone(theirs)

    def _shared(self, run: Run) -> None:
        """Another queue holds the same batch: it no longer counts here."""
        if run.counted:
            run.counted = False
            self.own -= run.n
            self.own_bytes -= run.size

    def _alone(self, run: Run) -> None:
        """The others are done with this batch: from now on it counts here."""
        if not run.counted:
            run.counted = True
            self.own += run.n
            self.own_bytes += run.size
            if self.policy is not None:
                self.policy.judge_soon()
