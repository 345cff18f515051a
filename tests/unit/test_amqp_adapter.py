"""
What L{streamd.sources.pika_adapter} relies on in pika's private names, pinned against
pika's own frames in memory (a C{StringTransport} and a C{MemoryReactorClock}; no broker):
a pika release that renames C{_on_connection_failed}, C{_impl._error} or
C{TwistedChannel._channel}, or stops passing through them, fails here.
"""

from __future__ import annotations

import pika
import pika.channel
import pytest
from pika import exceptions as amqp_errors
from pika import frame, spec
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from streamd.sources.amqp_subscription import describe
from streamd.sources.pika_adapter import AMQPConnection, core_channel


def method(channel: int, m) -> bytes:
    return frame.Method(channel, m).marshal()


START = method(0, spec.Connection.Start(server_properties={"capabilities": {}},
                                        mechanisms=b"PLAIN", locales=b"en_US"))
TUNE = method(0, spec.Connection.Tune(channel_max=16, frame_max=131072, heartbeat=0))


def close(code: int, text: str) -> bytes:
    return method(0, spec.Connection.Close(reply_code=code, reply_text=text, class_id=0,
                                           method_id=0))


class Broker:
    """One connection's broker side: the frames it sends, what the client wrote."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.conn = AMQPConnection(pika.ConnectionParameters(heartbeat=0),
                                   custom_reactor=self.clock)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)
        self.clock.advance(0)
        self.ready: list = []
        self.conn.ready.addBoth(self.ready.append)

    def send(self, *frames: bytes) -> None:
        for data in frames:
            self.conn.dataReceived(data)
            self.clock.advance(0)

    def hang_up(self) -> None:
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0)

    def open(self) -> None:
        self.send(START, TUNE, method(0, spec.Connection.OpenOk()))
        assert self.conn.is_open and self.ready == [self.conn]


def test_a_refused_login_keeps_the_brokers_reason():
    broker = Broker()
    broker.send(START, close(403, "ACCESS_REFUSED - Login was refused"))
    broker.hang_up()
    # pika itself says only "1 attempt"; the adapter kept the broker's words.
    assert isinstance(broker.ready[0].value, amqp_errors.AMQPConnectionError)
    assert isinstance(broker.conn.failure, amqp_errors.ConnectionClosedByBroker)
    assert describe(broker.conn.failure) == "403 ACCESS_REFUSED - Login was refused"


def test_a_hang_up_during_the_handshake_is_seen_through_the_hook():
    broker = Broker()
    broker.send(START)
    broker.hang_up()
    assert isinstance(broker.ready[0].value, amqp_errors.AMQPConnectionError)
    assert isinstance(broker.conn.failure, ConnectionDone)


def test_a_forced_close_keeps_the_brokers_reason():
    broker = Broker()
    broker.open()
    closed: list = []
    broker.conn.closed.addBoth(closed.append)
    broker.send(close(320, "CONNECTION_FORCED - test drop"))
    broker.hang_up()
    # What pika reports: the socket's end, not the broker's reason (hence the adapter).
    assert len(closed) == 1 and isinstance(closed[0], ConnectionDone)
    assert describe(broker.conn.failure) == "320 CONNECTION_FORCED - test drop"


def test_our_own_close_is_the_reason():
    # AMQPSource.reconnect() closes with 320 and why: that is what status() then shows.
    broker = Broker()
    broker.open()
    broker.conn.close(320, "queue deleted?")
    broker.send(method(0, spec.Connection.CloseOk()))
    broker.hang_up()
    assert isinstance(broker.conn.failure, amqp_errors.ConnectionClosedByClient)
    assert (broker.conn.failure.reply_code, broker.conn.failure.reply_text) == (
        320, "queue deleted?")


def open_channel(broker: Broker):
    got: list = []
    broker.conn.channel().addCallback(got.append)
    broker.send(method(1, spec.Channel.OpenOk()))
    return got[0]


def test_core_channel_consumes_with_a_plain_callback_and_settles():
    broker = Broker()
    broker.open()
    channel = open_channel(broker)
    core = core_channel(channel)
    assert isinstance(core, pika.channel.Channel)
    assert core.channel_number == channel.channel_number == 1 and core.is_open

    deliveries: list = []
    consuming: list = []
    tag = core.basic_consume("jobs", lambda *args: deliveries.append(args),
                             callback=consuming.append)
    broker.send(method(1, spec.Basic.ConsumeOk(consumer_tag=tag)))
    assert len(consuming) == 1
    props = spec.BasicProperties(message_id="m1")
    broker.send(method(1, spec.Basic.Deliver(consumer_tag=tag, delivery_tag=7, exchange="",
                                             routing_key="jobs")),
                frame.Header(1, 2, props).marshal(), frame.Body(1, b"{}").marshal())
    [(on, deliver, properties, body)] = deliveries
    assert (on, deliver.delivery_tag, properties.message_id, body) == (core, 7, "m1", b"{}")

    broker.transport.clear()
    core.basic_ack(7)
    core.basic_nack(8, multiple=True, requeue=True)
    written = broker.transport.value()
    assert method(1, spec.Basic.Ack(delivery_tag=7)) in written
    assert method(1, spec.Basic.Nack(delivery_tag=8, multiple=True, requeue=True)) in written


def test_core_channel_hears_the_brokers_cancel():
    broker = Broker()
    broker.open()
    core = core_channel(open_channel(broker))
    cancelled: list = []
    core.add_on_cancel_callback(cancelled.append)
    tag = core.basic_consume("jobs", lambda *args: None)
    broker.send(method(1, spec.Basic.ConsumeOk(consumer_tag=tag)),
                method(1, spec.Basic.Cancel(consumer_tag=tag)))
    assert len(cancelled) == 1


@pytest.mark.parametrize("name", ["basic_consume", "basic_cancel", "basic_ack",
                                  "basic_nack", "add_on_cancel_callback"])
def test_the_wrapper_is_not_what_is_consumed_on(name):
    # The adapter exists because the wrapper differs: it has its own basic_consume (a
    # DeferredQueue) and no add_on_cancel_callback; if pika ever made them the same,
    # core_channel could go.
    broker = Broker()
    broker.open()
    channel = open_channel(broker)
    assert getattr(core_channel(channel), name) != getattr(channel, name, None)
