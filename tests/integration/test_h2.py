"""
HTTP/2 over TLS (C{--listen ssl:...} with C{twisted[http2]} installed): curl reads an
NDJSON stream over h2; twenty EventSources on one page in headless Chromium share one
connection and all receive every message (where HTTP/1.1 makes the seventh wait); and a
stream whose reader stops reading pauses its own source subscription only, while the
other streams on the same connection keep flowing.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import pytest_twisted
import treq
from twisted.internet import utils

from streamd.testing import FakeSource
from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.h2 import h2_connect
from tests.support.page import eventually
from tests.support.web import publish, settings, wait_until, within


def _curl_speaks_h2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    features = subprocess.run([curl, "-V"], capture_output=True, text=True).stdout
    return "HTTP2" in features


@pytest.mark.skipif(not _curl_speaks_h2(), reason="needs curl with HTTP/2 (nghttp2)")
@pytest_twisted.ensureDeferred
async def test_curl_reads_ndjson_over_h2(serve):
    server = await serve(settings(), tls=True)
    curl = utils.getProcessOutputAndValue(shutil.which("curl"), [
        "--http2", "-k", "-sS", "-N", "--max-time", "20", "-w", r"\nhttp_version=%{http_version}",
        server.tls_url + "/streams/news?limit=3"])
    await server.wait_open_streams(1)
    [stream] = server.app.open_streams
    assert stream.request.clientproto == b"HTTP/2"
    await publish(server.url + "/streams/news/messages", {"n": 1}, {"n": 2}, {"n": 3})
    out, err, code = await within(curl, 20)
    assert code == 0, err
    *lines, version = [line for line in out.decode().split("\n") if line]
    assert version == "http_version=2"
    assert [json.loads(line) for line in lines] == [
        {"id": str(n), "stream": "news", "data": {"n": n}} for n in (1, 2, 3)]


# Each EventSource records the data of every message it receives.
OPEN_EVENTSOURCES = """
window.sources = [];
for (let i = 0; i < %d; i++) {
  const es = new EventSource("/streams/%s?format=sse");
  es.got = [];
  es.onmessage = (e) => es.got.push(JSON.parse(e.data).n);
  sources.push(es);
}
true
"""


async def open_sources(page, origin: str, count: int, name: str) -> None:
    """
    On a same-origin document that opens nothing by itself, open C{count}
    EventSources, all on stream C{name}.
    """
    await page.open(origin + "/health")
    await eventually(page, "location.origin", origin)
    await page.evaluate(OPEN_EVENTSOURCES % (count, name))


@pytest_twisted.ensureDeferred
async def test_twenty_eventsources_share_one_h2_connection(serve, chromium):
    server = await serve(settings(), tls=True)
    chromium.flags.append("--ignore-certificate-errors")  # the test's self-signed certificate
    async with chromium.running("test_twenty_eventsources_share_one_h2_connection") as page:
        await open_sources(page, server.tls_url, 20, "fan")
        await server.wait_open_streams(20)
        streams = list(server.app.open_streams)
        assert {s.request.clientproto for s in streams} == {b"HTTP/2"}
        # One TCP connection: every stream comes from the same client port.
        assert len({s.request.getClientAddress().port for s in streams}) == 1

        await publish(server.url + "/streams/fan/messages", *({"n": n} for n in range(5)))
        await eventually(page, "sources.every(es => es.got.length === 5)")
        assert await page.evaluate("sources.map(es => es.got.join())") == ["0,1,2,3,4"] * 20


@pytest_twisted.ensureDeferred
async def test_over_http11_the_seventh_eventsource_waits(serve, chromium):
    """What the test above proves: over HTTP/1.1 Chromium opens 6 connections per host."""
    server = await serve(settings())
    async with chromium.running("test_over_http11_the_seventh_eventsource_waits") as page:
        await open_sources(page, server.url, 7, "seven")
        await server.wait_open_streams(6)
        await publish(server.url + "/streams/seven/messages", {"n": 1})
        await eventually(page, "sources.slice(0, 6).every(es => es.got.length === 1)")
        # The six got the message; the seventh is still connecting, never opened.
        assert await page.evaluate("[sources[6].readyState, sources[6].got.length]") == [0, 0]
        assert len(server.app.open_streams) == 6

        await page.evaluate("sources[0].close(), true")  # frees a connection
        await eventually(page, "sources[6].readyState", 1)
        await server.wait_open_streams(6)
        await publish(server.url + "/streams/seven/messages", {"n": 2})
        await eventually(page, "sources[6].got.join()", "2")


@pytest_twisted.ensureDeferred
async def test_a_slow_h2_stream_pauses_only_its_own_subscription(serve):
    server = await serve(settings(), tls=True)
    app = server.app
    # A source that records pause and resume per subscription.
    server.service.add("jobs", FakeSource("jobs"),
                       server.service.settings.dynamic_stream("jobs"))

    client = await h2_connect(server)
    try:
        fast = [client.get("/streams/jobs"), client.get("/streams/jobs")]
        slow = client.get("/streams/jobs", acknowledge=False)
        await server.wait_open_streams(3)
        assert client.transport.negotiatedProtocol == b"h2"
        by_client = {s.request.channel.streamID: s for s in app.open_streams}
        subscription = {r: by_client[r.stream_id].subscription for r in [*fast, slow]}

        # 200 messages of about 1 KiB each: three times the slow stream's window.
        payload = {"pad": "x" * 1000}
        for _ in range(10):
            await publish(server.url + "/streams/jobs/messages", *[payload] * 20)
        for r in fast:
            await r.wait_lines(200)
        await wait_until(lambda: subscription[slow].paused)
        assert not any(subscription[r].paused for r in fast)
        held = len(slow.lines())
        assert held < 100  # what one 64 KiB window holds

        # The others keep flowing on the same connection; the slow one stays paused.
        for _ in range(5):
            await publish(server.url + "/streams/jobs/messages", *[payload] * 20)
        for r in fast:
            await r.wait_lines(300)
        assert subscription[slow].paused
        assert not any(subscription[r].paused for r in fast)
        assert len(slow.lines()) == held
        # GET / says so too.
        info = await treq.json_content(await within(treq.get(server.url + "/")))
        assert (info["sources"]["jobs"]["readers"], info["sources"]["jobs"]["paused_readers"]) \
            == (3, 1)

        # Reading again resumes it, and it gets everything, in order.
        slow.read_again()
        await slow.wait_lines(300)
        await wait_until(lambda: not subscription[slow].paused)
        ids = [json.loads(line)["id"] for line in slow.lines()]
        assert ids == [str(n) for n in range(1, 301)]
    finally:
        client.transport.loseConnection()
        await within(client.lost)
