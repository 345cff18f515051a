"""
The C{sqs} source: an SQS queue as a stream, at least once.

Polling follows demand: a poller receives only while some client is connected and not
paused, so messages wait in SQS rather than in streamd's memory; a batch that arrives
when every client has just paused is held (one per poller at most) until one resumes.
A message is deleted only when the stream acks it (written, or acknowledged by the
client in C{ack = "client"} mode), also after the stream's C{cancel()}; one given back
(client gone, C{limit} reached, shutdown) is made visible again at once. Messages held
longer than half the visibility timeout have it extended.

Shutdown lets the receives in flight finish and gives back what they bring: SQS goes
on with a long poll whose caller hung up, and what that poll receives stays hidden
for the whole visibility timeout. So that every poll can end by itself within the
service's C{shutdown_timeout}, long polls are shortened to end before it.

C{delivery = "queue"} hands each batch to one client (round robin over those not
paused); C{"broadcast"} hands it to every connected client and deletes a message once
each of them has acked or given it back, if at least one wrote it.

L{SQSSource} composes the parts, each in a module of its own: the receive loops
(L{streamd.sources.sqs_polling}), the delivery to the clients
(L{streamd.sources.sqs_delivery}), and what is held with the SQS calls that settle it
(L{streamd.sources.sqs_held}). It keeps the queue's health (down, probed, up again),
the shutdown order and publishing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ParamValidationError
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from streamd.errors import InvalidRequest, Refused, SourceDown
from streamd.interfaces import ISource
from streamd.keys import Key
from streamd.sources.sqs_delivery import Delivery, SQSSubscription
from streamd.sources.sqs_held import HeldMessages
from streamd.sources.sqs_polling import Pollers
from streamd.sqs.aws import SQSError
from streamd.sqs.client import SQSClient

log = Logger()

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


@implementer(ISource)
class SQSSource:
    """
    One SQS-backed stream.

    @ivar held: the messages received and not yet deleted or made visible again
        (L{HeldMessages}): what stop() gives back, what the visibility extender keeps
        hidden.
    @ivar delivery: the clients, and how a received batch reaches them (L{Delivery}).
    @ivar pollers: the receive loops, which follow the clients' demand (L{Pollers}).
    @ivar down: why the queue cannot be used (missing, access denied), or None.
    @ivar stop_grace: seconds stop() lets receives in flight finish before it cancels
        them (None: at once); long polls (L{Pollers.wait}) are no longer, so that none
        is left running in SQS. From the service's C{shutdown_timeout}, less
        L{STOP_MARGIN}.
    @ivar concurrency: how many pollers receive at once (the C{pollers} key).
    """

    kind = "sqs"
    durable = True
    resumes_by_id = False  # what was not acked comes back by itself
    config_keys = CONFIG_KEYS

    def __init__(self, name: str, settings: Mapping[str, Any], client: SQSClient, clock,
                 metrics=None, shutdown_timeout: float | None = None) -> None:
        self.name = name
        self.metrics = metrics  # streamd.metrics.Metrics, or None
        self.client = client
        self.clock = clock
        self.queue_url: str = settings["queue_url"]
        self.fifo = self.queue_url.endswith(".fifo")
        visibility: int = settings.get("visibility_timeout", 30)
        wait: int = settings.get("wait_time_seconds", 20)
        self.stop_grace: float | None = None
        if shutdown_timeout is not None:
            self.stop_grace = max(0.0, shutdown_timeout - STOP_MARGIN)
            # A poll of at least 1 s: a shorter shutdown_timeout may cut one short.
            wait = min(wait, max(1, int(self.stop_grace)))
        self.held = HeldMessages(name, client, self.queue_url, clock, visibility,
                                 on_error=lambda: self._count("source_errors"))
        self.delivery = Delivery(self.held, settings.get("delivery", "queue") == "broadcast",
                                 visibility)
        self.pollers = Pollers(
            name, client, self.queue_url, clock, held=self.held, delivery=self.delivery,
            health=self, on_error=lambda: self._count("source_errors"),
            max_messages=settings.get("max_messages", 10), wait=wait, visibility=visibility,
            attributes=list(settings.get("attributes", ["All"])), stop_grace=self.stop_grace)
        self.concurrency: int = settings.get("pollers", 1)
        self.down: str | None = None
        self.running = False
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

    def _count(self, series: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, series).labels(self.name, self.kind).inc()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Deferred:
        """Start the pollers; fires (never fails) once the queue was checked once."""
        self.running = True
        self.pollers.start(self.concurrency)
        self.held.start_extending()
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
        self.pollers.halt()
        self.held.stop_extending()
        if self._probing is not None:
            self._probing.cancel()
        self.delivery.close("shutdown")
        self.held.give_back_all()
        await self.pollers.ended()
        self.held.flush()
        await self.held.idle()

    def status(self) -> tuple[str, str | None]:
        return ("down", self.down) if self.down else ("ok", None)

    def subscribe(self, consumer, since: str | None = None) -> SQSSubscription:
        if self.down:
            raise SourceDown(f"stream {self.name!r} is down: {self.down}")
        if since is not None:
            raise InvalidRequest("since: an SQS stream cannot resume by id (SQS redelivers "
                                 "what was not acknowledged instead)")
        return self.delivery.add(consumer)

    # -- health ---------------------------------------------------------------------

    async def _check(self) -> None:
        try:
            attrs = await self.client.queue_attributes(self.queue_url, ["FifoQueue"])
        except SQSError as e:
            # Unreachable after the client's retries counts as down too: new streams
            # would only wait in vain.
            self.went_down(e)
            return
        self.fifo = self.fifo or attrs.get("FifoQueue") == "true"
        self._set_up()

    def went_down(self, e: SQSError) -> None:
        """The queue cannot be used (C{e} says why): say so, and probe until it can."""
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
            self.delivery.wake()

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
            raise InvalidRequest("group_id: required to publish to a FIFO queue")
        entries = []
        for i, payload in enumerate(payloads):
            entry: dict[str, Any] = {"MessageBody": payload.decode()}
            if group:
                entry["MessageGroupId"] = group
            if dedup:
                entry["MessageDeduplicationId"] = dedup if len(payloads) == 1 else f"{dedup}-{i}"
            if delay is not None:
                if not delay.isdigit() or int(delay) > 900:
                    raise InvalidRequest(f"delay_seconds: expected 0-900, got {delay!r}")
                entry["DelaySeconds"] = int(delay)
            entries.append(entry)
        try:
            results = await self.client.send_batch(self.queue_url, entries)
        except ParamValidationError as e:
            raise InvalidRequest(str(e)) from None
        except SQSError as e:
            if e.unusable:
                self.went_down(e)
            if e.unusable or e.retryable:
                raise SourceDown(f"stream {self.name!r}: SQS: {e}") from None
            raise InvalidRequest(f"SQS refused the messages: {e}") from None
        failed = [(n, r) for n, r in enumerate(results, 1) if isinstance(r, SQSError)]
        if failed:
            detail = "; ".join(f"line {n}: {r}" for n, r in failed[:5])
            raise Refused(
                f"{len(failed)} of {len(results)} messages refused by SQS ({detail}); "
                "the others were sent")
        return results
