"""
The live page: content negotiation on C{GET /}, and the page itself in a real headless
Chromium (Debian's C{chromium}, which C{.ci/run} installs): it lists the server's
streams with their status, readers and rates, and watches the one clicked; it connects,
shows what is published, reconnects after the server drops the stream, pauses and
resumes without losing a message, and stops at its limit. A failing test leaves a
screenshot of the page in C{test-output/}.
"""

from __future__ import annotations

import dataclasses
import os

import pytest_twisted
import treq
from twisted.internet import reactor

from streamd import __version__
from streamd.testing import FakeSource
from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.page import _tick, eventually  # noqa: F401
from tests.support.web import open_stream, publish, settings, wait_until, within

BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                  "image/webp,*/*;q=0.8")


@pytest_twisted.ensureDeferred
async def test_browser_gets_the_page_and_other_clients_json(serve):
    server = await serve(settings())
    response = await within(treq.get(server.url + "/", headers={"Accept": BROWSER_ACCEPT}))
    body = await treq.content(response)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert b"new EventSource(" in body
    csp = response.headers.getRawHeaders("content-security-policy")[0]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing from another host: no absolute URL in any src/href.
    assert b"http://" not in body and b"https://" not in body

    for accept in (None, "*/*", "application/json", "application/json, text/html;q=0.5"):
        headers = {"Accept": accept} if accept else {}
        response = await within(treq.get(server.url + "/", headers=headers))
        assert response.code == 200
        info = await treq.json_content(response)
        assert info["service"] == "streamd" and info["version"] == __version__, accept
        assert "Accept" in response.headers.getRawHeaders("vary")






STATE = "[streamd.state, streamd.received, streamd.reconnects]"
SHOWN = ("[...document.querySelectorAll('#messages li[data-id]')]"
         ".map(li => li.textContent).reverse()")


def _click(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).click(), true"


@pytest_twisted.ensureDeferred
async def test_page_in_chromium(serve, chromium):
    server = await serve(settings())
    messages = server.url + "/streams/demo/messages"
    async with chromium.running("test_page_in_chromium") as page:
        await page.open(server.url + "/")
        # No stream yet (nothing declared, none used): the page says so, watches nothing.
        await eventually(page, "window.overview && overview.polls > 0")
        assert await page.evaluate("document.getElementById('streams').textContent") \
            == "no streams yet: type a name below, or publish to one"
        assert await page.evaluate("streamd.state") == "idle"
        # A name typed in: a memory stream made on first use.
        await page.evaluate('document.getElementById("stream").value = "demo"')
        await page.evaluate(_click("connect"))
        await eventually(page, "streamd.state", "open")
        await server.wait_open_streams(1)
        assert await page.evaluate("location.hash") == "#demo"

        await publish(messages, {"text": "from the test"}, ndjson=False)
        await eventually(page, STATE, ["open", 1, 0])
        assert await page.evaluate(SHOWN) == ['1{"text":"from the test"}']

        # The server drops the stream: the page reconnects by itself, from the last id.
        for stream in list(server.app.open_streams):
            stream.source_ended("test")
        await eventually(page, STATE, ["open", 1, 1])
        await server.wait_open_streams(1)
        await publish(messages, {"n": 2}, ndjson=False)
        await eventually(page, STATE, ["open", 2, 1])
        assert await page.evaluate("streamd.notices") == 1  # the "end" notice

        # Publishing from the page.
        await page.evaluate('document.getElementById("payload").value = \'{"from": "page"}\'')
        await page.evaluate(_click("publish"))
        await eventually(page, STATE, ["open", 3, 1])
        await eventually(page, "document.getElementById('publish-result').textContent",
                         "published, id 3")

        # Pause closes the stream; what is published meanwhile arrives on resume.
        await page.evaluate(_click("pause"))
        await eventually(page, "streamd.state", "paused")
        await server.wait_open_streams(0)
        await publish(messages, {"while": "paused"}, ndjson=False)
        await page.evaluate(_click("pause"))  # now "Resume"
        await eventually(page, STATE, ["open", 4, 1])
        assert await page.evaluate("streamd.pauses") == 1

        # A limit: the response ends after 2 messages and the page stops there.
        await page.evaluate('document.getElementById("limit").value = "2"')
        await page.evaluate(_click("connect"))
        await eventually(page, "streamd.state", "open")
        await publish(messages, {"n": 5}, {"n": 6}, {"n": 7})
        await eventually(page, "streamd.state", "closed")
        await server.wait_open_streams(0)
        assert await page.evaluate("streamd.received") == 6
        assert await page.evaluate("document.getElementById('limit-info').textContent") \
            == "2 of 2 on this connection"
        shown = await page.evaluate(SHOWN)
        assert [s.split("{")[0] for s in shown] == ["1", "2", "3", "4", "5", "6"]

        if os.environ.get("STREAMD_SCREENSHOT"):
            await page.screenshot(os.environ["STREAMD_SCREENSHOT"])


@pytest_twisted.ensureDeferred
async def test_page_explains_a_refused_stream(serve, chromium):
    server = await serve(settings(streams={"news": {"source": "memory"}}))
    async with chromium.running("test_page_explains_a_refused_stream") as page:
        await page.open(server.url + "/#demo")  # a link to "demo", which is not declared
        await eventually(page, "window.streamd && streamd.state", "failed")
        text = await eventually(
            page, "document.getElementById('state').textContent.startsWith('failed: 404')")
        assert text


@pytest_twisted.ensureDeferred
async def test_page_says_the_source_is_down_then_back(serve, chromium):
    # The stream opens while its source is down (issue 20): the page must not look stuck.
    server = await serve(settings())
    source = FakeSource("jobs")
    server.service.add("jobs", source, server.service.settings.dynamic_stream("jobs"))
    source.state = ("down", "queue missing")
    state = "(e => e && e.textContent)(document.getElementById('state'))"
    async with chromium.running("test_page_says_the_source_is_down_then_back") as page:
        await page.open(server.url + "/#jobs")
        await eventually(page, state, "open: source down (queue missing)")
        source.state = ("ok", None)
        await eventually(page, state, "open")
        await wait_until(lambda: source.subscriptions)
        source.push(1, b'{"job":1}')
        await eventually(page, STATE, ["open", 1, 0])
        assert await page.evaluate("streamd.notices") == 2  # down, up


def _row(name: str, expression: str) -> str:
    """A JavaScript expression about the overview's row of stream C{name}."""
    return (f"(row => row && {expression})"
            f"(document.querySelector('#streams tr[data-stream=\"{name}\"]'))")


ROWS = "[...document.querySelectorAll('#streams tr[data-stream]')].map(r => r.dataset.stream)"


@pytest_twisted.ensureDeferred
async def test_overview_in_chromium(serve, chromium):
    """The page lists the server's streams, live, and watches the one clicked."""
    server = await serve(settings(streams={"news": {}, "alerts": {}}))
    down = FakeSource("orders")
    down.state = ("down", "queue missing")
    server.service.add("orders", down, dataclasses.replace(
        server.service.stream_settings["news"], on_source_down="refuse"))
    readers = [await open_stream(server.url + "/streams/news") for _ in range(2)]
    async with chromium.running("test_overview_in_chromium") as page:
        await page.open(server.url + "/")
        await eventually(page, "window.overview && overview.polls > 0")
        # Declared streams first, then the rest, each with its source and status.
        await eventually(page, ROWS, ["alerts", "news", "orders"])
        assert await page.evaluate(_row("orders", "row.classList.contains('down')"))
        assert await page.evaluate(_row("orders", "row.querySelector('.status').textContent")) \
            == "down: queue missing"
        assert await page.evaluate(_row("news", "row.classList.contains('down')")) is False
        await eventually(page, _row("news", "row.querySelector('.readers').textContent"), "2")

        # Messages per second, in and out, and a chart of the last minute.
        # (Published until the page shows both rates: a rate lasts one sample, 1 s.)
        rates = _row("news", "[row.querySelector('.in').textContent,"
                             " row.querySelector('.out').textContent].map(Number)")
        published = 0
        deadline = reactor.seconds() + 15
        while not all(await page.evaluate(rates)):
            assert reactor.seconds() < deadline, await page.evaluate(rates)
            await publish(server.url + "/streams/news/messages", *({"n": i} for i in range(10)))
            published += 10
            await _tick(0.2)
        await eventually(page, _row("news", "row.querySelector('canvas').dataset.points >= 2"))
        for r in readers:
            await r.wait_for(published)

        # A click watches the stream.
        await page.evaluate(_row("news", "(row.querySelector('.name').click(), true)"))
        await eventually(page, "streamd.state", "open")
        await server.wait_open_streams(3)
        await eventually(page, _row("news", "row.classList.contains('watching')"))
        await eventually(page, _row("news", "row.querySelector('.readers').textContent"), "3")
        assert await page.evaluate("location.hash") == "#news"
        await publish(server.url + "/streams/news/messages", {"text": "clicked"}, ndjson=False)
        await eventually(page, SHOWN, [f'{published + 1}{{"text":"clicked"}}'])

        # A stream whose source is down is refused, and the page says why.
        await page.evaluate(_row("orders", "(row.click(), true)"))
        await eventually(page, "document.getElementById('state').textContent",
                         "failed: 503 stream 'orders' is down: queue missing")
        if os.environ.get("STREAMD_SCREENSHOT"):
            await page.screenshot(os.environ["STREAMD_SCREENSHOT"])
    for r in readers:
        r.close()
