"""
Bad input over real TCP: every refusal is streamd's JSON error with its status (never a
500, a traceback in the log, an empty page or a dropped connection), and the server goes
on serving the clients it already has.
"""

from __future__ import annotations

import base64
import gc
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher

from streamd.auth import sign_hs256
from tests.support.web import open_stream, publish, settings, within

ensure = pytest_twisted.ensureDeferred

#: Every route that reads a JSON body: (method, path, content type).
JSON_ROUTES = [
    ("POST", "/streams/news/messages", "application/json"),
    ("POST", "/streams/news/messages", "application/x-ndjson"),
    ("POST", "/streams/news/filter", "application/json"),
    ("POST", "/streams/news/ack", "application/json"),
    ("POST", "/events", "application/json"),
    ("POST", "/events", "application/x-ndjson"),
    ("POST", "/jsonrpc", "application/json"),
    ("POST", "/", "application/json"),
    ("PUT", "/channels/temperature", "application/json"),
    ("POST", "/subscriptions", "application/json"),
]


def nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.fixture
def failures():
    """Every failure (traceback) logged while the test runs."""
    seen: list[dict] = []
    gc.collect()  # an earlier test's unhandled Deferred is logged now, not during this one

    def observe(event):
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def app_settings(**top):
    return settings(store={"backend": "memory"}, **top)


async def send(server, method: str, path: str, ctype: str, body: bytes):
    r = await within(treq.request(method, server.url + path, data=body,
                                  headers={"Content-Type": ctype}))
    return r, await within(treq.json_content(r))


def error_message(path: str, answer) -> str:
    """The message of streamd's error, or of the JSON-RPC parse error."""
    if path in ("/jsonrpc", "/"):
        assert answer["error"]["code"] == -32700, answer
    else:
        assert answer["error"]["status"] == 400, answer
    return answer["error"]["message"]


async def serve_a_reader(serve, **top):
    """A server, and a reader of its stream C{news} opened before any bad request."""
    server = await serve(app_settings(**top))
    reader = await open_stream(server.url + "/streams/news")
    await server.wait_open_streams(1)
    return server, reader


async def still_serving(server, reader, failures, value) -> None:
    """
    No traceback was logged, and the reader's next message is C{value}, published now:
    nothing bad was relayed, and the server goes on serving the clients it has.
    """
    assert failures == []
    await publish(server.url + "/streams/news/messages", value)
    items = await reader.wait_for(1)
    assert [i["data"] for i in items] == [value]
    reader.close()


@ensure
async def test_deep_json_is_a_400_naming_max_json_depth_on_every_route(serve, failures):
    server, reader = await serve_a_reader(serve)
    for method, path, ctype in JSON_ROUTES:
        r, answer = await send(server, method, path, ctype, nested(10_000))
        assert r.code == 400, (path, answer)
        assert "max_json_depth (64 levels)" in error_message(path, answer), (path, answer)
    await still_serving(server, reader, failures, {"after": "deep"})


@ensure
async def test_max_json_depth_is_configurable(serve):
    server = await serve(app_settings(max_json_depth=3))
    url = server.url + "/streams/news/messages"
    r, _ = await send(server, "POST", "/streams/news/messages", "application/json", nested(3))
    assert r.code == 202
    r, answer = await send(server, "POST", "/streams/news/messages", "application/x-ndjson",
                           b"1\n" + nested(4) + b"\n")
    assert r.code == 400
    assert answer["error"]["message"] == (
        "line 2: arrays and objects nested deeper than max_json_depth (3 levels)")
    # Brackets inside strings are text, not nesting.
    assert len(await publish(url, {"a": "[[[[[[{{{{{{"})) == 1


@ensure
async def test_the_largest_max_json_depth_is_safe_on_every_path(serve, failures):
    # 500 levels are parsed, re-encoded (a pretty-printed body, a channel's value, an
    # event's envelope) and relayed within Python's recursion limit.
    server, reader = await serve_a_reader(serve, max_json_depth=500)
    deep = b'{"a":\n' * 500 + b"1" + b"}" * 500
    r, _ = await send(server, "POST", "/streams/news/messages", "application/json", deep)
    assert r.code == 202
    items = await reader.wait_for(1)
    assert json.dumps(items[0]["data"], separators=(",", ":")) == deep.replace(b"\n", b"").decode()
    r, answer = await send(server, "PUT", "/channels/deep", "application/json", deep)
    assert r.code == 200 and answer["value"] == items[0]["data"]
    r, _ = await send(server, "POST", "/events", "application/json", deep)
    assert r.code == 201
    r = await within(treq.get(server.url + "/events"))
    assert (await treq.json_content(r))[0]["data"] == items[0]["data"]
    assert failures == []
    reader.close()


@ensure
async def test_nan_and_infinities_are_refused_everywhere_and_never_relayed(serve, failures):
    server, reader = await serve_a_reader(serve)
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"a": [1, %s]}' % constant
        for method, path, ctype in JSON_ROUTES:
            r, answer = await send(server, method, path, ctype, body)
            assert r.code == 400, (path, constant, answer)
            assert f"{constant.decode()} is not a JSON number" in error_message(path, answer)
    r, answer = await send(server, "POST", "/streams/news/messages", "application/x-ndjson",
                           b'{"a": 1}\nNaN\n')
    assert r.code == 400 and answer["error"]["message"].startswith("line 2: ")
    await still_serving(server, reader, failures, {"after": "nan"})


@ensure
async def test_a_jwt_of_deep_or_nan_json_is_a_401_not_a_500(serve, failures):
    secret = "0123456789abcdef-secret"
    server = await serve(app_settings(auth={"mode": "jwt", "jwt_secret": secret}))

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    deep = b"[" * 5000 + b"]" * 5000
    tokens = [
        # The header is read before the signature is checked: anyone can send this.
        f"{b64(deep)}.{b64(b'{}')}.{b64(b'signature')}",
        # Signed, but "exp": NaN compares false with every time: it would never expire.
        sign_hs256({"sub": "a", "exp": float("nan")}, secret.encode()),
    ]
    for token in tokens:
        r = await within(treq.get(server.url + "/streams/news",
                                  headers={"Authorization": f"Bearer {token}"}))
        assert r.code == 401, await treq.content(r)
        assert (await treq.json_content(r))["error"]["status"] == 401
    assert failures == []


# -- over a raw socket -------------------------------------------------------------


class RawClient(protocol.Protocol):
    """Sends bytes as they are; C{closed} fires with all it read once the server hangs up."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.data)


async def raw(server, request: bytes) -> bytes:
    """Send C{request} on a new connection; everything the server answered."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port.getHost().port)
    client = await within(endpoint.connect(protocol.Factory.forProtocol(RawClient)))
    client.transport.write(request)
    return await within(client.closed)


# -- Twisted's HTTP parser -----------------------------------------------------------


def responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """(status line, headers, body) of each response (bodies with a Content-Length)."""
    out = []
    while data:
        head, data = data.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines)}
        length = int(headers[b"content-length"])
        out.append((status, headers, data[:length]))
        data = data[length:]
    return out


def json_error(data: bytes, status: int, reason: bytes) -> str:
    """Assert C{data} is one JSON error answer with C{status}; its message."""
    [(line, headers, body)] = responses(data)
    assert line == b"HTTP/1.1 %d %s" % (status, reason)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    error = json.loads(body)["error"]
    assert error["status"] == status
    return error["message"]


GET = b"GET /health HTTP/1.1\r\nHost: x\r\n"
POST = b"POST /streams/news/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

MALFORMED = {
    "NUL in a header": GET + b"X-A: a\x00b\r\n\r\n",
    "header line without a colon": GET + b"no colon here\r\n\r\n",
    "two Content-Lengths": POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length and Transfer-Encoding":
        POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "0xFF in the path": b"GET /streams/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/0.9 request line": b"GET /health\r\n\r\n",
    "bad chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@ensure
async def test_malformed_requests_get_a_json_400_and_others_are_served(serve, failures):
    server, reader = await serve_a_reader(serve)
    for what, request in MALFORMED.items():
        message = json_error(await raw(server, request), 400, b"Bad Request")
        assert message.startswith("malformed HTTP request"), what
    await still_serving(server, reader, failures, {"after": "malformed"})


@ensure
async def test_oversized_uri_is_414_and_oversized_headers_431(serve, failures):
    server, reader = await serve_a_reader(serve)
    long_path = b"GET /streams/" + b"a" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    message = json_error(await raw(server, long_path), 414, b"Request-URI Too Long")
    assert message == "request line (URI) over 16384 bytes"
    big_header = GET + b"X-Big: " + b"b" * 100_000 + b"\r\n\r\n"
    message = json_error(await raw(server, big_header), 431, b"Request Header Fields Too Large")
    assert message == "a header line over 16384 bytes"
    many = GET + b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 100) for i in range(200)) + b"\r\n"
    message = json_error(await raw(server, many), 431, b"Request Header Fields Too Large")
    assert message == "headers over 16384 bytes"
    count = GET + b"X-H: 1\r\n" * 501 + b"\r\n"
    message = json_error(await raw(server, count), 431, b"Request Header Fields Too Large")
    assert message == "more than 500 headers"
    await still_serving(server, reader, failures, {"after": "oversized"})


@ensure
async def test_keep_alive_requests_are_answered_as_before(serve):
    server = await serve(app_settings())
    body = b'{"n": 1}'
    one = POST + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    data = await raw(server, one + one + GET + b"Connection: close\r\n\r\n")
    # Twisted chunks these bodies: read the status lines and the two 202 bodies.
    assert [line for line in data.split(b"\r\n") if line.startswith(b"HTTP/")] == [
        b"HTTP/1.1 202 Accepted", b"HTTP/1.1 202 Accepted", b"HTTP/1.1 200 OK"]
    assert data.count(b'{"ids": ["') == 2
