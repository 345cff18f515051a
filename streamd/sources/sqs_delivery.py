"""
How an C{sqs} stream's received batches reach its clients (see L{streamd.sources.sqs}
for the rules): the subscriptions, which of them can take a batch now (demand), and
which one gets it.

C{delivery = "queue"} hands each batch to one client (round robin over those not
paused), and offers a message a client's filter refused to another one; C{"broadcast"}
hands it to every connected client. What is held, and the SQS calls that settle it, are
L{streamd.sources.sqs_held}'s.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from streamd.interfaces import ISubscription
from streamd.message import Message, SharedBatch
from streamd.sources.sqs_held import HeldMessages

#: Seconds a message that no connected client's filter wants stays hidden before SQS
#: offers it again (visibility 0 would have streamd receive and return it in a loop).
SKIP_DELAY = 5


@implementer(ISubscription)
class SQSSubscription:
    """One stream's attachment; C{paused} is what the stream last asked for."""

    __slots__ = ("delivery", "consumer", "paused")

    def __init__(self, delivery: Delivery, consumer) -> None:
        self.delivery = delivery
        self.consumer = consumer
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.delivery.wake()

    def ack(self, messages) -> None:
        self.delivery.settle(self, messages, written=True)

    def nack(self, messages) -> None:
        self.delivery.settle(self, messages, written=False)

    def skip(self, messages) -> None:
        self.delivery.skip(self, messages)

    def cancel(self) -> None:
        self.delivery.leave(self)


class Delivery:
    """
    The clients of one SQS stream and the batches on their way to them.

    @ivar subscribers: the subscriptions attached, in the order they came.
    @ivar closed: the source is stopping: nothing more is handed over (what is held is
        given back by the source).
    """

    def __init__(self, held: HeldMessages, broadcast: bool, visibility: int) -> None:
        """
        @param held: what the stream holds of its queue, and settles.
        @param broadcast: C{delivery = "broadcast"} (else C{"queue"}).
        @param visibility: the queue's visibility timeout (seconds), which bounds how
            long a message nobody wants is hidden.
        """
        self.held = held
        self.broadcast = broadcast
        self.visibility = visibility
        self.subscribers: list[SQSSubscription] = []
        self.closed = False
        self._next = 0  # round-robin position (queue delivery)
        self._waiters: list[Deferred] = []

    def add(self, consumer) -> SQSSubscription:
        """Attach a stream (which a poller may now receive for)."""
        sub = SQSSubscription(self, consumer)
        self.subscribers.append(sub)
        self.wake()
        return sub

    def close(self, reason: str) -> None:
        """Hand nothing more over, and end every stream with C{reason}."""
        self.closed = True
        self.wake()
        for sub in list(self.subscribers):
            # The stream writes what it can, acks that and gives back the rest.
            sub.consumer.source_ended(reason)

    # -- demand ---------------------------------------------------------------------

    def ready(self) -> list[SQSSubscription]:
        """The subscriptions that can take a batch now (not paused)."""
        return [s for s in self.subscribers if not s.paused]

    def wake(self) -> None:
        """Demand changed (or the queue came up, or the source stops): tell the waiters."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def changed(self) -> Deferred:
        """Fires at the next change of demand (subscribe, resume, cancel, up, stop)."""
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters
                               else None)
        self._waiters.append(d)
        return d

    async def dispatch(self, batch: list[Message]) -> None:
        """
        Hand a batch that a poller received (and C{held} holds) to a client, or to all of them
        (broadcast); wait, holding it, while none can take it, and give it back if all
        of them leave.
        """
        while True:
            if self.closed:
                return  # the source's stop() gives back everything held
            if not self.subscribers:
                self.held.give_back(batch)
                return
            ready = self.ready()
            if ready:
                break
            await self.changed()
        if self.broadcast:
            targets = list(self.subscribers)
            batch = SharedBatch(batch)  # joined once for every stream that keeps up
        else:
            self._next = (self._next + 1) % len(ready)
            targets = [ready[self._next]]
        self.held.hand(batch, targets)
        for sub in targets:
            # A stream may write, ack, give back or even end during deliver.
            if sub in self.subscribers:
                sub.consumer.deliver(batch)
            else:
                self.settle(sub, batch, written=False)

    # -- what the streams say ---------------------------------------------------------

    def settle(self, sub: SQSSubscription, messages: Iterable[Message], written: bool) -> None:
        """A stream acked (C{written}) or gave back these messages."""
        self.held.settle(sub, messages, written)

    def skip(self, sub: SQSSubscription, messages: Iterable[Message]) -> None:
        """A stream's filter refused these messages."""
        if self.broadcast:
            # Filtered out counts as handled for this client, like written: a message
            # every client filtered out is deleted rather than received again forever.
            self.settle(sub, messages, written=True)
            return
        # Queue delivery: offer each to another ready client whose filter has not
        # refused it yet; hide it for a while when none is left.
        others = [s for s in self.ready() if s is not sub]
        offers: dict[SQSSubscription, list[Message]] = {}
        unwanted = []
        for msg in messages:
            held = self.held.get(msg.handle)
            if held is None or sub not in held.owners:
                continue
            held.owners.discard(sub)
            if held.skipped_by is None:
                held.skipped_by = set()
            held.skipped_by.add(sub)
            target = next((s for s in others if s not in held.skipped_by), None)
            if target is None:
                unwanted.append(msg.handle)
            else:
                held.owners.add(target)
                offers.setdefault(target, []).append(msg)
        if unwanted:
            self.held.hide(unwanted, min(SKIP_DELAY, self.visibility))
        for target, msgs in offers.items():
            if target in self.subscribers:
                target.consumer.deliver(msgs)
            else:
                self.settle(target, msgs, written=False)

    def leave(self, sub: SQSSubscription) -> None:
        """A stream ended (its subscription's C{cancel()})."""
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        # What the stream neither acked nor gave back yet waits for its acks (a
        # while: sqs_held.LINGER), then is given back.
        self.held.leave(sub)
        self.wake()  # a poller holding a batch may now give it back
