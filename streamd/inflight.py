"""
What a stream wrote and has not yet acknowledged to its source.

L{Inflight} (C{ack = "write"}): what is still in this process. Acknowledged only once
the connection's outbox (L{streamd.outbox.Outbox}; over TLS a
L{streamd.outbox.TLSOutbox}, for which the bytes have left once their ciphertext has)
says those bytes left, given back to the source if the connection is lost first: a
crash in between loses nothing. The outbox reports a drain before the stream may write
again, so what a drain acknowledges was all written before it.

L{ClientAcks} (C{ack = "client"}): what the client has not yet acknowledged
(C{POST /streams/NAME/ack}), given back if the stream ends first.
"""

from __future__ import annotations

from typing import Any

from streamd.message import Message
from streamd.outbox import outbox_for


class Inflight:
    """
    The batches one stream wrote that have not yet left the process.

    @ivar subscription: whom to acknowledge (or give back) them to; set when the stream
        subscribes.
    @ivar outbox: whether the connection's bytes have left the process; None where that
        is not followed (HTTP/2, tests): a write then counts as sent.
    @ivar listener: the stream the outbox tells (C{drained}, C{transport_lost}), from
        L{follow} until nothing it wrote is held after it ended.
    @ivar batches: the batches held, oldest first (None while there are none: most
        writes leave at once).
    @ivar sent: messages acknowledged: their bytes left the process.
    @ivar closing: the stream ended while some were held: the subscription is cancelled
        once they settle (acknowledged or given back), not before.
    """

    __slots__ = ("subscription", "outbox", "listener", "batches", "sent", "closing")

    def __init__(self, outbox=None) -> None:
        self.subscription: Any = None
        self.outbox = outbox
        self.listener: Any = None
        self.batches: list[list[Message]] | None = None
        self.sent = 0
        self.closing = False

    def __bool__(self) -> bool:
        return bool(self.batches)

    def follow(self, request, send_buffer: int, listener):
        """
        Follow the connection's outbox (the one given, else C{request}'s; None over
        HTTP/2): C{listener} hears from it. Returns the outbox.
        """
        if self.outbox is None:
            self.outbox = outbox_for(request, send_buffer)
        if self.outbox is not None:
            self.outbox.listen(listener)
            self.listener = listener
        return self.outbox

    def written(self, batch: list[Message]) -> None:
        """C{batch} was written: acknowledged now if its bytes left, else once they do."""
        outbox = self.outbox
        if outbox is None or outbox.clear():
            self.sent += len(batch)
            self.subscription.ack(batch)
            return
        if self.batches is None:
            self.batches = []
        self.batches.append(batch)

    def drained(self) -> None:
        """Everything written to the connection has left the process."""
        batches, self.batches = self.batches, None
        if batches:
            sub = self.subscription
            for batch in batches:
                self.sent += len(batch)
                sub.ack(batch)
        if self.closing:
            self._settled()

    def lost(self) -> None:
        """The connection is gone: what is still here will never leave."""
        batches, self.batches = self.batches, None
        if batches and self.subscription is not None:
            self.subscription.nack([m for batch in batches for m in batch])
        if self.closing:
            self._settled()

    def close(self) -> bool:
        """
        The stream ended: cancel the subscription and stop following the outbox now if
        nothing is held (True), or once what is held settles (False: the caller pauses
        the source meanwhile).
        """
        if self.batches:
            self.closing = True
            return False
        if self.subscription is not None:
            self.subscription.cancel()
        self._unfollow()
        return True

    def _settled(self) -> None:
        self.closing = False
        self.subscription.cancel()
        self._unfollow()

    def _unfollow(self) -> None:
        if self.listener is not None:
            self.outbox.forget(self.listener)
            self.listener = None


class ClientAcks:
    """
    The messages written to a client that it has not yet acknowledged, by id: at most
    C{window} (C{max_unacked}) of them; the rest wait in the stream's queue, not in the
    socket.
    """

    __slots__ = ("window", "unacked")

    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self.unacked)

    def room(self) -> int:
        """How many more messages may go out unacknowledged."""
        return self.window - len(self.unacked)

    def written(self, batch: list[Message]) -> None:
        unacked = self.unacked
        for m in batch:
            unacked[m.id] = m

    def acked(self, ids: list[str]) -> list[Message]:
        """The messages of these ids that were awaiting an ack (unknown ids: none)."""
        pop = self.unacked.pop
        return [m for m in (pop(mid, None) for mid in ids) if m is not None]

    def clear(self) -> list[Message]:
        """Forget every message awaiting an ack; return them (to give back)."""
        messages = list(self.unacked.values())
        self.unacked.clear()
        return messages
