"""
What a stream wrote that is still in this process: acknowledged to the source only once
the connection's outbox (L{streamd.outbox.Outbox}; over TLS a L{streamd.outbox.TLSOutbox},
for which the bytes have left once their ciphertext has) says those bytes left, given
back to the source if the connection is lost first. A crash in between loses nothing.
The outbox reports a drain before the stream may write again, so what a drain
acknowledges was all written before it.

L{Inflight} is a part of L{streamd.stream.Stream}, kept apart because it is its own
concern: it is what the outbox calls.
"""

from __future__ import annotations

from streamd.message import Message


class Inflight:
    """The outbox-facing half of a L{streamd.stream.Stream} (which holds the state)."""

    __slots__ = ()

    def drained(self) -> None:
        """Everything written to the connection has left the process."""
        inflight, self.inflight = self.inflight, None
        if inflight:
            sub = self.subscription
            for batch in inflight:
                self.sent += len(batch)
                sub.ack(batch)
        if self.ended:
            self._settled()
            return
        if self._flushing:
            return
        if self.pending:
            self._flush()
            if self.queued and not self.ended:
                self._behind()
        if not self.ended:
            self._update_demand()

    def transport_lost(self) -> None:
        """The connection is gone: what is still in this process will never leave."""
        inflight, self.inflight = self.inflight, None
        if inflight and self.subscription is not None:
            self.subscription.nack([m for batch in inflight for m in batch])
        if self.ended:
            self._settled()
        else:
            self._release("client gone")

    def _settled(self) -> None:
        if self.outbox is not None:
            self.outbox.forget(self)
        if self._cancel_settled:
            self._cancel_settled = False
            self.subscription.cancel()

    def _ack_when_sent(self, batch: list[Message]) -> None:
        outbox = self.outbox
        if outbox is None or outbox.clear():
            self.sent += len(batch)
            self.subscription.ack(batch)
            return
        if self.inflight is None:
            self.inflight = []
        self.inflight.append(batch)
