"""
L{Handover}: how a client hands the records it received to its queue, one at a time,
checking its limit and its switch before each, so that a limit of N hands over exactly
N even when one chunk brings many; and how it counts them in the state's counter.

When the queue is full the rest waits here, and the connection's transport is paused
until a consumer made room: records already received are kept, never dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from streamd.client.acks import Acks
from streamd.client.records import Record

log = Logger()


class Flow(Protocol):
    """What a handover pauses and resumes: the transport of the connection being read."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Handover:
    """
    The records of one client between the connection and the queue.

    @ivar pending: received and not yet handed over (the queue was full).
    @ivar limit: how many records this run hands over at most, or None.
    @ivar count: records handed over in this run.
    @ivar last_id: the id of the last record handed over (in any run): where a later
        run resumes when some were received and never handed over.
    """

    def __init__(self, queue, state, acks: Acks, flow: Flow,
                 halt: Callable[[str], None]) -> None:
        """
        @param queue: the client's L{streamd.client.queues.IRecordQueue}.
        @param state: the client's L{streamd.client.state.IClientState} (switch, counter).
        @param acks: told of each record handed over (it is owed an ack).
        @param flow: paused while the queue is full, resumed once all is handed over.
        @param halt: ends the client's run with a reason: C{"limit"}, C{"off"} (the
            switch), C{"queue failed"}.
        """
        self.queue = queue
        self.state = state
        self.acks = acks
        self.flow = flow
        self.halt_run = halt
        self.pending: deque[Record] = deque()
        self.limit: int | None = None
        self.count = 0
        self.last_id: str | None = None
        self._halted = False
        self._room: Deferred | None = None
        self._drained: Deferred | None = None  # a clean end waits for pending to go
        self._counting: list[Deferred] = []

    def begin(self, limit: int | None) -> None:
        """A new run, handing over at most C{limit} records."""
        self.limit = limit
        self.count = 0
        self._halted = False
        self.pending.clear()

    def add(self, records: list[Record]) -> None:
        """Records received (possibly none): hand over what the queue takes."""
        self.pending.extend(records)
        self.drain()

    async def until_drained(self) -> None:
        """
        Wait until every record received was handed over (the server ended the stream
        with some still waiting for room), or the run halts.
        """
        if self.pending:
            self._drained = Deferred()
            await self._drained

    def halt(self) -> None:
        """The run is ending: hand over nothing more, stop waiting to drain."""
        self._halted = True
        self._fire_drained()

    def clear(self) -> bool:
        """Forget what was not handed over (the server gives it back); say if any was."""
        left = bool(self.pending)
        self.pending.clear()
        return left

    async def counted(self) -> None:
        """Wait until the counter updates under way are done (failed or not)."""
        if self._counting:
            counting, self._counting = self._counting, []
            await gatherResults(counting, consumeErrors=True)

    def drain(self) -> None:
        """Hand pending records to the queue, one by one, while allowed."""
        handed = 0
        pending = self.pending
        queue = self.queue
        while pending and not self._halted:
            if self.limit is not None and self.count >= self.limit:
                break
            if not self.state.on:
                self.halt_run("off")
                break
            if queue.full():
                self.flow.pause()
                if self._room is None:
                    self._room = queue.wait_room()
                    self._room.addCallback(self._has_room)
                break
            record = pending.popleft()
            self.count += 1
            handed += 1
            if record.id is not None:
                self.last_id = record.id
            self.acks.handed(record)
            d = queue.put(record)
            if isinstance(d, Deferred):
                d.addErrback(self._queue_failed)
        if handed:
            d = maybeDeferred(self.state.add, handed)
            if not d.called:
                self._counting.append(d)
                d.addBoth(self._counted, d)
            else:
                d.addErrback(lambda f: log.failure("counter", f))
        if self.limit is not None and self.count >= self.limit:
            self.halt_run("limit")
        elif not pending:
            if self._room is None:
                self.flow.resume()
            self._fire_drained()

    def _fire_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.called:
            drained.callback(None)

    def _counted(self, result: Any, d: Deferred) -> None:
        if d in self._counting:
            self._counting.remove(d)
        if not isinstance(result, int) and result is not None:
            log.failure("cannot update the counter", result)

    def _queue_failed(self, failure) -> None:
        log.failure("cannot put a record in the queue", failure)
        self.halt_run("queue failed")

    def _has_room(self, _=None) -> None:
        self._room = None
        self.drain()
