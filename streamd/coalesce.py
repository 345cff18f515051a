"""
L{Coalescer}: messages that reach a source close together go to each stream as one batch.

A one-message POST, a pub/sub message, an SQS receive: each used to reach every stream on
its own, one write per stream each. Gathered until the end of the reactor turn (no added
latency when idle: the batch goes out before the reactor next waits for I/O), or for up to
C{coalesce_ms} when an operator trades that latency for fewer writes, they go out as one
L{SharedBatch}: framed and joined once per framing for every stream that keeps up, written
once per stream.
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
            self._call = self.clock.callLater(self.delay, self.flush)
        else:
            self.batch.extend(messages)

    def flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        batch, self.batch = self.batch, None
        if batch:
            self.deliver(batch)
