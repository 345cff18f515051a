"""
L{Stream}: the push producer of one streaming HTTP response.

Demand flows up: when the client's socket buffer fills, Twisted pauses the producer and
the stream pauses its subscription (a durable source then stops fetching); on resume
it writes what queued and lets the source continue. Messages flow down, each written
once; acknowledgements flow back up: once the bytes left the process (C{ack = "write"})
or when the client acknowledges (C{ack = "client"}). A message the stream will not
write is given back to its source (C{nack}), so a durable source loses nothing when a
client goes.

A stream composes its parts, each with its own state: L{Intake} (what of a delivery it
takes: filter, limit), L{Pending} (what waits to be written), L{Writer} (the writes and
their count), L{Inflight} (written, not yet out of the process), L{ClientAcks} (written,
not yet acknowledged by the client), L{SlowReader} (the policy for a reader that falls
behind) and L{Heartbeat}. What is left here is the life cycle and the demand.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from streamd.heartbeat import Heartbeat
from streamd.inflight import ClientAcks, Inflight
from streamd.intake import Intake
from streamd.interfaces import IConsumer
from streamd.message import Message, SharedBatch
from streamd.pending import Pending
from streamd.slow import SlowReader, close_when_read
from streamd.writer import Writer

__all__ = ["Stream", "StreamOptions"]


@attrs.frozen
class StreamOptions:
    """
    What one reader asked for, with its stream's settings (L{streamd.config.StreamKeys}):
    built once per request, by L{streamd.web.streaming.OpenStreams.open}.

    @ivar limit: messages to deliver, then the end (None: no end).
    @ivar filter: None, or what has C{matches(message) -> bool}.
    @ivar ack: C{"write"} (acknowledged once the bytes left the process) or C{"client"}.
    @ivar session: names a client-ack stream for C{POST /streams/NAME/ack}.
    @ivar name: the stream's name, for logs and metrics.
    """

    limit: int | None = None
    heartbeat: float = 15.0
    max_pending: int = 1000
    max_pending_bytes: int = 1024 * 1024
    send_buffer: int = 32 * 1024
    slow_policy: str = "disconnect"
    ack: str = "write"
    max_unacked: int = 100
    retry: int = 3000
    session: str | None = None
    filter: Any = attrs.field(default=None, converter=lambda f: f if f else None)
    stall_warnings: bool = False
    name: str = ""


_DEFAULTS = StreamOptions()


@implementer(IPushProducer, IConsumer)
class Stream:
    """
    One client's stream.

    @ivar acks: with C{ack=client}, the L{ClientAcks}; None otherwise.
    @ivar source_paused: what we last told the subscription, so pause and resume are
        each sent once per change of demand.
    @ivar done: fires when the stream ends normally (the response is then finished,
        L{streamd.web.streaming.responding}); cancelling it releases everything.
    """

    # Thousands of idle streams are the common case: no per-instance dict.
    __slots__ = (
        "request", "source", "framing", "clock", "options", "on_end", "identity", "metrics",
        "intake", "pending", "writer", "inflight", "acks", "slow", "beat", "outbox", "done",
        "subscription", "paused", "source_paused", "_starting", "ended", "end_reason",
        "started_at", "__weakref__")

    def __init__(self, request, source, framing, clock, options: StreamOptions | None = None,
                 *, on_end=None, metrics=None, outbox=None, **settings) -> None:
        """@param settings: L{StreamOptions} fields, instead of (or over) C{options}."""
        if options is None or settings:
            options = attrs.evolve(options or _DEFAULTS, **settings)
        self.request, self.source, self.framing, self.clock = request, source, framing, clock
        self.options, self.on_end, self.metrics = options, on_end, metrics
        self.identity = ""  # who reads it (set by the HTTP layer), for limits and logs
        self.intake = Intake(options.filter, options.limit)
        self.pending = Pending()
        self.inflight = Inflight(outbox)
        self.acks = ClientAcks(options.max_unacked) if options.ack == "client" else None
        self.slow = SlowReader(self, self.pending, clock, options, metrics)
        self.beat = Heartbeat(clock, options.heartbeat, self)
        self.writer = Writer(request, framing, clock, self.pending, self.slow, self.inflight,
                             self.acks, self.beat, metrics, self)
        self.outbox, self.started_at = outbox, self.beat.last_write
        self.subscription: Any = None  # an ISubscription, once start() subscribed
        self.end_reason: str | None = None
        self.paused = self.source_paused = self._starting = self.ended = False
        self.done: Deferred[None] = Deferred(self.transport_lost)

    # What the parts and the options hold, for logs, the status and tests.
    accepted = property(attrgetter("intake.accepted"), doc="Messages taken (C{limit}).")
    written = property(attrgetter("writer.written"), doc="Messages written.")
    bytes_written = property(attrgetter("writer.bytes_written"))
    queued = property(attrgetter("pending.queued"), doc="Messages waiting to be written.")
    pending_bytes = property(attrgetter("pending.bytes"), doc="Their payload bytes.")
    own = property(attrgetter("pending.own"), doc="What of them counts against the bounds.")
    dropped_total = property(attrgetter("pending.dropped_total"))
    sent = property(attrgetter("inflight.sent"), doc="Written messages that left the process.")
    name = property(attrgetter("options.name"))
    session = property(attrgetter("options.session"))
    heartbeat = property(attrgetter("options.heartbeat"))

    def start(self, since: str | None = None) -> Deferred[None]:
        """
        Subscribe (first: a bad C{since} or a source that is down is then answered with
        its error), send the head at once (the client sees the stream) and begin.
        """
        self._starting = True
        try:
            self.subscription = self.inflight.subscription = self.source.subscribe(self, since)
        finally:
            self._starting = False
        ready = getattr(self.subscription, "ready", None)
        if ready is None or ready.called:
            self._begin()
        else:  # subscribed across a socket (workers): the head waits (RemoteSubscription)
            ready.addCallback(lambda _: None if self.ended else self._begin())
        return self.done

    def _begin(self) -> None:
        _begin_response(self)
        self.intake.subscribed(self.subscription)
        self._flush()
        if self.pending.queued and not self.ended:
            self.slow.behind()
        if not self.ended:
            self._update_demand()
            self.beat.start()

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
        self.ended, self.end_reason = True, reason
        self.beat.stop()
        self.slow.stop()
        giveback = self.pending.clear()
        if self.acks:
            giveback.extend(self.acks.clear())
        if giveback and self.subscription is not None:
            self.subscription.nack(giveback)
        # Written, not yet out of the process: the subscription stays until those bytes
        # leave (ack) or the connection is lost (give back).
        if not self.inflight.close() and not self.source_paused:
            self.source_paused = True
            self.subscription.pause()
        if self.on_end is not None:
            self.on_end(self)

    def drained(self) -> None:
        """Everything written to the connection has left the process."""
        self.inflight.drained()
        if not (self.ended or self.writer.flushing):
            if self.pending.items:
                self._flush()
                if self.pending.queued and not self.ended:
                    self.slow.behind()
            if not self.ended:
                self._update_demand()

    def transport_lost(self, _cancelled: Deferred | None = None) -> None:
        """The connection is gone (also: C{done} was cancelled): nothing here leaves."""
        self.inflight.lost()
        if not self.ended:
            self._release("client gone")

    stopProducing = transport_lost

    def notify(self, kind: str, info: dict[str, Any]) -> None:
        """Write a notice now, straight to the transport, ahead of what is queued."""
        self.request.write(self.framing.control(kind, info))

    def slow_consumer(self, info: dict[str, Any]) -> None:
        """End with the slow-consumer error, ahead of all that is queued, and close."""
        transport = getattr(self.request, "transport", None)
        self.end("slow consumer", self.framing.control("error", info))
        close_when_read(self.clock, transport, self.outbox)

    # -- IConsumer: what the source calls -------------------------------------------

    def deliver(self, messages: list[Message]) -> None:
        if self.ended:
            if self.subscription is not None:
                self.subscription.nack(messages)
            return
        batch = messages if type(messages) is SharedBatch else None
        intake, pending, writer = self.intake, self.pending, self.writer
        if intake.selective:
            messages = intake.take(messages)
        else:
            intake.accepted += len(messages)
        if not messages:
            return
        if not (pending.items or self._starting or writer.flushing or pending.dropped
                or self.acks is not None) and self.can_write():
            encoded = getattr(messages, "encoded", None)
            if encoded is not None and writer.shared(messages, encoded):
                self._maybe_finish()
                if not self.ended:
                    self._update_demand()
                return
        run = pending.add(messages, batch)
        if not self._starting:
            self._flush()
        if messages is batch and not self.ended:
            pending.hold(run)
        if self._starting or self.ended:
            return
        if pending.queued:  # it could not all be written
            if batch is None:
                self.slow.behind()
            else:
                self.slow.judge_soon()  # once the others have it too
        if not self.ended:
            self._update_demand()

    def gap(self, info: dict[str, Any]) -> None:
        if not self.ended:
            self.pending.notice(self.framing.control("gap", info))
            if not self._starting:
                self._flush()

    def source_ended(self, reason: str) -> None:
        control = self.framing.control
        notice = control("shutdown", True) if reason == "shutdown" else control(
            "end", {"reason": reason})
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

    def client_acked(self, ids: list[str]) -> tuple[int, int]:
        """Acknowledge these ids (C{ack=client}); return (acknowledged, unknown)."""
        acked = self.acks.acked(ids) if self.acks is not None else []
        if acked and self.subscription is not None:
            self.subscription.ack(acked)
        if not self.ended:
            self._flush()  # acks make room in the window
            if not self.ended:
                self._update_demand()
                self._maybe_finish()
        return len(acked), len(ids) - len(acked)

    def can_write(self) -> bool:
        """Not paused, and the last write has left the process (so little waits here)."""
        if self.paused or self.ended:
            return False
        outbox = self.outbox
        return outbox is None or outbox.clear()

    def _update_demand(self) -> None:
        intake, acks = self.intake, self.acks
        want = self.can_write() and not (
            intake.full() or acks is not None and acks.room() <= self.pending.queued)
        if want == self.source_paused:  # a change of demand
            self.source_paused = not want
            if want:
                self.subscription.resume()
            else:
                if self.metrics is not None and not self.can_write():
                    self.metrics.pauses.inc()  # the client is behind (not a limit)
                self.subscription.pause()

    def _flush(self) -> None:
        if not (self.writer.flushing or self.ended):
            self.writer.flush()
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if (self.intake.full() and not self.pending
                and not self.acks and not self.ended and not self._starting
                and self.subscription is not None):
            self.end("limit")

    def keep_alive(self, now: float) -> None:
        """A heartbeat is due (L{Heartbeat}): a keep-alive line, never a queue-jumper."""
        if self.can_write() and not self.pending:
            self.request.write(self.framing.heartbeat(now))


def _begin_response(stream: Stream) -> None:
    """The head, then the framing's preamble (SSE: the C{retry} hint); produce."""
    request, framing, options = stream.request, stream.framing, stream.options
    stream.outbox = outbox = stream.inflight.follow(request, options.send_buffer, stream)
    request.setHeader(b"Content-Type", framing.content_type)
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Accel-Buffering", b"no")  # or nginx and others buffer it
    if options.session is not None:
        request.setHeader(b"Streamd-Session", options.session.encode())
    request.write(framing.preamble(options.retry))
    if outbox is not None:
        outbox.watch()  # the headers may still be here: hear when they left
    request.registerProducer(stream, True)
