"""
Slow and stuck readers over real sockets: the slow-consumer notice overtakes what is
queued and reaches a client reading 20 KB/s, the connection then ends cleanly, and a
client that reads nothing costs streamd a bounded number of bytes. (The same decisions
on a L{Clock}, with no sockets: test_stream_slow.py and test_stream_outbox.py.)
"""

import json
import socket

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone

from tests.support.web import non_reading_client, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred

PAD = "x" * 1000


class SlowReader(protocol.Protocol):
    """Reads about C{rate} bytes a second: one small read every 0.1 s."""

    rate = 20_000

    def __init__(self) -> None:
        self.raw = b""
        self.got_notice = defer.Deferred()
        self.lost = defer.Deferred()
        self.reason = None

    def connectionMade(self) -> None:
        # A small receive buffer, so that what we have not read stays on streamd's side.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pauseProducing()
        self.budget = 0
        self.tick = task.LoopingCall(self._tick)
        self.tick.start(0.1, now=False)

    def _tick(self) -> None:
        self.budget = self.rate // 10
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.budget -= len(data)
        if self.budget <= 0:
            self.transport.pauseProducing()
        if not self.got_notice.called and b"slow consumer" in self.raw:
            self.got_notice.callback(None)

    def connectionLost(self, reason) -> None:
        if self.tick.running:
            self.tick.stop()
        self.reason = reason
        self.lost.callback(None)


@ensure
async def test_slow_consumer_notice_reaches_a_20kb_s_reader_within_seconds_then_a_clean_end(
        serve):
    server = await serve(settings({"news": {"max_pending": 50}}))
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    client = await ep.connect(protocol.Factory.forProtocol(SlowReader))
    client.transport.write(b"GET /streams/news HTTP/1.1\r\nHost: x\r\n\r\n")
    await server.wait_open_streams(1)
    (stream,) = server.app.open_streams
    sent = 0
    while not stream.ended:
        await publish(server.url + "/streams/news/messages",
                      *[{"n": sent + i, "pad": PAD} for i in range(20)])
        sent += 20
        assert sent < 5000, "the slow policy never applied"
    await within(client.got_notice, 20)
    await within(client.lost, 10)
    body = client.raw.split(b"\r\n\r\n", 1)[1]
    # The notice is the last line, after whole messages, then the terminating chunk:
    # the client reads everything that was under way and no message after it.
    assert body.endswith(b"\r\n0\r\n\r\n")
    text = _unchunk(body)
    lines = [json.loads(part) for part in text.splitlines()]
    assert lines[-1]["error"]["message"] == "slow consumer"
    got = [m["data"]["n"] for m in lines[:-1]]
    assert got == list(range(len(got)))
    assert len(got) < sent
    assert client.reason.type is ConnectionDone, client.reason  # a clean close
    # Ahead of the notice, exactly what the stream had written when it ended (nothing
    # of its queue), and no more than this reader reads in 10 s: counted in bytes, not
    # seconds, so that a busy machine can neither pass nor fail it.
    ahead = len(text) - len(text.splitlines(keepends=True)[-1])
    print(f"{ahead} bytes ahead of the notice, {len(client.raw)} read in all")
    assert ahead == stream.bytes_written
    assert ahead < 10 * SlowReader.rate, f"{ahead} bytes were ahead of the notice"


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


@ensure
async def test_a_client_that_reads_nothing_holds_a_bounded_amount_and_no_more(serve):
    server = await serve(settings({"news": {"max_pending": 100_000,
                                            "max_pending_bytes": 1 << 30}}))
    slow = await non_reading_client(server, "/streams/news")
    await server.wait_open_streams(1)
    (stream,) = server.app.open_streams
    # One 4 MB publish: the stream writes what the kernel takes, then keeps the rest
    # as messages (shared with every other reader), not as a copy of its own.
    await publish(server.url + "/streams/news/messages",
                  *[{"n": i, "pad": PAD} for i in range(4000)])
    await wait_until(lambda: stream.queued > 0 and stream.source_paused)
    outbox = stream.outbox
    assert outbox.buffered() <= 64 * 1024  # in this process, beyond the kernel
    # The kernel's share is bounded by send_buffer (64 KiB; Linux doubles it).
    handle = outbox.transport.getHandle()
    assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 64 * 1024
    assert stream.bytes_written < 1024 * 1024
    slow.transport.abortConnection()
    await within(slow.lost)
    await server.wait_open_streams(0)
