"""
What streamd relies on of Twisted's private names (L{streamd.twisted_internals}), pinned
against the installed Twisted with its real classes: a TCP transport over a socketpair,
two TLS layers joined in memory, the HTTP/1.1 channel, the HTTP/2 connection, parsed
endpoints. Each test states one behaviour the adapter assumes; a Twisted release that
changes it fails here, by name, before it shows as a message acked too early, a stream
that never resumes, or an empty 400. No reactor runs: the transports' reactor is a
MemoryReactorClock, and the tests call C{doWrite} where the reactor would.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet import endpoints, ssl, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from streamd import twisted_internals as ti
from streamd.web.h2 import FlowControlledH2Connection
from tests.support.h2 import certificate


@implementer(IPushProducer)
class Producer:
    """A streaming producer that counts what its consumer tells it."""

    def __init__(self) -> None:
        self.paused = self.resumed = self.stopped = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped += 1


# -- 1. A TCP transport's write buffer ----------------------------------------------------


@pytest.fixture
def tcp_pair():
    """A real server-side TCP transport over one end of a socketpair, and the other end."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    t = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactorClock())
    yield t, peer
    ours.close()
    peer.close()


def drain(peer: socket.socket) -> int:
    """Read all the kernel holds for C{peer}; how many bytes."""
    got = 0
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return got
        got += len(chunk)


def test_a_write_waits_in_twisteds_buffer_until_doWrite(tcp_pair):
    t, peer = tcp_pair
    assert ti.tcp_clear(t) and ti.tcp_buffered(t) == 0
    t.write(b"x" * 1000)
    t.writeSequence([b"y" * 10, b"z" * 5])
    assert ti.tcp_buffered(t) == 1015 and not ti.tcp_clear(t)
    t.doWrite()
    assert ti.tcp_clear(t) and ti.tcp_buffered(t) == 0
    assert drain(peer) == 1015


def test_what_the_kernel_did_not_take_is_counted_exactly(tcp_pair):
    t, peer = tcp_pair
    total = 4 << 20
    t.write(b"x" * total)
    t.doWrite()  # the kernel takes some: dataBuffer keeps the rest, past offset
    t.write(b"y" * 100)  # and a later write waits in the second buffer
    total += 100
    assert 0 < ti.tcp_buffered(t) < total
    received = drain(peer)
    assert ti.tcp_buffered(t) == total - received
    while not ti.tcp_clear(t):
        t.doWrite()
        received += drain(peer)
    assert received + drain(peer) == total and ti.tcp_buffered(t) == 0


def test_the_drain_resumes_the_producer_only_when_it_was_marked_paused(tcp_pair):
    t, peer = tcp_pair
    producer = Producer()
    t.registerProducer(producer, True)
    t.write(b"x" * 1000)
    t.doWrite()
    assert ti.tcp_clear(t) and producer.resumed == 0  # Twisted says nothing of a drain
    t.write(b"x" * 1000)
    ti.hear_drain(t)
    t.doWrite()
    assert producer.resumed == 1  # ... unless the producer was marked paused
    assert drain(peer) == 2000


@pytest.mark.parametrize("close", ["abortConnection", "loseConnection"])
def test_after_abortConnection_or_loseConnection_no_write_may_go(tcp_pair, close):
    t, _ = tcp_pair
    assert ti.tcp_takes_writes(t)
    getattr(t, close)()
    assert not ti.tcp_takes_writes(t)


# -- 2. The TLS layer ---------------------------------------------------------------------


class Received(Protocol):
    data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class TLSPair:
    """A server and a client TLS layer, each over a StringTransport, joined by L{pump}."""

    def __init__(self, handshake: bool = True) -> None:
        key, cert = certificate()
        with open(key) as k, open(cert) as c:
            server_cert = ssl.PrivateCertificate.loadPEM(k.read() + c.read())
        self.clock = Clock()
        self.app = Protocol()
        self.received = Received()
        server = TLSMemoryBIOFactory(server_cert.options(), False,
                                     Factory.forProtocol(lambda: self.app), clock=self.clock)
        client = TLSMemoryBIOFactory(ssl.CertificateOptions(), True,
                                     Factory.forProtocol(lambda: self.received),
                                     clock=self.clock)
        self.server = server.buildProtocol(None)
        self.client = client.buildProtocol(None)
        self.server_tcp = StringTransport()
        self.client_tcp = StringTransport()
        self.server.makeConnection(self.server_tcp)
        self.client.makeConnection(self.client_tcp)
        if handshake:
            self.pump()

    def pump(self) -> None:
        for _ in range(10):
            to_server, to_client = self.client_tcp.value(), self.server_tcp.value()
            if not to_server and not to_client:
                return
            self.client_tcp.clear()
            self.server_tcp.clear()
            if to_server:
                self.server.dataReceived(to_server)
            if to_client:
                self.client.dataReceived(to_client)


def test_before_the_handshake_a_write_waits_as_plaintext():
    pair = TLSPair(handshake=False)
    assert ti.tls_held(pair.server) == 0 and not ti.tls_holds_any(pair.server)
    ti.tls_write_now(pair.server, b"early")  # OpenSSL wants the client's hello first
    assert ti.tls_held(pair.server) == 5 and ti.tls_holds_any(pair.server)
    pair.pump()
    assert not ti.tls_holds_any(pair.server) and pair.received.data == b"early"


def test_small_writes_are_aggregated_and_a_write_now_goes_after_them_at_once():
    pair = TLSPair()
    pair.server.write(b"small")  # the layer's own write: kept until the next turn
    assert ti.tls_held(pair.server) == 5 and pair.server_tcp.value() == b""
    ti.tls_write_now(pair.server, b" and now")
    assert not ti.tls_holds_any(pair.server)
    assert pair.server_tcp.value() != b""  # ciphertext handed to TCP in this call
    pair.pump()
    assert pair.received.data == b"small and now"  # in the order written


def test_writes_are_dropped_once_closing_with_no_producer():
    pair = TLSPair()
    assert not ti.tls_drops_writes(pair.server) and not ti.tls_shut_down(pair.server)
    pair.server.loseConnection()
    assert ti.tls_drops_writes(pair.server)
    pair.server.write(b"lost")
    pair.pump()  # close_notify, each way
    assert b"lost" not in pair.received.data
    assert ti.tls_shut_down(pair.server) and ti.tls_drops_writes(pair.server)


def test_a_registered_producer_holds_the_close_until_it_unregisters():
    pair = TLSPair()
    pair.server.registerProducer(Producer(), True)
    pair.server.loseConnection()
    assert ti.tls_closing_held_open(pair.server)
    assert not ti.tls_drops_writes(pair.server)  # writes still go until it unregisters
    ti.tls_write_now(pair.server, b"last")
    assert not ti.tls_shut_down(pair.server)
    pair.server.unregisterProducer()  # now the close_notify goes
    assert not ti.tls_closing_held_open(pair.server) and ti.tls_drops_writes(pair.server)
    pair.pump()
    assert pair.received.data == b"last" and ti.tls_shut_down(pair.server)


def test_the_tcp_drain_reaches_the_channel_only_through_a_paused_membrane():
    pair = TLSPair()
    channel = Producer()
    pair.server.registerProducer(channel, True)
    membrane = pair.server_tcp.producer  # what the layer registered with TCP for it
    assert membrane is not None and membrane is not channel
    membrane.resumeProducing()  # a drain, not asked for
    assert channel.resumed == 0
    ti.tls_hear_drain(pair.server)
    assert pair.server_tcp.producerPaused is True
    membrane.resumeProducing()  # the drain, asked for
    assert channel.resumed == 1


# -- 3. The HTTP/1.1 channel's refusals ---------------------------------------------------


class Refusing(ti.BadRequestHook, http.HTTPChannel):
    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[tuple[int, int]] = []

    def refuse_malformed(self) -> None:
        self.refusals.append((ti.header_bytes_received(self), ti.headers_received(self)))
        self.transport.loseConnection()


def channel() -> Refusing:
    c = Refusing()
    c.makeConnection(StringTransport())
    return c


def test_the_counters_start_at_zero_and_count_the_request_line_and_headers():
    c = channel()
    assert ti.header_bytes_received(c) == 0 and ti.headers_received(c) == 0
    c.dataReceived(b"GET / HTTP/1.1\r\n")
    assert ti.header_bytes_received(c) == len(b"GET / HTTP/1.1")
    c.dataReceived(b"A: b\r\nC: d\r\n")
    assert ti.header_bytes_received(c) == len(b"GET / HTTP/1.1A: bC: d")
    # A header line is counted once the next line shows it has no continuation.
    assert ti.headers_received(c) == 1


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n",
    b"GET /\r\n\r\n",  # HTTP/0.9
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_every_malformed_request_reaches_the_hook_not_twisteds_400(data):
    c = channel()
    c.dataReceived(data)
    assert len(c.refusals) == 1
    assert b"400" not in c.transport.value()


def test_too_many_headers_reach_the_hook_with_the_count_past_the_limit():
    c = channel()
    c.maxHeaders = 3
    c.dataReceived(b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5)
    assert c.refusals and c.refusals[0][1] > c.maxHeaders


def test_too_many_header_bytes_reach_the_hook_with_the_size_past_the_limit():
    c = channel()
    c.totalHeadersSize = 100
    c.dataReceived(b"GET / HTTP/1.1\r\n" + b"A: " + b"b" * 120 + b"\r\n")
    assert c.refusals and c.refusals[0][0] > c.totalHeadersSize


# -- 4. The switch to HTTP/2, and 5. the HTTP/2 connection --------------------------------


class H2Transport(StringTransport):
    """A TLS transport on which ALPN chose h2 (it takes a producer, as TLS's does)."""

    negotiatedProtocol = b"h2"


class Hooked(ti.H2ConnectionHooks):
    """Twisted's behaviour, each hook recorded."""

    def __init__(self, reactor=None) -> None:
        super().__init__(reactor)
        self.loops, self.windows, self.done = 0, [], []

    def send_loop(self, *args) -> None:
        self.loops += 1
        super().send_loop(*args)

    def window_update(self, event) -> None:
        self.windows.append(event)
        super().window_update(event)

    def stream_done(self, streamID: int) -> None:
        self.done.append(streamID)


class Hold(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render_GET(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class Switched(ti.ChannelSwitch):
    h2Connection = Hooked


class H2Pair:
    """Twisted's HTTP/1.1 channel in L{ti.ChannelSwitch} (as a Site builds it), h2 client."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.resource = Hold()
        site = Site(self.resource, reactor=self.clock)
        site.protocol = lambda: Switched(http.HTTPChannel())
        self.switch = site.buildProtocol(None)
        self.switch.timeOut = 123
        self.transport = H2Transport()
        self.switch.makeConnection(self.transport)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config=config)
        self.client.initiate_connection()
        self.send()
        self.conn = self.switch.inner

    def send(self) -> None:
        self.switch.dataReceived(self.client.data_to_send())

    def get(self) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", b"localhost"), (b":path", b"/")],
                                 end_stream=True)
        self.send()
        return sid

    def events(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        events = self.client.receive_data(data)
        self.send()
        return events


def test_the_switch_hands_an_h2_connection_to_h2Connection_with_the_sites_settings():
    pair = H2Pair()
    conn = pair.conn
    assert type(conn) is Hooked
    assert pair.transport.producer is conn  # registered with the TLS transport itself
    assert conn.reactor is pair.clock and conn.site is pair.switch.site
    assert conn.timeOut == 123 and conn.requestFactory is Request


def test_without_h2_the_switch_keeps_the_http11_channel():
    site = Site(Hold())
    site.protocol = lambda: Switched(http.HTTPChannel())
    switch = site.buildProtocol(None)
    switch.makeConnection(StringTransport())
    switch.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert type(switch.inner) is http.HTTPChannel


def test_data_waits_in_the_streams_queue_for_twisteds_send_loop():
    pair = H2Pair()
    sid = pair.get()
    request = pair.resource.requests[0]
    request.write(b"hello")
    queue = pair.conn.outbound_queue(sid)
    assert list(queue) == [b"hello"]  # queued, not framed
    request.finish()
    assert list(queue)[-1] is ti.END_STREAM  # the end, queued behind the data
    assert pair.conn.loops == 0
    pair.clock.advance(0)  # Twisted's send loop: one frame per reactor turn
    assert pair.conn.loops >= 1
    while pair.clock.getDelayedCalls() and pair.conn.outbound_queue(sid):
        pair.clock.advance(0)
    events = pair.events()
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert pair.conn.done == [sid] and pair.conn.outbound_queue(sid) is None


def test_forget_stream_forgets_the_stream_and_tells_stream_done():
    pair = H2Pair()
    sid = pair.get()
    assert sid in pair.conn.streams
    pair.conn.forget_stream(sid)
    assert sid not in pair.conn.streams and pair.conn.done == [sid]


def test_a_paused_transport_blocks_the_socket_and_holds_control_frames_till_lost():
    pair = H2Pair()
    conn = pair.conn
    pair.events()
    assert not conn.socket_blocked and conn.still_producing
    conn.pauseProducing()  # the transport's buffer is full
    assert conn.socket_blocked
    pair.client.ping(b"12345678")
    pair.send()
    assert conn.control_frames_held  # the PING's answer waits for the socket
    conn.resumeProducing()
    assert not conn.socket_blocked and not conn.control_frames_held
    assert any(isinstance(e, h2.events.PingAckReceived) for e in pair.events())
    assert conn.write_control_frames() is True
    pair.switch.connectionLost(None)
    assert not conn.still_producing


def test_a_window_update_reaches_the_hook():
    pair = H2Pair()
    sid = pair.get()
    pair.client.increment_flow_control_window(1000, sid)
    pair.send()
    assert [e.stream_id for e in pair.conn.windows] == [sid]


#: What streamd's HTTP/2 classes override of Twisted's H2Connection, on purpose.
H2_OVERRIDES = {"_sendPrioritisedData", "_handleWindowUpdate", "_requestDone",
                "writeDataToStream", "endRequest", "remainingOutboundWindow",
                "dataReceived", "resumeProducing"}


def test_streamds_h2_names_shadow_nothing_of_twisteds_but_the_hooks():
    """
    The names FlowControlledH2Connection and the adapter add (its C{_waiting}, C{_wake},
    ... and the adapter's public names) collide with none of Twisted's, today's or a
    later release's: a new Twisted C{_wake} would otherwise be overridden silently.
    """
    from twisted.web._http2 import H2Connection

    twisteds = set(dir(H2Connection)) | set(vars(H2Connection(Clock())))
    ours = set(vars(FlowControlledH2Connection)) | set(vars(ti.H2ConnectionHooks))
    ours |= set(vars(FlowControlledH2Connection(Clock()))) - set(vars(H2Connection(Clock())))
    ours = {n for n in ours if not (n.startswith("__") and n.endswith("__"))}
    assert ours & twisteds == H2_OVERRIDES


# -- 6. A parsed server endpoint ----------------------------------------------------------


def parse(desc: str):
    return ti.endpoint_fields(endpoints.serverFromString(MemoryReactorClock(), desc))


def test_tcp_fields():
    assert parse("tcp:8080:interface=127.0.0.1:backlog=7") == ti.EndpointFields(
        backlog=7, interface="127.0.0.1", port=8080)
    assert parse("tcp:0") == ti.EndpointFields(backlog=50, interface="", port=0)


def test_tcp6_fields():
    fields = parse("tcp6:9000:interface=\\:\\:1")
    assert (fields.interface, fields.port) == ("::1", 9000)


def test_ssl_fields_carry_the_context_factory():
    key, cert = certificate()
    fields = parse(f"ssl:8443:privateKey={key}:certKey={cert}:backlog=9")
    assert (fields.port, fields.backlog, fields.interface) == (8443, 9, "")
    assert fields.context_factory.getContext() is not None


def test_unix_fields():
    fields = parse("unix:/tmp/x.sock:mode=600:lockfile=1:backlog=11")
    assert fields == ti.EndpointFields(backlog=11, path="/tmp/x.sock", mode=0o600,
                                       want_pid=True)


def test_another_kind_of_endpoint_is_refused():
    with pytest.raises(ValueError):
        ti.endpoint_fields(object())
