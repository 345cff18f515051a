"""
The receive loops of an C{sqs} stream (see L{streamd.sources.sqs} for the rules).

Polling follows demand: a poller receives only while the queue is up and some client is
connected and not paused, so messages wait in SQS rather than in streamd's memory; a
batch that arrives when every client has just paused is held (one per poller at most)
until one resumes. A received message becomes a streamd L{Message} here (L{envelope}).

Stopping lets the receives in flight finish and gives back what they bring: SQS goes on
with a long poll whose caller hung up, and what that poll receives stays hidden for the
whole visibility timeout.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from streamd.message import Message, body_json
from streamd.sources.sqs_delivery import Delivery
from streamd.sources.sqs_held import HeldMessages
from streamd.sqs.aws import SQSError

log = Logger()

#: System attributes every message carries into its envelope (FIFO queues add theirs).
SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "MessageGroupId",
                     "SequenceNumber")
_INT_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp")

#: Seconds between empty receives when long polling is off (wait_time_seconds = 0).
EMPTY_PAUSE = 1.0
#: Seconds a poller rests after a receive that failed through all the client's retries.
REST = 5.0


class QueueHealth(Protocol):
    """What the pollers know of whether the queue can be used (the source's state)."""

    down: str | None

    def went_down(self, error: SQSError) -> None: ...


def envelope(stream: str, raw: dict[str, Any]) -> Message:
    """A received SQS message as a message of C{stream}: its body, and its attributes."""
    attributes: dict[str, Any] = {}
    for name, value in raw.get("MessageAttributes", {}).items():
        if "StringValue" in value:
            attributes[name] = value["StringValue"]
        elif "BinaryValue" in value:
            attributes[name] = base64.b64encode(value["BinaryValue"]).decode()
    for name, value in raw.get("Attributes", {}).items():
        attributes[name] = int(value) if name in _INT_ATTRIBUTES else value
    return Message(raw["MessageId"], stream, body_json(raw.get("Body", "")),
                   attributes, raw["ReceiptHandle"])


class Pollers:
    """
    The C{pollers} concurrent ReceiveMessage loops of one stream.

    @ivar running: between L{start} and L{halt}: a receive that ends after gives back
        what it brought.
    @ivar wait: the long poll's seconds (C{WaitTimeSeconds}).
    @ivar stop_grace: seconds L{ended} lets receives in flight finish before it cancels
        them (None: at once).
    """

    def __init__(self, name: str, client, queue_url: str, clock, *, held: HeldMessages,
                 delivery: Delivery, health: QueueHealth, on_error: Callable[[], None],
                 max_messages: int, wait: int, visibility: int, attributes: list[str],
                 stop_grace: float | None) -> None:
        """
        @param held: where what is received is held until it is settled.
        @param delivery: whose demand the pollers follow, and who takes their batches.
        @param health: whether the queue is down; told when a receive finds it so.
        @param on_error: called with no argument for each receive that failed (metrics).
        """
        self.name = name
        self.client = client
        self.queue_url = queue_url
        self.clock = clock
        self.held = held
        self.delivery = delivery
        self.health = health
        self.on_error = on_error
        self.max_messages = max_messages
        self.wait = wait
        self.visibility = visibility
        self.attributes = attributes
        self.stop_grace = stop_grace
        self.running = False
        self._tasks: list[Deferred] = []

    def start(self, n: int) -> None:
        """Start C{n} loops."""
        self.running = True
        self._tasks = [ensureDeferred(self._poll()) for _ in range(n)]

    def halt(self) -> None:
        """Receive nothing more (the loops end at their next turn: see L{ended})."""
        self.running = False

    async def ended(self) -> None:
        """Wait for the receives in flight (each gives back what it brings)."""
        polls = [task for task in self._tasks if not task.called]
        if not polls:
            return

        def cancel() -> None:
            for task in polls:
                task.cancel()

        # One cancelled now would go on in SQS without us; past the grace it is
        # cancelled all the same (the process is about to go).
        timer = self.clock.callLater(self.stop_grace or 0.0, cancel)
        try:
            await DeferredList(polls)
        finally:
            if timer.active():
                timer.cancel()

    async def _poll(self) -> None:
        try:
            while self.running:
                try:
                    if self.health.down or not self.delivery.ready():
                        await self.delivery.changed()
                        continue
                    batch = await self._receive()
                    if batch:
                        await self.delivery.dispatch(batch)
                except CancelledError:
                    raise
                except Exception:
                    log.failure("stream {name}: poller failed", name=self.name)
                    if self.running:
                        await deferLater(self.clock, REST, lambda: None)
        except CancelledError:
            pass  # stopped, past its grace: what this poller held is given back there

    async def _receive(self) -> list[Message]:
        try:
            raw = await self.client.receive(
                self.queue_url, max_messages=self.max_messages, wait=self.wait,
                visibility=self.visibility, message_attributes=self.attributes,
                system_attributes=SYSTEM_ATTRIBUTES,
            )
        except SQSError as e:
            self.on_error()
            if e.unusable or e.status is None:  # gone, refused, or no answer at all
                self.health.went_down(e)
            else:  # throttled or 5xx through all the client's retries: rest a while
                log.warn("stream {name}: receive failed: {error}", name=self.name,
                         error=str(e))
                if self.running:
                    await deferLater(self.clock, REST, lambda: None)
            return []
        if not self.running:
            # Stopping began while this receive was in flight: back to SQS at once.
            self.held.release(r["ReceiptHandle"] for r in raw)
            return []
        if not raw:
            if self.wait == 0:  # no long poll: do not spin on an empty queue
                await deferLater(self.clock, EMPTY_PAUSE, lambda: None)
            return []
        batch = [envelope(self.name, r) for r in raw]
        for msg in batch:
            self.held.hold(msg)
        return batch
