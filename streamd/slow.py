"""
What a stream does when its reader falls behind: what counts against its bounds, the
warning at half full, and the slow policy past full (drop the oldest, or end the stream
with a notice and cut off a reader that then reads nothing at all).

What counts (issue 20). A broadcast source hands every stream the same L{SharedBatch}:
queued in twenty streams, a publish is one set of messages, not twenty. So
C{max_pending} and C{max_pending_bytes} bound what one stream holds beyond what it
shares with the others:

  - a shared batch counts against a stream only while no other stream holds it
    queued: the one left holding it alone is the one behind;
  - a stream's own messages (a durable source's delivery to it, a resume's replay) and
    its part of a shared batch (what its filter or limit kept) always count;
  - under C{disconnect}, the shared batch (or part) at the head of the queue, the
    publish being written, counts for no more than the bounds themselves: a reader
    that keeps reading gets the whole of a publish of any size, and only what queues
    behind it can put it over. C{drop-oldest} has no such allowance: it never holds
    more than its bounds of its own (it drops rather than cuts: a reader told of the
    loss goes on).

Past a bound: the slow policy, at once. Within them, what is shared or exempt may make
a stream hold more than C{max_pending} / C{max_pending_bytes} in all; it must then make
progress (write, which it does only once its last write left the process) at least
once every C{SLOW_CLOSE_GRACE} seconds, or the policy applies as if everything counted:
C{disconnect} ends the stream with the notice, C{drop-oldest} drops down to the bounds.
A stream within its bounds in all may wait as long as its reader likes.

L{SlowReader} is a part of L{streamd.stream.Stream}, kept apart because it is its own
concern: it keeps the stream's queue (each delivery a L{_Run}: a shared batch is queued
as the one object it is, with the stream's place in it, not copied message by message)
and its counts, and ends the stream through its public C{end()}.
"""

from __future__ import annotations

from typing import Any

from streamd.message import Message

#: After a slow-consumer disconnect, a client that reads nothing for this many seconds
#: is cut off (so a stuck client cannot pin the buffer); one that reads keeps reading.
#: Also how long a stream holding more than its bounds in all (shared, or the publish
#: it is writing) may go without progress.
SLOW_CLOSE_GRACE = 5.0

#: Who holds a shared batch queued: id(batch) -> {stream: its _Run}. The run keeps the
#: batch, so the id is not reused while the entry lives.
_HOLDERS: dict[int, dict] = {}


class _Run:
    """
    Messages a stream queued from one delivery, and how far it has written them: a
    shared batch is queued as it is (one object however many streams hold it, not a
    copy per stream); C{i} is the stream's place in it.
    """

    __slots__ = ("messages", "i", "n", "size", "broadcast", "shared", "counted")

    def __init__(self, messages: list[Message], size: int, broadcast: bool) -> None:
        self.messages = messages
        self.i = 0
        self.n = len(messages)  # left to write
        self.size = size  # their payload bytes
        self.broadcast = broadcast  # from a shared batch (a publish), whole or in part
        self.shared = False  # the whole batch, in _HOLDERS: others may hold it too
        self.counted = True  # counts against the stream's bounds (see the module)


class SlowReader:
    """The slow-reader half of a L{streamd.stream.Stream} (which holds the state)."""

    __slots__ = ()

    # -- what a stream holds ----------------------------------------------------------

    def _enqueue(self, messages: list[Message], batch) -> _Run:
        """
        Queue C{messages}: C{batch} is the shared batch they are (the whole of it, or
        a part: a filter's, a limit's), or None for the stream's own.
        """
        if batch is None:
            messages = list(messages)  # the source's list: it may go on using it
        size = sum([len(m.data) for m in messages])
        run = _Run(messages, size, batch is not None)
        self._queue().append(run)
        self.queued += run.n
        self.pending_bytes += size
        self.own += run.n
        self.own_bytes += size
        return run

    def _hold(self, run: _Run) -> None:
        """
        Say that this stream holds C{run}, a whole shared batch, queued: once it has
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

    def _take(self, parts: list[bytes], room: int, limit: int) -> tuple[list[Message], int]:
        """
        Take the next chunk off the queue into C{parts}: notices and message frames in
        order, up to C{limit} bytes, at most C{room} messages (-1: any number). Returns
        the messages and the bytes taken.
        """
        pending = self.pending
        frame_of = self.framing.message
        batch: list[Message] = []
        size = 0
        while pending and size < limit and len(batch) != room:
            item = pending[0]
            if type(item) is bytes:
                pending.popleft()
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

    def _took(self, run: _Run, n: int, size: int) -> None:
        """The next C{n} messages of C{run}, the head of the queue, are gone."""
        run.i += n
        run.n -= n
        run.size -= size
        self.queued -= n
        self.pending_bytes -= size
        if run.counted:
            self.own -= n
            self.own_bytes -= size
        if not run.n:
            self.pending.popleft()
            if run.shared:
                self._leave(run)

    def _queued_messages(self) -> list[Message]:
        return [m for item in self.pending if type(item) is _Run
                for m in item.messages[item.i:]]

    def _leave(self, run: _Run) -> None:
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

    def _shared(self, run: _Run) -> None:
        """Another stream queued the same batch: it no longer counts here."""
        if run.counted:
            run.counted = False
            self.own -= run.n
            self.own_bytes -= run.size

    def _alone(self, run: _Run) -> None:
        """The others are done with this batch: from now on it counts here."""
        if not run.counted:
            run.counted = True
            self.own += run.n
            self.own_bytes += run.size
            self._judge_soon()

    def _forget_queue(self) -> None:
        """The queue is gone (given back): leave every shared batch."""
        for item in self.pending:
            if type(item) is _Run and item.shared:
                self._leave(item)
        self.pending = ()
        self.queued = self.pending_bytes = self.own = self.own_bytes = 0
        for name in ("_judging", "_stall_call"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    def _charged(self) -> tuple[int, int]:
        """What counts against the bounds: messages, payload bytes."""
        n, size = self.own, self.own_bytes
        if self.slow_policy != "drop-oldest" and self.pending:
            head = self.pending[0]
            if type(head) is _Run and head.broadcast and head.counted:
                # The publish being written counts for no more than the bounds.
                n -= max(0, head.n - self.max_pending)
                size -= max(0, head.size - self.max_pending_bytes)
        return n, size

    def _percent_full(self) -> int:
        n, size = self._charged()
        return max(n * 100 // self.max_pending, size * 100 // self.max_pending_bytes)

    # -- judging ----------------------------------------------------------------------

    def _judge_soon(self) -> None:
        """
        Judge at the end of this reactor turn: a shared batch reaches the other streams
        in the same turn, and only then is it known who holds it alone. (Not below half
        the bounds in all: nothing to warn of, nothing to cut.)
        """
        if self._judging is not None or self.ended:
            return
        if self.queued * 2 >= self.max_pending or self.pending_bytes * 2 >= self.max_pending_bytes:
            self._judging = self.clock.callLater(0, self._judge)

    def _judge(self) -> None:
        self._judging = None
        if self.queued and not self.ended:
            self._behind()

    def _behind(self) -> None:
        """Messages wait here: warn at half full, apply the slow policy past full."""
        if self.stall_warnings and not self._warned:
            self._stall_warning()
        n, size = self._charged()
        if n > self.max_pending or size > self.max_pending_bytes:
            self._overflow(size > self.max_pending_bytes)
        elif self.queued > self.max_pending or self.pending_bytes > self.max_pending_bytes:
            # More than the bounds in all: allowed while it makes progress.
            self._watch()

    def _watch(self) -> None:
        if self._stall_call is None:
            self._stall_call = self.clock.callLater(
                SLOW_CLOSE_GRACE, self._check_progress, self.bytes_written)

    def _check_progress(self, written_before: int) -> None:
        self._stall_call = None
        if self.ended or (self.queued <= self.max_pending
                          and self.pending_bytes <= self.max_pending_bytes):
            return
        if self.bytes_written != written_before:
            self._watch()  # it wrote meanwhile: look again after another grace period
        elif self.slow_policy == "drop-oldest":
            self._drop(everything=True)
        else:
            self._disconnect(self.pending_bytes > self.max_pending_bytes)

    def _stall_warning(self) -> None:
        percent = self._percent_full()
        if percent < 50:
            return
        self._warned = True
        # Written ahead of the queue, straight to the transport: the client reads it
        # before the messages that are waiting, and before any slow policy applies.
        self.request.write(self.framing.control("warning", {
            "code": "FALLING_BEHIND",
            "message": "the client is not reading fast enough",
            "percent_full": min(100, percent),
            "dropped": self.dropped_total,
        }))

    # -- the slow policy ----------------------------------------------------------------

    def _overflow(self, bytes_over: bool) -> None:
        if self.slow_policy == "drop-oldest":
            self._drop(everything=False)
        else:
            self._disconnect(bytes_over)

    def _drop(self, everything: bool) -> None:
        """Drop the oldest messages until what counts (or, C{everything}) is in bounds."""
        pending = self.pending
        dropped = []
        notices = []
        while True:
            if everything:
                n, size = self.queued, self.pending_bytes
            else:
                n, size = self.own, self.own_bytes
            if n <= self.max_pending and size <= self.max_pending_bytes:
                break
            item = pending[0]
            if type(item) is bytes:
                notices.append(pending.popleft())  # a gap notice: kept, ahead of the rest
                continue
            m = item.messages[item.i]
            dropped.append(m)
            self._took(item, 1, len(m.data))
        pending.extendleft(reversed(notices))
        excess = len(dropped)
        self.dropped += excess
        self.dropped_total += excess
        self.subscription.nack(dropped)
        if self.metrics is not None:
            self.metrics.drops.inc(excess)

    def _disconnect(self, bytes_over: bool) -> None:
        # The notice goes ahead of everything still queued here (given back to the
        # source by end()); only the one write already under way is before it.
        info: dict[str, Any] = {"message": "slow consumer", "max_pending": self.max_pending}
        if bytes_over:
            info["max_pending_bytes"] = self.max_pending_bytes
        notice = self.framing.control("error", info)
        transport = getattr(self.request, "transport", None)
        if self.metrics is not None:
            self.metrics.disconnects.inc()
        self.end("slow consumer", notice)
        if transport is not None:
            # Close once the final line is out; a client that reads nothing at all
            # for a grace period is cut off, so its buffered bytes are freed.
            transport.loseConnection()
            left = self.outbox.backlog() if self.outbox is not None else 0
            self.clock.callLater(SLOW_CLOSE_GRACE, self._cut_off_if_stuck, transport, left)
        # HTTP/2: streamd.web.h2 resets a stream whose last bytes go untaken for the
        # same grace period.

    def _cut_off_if_stuck(self, transport, left_before: int) -> None:
        if getattr(transport, "disconnected", False):
            return
        left = self.outbox.backlog() if self.outbox is not None else 0
        if 0 < left < left_before:
            # still reading: look again after another grace period
            self.clock.callLater(SLOW_CLOSE_GRACE, self._cut_off_if_stuck, transport, left)
            return
        transport.abortConnection()

