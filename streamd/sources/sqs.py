"""
The C{sqs} source: an SQS queue as a stream, at least once.

Polling follows demand: a poller receives only while some client is connected and not
paused, so messages wait in SQS rather than in streamd's memory; a batch that arrives
when every client has just paused is held (one per poller at most) until one resumes.
A message is deleted only when the stream acks it (written, or acknowledged by the
client in C{ack = "client"} mode), also after the stream's C{cancel()}; one given back
(client gone, C{limit} reached, shutdown) is made visible again at once. Messages held
longer than half the visibility timeout have it extended. What is held, and the SQS
calls that settle it, are in L{streamd.sources.sqs_held}.

Shutdown lets the receives in flight finish and gives back what they bring: SQS goes
on with a long poll whose caller hung up, and what that poll receives stays hidden
for the whole visibility timeout. So that every poll can end by itself within the
service's C{shutdown_timeout}, long polls are shortened to end before it.

C{delivery = "queue"} hands each batch to one client (round robin over those not
paused); C{"broadcast"} hands it to every connected client and deletes a message once
each of them has acked or given it back, if at least one wrote it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import ParamValidationError
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from streamd.errors import BadRequest, HTTPError, Unavailable
from streamd.interfaces import ISource, ISubscription
from streamd.keys import Key
from streamd.message import Message, SharedBatch, body_json
from streamd.sources.sqs_held import HeldMessages
from streamd.sqs.aws import SQSError
from streamd.sqs.client import SQSClient

log = Logger()

#: System attributes every message carries into its envelope (FIFO queues add theirs).
SYSTEM_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "MessageGroupId",
                     "SequenceNumber")
_INT_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp")

#: Seconds a message that no connected client's filter wants stays hidden before SQS
#: offers it again (visibility 0 would have streamd receive and return it in a loop).
SKIP_DELAY = 5

#: Seconds between empty receives when long polling is off (wait_time_seconds = 0).
EMPTY_PAUSE = 1.0
#: Seconds between "is the queue back?" probes while down: doubling up to the cap.
PROBE_FIRST, PROBE_CAP = 0.5, 5.0
#: Seconds before probe number N (0-based). No jitter: one stream probes one queue.
probe_delay = backoffPolicy(PROBE_FIRST, PROBE_CAP, 2.0, jitter=lambda: 0.0)

#: Seconds of the shutdown_timeout kept for the last give-backs once receives ended.
STOP_MARGIN = 1.0


def _url(value: Any, required: bool = False) -> str | None:
    if value is None:
        return "required" if required else None
    if not value.startswith(("http://", "https://")):
        return f"expected an http:// or https:// URL, got {value!r}"
    return None


#: The keys of an C{sqs} stream table.
CONFIG_KEYS = [
    Key("queue_url", "str", None, "the queue's URL",
        check=lambda v: _url(v, required=True)),
    Key("region", "str", None, "AWS region (default: from the queue URL, else us-east-1)"),
    Key("endpoint_url", "str", None, "SQS endpoint (moto, LocalStack, ElasticMQ)",
        check=_url),
    Key("profile", "str", None, "AWS profile of the shared config files"),
    Key("max_messages", "int", 10, "messages per ReceiveMessage", minimum=1, maximum=10),
    Key("wait_time_seconds", "int", 20, "long-poll seconds", minimum=0, maximum=20),
    Key("visibility_timeout", "int", 30, "seconds a received message stays hidden",
        minimum=1, maximum=43200),
    Key("pollers", "int", 1, "concurrent ReceiveMessage calls", minimum=1, maximum=64),
    Key("attributes", "list", ["All"], "message attribute names to request"),
    Key("delivery", "enum", "queue", "queue: one client per message; broadcast: all",
        choices=("queue", "broadcast")),
]


@implementer(ISubscription)
class SQSSubscription:
    """One stream's attachment; C{paused} is what the stream last asked for."""

    __slots__ = ("source", "consumer", "paused")

    def __init__(self, source: SQSSource, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.source._wake()

    def ack(self, messages) -> None:
        self.source._settle(self, messages, written=True)

    def nack(self, messages) -> None:
        self.source._settle(self, messages, written=False)

    def skip(self, messages) -> None:
        self.source._skip(self, messages)

    def cancel(self) -> None:
        self.source._unsubscribe(self)


@implementer(ISource)
class SQSSource:
    """
    One SQS-backed stream.

    @ivar received: the messages received and not yet deleted or made visible again
        (L{HeldMessages}): what stop() gives back, what the visibility extender keeps
        hidden.
    @ivar down: why the queue cannot be used (missing, access denied), or None.
    @ivar stop_grace: seconds stop() lets receives in flight finish before it cancels
        them (None: at once); long polls (C{wait}) are no longer, so that none is left
        running in SQS. From the service's C{shutdown_timeout}, less L{STOP_MARGIN}.
    """

    kind = "sqs"
    durable = True
    config_keys = CONFIG_KEYS

    def __init__(self, name: str, settings: Mapping[str, Any], client: SQSClient, clock,
                 metrics=None, shutdown_timeout: float | None = None) -> None:
        self.name = name
        self.metrics = metrics  # streamd.metrics.Metrics, or None
        self.client = client
        self.clock = clock
        self.queue_url: str = settings["queue_url"]
        self.fifo = self.queue_url.endswith(".fifo")
        self.max_messages: int = settings.get("max_messages", 10)
        self.wait: int = settings.get("wait_time_seconds", 20)
        self.visibility: int = settings.get("visibility_timeout", 30)
        self.pollers: int = settings.get("pollers", 1)
        self.attributes: list[str] = list(settings.get("attributes", ["All"]))
        self.broadcast = settings.get("delivery", "queue") == "broadcast"
        self.stop_grace: float | None = None
        if shutdown_timeout is not None:
            self.stop_grace = max(0.0, shutdown_timeout - STOP_MARGIN)
            # A poll of at least 1 s: a shorter shutdown_timeout may cut one short.
            self.wait = min(self.wait, max(1, int(self.stop_grace)))

        self.subscribers: list[SQSSubscription] = []
        self.received = HeldMessages(name, client, self.queue_url, clock, self.visibility,
                                     on_error=lambda: self._count("source_errors"))
        self.down: str | None = None
        self.running = False
        self._next = 0  # round-robin position (queue delivery)
        self._waiters: list[Deferred] = []
        self._tasks: list[Deferred] = []
        self._probing: Deferred | None = None

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], services) -> SQSSource:
        client = SQSClient.connect(
            services.reactor, settings["queue_url"], settings["region"],
            settings["endpoint_url"], settings["profile"],
            connections=settings["pollers"] + 4, metrics=services.metrics,
        )
        return cls(settings["name"], settings, client, services.reactor, services.metrics,
                   services.settings.shutdown_timeout)

    @property
    def held(self):
        """Receipt handle -> L{streamd.sources.sqs_held.Held}, for what is held now."""
        return self.received.entries

    def _count(self, series: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, series).labels(self.name, self.kind).inc()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Deferred:
        """Start the pollers; fires (never fails) once the queue was checked once."""
        self.running = True
        self._tasks = [ensureDeferred(self._poll()) for _ in range(self.pollers)]
        self.received.start_extending()
        return ensureDeferred(self._check())

    def stop(self) -> Deferred:
        """
        Stop polling, end the streams, give back every message not written, and what
        the receives in flight bring once they end (within L{stop_grace}).
        """
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.received.stop_extending()
        if self._probing is not None:
            self._probing.cancel()
        self._wake()
        for sub in list(self.subscribers):
            # The stream writes what it can, acks that and gives back the rest.
            sub.consumer.source_ended("shutdown")
        self.received.give_back_all()
        await self._polls_ended()
        self.received.flush()
        await self.received.idle()

    async def _polls_ended(self) -> None:
        """Wait for the receives in flight (L{_receive} gives back what they bring)."""
        polls = [task for task in self._tasks if not task.called]
        if not polls:
            return
        # One cancelled now would go on in SQS without us; past the grace it is
        # cancelled all the same (the process is about to go).
        timer = self.clock.callLater(self.stop_grace or 0.0,
                                     lambda: [task.cancel() for task in polls])
        try:
            await DeferredList(polls)
        finally:
            if timer.active():
                timer.cancel()

    def status(self) -> tuple[str, str | None]:
        return ("down", self.down) if self.down else ("ok", None)

    def subscribe(self, consumer, since: str | None = None) -> SQSSubscription:
        if self.down:
            raise Unavailable(f"stream {self.name!r} is down: {self.down}")
        if since is not None:
            raise BadRequest("since: an SQS stream cannot resume by id (SQS redelivers "
                             "what was not acknowledged instead)")
        sub = SQSSubscription(self, consumer)
        self.subscribers.append(sub)
        self._wake()
        return sub

    # -- demand ---------------------------------------------------------------------

    def _ready(self) -> list[SQSSubscription]:
        return [s for s in self.subscribers if not s.paused]

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _changed(self) -> Deferred:
        """Fires at the next change of demand (subscribe, resume, cancel, up, stop)."""
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters
                               else None)
        self._waiters.append(d)
        return d

    async def _poll(self) -> None:
        try:
            while self.running:
                try:
                    if self.down or not self._ready():
                        await self._changed()
                        continue
                    batch = await self._receive()
                    if batch:
                        await self._dispatch(batch)
                except CancelledError:
                    raise
                except Exception:
                    log.failure("stream {name}: poller failed", name=self.name)
                    if self.running:
                        await deferLater(self.clock, PROBE_CAP, lambda: None)
        except CancelledError:
            pass  # stop(), past its grace: what this poller held is given back there

    async def _receive(self) -> list[Message]:
        try:
            raw = await self.client.receive(
                self.queue_url, max_messages=self.max_messages, wait=self.wait,
                visibility=self.visibility, message_attributes=self.attributes,
                system_attributes=SYSTEM_ATTRIBUTES,
            )
        except SQSError as e:
            self._count("source_errors")
            if e.unusable or e.status is None:  # gone, refused, or no answer at all
                self._set_down(e)
            else:  # throttled or 5xx through all the client's retries: rest a while
                log.warn("stream {name}: receive failed: {error}", name=self.name,
                         error=str(e))
                if self.running:
                    await deferLater(self.clock, PROBE_CAP, lambda: None)
            return []
        if not self.running:
            # stop() began while this receive was in flight: back to SQS at once.
            self.received.release(r["ReceiptHandle"] for r in raw)
            return []
        if not raw:
            if self.wait == 0:  # no long poll: do not spin on an empty queue
                await deferLater(self.clock, EMPTY_PAUSE, lambda: None)
            return []
        batch = [self._message(r) for r in raw]
        for msg in batch:
            self.received.hold(msg)
        return batch

    async def _dispatch(self, batch: list[Message]) -> None:
        # Hold the batch (its poller receives nothing more) until a client can take it.
        while True:
            if not self.running:
                return  # stop() gives back everything held
            if not self.subscribers:
                self.received.give_back(batch)
                return
            ready = self._ready()
            if ready:
                break
            await self._changed()
        if self.broadcast:
            targets = list(self.subscribers)
            batch = SharedBatch(batch)  # joined once for every stream that keeps up
        else:
            self._next = (self._next + 1) % len(ready)
            targets = [ready[self._next]]
        self.received.hand(batch, targets)
        for sub in targets:
            # A stream may write, ack, give back or even end during deliver.
            if sub in self.subscribers:
                sub.consumer.deliver(batch)
            else:
                self._settle(sub, batch, written=False)

    # -- acks -----------------------------------------------------------------------

    def _settle(self, sub: SQSSubscription, messages: Iterable[Message], written: bool) -> None:
        self.received.settle(sub, messages, written)

    def _skip(self, sub: SQSSubscription, messages: Iterable[Message]) -> None:
        if self.broadcast:
            # Filtered out counts as handled for this client, like written: a message
            # every client filtered out is deleted rather than received again forever.
            self._settle(sub, messages, written=True)
            return
        # Queue delivery: offer each to another ready client whose filter has not
        # refused it yet; hide it for a while when none is left.
        others = [s for s in self._ready() if s is not sub]
        offers: dict[SQSSubscription, list[Message]] = {}
        unwanted = []
        for msg in messages:
            held = self.received.get(msg.handle)
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
            self.received.hide(unwanted, min(SKIP_DELAY, self.visibility))
        for target, msgs in offers.items():
            if target in self.subscribers:
                target.consumer.deliver(msgs)
            else:
                self._settle(target, msgs, written=False)

    def _unsubscribe(self, sub: SQSSubscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        # What the stream neither acked nor gave back yet waits for its acks (a
        # while: sqs_held.LINGER), then is given back.
        self.received.leave(sub)
        self._wake()  # a poller holding a batch may now give it back

    # -- health ---------------------------------------------------------------------

    async def _check(self) -> None:
        try:
            attrs = await self.client.queue_attributes(self.queue_url, ["FifoQueue"])
        except SQSError as e:
            # Unreachable after the client's retries counts as down too: new streams
            # would only wait in vain.
            self._set_down(e)
            return
        self.fifo = self.fifo or attrs.get("FifoQueue") == "true"
        self._set_up()

    def _set_down(self, e: SQSError) -> None:
        was_down = self.down is not None
        self.down = f"{e.code}: {e.message}" if e.message else e.code
        if not was_down:
            log.warn("stream {name} is down: {reason}", name=self.name, reason=self.down)
            if self.running:
                self._probing = ensureDeferred(self._probe())

    def _set_up(self) -> None:
        if self.down is not None:
            self._count("source_reconnects")
            log.info("stream {name} is up again", name=self.name)
            self.down = None
            self._wake()

    async def _probe(self) -> None:
        attempt = 0
        try:
            while self.running and self.down:
                await deferLater(self.clock, probe_delay(attempt), lambda: None)
                attempt += 1
                await self._check()
        except CancelledError:
            pass
        finally:
            self._probing = None

    # -- messages -------------------------------------------------------------------

    def _message(self, raw: dict[str, Any]) -> Message:
        attributes: dict[str, Any] = {}
        for name, value in raw.get("MessageAttributes", {}).items():
            if "StringValue" in value:
                attributes[name] = value["StringValue"]
            elif "BinaryValue" in value:
                attributes[name] = base64.b64encode(value["BinaryValue"]).decode()
        for name, value in raw.get("Attributes", {}).items():
            attributes[name] = int(value) if name in _INT_ATTRIBUTES else value
        return Message(raw["MessageId"], self.name, body_json(raw.get("Body", "")),
                       attributes, raw["ReceiptHandle"])

    # -- publish --------------------------------------------------------------------

    def publish(self, payloads: list[bytes], params: dict[str, str]) -> Deferred:
        """
        SendMessageBatch, 10 per call. Query parameters: C{group_id} (MessageGroupId,
        required on a FIFO queue), C{deduplication_id} (MessageDeduplicationId; with
        several messages, C{-0}, C{-1}, ... is appended), C{delay_seconds}.
        """
        return ensureDeferred(self._publish(payloads, params or {}))

    async def _publish(self, payloads: list[bytes], params: dict[str, str]) -> list[str]:
        group = params.get("group_id")
        dedup = params.get("deduplication_id")
        delay = params.get("delay_seconds")
        if self.fifo and not group:
            raise BadRequest("group_id: required to publish to a FIFO queue")
        entries = []
        for i, payload in enumerate(payloads):
            entry: dict[str, Any] = {"MessageBody": payload.decode()}
            if group:
                entry["MessageGroupId"] = group
            if dedup:
                entry["MessageDeduplicationId"] = dedup if len(payloads) == 1 else f"{dedup}-{i}"
            if delay is not None:
                if not delay.isdigit() or int(delay) > 900:
                    raise BadRequest(f"delay_seconds: expected 0-900, got {delay!r}")
                entry["DelaySeconds"] = int(delay)
            entries.append(entry)
        try:
            results = await self.client.send_batch(self.queue_url, entries)
        except ParamValidationError as e:
            raise BadRequest(str(e)) from None
        except SQSError as e:
            if e.unusable:
                self._set_down(e)
            if e.unusable or e.retryable:
                raise Unavailable(f"stream {self.name!r}: SQS: {e}") from None
            raise BadRequest(f"SQS refused the messages: {e}") from None
        failed = [(n, r) for n, r in enumerate(results, 1) if isinstance(r, SQSError)]
        if failed:
            detail = "; ".join(f"line {n}: {r}" for n, r in failed[:5])
            raise HTTPError(
                f"{len(failed)} of {len(results)} messages refused by SQS ({detail}); "
                "the others were sent", status=502)
        return results
