"""
What a stream does when its reader falls behind: the queue's bounds, the warning at half
full, and the slow policy past full (drop the oldest, or end the stream with a notice and
cut off a reader that then reads nothing at all).

L{SlowReader} is a part of L{streamd.stream.Stream}, kept apart because it is its own
concern: it reads the stream's queue and counters and ends it through its public
C{end()}.
"""

from __future__ import annotations

import contextlib
from typing import Any

from streamd.message import Message

#: After a slow-consumer disconnect, a client that reads nothing for this many seconds
#: is cut off (so a stuck client cannot pin the buffer); one that reads keeps reading.
SLOW_CLOSE_GRACE = 5.0


class SlowReader:
    """The slow-reader half of a L{streamd.stream.Stream} (which holds the state)."""

    __slots__ = ()

    def _percent_full(self) -> int:
        return max(self.queued * 100 // self.max_pending,
                   self.pending_bytes * 100 // self.max_pending_bytes)

    def _behind(self) -> None:
        """Messages wait here: warn at half full, apply the slow policy past full."""
        if self.stall_warnings and not self._warned:
            self._stall_warning()
        if self.queued > self.max_pending or self.pending_bytes > self.max_pending_bytes:
            self._overflow()

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

    def _overflow(self) -> None:
        if self.slow_policy == "drop-oldest":
            pending = self.pending
            dropped = []
            payload = 0
            while self.queued > self.max_pending or self.pending_bytes > self.max_pending_bytes:
                item = pending.popleft()
                if type(item) is Message:
                    dropped.append(item)
                    self.queued -= 1
                    self.pending_bytes -= len(item.data)
                    payload += len(item.data)
            excess = len(dropped)
            self.dropped += excess
            self.dropped_total += excess
            self.subscription.nack(dropped)
            if self.metrics is not None:
                self.metrics.drops.inc(excess)
            return
        # The notice goes ahead of everything still queued here (given back to the
        # source by end()); only the one write already under way is before it.
        info: dict[str, Any] = {"message": "slow consumer", "max_pending": self.max_pending}
        if self.pending_bytes > self.max_pending_bytes:
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
        elif getattr(self.request, "channel", None) is not None:
            # HTTP/2: the request's channel is its own stream of the connection;
            # aborting it resets that stream only.
            self.clock.callLater(SLOW_CLOSE_GRACE, _abort_quietly, self.request.channel)

    def _cut_off_if_stuck(self, transport, left_before: int) -> None:
        if getattr(transport, "disconnected", False):
            return
        left = self.outbox.backlog() if self.outbox is not None else 0
        if 0 < left < left_before:
            # still reading: look again after another grace period
            self.clock.callLater(SLOW_CLOSE_GRACE, self._cut_off_if_stuck, transport, left)
            return
        transport.abortConnection()


def _abort_quietly(channel) -> None:
    # An HTTP/2 stream that closed meanwhile raises (h2's StreamClosedError).
    with contextlib.suppress(Exception):
        channel.abortConnection()
