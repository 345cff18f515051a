"""
L{AMQPSubscription}: one client of an C{amqp} stream, on a channel of its own (see
L{streamd.sources.amqp} for the delivery rules).

A message's handle is C{(link, delivery_tag)}: delivery tags belong to a channel, so an
ack names the channel the message came on. A link outlives its subscription until every
message it delivered is settled (or L{LINGER} passes); an ack for
a message whose channel has closed is a no-op, since the broker has already requeued it.
"""

from __future__ import annotations

import base64
import contextlib
import json
from functools import partial
from typing import Any

from pika import exceptions as amqp_errors
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from streamd.interfaces import ISubscription
from streamd.message import Message, body_json

log = Logger()

#: Seconds a client that left keeps its channel for acks still to come.
LINGER = 30.0

#: Seconds a message no client's filter wants is held before it is requeued (requeued at
#: once, the same consumers would take it again at once, for ever).
SKIP_DELAY = 5.0

#: Seconds a client may stay paused before its consumer is cancelled. A client that
#: reads at full speed is paused for an instant every time Twisted's buffer passes
#: 64 KiB: cancelling then would have pika reject (requeue) a whole prefetch window in
#: flight, to be sent again a moment later. Meanwhile the prefetch window bounds what
#: arrives, and it is held here, not handed to the stream.
PAUSE_GRACE = 0.5


def describe(error: Any) -> str:
    """One line for status() and logs, from whatever pika or Twisted failed with."""
    error = getattr(error, "value", error)  # a Failure
    if isinstance(error, amqp_errors.ProbableAuthenticationError):
        return "authentication refused (user or password)"
    if isinstance(error, amqp_errors.ProbableAccessDeniedError):
        return "access refused to the virtual host"
    if isinstance(error, (amqp_errors.ChannelClosedByBroker,
                          amqp_errors.ConnectionClosedByBroker)):
        return f"{error.reply_code} {error.reply_text}"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]



def delivery_message(stream: str, mid: str, handle, method, properties, body: bytes) -> Message:
    """A delivery as a streamd message: the body as JSON (or base64), and attributes."""
    attributes: dict[str, Any] = {"routing_key": method.routing_key,
                                  "redelivered": method.redelivered}
    if method.exchange:
        attributes["exchange"] = method.exchange
    if properties.headers:
        attributes["headers"] = _jsonable(properties.headers)
    for name in ("content_type", "correlation_id", "app_id", "timestamp", "type"):
        value = getattr(properties, name)
        if value is not None:
            attributes[name] = value
    try:
        data = body_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        data = json.dumps(base64.b64encode(body).decode()).encode()
        attributes["body_encoding"] = "base64"
    return Message(mid, stream, data, attributes, handle)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # Decimal, datetime


class _Link:
    """
    One subscription's channel on one connection.

    @ivar core: pika's own channel under the Twisted wrapper, which consuming, acks and
        nacks go through (L{streamd.sources.pika_adapter.core_channel} says why).
    @ivar outstanding: delivery tags handed out and not yet acked or nacked, in
        delivery (so ascending) order: exactly what the broker holds for this channel.
    @ivar retired: its subscription is cancelled: the channel closes once nothing is
        outstanding.
    @ivar released: fires once the channel is closed.
    """

    __slots__ = ("channel", "core", "queue", "tag", "busy", "outstanding", "closed",
                 "retired", "released", "linger")

    def __init__(self, channel, core, queue: str) -> None:
        self.channel = channel
        self.core = core
        self.queue = queue
        self.tag: str | None = None
        self.busy = False
        self.outstanding: dict[int, None] = {}
        self.closed = False
        self.retired = False
        self.released: Deferred = Deferred()
        self.linger: Any = None


@implementer(ISubscription)
class AMQPSubscription:
    """
    @ivar link: the open channel, or None (connecting, or the connection is lost).
    @ivar paused: what the stream last asked for; the consumer exists only when not.
    """

    def __init__(self, source, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.reactor = source.reactor
        self.paused = False
        self.cancelled = False
        self.link: _Link | None = None
        self.opening = False
        self.connected_before = False
        self._batch: list = []
        self._batch_call: Any = None
        #: deliveries that came while paused, handed over on resume
        self._held: list = []
        #: paused for longer than PAUSE_GRACE: the consumer is (to be) cancelled
        self._idle = False
        self._idle_call: Any = None

    # -- the channel ------------------------------------------------------------------

    def open(self) -> None:
        """Open a channel (and queue, when broadcasting) on the source's connection."""
        if self.cancelled or self.opening or self.link is not None:
            return
        conn = self.source.conn
        if conn is None or not conn.is_open:
            return  # the source's connection loop calls open() once connected
        self.opening = True
        d = ensureDeferred(self._open(conn))
        d.addErrback(self._open_failed)

    async def _open(self, conn) -> None:
        src = self.source
        try:
            channel = await conn.channel()
            await channel.basic_qos(prefetch_count=src.prefetch)
            if src.broadcast:
                ok = await channel.queue_declare(
                    "", exclusive=True, arguments={"x-max-length": src.max_length})
                queue = ok.method.queue
                await channel.queue_bind(queue, src.exchange, routing_key=src.routing_key)
            else:
                queue = src.queue
        finally:
            self.opening = False
        # Imported here: the adapter imports pika's Twisted module, which imports the
        # global reactor (see streamd.sources.pika_adapter).
        from streamd.sources.pika_adapter import core_channel

        link = _Link(channel, core_channel(channel), queue)
        src.links.add(link)
        channel.on_closed.addBoth(lambda reason: self._closed(link, reason))
        link.core.add_on_cancel_callback(lambda _frame: self._cancelled_by_broker(link))
        if src.broadcast and self.connected_before:
            # A new queue: what was published while there was none is not in it.
            self.consumer.gap({"missed": None, "reason": "the broker connection was lost"})
        self.connected_before = True
        if self.cancelled:
            link.retired = True
            self._release(link)
            return
        self.link = link
        self._sync()

    def _open_failed(self, failure) -> None:
        log.warn("amqp {name}: a client's channel did not open: {e}",
                 name=self.source.name, e=describe(failure))
        self._reopen_later()

    def _reopen_later(self) -> None:
        if not self.cancelled:
            self.reactor.callLater(self.source.connection.reconnect_max, self.open)

    def _closed(self, link: _Link, reason) -> None:
        link.closed = True
        link.outstanding.clear()  # the broker has requeued them
        if link.linger is not None and link.linger.active():
            link.linger.cancel()
        self.source.links.discard(link)
        if not link.released.called:
            link.released.callback(None)
        if self.link is link:
            self.link = None
            conn = self.source.conn
            if not self.cancelled and conn is not None and conn.is_open:
                # The channel alone failed (the connection is fine): a new one, later.
                log.warn("amqp {name}: a client's channel closed: {e}",
                         name=self.source.name, e=describe(reason))
                self._reopen_later()
        return None

    def connection_lost(self) -> None:
        """The source's connection is gone: so is the channel (the broker requeued)."""
        self.link = None
        self.opening = False

    def _cancelled_by_broker(self, link: _Link) -> None:
        link.tag = None
        if not link.closed and not self.cancelled:
            self.source.reconnect(f"the broker cancelled the consumer of {link.queue!r} "
                                  "(queue deleted?)")

    def _release(self, link: _Link) -> None:
        """Close a retired link's channel (deleting a broadcast client's queue first)."""
        if link.closed or link.channel.is_closing:
            return
        if link.linger is not None and link.linger.active():
            link.linger.cancel()
        try:
            if self.source.broadcast:
                d = link.channel.queue_delete(link.queue)
                d.addBoth(lambda _: None if link.closed else link.channel.close())
            else:
                link.channel.close()
        except amqp_errors.AMQPError:
            pass  # closing already: the broker requeues what is left

    # -- demand -----------------------------------------------------------------------

    def _sync(self) -> None:
        """Make the broker's consumer match demand: one basic.consume/cancel at a time."""
        link = self.link
        if link is None or link.closed or link.busy:
            return
        want = not (self._idle or self.cancelled)
        try:
            if want and link.tag is None:
                link.busy = True
                link.tag = link.core.basic_consume(
                    link.queue, partial(self._on_message, link),
                    callback=lambda _frame: self._synced(link))
            elif not want and link.tag is not None:
                link.busy = True
                tag, link.tag = link.tag, None
                # Deliveries still on their way for this tag are requeued by pika.
                link.core.basic_cancel(tag, callback=lambda _frame: self._synced(link))
        except amqp_errors.AMQPError:
            link.busy = False  # the channel is closing: _closed() follows

    def _synced(self, link: _Link) -> None:
        link.busy = False
        if link is self.link:
            self._sync()
        elif link.retired and link.tag is not None and not link.closed:
            # A consumer that started after its client left: stop it.
            tag, link.tag = link.tag, None
            with contextlib.suppress(amqp_errors.AMQPError):
                link.core.basic_cancel(tag)

    def pause(self) -> None:
        self.paused = True
        if self._idle_call is None and not self._idle:
            self._idle_call = self.reactor.callLater(PAUSE_GRACE, self._went_idle)

    def _went_idle(self) -> None:
        self._idle_call = None
        if not self.paused:
            return
        self._idle = True
        self._sync()
        # Let the other clients have what this one was sent and has not taken.
        held, self._held = self._held, []
        if held:
            self.nack(held)

    def resume(self) -> None:
        self.paused = False
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        self._idle = False
        held, self._held = self._held, []
        if held and not self.cancelled:
            self.consumer.deliver(held)
        if not self.paused:  # the stream may pause again while taking them
            self._sync()

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self in self.source.subscribers:
            self.source.subscribers.remove(self)
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        held, self._held = self._held, []
        if held:
            self.nack(held)
        link, self.link = self.link, None
        if link is None:
            return
        link.retired = True
        if not link.outstanding and not self._batch:
            self._release(link)
            return
        # Acks may still come (a stream acks once its bytes have left): stop consuming,
        # keep the channel until they are in, or until LINGER.
        if link.tag is not None and not link.busy:
            tag, link.tag = link.tag, None
            with contextlib.suppress(amqp_errors.AMQPError):
                link.core.basic_cancel(tag)
        link.linger = self.reactor.callLater(LINGER, self._release, link)

    # -- messages ---------------------------------------------------------------------

    def _on_message(self, link: _Link, _channel, method, properties, body) -> None:
        tag = method.delivery_tag
        link.outstanding[tag] = None
        self._batch.append(self.source.message((link, tag), method, properties, body))
        if self._batch_call is None:
            # The rest of this read arrives in the same reactor turn: one delivery
            # (one write to the client) for all of it.
            self._batch_call = self.reactor.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._batch_call = None
        batch, self._batch = self._batch, []
        # From a channel that has closed since: the broker has them back already.
        batch = [m for m in batch if not m.handle[0].closed]
        if not batch:
            return
        self.source.count("delivered", len(batch))
        if self.cancelled or self._idle:
            self.nack(batch)
        elif self.paused:
            self._held.extend(batch)
        else:
            self.consumer.deliver(batch)

    def ack(self, messages) -> None:
        self._settle(messages, True)

    def nack(self, messages) -> None:
        self._settle(messages, False)

    def skip(self, messages) -> None:
        """Filtered out: broadcast, done for this client; queue, requeued a little later."""
        if self.source.broadcast:
            self._settle(messages, True)
        else:
            self.reactor.callLater(SKIP_DELAY, self._settle, list(messages), False)

    def _settle(self, messages, ack: bool) -> None:
        by_link: dict[_Link, list[int]] = {}
        stale = sent = 0
        for m in messages:
            link, tag = m.handle
            if tag in link.outstanding:
                del link.outstanding[tag]
                by_link.setdefault(link, []).append(tag)
            elif link.closed:
                stale += 1
        for link, tags in by_link.items():
            if link.closed or not link.core.is_open:
                stale += len(tags)
                continue
            self._send(link, tags, ack)
            sent += len(tags)
            if link.retired and not link.outstanding:
                self._release(link)
        src = self.source
        src.count("stale", stale)
        src.count("acked" if ack else "nacked", sent)

    @staticmethod
    def _send(link: _Link, tags: list[int], ack: bool) -> None:
        tags.sort()
        top = tags[-1]
        lowest_left = next(iter(link.outstanding), None)
        core = link.core
        if len(tags) > 1 and (lowest_left is None or lowest_left > top):
            # Every tag up to top is settled now: one frame for all of them.
            if ack:
                core.basic_ack(top, multiple=True)
            else:
                core.basic_nack(top, multiple=True, requeue=True)
            return
        for tag in tags:
            if ack:
                core.basic_ack(tag)
            else:
                core.basic_nack(tag, requeue=True)
