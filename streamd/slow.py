"""
L{SlowReader}: what a stream does when its reader falls behind. The warning at half
full, and the slow policy past full: drop the oldest, or end the stream with a notice
and cut off a reader that then reads nothing at all.

What counts is what the stream's L{streamd.pending.Pending} says is its own (a publish
that other streams hold queued too counts against none of them), with one allowance:
under C{disconnect}, the publish at the head of the queue, the one being written,
counts for no more than the bounds themselves, so a reader that keeps reading gets the
whole of a publish of any size and only what queues behind it can put it over.
C{drop-oldest} has no such allowance: it never holds more than its bounds of its own
(it drops rather than cuts: a reader told of the loss goes on).

Past a bound: the slow policy, at once. Within them, what is shared or exempt may make
a stream hold more than C{max_pending} / C{max_pending_bytes} in all; it must then make
progress (write, which it does only once its last write left the process) at least
once every C{SLOW_CLOSE_GRACE} seconds, or the policy applies as if everything counted:
C{disconnect} ends the stream with the notice, C{drop-oldest} drops down to the bounds.
A stream within its bounds in all may wait as long as its reader likes.
"""

from __future__ import annotations

from typing import Any

from streamd.pending import Pending, Run

#: After a slow-consumer disconnect, a client that reads nothing for this many seconds
#: is cut off (so a stuck client cannot pin the buffer); one that reads keeps reading.
#: Also how long a stream holding more than its bounds in all (shared, or the publish
#: it is writing) may go without progress.
SLOW_CLOSE_GRACE = 5.0


class SlowReader:
    """
    The slow-reader policy of one stream.

    It judges the stream's C{pending} and acts through its C{owner} (a
    L{streamd.stream.Stream}), of which it uses only: C{ended}; C{bytes_written} (its
    progress); C{subscription} (to give back what it drops); C{notify(kind, info)}
    (write a notice now, ahead of the queue); C{slow_consumer(info)} (end with the
    error C{info} and close the connection, see L{close_when_read}).

    @ivar warned: a warning was written since the stream last caught up: one per fall.
    """

    __slots__ = ("owner", "pending", "clock", "options", "metrics", "warned", "_judging",
                 "_stall_call")

    def __init__(self, owner, pending: Pending, clock, options, metrics=None) -> None:
        """
        @param options: a L{streamd.stream.StreamOptions}: its C{slow_policy},
            C{max_pending}, C{max_pending_bytes} and C{stall_warnings} apply.
        @param metrics: a L{streamd.metrics.StreamMetrics} (drops, disconnects), or None.
        """
        self.owner = owner
        self.pending = pending
        self.clock = clock
        self.options = options
        self.metrics = metrics
        self.warned = False
        self._judging = None  # judging at the end of the reactor turn
        self._stall_call = None  # watching it make progress
        pending.policy = self

    def charged(self) -> tuple[int, int]:
        """What counts against the bounds: messages, payload bytes."""
        pending, options = self.pending, self.options
        n, size = pending.own, pending.own_bytes
        if options.slow_policy != "drop-oldest" and pending.items:
            head = pending.items[0]
            if type(head) is Run and head.broadcast and head.counted:
                # The publish being written counts for no more than the bounds.
                n -= max(0, head.n - options.max_pending)
                size -= max(0, head.size - options.max_pending_bytes)
        return n, size

    def percent_full(self) -> int:
        n, size = self.charged()
        options = self.options
        return max(n * 100 // options.max_pending, size * 100 // options.max_pending_bytes)

    def caught_up(self) -> None:
        """
        The stream wrote (called once it C{warned}): below half full again, it may warn
        the next time it falls behind.
        """
        if self.warned and self.percent_full() < 50:
            self.warned = False

    def stop(self) -> None:
        """The stream ended: judge no more."""
        for name in ("_judging", "_stall_call"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- judging ----------------------------------------------------------------------

    def judge_soon(self) -> None:
        """
        Judge at the end of this reactor turn: a shared batch reaches the other streams
        in the same turn, and only then is it known who holds it alone. (Not below half
        the bounds in all: nothing to warn of, nothing to cut.)
        """
        if self._judging is not None or self.owner.ended:
            return
        pending, options = self.pending, self.options
        if (pending.queued * 2 >= options.max_pending
                or pending.bytes * 2 >= options.max_pending_bytes):
            self._judging = self.clock.callLater(0, self._judge)

    def _judge(self) -> None:
        self._judging = None
        if self.pending.queued and not self.owner.ended:
            self.behind()

    def behind(self) -> None:
        """Messages wait: warn at half full, apply the slow policy past full."""
        options = self.options
        if options.stall_warnings and not self.warned:
            self._warn()
        n, size = self.charged()
        if n > options.max_pending or size > options.max_pending_bytes:
            if options.slow_policy == "drop-oldest":
                self._drop(everything=False)
            else:
                self._disconnect(size > options.max_pending_bytes)
        elif self._over_in_all():
            self._watch()  # allowed while it makes progress

    def _over_in_all(self) -> bool:
        pending, options = self.pending, self.options
        return pending.queued > options.max_pending or pending.bytes > options.max_pending_bytes

    def _watch(self) -> None:
        if self._stall_call is None:
            self._stall_call = self.clock.callLater(
                SLOW_CLOSE_GRACE, self._check_progress, self.owner.bytes_written)

    def _check_progress(self, written_before: int) -> None:
        self._stall_call = None
        if self.owner.ended or not self._over_in_all():
            return
        if self.owner.bytes_written != written_before:
            self._watch()  # it wrote meanwhile: look again after another grace period
        elif self.options.slow_policy == "drop-oldest":
            self._drop(everything=True)
        else:
            self._disconnect(self.pending.bytes > self.options.max_pending_bytes)

    def _warn(self) -> None:
        percent = self.percent_full()
        if percent < 50:
            return
        self.warned = True
        # Ahead of the queue: the client reads it before the messages that are
        # waiting, and before any slow policy applies.
        self.owner.notify("warning", {
            "code": "FALLING_BEHIND",
            "message": "the client is not reading fast enough",
            "percent_full": min(100, percent),
            "dropped": self.pending.dropped_total,
        })

    # -- the slow policy ----------------------------------------------------------------

    def _drop(self, everything: bool) -> None:
        """Drop the oldest messages until what counts (or, C{everything}) is in bounds."""
        options = self.options
        dropped = self.pending.drop(options.max_pending, options.max_pending_bytes, everything)
        self.owner.subscription.nack(dropped)
        if self.metrics is not None:
            self.metrics.drops.inc(len(dropped))

    def _disconnect(self, bytes_over: bool) -> None:
        options = self.options
        info: dict[str, Any] = {"message": "slow consumer", "max_pending": options.max_pending}
        if bytes_over:
            info["max_pending_bytes"] = options.max_pending_bytes
        if self.metrics is not None:
            self.metrics.disconnects.inc()
        self.owner.slow_consumer(info)


def close_when_read(clock, transport, outbox) -> None:
    """
    Close C{transport} once its last bytes are out; a client that reads nothing at all
    for C{SLOW_CLOSE_GRACE} is cut off, so its buffered bytes are freed, while one that
    reads keeps reading. C{outbox} (or None) says how much is still in this process.
    No C{transport} (None): nothing to do. (HTTP/2 has no transport per stream:
    L{streamd.web.h2} resets a stream whose last bytes go untaken for as long.)
    """
    if transport is None:
        return
    transport.loseConnection()
    left = outbox.backlog() if outbox is not None else 0
    clock.callLater(SLOW_CLOSE_GRACE, _cut_off_if_stuck, clock, transport, outbox, left)


def _cut_off_if_stuck(clock, transport, outbox, left_before: int) -> None:
    if getattr(transport, "disconnected", False):
        return
    left = outbox.backlog() if outbox is not None else 0
    if 0 < left < left_before:
        # still reading: look again after another grace period
        clock.callLater(SLOW_CLOSE_GRACE, _cut_off_if_stuck, clock, transport, outbox, left)
        return
    transport.abortConnection()
