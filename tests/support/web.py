"""
A streamd app served in-process on a real TCP port, and a real HTTP client (treq,
unbuffered) that reads a stream line by line; waits on events with a bound.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock

from streamd import config
from streamd.service import Service
from streamd.testing.conformance import wait_until
from streamd.web import StreamdApp

TIMEOUT = 10.0


def within(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    """Fail the test (TimeoutError) if C{d} has not fired in C{seconds}."""
    return d.addTimeout(seconds, reactor)


def settings(streams: dict[str, Any] | None = None, **top: Any) -> config.Settings:
    file_values = dict(top)
    if streams:
        file_values["streams"] = streams
    return config.load_settings(file_values, {})


def stub(s: config.Settings | None = None) -> tuple[StreamdApp, StubTreq, Clock]:
    """
    A StreamdApp on a L{Clock}, and a StubTreq that requests it in memory: for HTTP
    tests that need no socket (nothing is started: the app serves as built).
    """
    clock = Clock()
    app = StreamdApp(Service(s or settings(store={"backend": "memory"}), clock))
    return app, StubTreq(app.resource()), clock


class Server:
    """
    A StreamdApp on 127.0.0.1:PORT; C{url} is its base URL. Started with C{tls=True} it
    also listens with TLS (C{tls_url}), where ALPN offers h2 and http/1.1, as with
    C{--listen ssl:...}.
    """

    def __init__(self, app: StreamdApp, port, tls_port=None) -> None:
        self.app = app
        self.service = app.service
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.tls_port = tls_port
        if tls_port is not None:
            self.tls_url = f"https://127.0.0.1:{tls_port.getHost().port}"

    async def wait_open_streams(self, n: int, seconds: float = TIMEOUT) -> None:
        """Wait until exactly C{n} streams are open on the server."""
        await wait_until(lambda: len(self.app.open_streams) == n, seconds)


class StreamReader:
    """
    A real HTTP client reading a stream: every line (NDJSON) or event (SSE) as it
    arrives. C{done} fires when the response ends.
    """

    def __init__(self, response, sse: bool = False) -> None:
        self.response = response
        self.sse = sse
        self.items: list[Any] = []
        self.raw = b""
        self._buf = b""
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.done = treq.collect(response, self._data)

    def _data(self, data: bytes) -> None:
        self.raw += data
        self._buf += data
        sep = b"\n\n" if self.sse else b"\n"
        while sep in self._buf:
            item, self._buf = self._buf.split(sep, 1)
            if not item:
                continue
            self.items.append(_parse_sse(item) if self.sse else json.loads(item))
        for n, d in list(self._waiters):
            if len(self.items) >= n:
                self._waiters.remove((n, d))
                d.callback(self.items)

    def wait_for(self, n: int, seconds: float = TIMEOUT) -> defer.Deferred:
        """Fires with C{items} once at least C{n} have arrived."""
        if len(self.items) >= n:
            return defer.succeed(self.items)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return within(d, seconds)

    def messages(self) -> list[Any]:
        return [i for i in self.items if isinstance(i, dict) and "data" in i and "id" in i]

    def close(self) -> None:
        """Hang up, as a client that goes away does."""
        self.done.addErrback(lambda _: None)
        self.response.original._transport.loseConnection()


def _parse_sse(block: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            out.setdefault("comment", []).append(line[1:].strip().decode())
            continue
        field, _, value = line.partition(b":")
        out[field.decode()] = value[1:].decode() if value.startswith(b" ") else value.decode()
    return out


async def open_stream(url: str, headers: dict | None = None, sse: bool = False,
                      expect: int = 200) -> StreamReader:
    """GET a stream; returns once the status line and headers arrived."""
    response = await within(treq.get(url, headers=headers, unbuffered=True))
    assert response.code == expect, (response.code, await treq.content(response))
    return StreamReader(response, sse=sse)


async def publish(url: str, *values: Any, ndjson: bool = True) -> list[str]:
    body = b"".join(json.dumps(v).encode() + b"\n" for v in values)
    ctype = "application/x-ndjson" if ndjson else "application/json"
    response = await within(treq.post(url, data=body, headers={"Content-Type": ctype}))
    assert response.code == 202, await treq.content(response)
    return (await treq.json_content(response))["ids"]


class NonReadingClient(protocol.Protocol):
    """A raw HTTP client that sends a request and then never reads its socket."""

    def __init__(self) -> None:
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # stop reading: the kernel buffers fill up

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


async def non_reading_client(server: Server, path: str) -> NonReadingClient:
    host = server.port.getHost()
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", host.port)
    proto = await ep.connect(protocol.Factory.forProtocol(NonReadingClient))
    proto.transport.write(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode()
    )
    return proto
