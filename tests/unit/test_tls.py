"""
Streams over TLS (an C{ssl:} listener, HTTP/1.1) keep the promises they keep over TCP
(issue 20): a durable source's message is acknowledged only once its encrypted bytes
have left the process (L{streamd.outbox.TLSOutbox}), and the slow-reader bounds hold
(C{send_buffer}, C{max_pending_bytes}, the notice first, the close once it left, the
cut-off of a reader that reads nothing).

Real sockets and a real TLS listener with a certificate the tests make
(L{tests.support.h2.certificate}); the clients are raw HTTP/1.1 clients on the reactor that
read, or stop reading, on demand. Waits are on events (lines, the kernel's queues,
connection loss), each with a bound.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.protocols.tls import TLSMemoryBIOProtocol

from streamd.outbox import TLSOutbox
from streamd.testing import FakeSource
from tests.support.h2 import certificate
from tests.support.web import TIMEOUT, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


class Client(protocol.Protocol):
    """
    An HTTP/1.1 client that GETs one stream and decodes its chunked NDJSON body into
    C{lines} as it arrives; L{stop_reading} leaves the bytes in the kernel (its receive
    queue, then the server's send queue fill), L{read_again} takes them.
    """

    def __init__(self, path: str) -> None:
        self.path = path.encode()
        self.head: bytes | None = None
        self.buffer = b""  # undecoded chunked framing
        self.partial = b""  # the body's last line, until its newline comes
        self.lines: list[dict] = []
        self.complete = False  # the terminating chunk came
        self.headed: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: localhost\r\n"
                             b"Accept: application/x-ndjson\r\n\r\n" % self.path)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head, self.buffer = head, rest
            self.headed.callback(self)
        while not self.complete:
            size_line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self.buffer = rest[size + 2:]
            if size == 0:
                self.complete = True
                return
            *whole, self.partial = (self.partial + rest[:size]).split(b"\n")
            self.lines.extend(json.loads(line) for line in whole if line)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    def ids(self) -> list[str]:
        return [line["id"] for line in self.lines if "id" in line]

    def stop_reading(self) -> None:
        self.transport.pauseProducing()

    def read_again(self) -> None:
        self.transport.resumeProducing()

    def socket(self) -> socket.socket:
        return _tcp(self.transport).getHandle()


def _tcp(transport):
    """The TCP transport under a TLS one (or the transport itself)."""
    return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport


def _queued(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0]


def unsent(sock: socket.socket) -> int:
    """Bytes in the kernel's send queue of C{sock}."""
    return _queued(sock, termios.TIOCOUTQ)


def unread(sock: socket.socket) -> int:
    """Bytes in the kernel's receive queue of C{sock}."""
    return _queued(sock, termios.FIONREAD)


async def connect(server, path: str, tls: bool = True) -> Client:
    """A L{Client} of C{server}'s TLS port (or its TCP one), once the response's head came."""
    if tls:
        _, cert = certificate()
        with open(cert, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        options = ssl.optionsForClientTLS("localhost", trustRoot=trust,
                                          acceptableProtocols=[b"http/1.1"])
        port = server.tls_port.getHost().port
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    client = await within(endpoint.connect(protocol.Factory.forProtocol(lambda: Client(path))))
    await within(client.headed)
    assert client.head.startswith(b"HTTP/1.1 200 "), client.head
    return client


def only_stream(server):
    (stream,) = server.app.open_streams
    return stream


async def fake_stream(serve, **top):
    """A server with TLS, and its stream "jobs" of a durable L{FakeSource}."""
    server = await serve(settings(heartbeat=0, **top), tls=True)
    source = FakeSource("jobs")
    server.service.add("jobs", source, server.service.settings.dynamic_stream("jobs"))
    return server, source


PAYLOAD = b'"' + b"x" * 2000 + b'"'


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
@ensure
async def test_what_was_acked_had_left_the_process(serve, tls):
    """
    Whatever moment streamd dies at, every message it acknowledged reaches the client:
    its bytes were in the kernel (which goes on sending them), not in the process. The
    test freezes the server's side of the connection (the process's bytes go no further,
    as if it died there), lets the client read all the kernel holds, and compares.
    """
    server, source = await fake_stream(serve, max_pending=100_000, max_pending_bytes=1 << 30)
    client = await connect(server, "/streams/jobs", tls)
    stream = only_stream(server)
    sub = source.subscriptions[0]
    client.stop_reading()
    sent = source.push(2000, PAYLOAD)  # 4 MB: more than the kernel's buffers take

    # The client reads nothing: its receive queue and the server's send queue fill, and
    # the rest stays in the process.
    server_tcp = _tcp(stream.request.channel.transport)
    server_sock = server_tcp.getHandle()
    await wait_until(lambda: unread(client.socket()) > 0 and unsent(server_sock) > 0
                     and stream.written > 0)
    await wait_until(lambda: sub.paused)

    # streamd "dies" here: its side sends nothing more; the kernel's bytes still arrive.
    server_tcp.stopWriting()
    acked = {m.id for m in sub.acked}
    client.read_again()
    await wait_until(lambda: unsent(server_sock) == 0 and unread(client.socket()) == 0)
    received = set(client.ids())
    assert stream.written > len(received)  # some of what it wrote was still in the process
    assert acked <= received, (
        f"{len(acked - received)} messages acknowledged while their bytes were still in "
        f"streamd's process (a SIGKILL would lose them); {len(received)} received, "
        f"{stream.written} written, {len(acked)} acknowledged")
    assert [m.id for m in sub.acked] == [m.id for m in sent[:len(sub.acked)]]

    # It goes on: once its bytes leave, everything is acknowledged, in order, once.
    server_tcp.startWriting()
    await wait_until(lambda: len(client.ids()) == len(sent), TIMEOUT * 3)
    await wait_until(lambda: len(sub.acked) == len(sent))
    assert client.ids() == [m.id for m in sent]
    assert [m.id for m in sub.acked] == [m.id for m in sent] and not sub.nacked
    client.transport.loseConnection()
    await within(client.lost)


@ensure
async def test_a_write_over_tls_is_acked_once_its_bytes_left_not_when_written(serve):
    server, source = await fake_stream(serve, max_pending=100_000, max_pending_bytes=1 << 30)
    client = await connect(server, "/streams/jobs")
    stream = only_stream(server)
    assert isinstance(stream.outbox, TLSOutbox)
    server_sock = _tcp(stream.request.channel.transport).getHandle()
    sub = source.subscriptions[0]

    sent = source.push(3)
    assert len(sub.acked) == 0  # handed to TLS, encrypted, but still in the process
    assert stream.outbox.buffered() > 0
    await wait_until(lambda: len(sub.acked) == 3)  # the next write turn sent them
    assert sub.acked == sent
    await wait_until(lambda: len(client.ids()) == 3)

    # A client that reads nothing: what the kernel cannot take stays, unacknowledged.
    client.stop_reading()
    more = source.push(2000, PAYLOAD)
    await wait_until(lambda: not stream.outbox.clear() and unsent(server_sock) > 0
                     and sub.paused)
    assert len(sub.acked) < stream.written  # some written, not acknowledged
    assert stream.inflight  # held until they leave
    client.read_again()
    await wait_until(lambda: len(sub.acked) == 2003, TIMEOUT * 3)
    assert sub.acked == sent + more
    client.transport.loseConnection()
    await within(client.lost)


@ensure
async def test_a_lost_tls_connection_gives_back_what_was_still_in_the_process(serve):
    server, source = await fake_stream(serve, max_pending=100_000, max_pending_bytes=1 << 30)
    client = await connect(server, "/streams/jobs")
    stream = only_stream(server)
    server_sock = _tcp(stream.request.channel.transport).getHandle()
    sub = source.subscriptions[0]
    client.stop_reading()
    sent = source.push(2000, PAYLOAD)
    await wait_until(lambda: not stream.outbox.clear() and sub.paused
                     and unsent(server_sock) > 0)
    client.transport.abortConnection()
    await wait_until(lambda: sub.cancelled)
    # Every message was either acknowledged (it left) or given back; none both.
    acked, nacked = {m.id for m in sub.acked}, {m.id for m in sub.nacked}
    assert acked | nacked == {m.id for m in sent} and not acked & nacked
    assert nacked  # what the kernel could not take


@ensure
async def test_send_buffer_bounds_the_kernels_share_over_tls(serve):
    server, source = await fake_stream(serve, send_buffer=48 * 1024)
    client = await connect(server, "/streams/jobs")
    stream = only_stream(server)
    sock = _tcp(stream.request.channel.transport).getHandle()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 48 * 1024  # doubled
    client.transport.loseConnection()
    await within(client.lost)


@ensure
async def test_a_slow_tls_reader_gets_the_notice_first_and_the_connection_closes_once_it_left(
        serve, monkeypatch):
    # A grace period longer than the test: the close comes from the notice leaving, not
    # from the cut-off of a reader that reads nothing.
    monkeypatch.setattr("streamd.slow.SLOW_CLOSE_GRACE", 60.0)
    server = await serve(settings(max_pending_bytes=64 * 1024, heartbeat=0), tls=True)
    slow = await connect(server, "/streams/big")
    slow.stop_reading()
    stream = only_stream(server)
    url = server.url + "/streams/big/messages"
    sent = 0
    payload = {"pad": "x" * 2000}
    while not stream.ended and sent < 20000:
        await publish_many(url, payload, 20)
        sent += 20
        assert stream.pending_bytes <= 64 * 1024 + 20 * 2100  # bounded by bytes
        assert stream.outbox.buffered() < 64 * 1024  # one write, not the queue, waits here
    assert stream.end_reason == "slow consumer"

    slow.read_again()
    await within(slow.lost)  # closed once the notice left (not at the 60 s cut-off)
    assert slow.complete
    assert slow.lines[-1] == {"error": {"message": "slow consumer", "max_pending": 1000,
                                        "max_pending_bytes": 64 * 1024}}
    ids = [int(i) for i in slow.ids()]
    assert ids == list(range(1, len(ids) + 1))  # in order, nothing skipped before it


@ensure
async def test_a_tls_reader_that_reads_nothing_after_the_notice_is_cut_off(serve, monkeypatch):
    monkeypatch.setattr("streamd.slow.SLOW_CLOSE_GRACE", 0.2)
    server = await serve(settings(max_pending=50, heartbeat=0), tls=True)
    slow = await connect(server, "/streams/big")
    slow.stop_reading()
    stream = only_stream(server)
    server_tcp = _tcp(stream.request.transport)
    sent = 0
    while not stream.ended and sent < 20000:
        await publish_many(server.url + "/streams/big/messages", {"pad": "x" * 2000}, 20)
        sent += 20
        assert stream.queued <= 50
    assert stream.end_reason == "slow consumer"
    await wait_until(lambda: server_tcp.disconnected)  # cut off: its bytes are freed
    slow.read_again()
    await within(slow.lost)


@ensure
async def test_drop_oldest_over_tls_stays_bounded_and_connected(serve):
    server = await serve(settings({"lossy": {"max_pending": 10, "slow_policy": "drop-oldest"}}),
                         tls=True)
    slow = await connect(server, "/streams/lossy")
    slow.stop_reading()
    stream = only_stream(server)
    sent = 0
    while stream.dropped_total < 90 and sent < 20000:
        await publish_many(server.url + "/streams/lossy/messages", {"pad": "y" * 4000}, 50)
        sent += 50
        assert stream.queued <= 10
    assert stream.dropped_total >= 90 and not stream.ended
    slow.read_again()
    await wait_until(lambda: any("dropped" in line for line in slow.lines))
    slow.transport.abortConnection()
    await server.wait_open_streams(0)


async def publish_many(url: str, value, n: int) -> None:
    body = b"".join(json.dumps(value).encode() + b"\n" for _ in range(n))
    response = await within(treq.post(url, data=body,
                                      headers={"Content-Type": "application/x-ndjson"}))
    assert response.code == 202
    await response.content()
