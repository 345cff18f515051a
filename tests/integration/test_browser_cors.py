"""
CORS and the EventSource token path in a real headless Chromium (what test_auth.py
shows with treq): a page on one origin streams from streamd on another port with
C{?access_token=} or a C{streamd_token} cookie (C{withCredentials}); the browser
itself refuses the stream for an origin not in C{cors_origins}, and a stream without
a token fails with a 401 the page can read.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.page import eventually
from tests.support.web import settings, within

TOKEN = "reader-token"
AUTH = {"mode": "token", "max_connections_per_identity": 1, "tokens": [
    {"token": TOKEN, "identity": "reader", "read": ["news"], "publish": ["news"]}]}

# The page the browser loads from the other origin: watch(url, options) opens an
# EventSource and records what it sees in `seen` (and the last message in the title).
PAGE = b"""<!doctype html><title>none</title><script>
var seen = null;
function watch(url, options) {
  seen = {opens: 0, errors: 0, data: [], state: -1};
  var es = new EventSource(url, options);
  es.onopen = function () { seen.opens++; seen.state = es.readyState; };
  es.onmessage = function (e) { seen.data.push(e.data); document.title = e.data; };
  es.onerror = function () { seen.errors++; seen.state = es.readyState; };
  window.es = es;
  return true;
}
</script>"""

CLOSED = 2  # EventSource.CLOSED: failed for good, no reconnection


class Page(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return PAGE


@pytest_twisted.async_yield_fixture
async def origins():
    """Two static pages on their own ports: two origins, neither of them streamd's."""
    ports = []
    for _ in range(2):
        site = Site(Page())
        ports.append(await serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(site))
    yield [f"http://127.0.0.1:{p.getHost().port}" for p in ports]
    for p in ports:
        await p.stopListening()


async def post(server, payload) -> None:
    r = await within(treq.post(server.url + "/streams/news/messages",
                               data=json.dumps(payload, separators=(",", ":")).encode(),
                               headers={"Content-Type": "application/json",
                                        "Authorization": f"Bearer {TOKEN}"}))
    assert r.code == 202, await treq.content(r)


async def watch(page, url: str, options: str = "{}") -> None:
    await page.evaluate(f"watch({json.dumps(url)}, {options})")


@pytest_twisted.ensureDeferred
async def test_listed_origin_streams_with_token_or_cookie(serve, chromium, origins):
    listed, _ = origins
    server = await serve(settings(streams={"news": {"source": "memory"}},
                                  cors_origins=[listed], auth=AUTH))
    stream = server.url + "/streams/news"
    page = chromium
    await page.start()
    try:
        await page.open(listed + "/")
        await eventually(page, "typeof watch", "function")

        # ?access_token=: an EventSource cannot send an Authorization header.
        await watch(page, f"{stream}?access_token={TOKEN}")
        await eventually(page, "seen.opens", 1)
        await server.wait_open_streams(1)
        await post(server, {"text": "hello"})
        await eventually(page, "document.title", '{"text":"hello"}')

        # The server ends the stream: the browser reconnects cross-origin by itself
        # (with Last-Event-ID) and the token in the URL still lets it in.
        for s in list(server.app.open_streams):
            s.source_ended("test")
        await eventually(page, "seen.opens", 2)
        await server.wait_open_streams(1)
        await post(server, {"n": 2})
        await eventually(page, "seen.data", ['{"text":"hello"}', '{"n":2}'])
        await page.evaluate("es.close(), true")
        await server.wait_open_streams(0)

        # No token: the stream fails (no reconnection), and as errors carry CORS
        # headers too, the page can read why.
        await watch(page, stream)
        await eventually(page, "[seen.state, seen.opens]", [CLOSED, 0])
        assert await page.evaluate(
            f"fetch({json.dumps(stream)}).then(r => [r.status, r.headers.has('www-authenticate')])"
        ) == [401, True]

        # A streamd_token cookie (cookies are per host, not per port, so this page
        # can set one streamd's port receives). It goes cross-origin only with
        # withCredentials, which the browser allows because the origin is listed
        # (Access-Control-Allow-Credentials, and the origin echoed rather than *).
        await page.evaluate(f"document.cookie = 'streamd_token={TOKEN}; path=/', true")
        await watch(page, stream)  # credentials mode "same-origin": no cookie sent
        await eventually(page, "[seen.state, seen.opens]", [CLOSED, 0])
        await watch(page, stream, "{withCredentials: true}")
        await eventually(page, "seen.opens", 1)
        await server.wait_open_streams(1)
        await post(server, {"by": "cookie"})
        await eventually(page, "seen.data", ['{"by":"cookie"}'])
        # One stream per identity: one more is a 429 whose Retry-After the page can read.
        assert await page.evaluate(
            f"fetch({json.dumps(stream + '?access_token=' + TOKEN)})"
            ".then(r => [r.status, r.headers.get('retry-after')])") == [429, "10"]
        await page.evaluate("es.close(), true")
    finally:
        await page.close()


@pytest_twisted.ensureDeferred
async def test_origin_not_listed_is_refused_by_the_browser(serve, chromium, origins):
    listed, other = origins
    server = await serve(settings(streams={"news": {"source": "memory"}},
                                  cors_origins=[listed], auth=AUTH))
    page = chromium
    await page.start()
    try:
        await page.open(other + "/")
        await eventually(page, "typeof watch", "function")
        # streamd answers (a valid token: it is not the server refusing), but without
        # Access-Control-Allow-Origin the browser fails the EventSource for good.
        await watch(page, f"{server.url}/streams/news?access_token={TOKEN}")
        await eventually(page, "seen.state", CLOSED)
        await post(server, {"text": "not for this page"})
        assert await page.evaluate("[seen.opens, seen.data, document.title]") \
            == [0, [], "none"]
        # Nor can the page read any response from streamd.
        assert await page.evaluate(
            f"fetch({json.dumps(server.url + '/')}).then(() => 'read', () => 'refused')"
        ) == "refused"
    finally:
        await page.close()
