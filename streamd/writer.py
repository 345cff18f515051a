"""
L{Writer}: how one stream's messages become writes to its response, and the count of
what it wrote. A shared batch's bytes are joined once for every stream with the same
framing; a queue goes out in chunks of at most C{WRITE_BATCH_BYTES}. Each written batch
is handed on to be acknowledged: to L{streamd.inflight.Inflight} (C{ack = "write"}:
once its bytes leave the process) or to L{streamd.inflight.ClientAcks}.
"""

from __future__ import annotations

from streamd.message import Message

#: Bytes written in one chunk at most: big enough to amortise the per-write cost, small
#: enough that a notice written after it (a slow-consumer error, a warning) is not stuck
#: behind much: a stream writes its next chunk only once the last one left the process.
WRITE_BATCH_BYTES = 16 * 1024


class Writer:
    """
    @ivar stream: asked C{can_write()} before each chunk (not paused, the last write
        left the process).
    @ivar flushing: a write is under way. Writing may call back into the stream (a
        pause, a drain, a lost connection); the stream then writes nothing more until
        this one returns.
    @ivar written: messages written; C{bytes_written}, their bytes with the notices'.
    """

    __slots__ = ("request", "framing", "clock", "pending", "slow", "inflight", "acks",
                 "beat", "metrics", "stream", "flushing", "written", "bytes_written")

    def __init__(self, request, framing, clock, pending, slow, inflight, acks, beat,
                 metrics, stream) -> None:
        self.request = request
        self.framing = framing
        self.clock = clock
        self.pending = pending
        self.slow = slow
        self.inflight = inflight
        self.acks = acks
        self.beat = beat
        self.metrics = metrics
        self.stream = stream
        self.flushing = False
        self.written = self.bytes_written = 0

    def shared(self, batch: list[Message], encoded: dict) -> bool:
        """
        Write all of C{batch}, a L{streamd.message.SharedBatch}, at once: the common
        case of a broadcast (nothing queued, free to write, all of it taken). Its
        C{encoded} holds its bytes per framing, joined by the first stream that needed
        them. A batch too large for one write goes the common way (False).
        """
        framing = self.framing
        data = encoded.get(framing)
        if data is None:
            # b"": too big (found by the first stream, without joining it all).
            data = encoded[framing] = _joined(framing, batch)
        if not data:
            return False
        n = len(batch)
        self.slow.warned = False  # nothing is queued: caught up
        self.written += n
        self.bytes_written += len(data)
        self.beat.last_write = self.clock.seconds()
        self.flushing = True
        try:
            self.request.write(data)
        finally:
            self.flushing = False
        if self.metrics is not None:
            self.metrics.out.inc(n)
            self.metrics.bytes.inc(len(data))
        self.inflight.written(batch)
        return True

    def flush(self) -> None:
        """Write what is queued, a chunk at a time, while the stream can write."""
        pending, framing, acks = self.pending, self.framing, self.acks
        self.flushing = True
        try:
            while pending.items and self.stream.can_write():
                # In client-ack mode at most max_unacked messages are outstanding: the
                # rest wait here (written once acks make room), not in the socket.
                room = acks.room() if acks is not None else -1
                if room == 0:
                    break
                parts: list[bytes] = []
                batch, size = pending.take(parts, framing, room, WRITE_BATCH_BYTES)
                self.written += len(batch)
                self.bytes_written += size
                self.beat.last_write = self.clock.seconds()
                if acks is not None:
                    acks.written(batch)
                # The write may not all leave at once (the kernel's buffer is full), or
                # may pause us (Twisted's buffer passed 64 KiB): the loop then stops
                # and the rest waits in pending.
                self.request.write(b"".join(parts))
                if batch:
                    if self.metrics is not None:
                        self.metrics.out.inc(len(batch))
                        self.metrics.bytes.inc(size)
                    if acks is None:
                        self.inflight.written(batch)
        finally:
            self.flushing = False
        if self.slow.warned:
            self.slow.caught_up()


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
