"""
The amqp source's reconnection (Twisted's C{ClientService} with C{backoffPolicy}), in
memory: a C{MemoryReactorClock} as the reactor, and a scripted broker that speaks
pika's frames on a C{StringTransport}. The waits between attempts are what a user of a
down or misconfigured broker sees: C{reconnect_initial}, doubling up to
C{reconnect_max}, whether the TCP connection or the login is refused, and back to
C{reconnect_initial} after a connection that worked.
"""

from __future__ import annotations

from pika import frame, spec
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from streamd.sources.amqp import AMQPSource

SETTINGS = {"url": "amqp://guest:guest@127.0.0.1:5672/%2F", "queue": "jobs",
            "reconnect_initial": 0.1, "reconnect_max": 0.8, "connect_timeout": 5.0}
#: Seconds HostnameEndpoint waits before it gives up on its one address.
ATTEMPT_DELAY = 0.3


def method(channel: int, m) -> bytes:
    return frame.Method(channel, m).marshal()


#: RabbitMQ's answer to the protocol header: the source needs publisher confirms.
START = method(0, spec.Connection.Start(
    server_properties={"capabilities": {"publisher_confirms": True, "basic.nack": True}},
    mechanisms=b"PLAIN", locales=b"en_US"))
#: What the broker answers to each method a client sends (the set-up's declarations).
ANSWERS = {
    spec.Connection.StartOk: lambda m: spec.Connection.Tune(channel_max=16,
                                                            frame_max=131072, heartbeat=0),
    spec.Connection.Open: lambda m: spec.Connection.OpenOk(),
    spec.Channel.Open: lambda m: spec.Channel.OpenOk(),
    spec.Channel.Close: lambda m: spec.Channel.CloseOk(),
    spec.Queue.Declare: lambda m: spec.Queue.DeclareOk(queue=m.queue, message_count=0,
                                                        consumer_count=0),
    spec.Confirm.Select: lambda m: spec.Confirm.SelectOk(),
}


class Connection:
    """The broker's side of one TCP connection the source made."""

    def __init__(self, reactor: MemoryReactorClock, login: bool) -> None:
        self.reactor = reactor
        self.login = login
        factory = reactor.tcpClients[-1][2]
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.reactor.advance(0)
        self.answer()

    def answer(self) -> None:
        """Answer what the client wrote, until it waits for nothing more."""
        while True:
            data, sent = self.transport.value(), False
            self.transport.clear()
            while data:
                used, f = frame.decode_frame(data)
                data = data[used:]
                if isinstance(f, frame.ProtocolHeader):
                    self.send(START)
                    sent = True
                elif isinstance(f, frame.Method):
                    if isinstance(f.method, spec.Connection.StartOk) and not self.login:
                        self.send(method(0, spec.Connection.Close(
                            reply_code=403, reply_text="ACCESS_REFUSED - Login was refused",
                            class_id=0, method_id=0)))
                        return self.lost()
                    reply = ANSWERS.get(type(f.method))
                    if reply is not None:
                        self.send(method(f.channel_number, reply(f.method)))
                        sent = True
            if not sent:
                return

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.reactor.advance(0)

    def lost(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0)


def refuse(reactor: MemoryReactorClock) -> None:
    """The last TCP attempt is refused."""
    reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    reactor.advance(ATTEMPT_DELAY)


def next_attempt(reactor: MemoryReactorClock) -> float:
    """Wait for the next TCP attempt; return how long that took."""
    before = len(reactor.tcpClients)
    [retry] = reactor.getDelayedCalls()
    waited = retry.getTime() - reactor.seconds()
    reactor.advance(waited)
    assert len(reactor.tcpClients) == before + 1
    return round(waited, 6)


def started() -> tuple[AMQPSource, MemoryReactorClock, list]:
    reactor = MemoryReactorClock()
    source = AMQPSource("jobs", SETTINGS, reactor)
    first: list = []
    source.start().addCallback(first.append)
    reactor.advance(0)
    return source, reactor, first


def test_refused_connections_back_off_doubling_to_the_maximum():
    source, reactor, first = started()
    waits = []
    for _ in range(5):
        refuse(reactor)
        waits.append(next_attempt(reactor))
    assert waits == [0.1, 0.2, 0.4, 0.8, 0.8]
    assert first == [None]  # start() fired once the first attempt ended
    assert source.status()[0] == "down" and "refused" in source.status()[1]


def test_a_refused_login_backs_off_too():
    # ClientService alone would count each of these as a connection made, and try again
    # every reconnect_initial for ever.
    source, reactor, first = started()
    waits = []
    for _ in range(4):
        Connection(reactor, login=False)
        waits.append(next_attempt(reactor))
    assert waits == [0.1, 0.2, 0.4, 0.8]
    assert source.status() == ("down", "403 ACCESS_REFUSED - Login was refused")


def test_after_a_connection_that_worked_the_first_wait_is_the_shortest():
    source, reactor, first = started()
    for _ in range(3):
        refuse(reactor)
        next_attempt(reactor)
    broker = Connection(reactor, login=True)
    assert source.status() == ("ok", None) and source.conn is not None
    assert reactor.getDelayedCalls() == []  # connected: nothing scheduled
    broker.send(method(0, spec.Connection.Close(
        reply_code=320, reply_text="CONNECTION_FORCED - test drop", class_id=0,
        method_id=0)))
    broker.lost()
    assert source.status() == ("down", "320 CONNECTION_FORCED - test drop")
    assert source.conn is None
    assert next_attempt(reactor) == 0.1
    refuse(reactor)
    assert next_attempt(reactor) == 0.2


def test_stop_while_waiting_makes_no_more_attempts():
    source, reactor, first = started()
    refuse(reactor)
    stopped: list = []
    source.stop().addCallback(stopped.append)
    assert stopped == [None]
    attempts = len(reactor.tcpClients)
    reactor.advance(10)
    assert len(reactor.tcpClients) == attempts and reactor.getDelayedCalls() == []
