"""
L{Coalescer}: messages that reach a source close together go to each stream as one batch.

A one-message POST, a pub/sub message, an SQS receive: each used to reach every stream on
its own, one write per stream each. Gathered until the end of the next reactor turn (no
added latency when idle: the batch goes out before the reactor next waits for I/O), or for
up to C{coalesce_ms} when an operator trades that latency for fewer writes, they go out as
one L{SharedBatch}: framed and joined once per framing for every stream that keeps up,
written once per stream.

"The next reactor turn": with no C{coalesce_ms}, the flush is a C{callLater(0)} that
re-arms itself once. Twisted's own reactors (epoll, poll, select) run due timed calls
I{before} they poll for I/O, so a single C{callLater(0)} went out before the next poll and
a batch held only what one poll brought (the 4 POSTs of 4 keep-alive publishers, in the
fan-out bench). Re-armed once, it goes out after one more poll, which the pending call
makes a zero-timeout one: whatever was already waiting joins the batch, the reactor never
blocks with a batch held. That is what the asyncio reactor did already (asyncio polls,
then runs the I/O callbacks, then the due timers): in bench/fanout.py (a) the epoll
reactor now flushes twice the messages at a time, as the asyncio reactor did, so each
reader gets half the writes. (On the asyncio reactor a batch now spans one poll more
still: three.)
"""

from __future__ import annotations

from collections.abc import Callable

from streamd.message import Message, SharedBatch


class Coalescer:
    """
    Gathers messages for C{deliver}; order is kept. Call L{flush} before anything that
    must not overtake what is gathered (a new subscriber's replay, a stop).
    """

    __slots__ = ("clock", "delay", "deliver", "batch", "_call")

    def __init__(self, clock, deliver: Callable[[SharedBatch], None],
                 delay: float = 0.0) -> None:
        self.clock = clock
        self.delay = delay
        self.deliver = deliver
        self.batch: SharedBatch | None = None
        self._call = None

    def add(self, messages: list[Message]) -> None:
        if self.batch is None:
            self.batch = SharedBatch(messages)
            if self.delay > 0:
                self._call = self.clock.callLater(self.delay, self.flush)
            else:
                self._call = self.clock.callLater(0, self._rearm)
        else:
            self.batch.extend(messages)

    def _rearm(self) -> None:
        # The end of this turn: out at the end of the next one, after one more
        # (zero-timeout: this call is due) poll for I/O. See the module's docstring.
        self._call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        batch, self.batch = self.batch, None
        if batch:
            self.deliver(batch)
