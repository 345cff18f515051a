"""
Bad input over real TCP: every refusal is streamd's JSON error with its status (never a
500, a traceback in the log, an empty page or a dropped connection), and the server goes
on serving the clients it already has.
"""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
import treq
from conftest import open_stream, publish, settings, within
from twisted.logger import globalLogPublisher

from streamd.auth import sign_hs256

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
