"""
L{Heartbeat}: a keep-alive on a stream that has written nothing for C{heartbeat}
seconds, so that the client, and every proxy on the way, sees the connection is alive.
"""

from __future__ import annotations


class Heartbeat:
    """
    Calls C{stream.keep_alive(now)} each time C{every} seconds pass without a write.

    @ivar last_write: when the stream last wrote; the stream sets it on each write (one
        store, not a call: writes are the hot path, beats are rare).
    """

    __slots__ = ("clock", "every", "stream", "last_write", "_call")

    def __init__(self, clock, every: float, stream) -> None:
        """@param every: seconds without a write before a beat (0: never)."""
        self.clock = clock
        self.every = every
        self.stream = stream
        self.last_write = clock.seconds()
        self._call = None

    def start(self) -> None:
        if self.every:
            self._call = self.clock.callLater(self.every, self._tick)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        now = self.clock.seconds()
        due = self.last_write + self.every
        if now >= due:
            self.stream.keep_alive(now)
            if self._call is None:  # the beat ended the stream (stop() was called)
                return
            self.last_write = now
            due = now + self.every
        self._call = self.clock.callLater(due - now, self._tick)
