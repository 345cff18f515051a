"""
What an C{sqs} stream holds of its queue (see L{streamd.sources.sqs} for the delivery
rules): the messages received and not yet deleted or given back, who owns each, and
the batched SQS calls that settle them.

A message is deleted once every subscription it was handed to has acked or given it
back, if at least one wrote it; otherwise it is given back (made visible again at
once). Give-backs go out at the end of the reactor turn, and so do full batches of
deletes; a partial batch of deletes waits L{ACK_LINGER} for more acks. Messages held
longer than half the visibility timeout have it extended.

A subscription that leaves (C{cancel()}) may still settle what it was handed: what it
has not settled stays held (hidden, its receipt handle valid) until it does, for at most
L{LINGER}, and is given back then. An ack after that is ignored (at least once: the
message may come again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.logger import Logger

from streamd.message import Message
from streamd.sqs.aws import SQSError
from streamd.sqs.client import BATCH

log = Logger()

#: Seconds a partial batch of deletes waits for more acks before it is sent.
ACK_LINGER = 0.05

#: Seconds a subscription that left keeps what it has not settled, for acks still to
#: come, before it is given back (as an AMQP stream keeps its channel).
LINGER = 30.0


class Held:
    """
    A received message not yet deleted or given back.

    @ivar owners: the subscriptions it was handed to that have not settled it yet.
    @ivar written: some owner wrote it (it is deleted, not given back, once settled).
    @ivar skipped_by: queue delivery: the subscriptions whose filter refused it.
    """

    __slots__ = ("message", "owners", "written", "extended_at", "skipped_by")

    def __init__(self, message: Message, now: float) -> None:
        self.message = message
        self.owners: set[Any] = set()
        self.written = False
        self.extended_at = now
        self.skipped_by: set[Any] | None = None


class HeldMessages:
    """
    The messages one stream holds, by receipt handle, and the SQS calls that settle
    them (deletes, give-backs, visibility changes), batched.

    @ivar entries: receipt handle -> L{Held}: what L{give_back_all} gives back and
        what the visibility extender keeps hidden.
    @param on_error: called with no argument when an SQS call fails (for metrics).
    """

    def __init__(self, name: str, client, queue_url: str, clock, visibility: int,
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.name = name
        self.client = client
        self.queue_url = queue_url
        self.clock = clock
        self.visibility = visibility
        self.on_error = on_error
        self.entries: dict[str, Held] = {}
        self._to_delete: list[str] = []
        self._to_release: list[str] = []
        self._flush_call = None
        self._extend_call = None
        self._ops: set = set()
        #: owners that left, with the call that gives back what they still hold
        self._leaving: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # -- holding ------------------------------------------------------------------

    def hold(self, message: Message) -> None:
        self.entries[message.handle] = Held(message, self.clock.seconds())

    def get(self, handle: str) -> Held | None:
        return self.entries.get(handle)

    def hand(self, messages: Iterable[Message], owners: Iterable[Any]) -> None:
        """C{owners} now hold C{messages} (each settles them with L{settle})."""
        owners = list(owners)
        for msg in messages:
            held = self.entries.get(msg.handle)
            if held is not None:
                held.owners.update(owners)

    def owned_by(self, owner) -> list[Message]:
        return [h.message for h in self.entries.values() if owner in h.owners]

    def settle(self, owner, messages: Iterable[Message], written: bool) -> None:
        """C{owner} wrote (acked) or gave back C{messages}; the last owner decides."""
        entries = self.entries
        for msg in messages:
            held = entries.get(msg.handle)
            if held is None or owner not in held.owners:
                continue
            held.owners.discard(owner)
            if written:
                held.written = True
            if not held.owners:
                del entries[msg.handle]
                (self._to_delete if held.written else self._to_release).append(msg.handle)
        if owner in self._leaving and not self.owned_by(owner):
            self._leaving.pop(owner).cancel()  # it settled everything: done waiting
        self._schedule_flush()

    def leave(self, owner) -> None:
        """
        C{owner} left: what it has not settled waits for its acks (or nacks), and is
        given back after L{LINGER}.
        """
        if owner not in self._leaving and self.owned_by(owner):
            self._leaving[owner] = self.clock.callLater(LINGER, self._abandon, owner)

    def _abandon(self, owner) -> None:
        del self._leaving[owner]
        self.settle(owner, self.owned_by(owner), written=False)

    def give_back(self, messages: Iterable[Message]) -> None:
        """Make C{messages} visible again at once, whoever holds them."""
        for msg in messages:
            if self.entries.pop(msg.handle, None) is not None:
                self._to_release.append(msg.handle)
        self._schedule_flush()

    def give_back_all(self) -> None:
        """Settle everything held (stop): delete what was written, give back the rest."""
        for handle, held in self.entries.items():
            (self._to_delete if held.written else self._to_release).append(handle)
        self.entries.clear()
        for call in self._leaving.values():
            call.cancel()
        self._leaving.clear()
        self.flush()

    def release(self, handles: Iterable[str]) -> None:
        """Give back messages that were never held (received after stop began)."""
        self._to_release.extend(handles)
        self._schedule_flush()

    def hide(self, handles: list[str], seconds: int) -> None:
        """Keep messages no longer held out of sight for C{seconds}."""
        for handle in handles:
            self.entries.pop(handle, None)
        self._track(self._change(handles, seconds))

    # -- SQS calls ----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # Give-backs go out at the end of this reactor turn (redelivery "at once"), and so
        # do full batches of deletes; a partial batch of deletes waits a moment for more
        # acks, which saves calls when a slow client acks a few messages at a time.
        if self._to_release or len(self._to_delete) >= BATCH:
            delay = 0.0
        elif self._to_delete:
            delay = ACK_LINGER
        else:
            return
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(delay, self.flush)
        elif delay == 0.0:
            self._flush_call.reset(0)

    def flush(self) -> None:
        """Send the deletes and give-backs waiting, now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        deletes, self._to_delete = self._to_delete, []
        releases, self._to_release = self._to_release, []
        if deletes:
            self._track(self._delete(deletes))
        if releases:
            self._track(self._change(releases, 0))

    def _track(self, coro) -> None:
        # Background SQS calls (deletes, visibility changes): idle() waits for them.
        d = ensureDeferred(coro)
        self._ops.add(d)
        d.addErrback(lambda f: log.failure("stream {name}: SQS call failed", f,
                                           name=self.name))
        d.addBoth(lambda _: self._ops.discard(d))

    async def idle(self) -> None:
        """Fires once the SQS calls in flight have ended."""
        if self._ops:
            await DeferredList(list(self._ops))

    async def _delete(self, handles: list[str]) -> None:
        try:
            failed = await self.client.delete_batch(self.queue_url, handles)
        except SQSError as e:
            failed = handles
            self.on_error()
            log.warn("stream {name}: delete failed: {error}", name=self.name, error=str(e))
        if failed:
            log.warn("stream {name}: {n} messages not deleted; SQS will redeliver them",
                     name=self.name, n=len(failed))

    async def _change(self, handles: list[str], timeout: int) -> None:
        try:
            await self.client.change_visibility_batch(self.queue_url, handles, timeout)
        except SQSError as e:
            self.on_error()
            # Not fatal: the message reappears when its visibility timeout ends.
            log.warn("stream {name}: visibility change failed: {error}", name=self.name,
                     error=str(e))

    # -- visibility extension -----------------------------------------------------

    def start_extending(self) -> None:
        self._extend_call = self.clock.callLater(max(0.5, self.visibility / 4), self._extend)

    def stop_extending(self) -> None:
        if self._extend_call is not None and self._extend_call.active():
            self._extend_call.cancel()

    def _extend(self) -> None:
        now = self.clock.seconds()
        due = [h for h in self.entries.values() if now - h.extended_at >= self.visibility / 2]
        for h in due:
            h.extended_at = now
        if due:
            self._track(self._change([h.message.handle for h in due], self.visibility))
        self.start_extending()
