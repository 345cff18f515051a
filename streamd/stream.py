"""
L{Stream}: the push producer of one streaming HTTP response.

Demand flows up: when the client's socket buffer fills, Twisted pauses the producer and
the stream pauses its subscription (a durable source then stops fetching); on resume
it writes what queued and lets the source continue. Messages flow down, each written
once; acknowledgements flow back up: after the write (C{ack = "write"}) or when the
client acknowledges (C{ack = "client"}). A message the stream will not write is given
back to its source (C{nack}), so a durable source loses nothing when a client goes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from streamd.inflight import Inflight
from streamd.interfaces import IConsumer
from streamd.message import Message, SharedBatch
from streamd.outbox import outbox_for
from streamd.slow import SlowReader

#: Bytes written in one chunk at most: big enough to amortise the per-write cost, small
#: enough that a notice written after it (a slow-consumer error, a warning) is not stuck
#: behind much: a stream writes its next chunk only once the last one left the process.
WRITE_BATCH_BYTES = 16 * 1024

@implementer(IPushProducer, IConsumer)
class Stream(Inflight, SlowReader):
    """
    One client's stream.

    @ivar pending: what was taken from the source but not yet written, in the order
        it came: messages, by the delivery they came in (a shared batch queued as it
        is, see L{streamd.slow}), and notices (bytes). Messages queue while the stream
        cannot write (paused by Twisted, or its last write has not yet left the
        process); C{max_pending} and C{max_pending_bytes} bound what of them counts
        (C{own}, C{own_bytes}) under the slow policy.
    @ivar queued: the messages in C{pending}; C{pending_bytes} their payload bytes.
    @ivar accepted: messages taken for this client, which C{limit} bounds (surplus is
        given back at once, so C{limit=N} delivers exactly N).
    @ivar unacked: in client-ack mode, written messages awaiting the client's ack, by id.
    @ivar outbox: the connection's L{streamd.outbox.Outbox} (over TLS a
        C{TLSOutbox}): whether its bytes have left the process. None where that is not
        followed (HTTP/2, tests): a write then counts as sent.
    @ivar inflight: batches written but still in this process; acked to the source
        once the outbox has drained, given back if the connection is lost first. A
        crash in between loses nothing.
    @ivar source_paused: what we last told the subscription, so pause and resume are
        each sent once per change of demand.
    @ivar done: fires when the stream ends normally (klein then finishes the response);
        cancelling it (klein does when the client disconnects) releases everything.
    """

    # Thousands of idle streams are the common case: no per-instance dict.
    __slots__ = (
        "request", "source", "framing", "clock", "limit", "heartbeat", "max_pending",
        "max_pending_bytes", "send_buffer", "slow_policy", "client_ack", "max_unacked",
        "retry", "session", "on_end", "filter", "stall_warnings", "name", "identity",
        "metrics", "_warned", "pending", "queued", "pending_bytes", "own", "own_bytes",
        "unacked", "accepted", "written", "sent", "bytes_written", "dropped", "dropped_total",
        "paused", "source_paused", "subscription", "ended", "end_reason", "started_at",
        "outbox", "inflight", "_cancel_settled", "_last_write", "_starting", "_flushing",
        "_surplus", "_skipped", "_beat", "_judging", "_stall_call", "done", "__weakref__",
    )

    def __init__(
        self,
        request,
        source,
        framing,
        clock,
        *,
        limit: int | None = None,
        heartbeat: float = 15.0,
        max_pending: int = 1000,
        max_pending_bytes: int = 1024 * 1024,
        send_buffer: int = 32 * 1024,
        slow_policy: str = "disconnect",
        ack: str = "write",
        max_unacked: int = 100,
        retry: int = 3000,
        session: str | None = None,
        on_end=None,
        filter=None,
        stall_warnings: bool = False,
        name: str = "",
        metrics=None,
        outbox=None,
    ) -> None:
        self.request = request
        self.source = source
        self.framing = framing
        self.clock = clock
        self.limit = limit
        self.heartbeat = heartbeat
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.send_buffer = send_buffer
        self.slow_policy = slow_policy
        self.client_ack = ack == "client"
        self.max_unacked = max_unacked
        self.retry = retry
        self.session = session
        self.on_end = on_end
        self.filter = filter if filter else None
        self.stall_warnings = stall_warnings
        self.name = name
        self.identity = ""  # who reads it (set by the HTTP layer), for limits and logs
        self.metrics = metrics  # a streamd.metrics.StreamMetrics, or None
        self._warned = False

        # A deque costs 600 bytes: made when something first queues (most streams of
        # a fast reader never queue).
        self.pending: deque = ()
        self.queued = 0  # messages (not notices) in pending
        self.pending_bytes = 0
        self.own = 0  # what of them counts against the bounds
        self.own_bytes = 0
        self.unacked: dict[str, Message] = {}
        self.accepted = 0
        self.written = 0
        self.sent = 0  # written messages whose bytes left the process
        self.bytes_written = 0
        self.dropped = 0  # dropped since the last notice
        self.dropped_total = 0
        self.paused = False
        self.source_paused = False
        self.subscription = None
        self.ended = False
        self.end_reason: str | None = None
        self.started_at = clock.seconds()
        self.outbox = outbox
        self.inflight: list | None = None
        self._cancel_settled = False
        self._last_write = self.started_at
        self._starting = False
        self._flushing = False
        self._surplus: list[Message] = []
        self._skipped: list[Message] = []
        self._beat = None
        self._judging = None  # judging at the end of the reactor turn (slow.py)
        self._stall_call = None  # watching it make progress (slow.py)
        self.done: Deferred[None] = Deferred(self._cancelled)

    # -- life cycle -------------------------------------------------------------

    def start(self, since: str | None = None) -> Deferred[None]:
        """
        Subscribe, then send the status line and headers at once (before any message,
        so a client sees the stream established) and begin writing.

        Subscribing comes first so that a bad C{since} or a source that is down can
        still be answered with a JSON error and its status.
        """
        self._starting = True
        try:
            self.subscription = self.source.subscribe(self, since)
        finally:
            self._starting = False
        request = self.request
        request.setHeader(b"Content-Type", self.framing.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        # nginx and similar proxies buffer responses unless told not to.
        request.setHeader(b"X-Accel-Buffering", b"no")
        if self.session is not None:
            request.setHeader(b"Streamd-Session", self.session.encode())
        if self.outbox is None:
            self.outbox = outbox_for(request, self.send_buffer)
        if self.outbox is not None:
            self.outbox.listen(self)
        request.write(self.framing.preamble(self.retry))
        if self.outbox is not None:
            self.outbox.watch()  # the headers may still be here: hear when they left
        request.registerProducer(self, True)
        if self._surplus:
            self.subscription.nack(self._surplus)
            self._surplus = []
        if self._skipped:
            self._skip(self._skipped)
            self._skipped = []
        self._flush()
        if self.queued and not self.ended:
            self._behind()
        if not self.ended:
            self._update_demand()
            if self.heartbeat:
                self._beat = self.clock.callLater(self.heartbeat, self._heartbeat)
        return self.done

    def _cancelled(self, _d: Deferred) -> None:
        # The client went away (klein cancels the route's Deferred): nothing can be
        # written or unregistered any more; give back what we hold.
        self.transport_lost()

    def stopProducing(self) -> None:
        self.transport_lost()

    def end(self, reason: str, notice: bytes | None = None) -> None:
        """End the stream normally: optional last line, then the terminating chunk."""
        if self.ended:
            return
        self._release(reason)
        if notice:
            self.request.write(notice)
        self.request.unregisterProducer()
        self.done.callback(None)

    def _release(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        giveback = self._queued_messages()
        giveback.extend(self.unacked.values())
        self._forget_queue()
        self.unacked.clear()
        sub = self.subscription
        if sub is not None:
            if giveback:
                sub.nack(giveback)
            if self.inflight:
                # Written, not yet out of the process: the subscription stays until
                # those bytes leave (ack) or the connection is lost (give back).
                self._cancel_settled = True
                if not self.source_paused:
                    self.source_paused = True
                    sub.pause()
            else:
                sub.cancel()
        if self.outbox is not None and not self.inflight:
            self.outbox.forget(self)
        if self.on_end is not None:
            self.on_end(self)

    # -- IConsumer: what the source calls -------------------------------------------

    def deliver(self, messages: list[Message]) -> None:
        if self.ended:
            if self.subscription is not None:
                self.subscription.nack(messages)
            return
        batch = messages if type(messages) is SharedBatch else None
        if self.filter is not None:
            keep = []
            skipped = []
            matches = self.filter.matches
            for m in messages:
                (keep if matches(m) else skipped).append(m)
            if skipped:
                if self.subscription is None:
                    self._skipped.extend(skipped)
                else:
                    self._skip(skipped)
                messages = keep
        if self.limit is not None:
            room = self.limit - self.accepted
            if len(messages) > room:
                surplus = messages[room:]
                messages = messages[:room]
                if self.subscription is None:
                    self._surplus.extend(surplus)
                else:
                    self.subscription.nack(surplus)
        if not messages:
            return
        if not (self.pending or self._starting or self._flushing or self.dropped
                or self.client_ack) and self._can_write():
            encoded = getattr(messages, "encoded", None)
            if encoded is not None and self._write_shared(messages, encoded):
                return
        self.accepted += len(messages)
        run = self._enqueue(messages, batch)
        if not self._starting:
            self._flush()
        if messages is batch and not self.ended:
            self._hold(run)
        if self._starting:
            return
        if self.queued and not self.ended:  # it could not all be written
            if batch is None:
                self._behind()
            else:
                self._judge_soon()  # once the others have it too
        if not self.ended:
            self._update_demand()

    def _write_shared(self, batch: list[Message], encoded: dict) -> bool:
        """
        The common case of a broadcast: nothing queued, free to write, the whole batch
        accepted. The batch's bytes are joined once for every stream with the same
        framing (a L{SharedBatch} from the source) instead of once per stream. A batch
        too large for one write goes the common way (False).
        """
        framing = self.framing
        data = encoded.get(framing)
        if data is None:
            # b"": too big (found by the first stream, without joining it all).
            data = encoded[framing] = _joined(framing, batch)
        if not data:
            return False
        n = len(batch)
        self._warned = False  # nothing is queued: caught up
        self.accepted += n
        self.written += n
        self.bytes_written += len(data)
        self._last_write = self.clock.seconds()
        self._flushing = True
        try:
            self.request.write(data)
        finally:
            self._flushing = False
        if self.metrics is not None:
            self.metrics.out.inc(n)
            self.metrics.bytes.inc(len(data))
        self._ack_when_sent(batch)
        if not self.ended:
            self._maybe_finish()
        if not self.ended:
            self._update_demand()
        return True

    def _queue(self) -> deque:
        if type(self.pending) is tuple:
            self.pending = deque()
        return self.pending

    def _skip(self, messages: list[Message]) -> None:
        # The filter rejected these before they cost this client anything: the source
        # decides what that means (a queue gives them back for other clients).
        skip = getattr(self.subscription, "skip", None) or self.subscription.nack
        skip(messages)

    def gap(self, info: dict[str, Any]) -> None:
        if not self.ended:
            self._queue().append(self.framing.control("gap", info))
            if not self._starting:
                self._flush()

    def source_ended(self, reason: str) -> None:
        if reason == "shutdown":
            notice = self.framing.control("shutdown", True)
        else:
            notice = self.framing.control("end", {"reason": reason})
        self._flush()
        self.end(reason, notice)

    # -- IPushProducer: what the transport calls -------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        self._update_demand()

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()
        if not self.ended:
            self._update_demand()

    # -- client acknowledgement ------------------------------------------------------

    def client_acked(self, ids: list[str]) -> tuple[int, int]:
        """Acknowledge these ids; return (acknowledged, unknown)."""
        acked = []
        for mid in ids:
            msg = self.unacked.pop(mid, None)
            if msg is not None:
                acked.append(msg)
        if acked and self.subscription is not None:
            self.subscription.ack(acked)
        if not self.ended:
            self._flush()  # acks make room in the window
            if not self.ended:
                self._update_demand()
                self._maybe_finish()
        return len(acked), len(ids) - len(acked)

    # -- internals ---------------------------------------------------------------

    def _can_write(self) -> bool:
        """Not paused, and the last write has left the process (so little waits here)."""
        if self.paused or self.ended:
            return False
        outbox = self.outbox
        return outbox is None or outbox.clear()

    def _wants_more(self) -> bool:
        if not self._can_write():
            return False
        if self.limit is not None and self.accepted >= self.limit:
            return False
        return not (self.client_ack and len(self.unacked) + self.queued >= self.max_unacked)

    def _update_demand(self) -> None:
        want = self._wants_more()
        if want == self.source_paused:  # a change of demand
            self.source_paused = not want
            if want:
                self.subscription.resume()
            else:
                if self.metrics is not None and not self._can_write():
                    self.metrics.pauses.inc()  # the client is behind (not a limit)
                self.subscription.pause()

    def _flush(self) -> None:
        if self._flushing or self.ended:
            return
        self._flushing = True
        try:
            pending = self.pending
            framing = self.framing
            while pending and self._can_write():
                # In client-ack mode at most max_unacked messages are outstanding: the
                # rest wait here (written once acks make room), not in the socket.
                room = self.max_unacked - len(self.unacked) if self.client_ack else -1
                if room == 0:
                    break
                parts = []
                if self.dropped:
                    parts.append(framing.control("dropped", self.dropped))
                    self.dropped = 0
                batch, size = self._take(parts, room, WRITE_BATCH_BYTES)
                self.written += len(batch)
                self.bytes_written += size
                self._last_write = self.clock.seconds()
                if self.client_ack:
                    for m in batch:
                        self.unacked[m.id] = m
                # The write may not all leave at once (the kernel's buffer is full), or
                # may pause us (Twisted's buffer passed 64 KiB): the loop then stops
                # and the rest waits in pending.
                self.request.write(b"".join(parts))
                if batch:
                    if self.metrics is not None:
                        self.metrics.out.inc(len(batch))
                        self.metrics.bytes.inc(size)
                    if not self.client_ack:
                        self._ack_when_sent(batch)
        finally:
            self._flushing = False
        if self._warned and self._percent_full() < 50:
            self._warned = False  # caught up: warn again next time it falls behind
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if (
            self.limit is not None
            and self.accepted >= self.limit
            and not self.pending
            and not self.unacked
            and not self.ended
            and not self._starting
            and self.subscription is not None
        ):
            self.end("limit")

    def _heartbeat(self) -> None:
        if self.ended:
            return
        now = self.clock.seconds()
        due = self._last_write + self.heartbeat
        if now >= due:
            if self._can_write() and not self.pending:  # a keep-alive, never a queue-jumper
                self.request.write(self.framing.heartbeat(now))
            self._last_write = now
            due = now + self.heartbeat
        self._beat = self.clock.callLater(due - now, self._heartbeat)


def _joined(framing, batch: list[Message]) -> bytes:
    """The frames of C{batch} joined, or b"" if that is more than one write."""
    frames = []
    size = 0
    for m in batch:
        frame = framing.message(m)
        size += len(frame)
        if size > WRITE_BATCH_BYTES:
            return b""
        frames.append(frame)
    return b"".join(frames)
