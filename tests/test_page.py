"""
The live page: content negotiation on C{GET /}, and the page itself in a real headless
Chromium (Debian's C{chromium}, which C{.ci/run} installs): it connects, shows what is
published, reconnects after the server drops the stream, pauses and resumes without
losing a message, and stops at its limit.
"""

from __future__ import annotations

import os

import browser
import pytest_twisted
import treq
from browser import chromium_fixture  # noqa: F401  (fixture)
from conftest import publish, settings, within
from twisted.internet import defer, reactor

from streamd import __version__

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


async def _tick(seconds: float) -> None:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


async def eventually(page: browser.Browser, expression: str, expected=True,
                     seconds: float = 15.0):
    """Poll a JavaScript expression until it equals C{expected} (bounded)."""
    deadline = reactor.seconds() + seconds
    value = None
    while reactor.seconds() < deadline:
        value = await page.evaluate(expression)
        if value == expected:
            return value
        await _tick(0.05)
    raise AssertionError(f"{expression} is {value!r}, expected {expected!r} "
                         f"within {seconds} s")


STATE = "[streamd.state, streamd.received, streamd.reconnects]"
SHOWN = ("[...document.querySelectorAll('#messages li[data-id]')]"
         ".map(li => li.textContent).reverse()")


def _click(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).click(), true"


@pytest_twisted.ensureDeferred
async def test_page_in_chromium(serve, chromium):
    server = await serve(settings())
    messages = server.url + "/streams/demo/messages"
    page = chromium
    await page.start()
    try:
        await page.open(server.url + "/")
        # It watches the default stream "demo" with no click.
        await eventually(page, "window.streamd && streamd.state", "open")
        await server.wait_open_streams(1)

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
    finally:
        await page.close()


@pytest_twisted.ensureDeferred
async def test_page_explains_a_refused_stream(serve, chromium):
    server = await serve(settings(streams={"news": {"source": "memory"}}))
    page = chromium
    await page.start()
    try:
        await page.open(server.url + "/")  # "demo" is not declared: 404
        await eventually(page, "window.streamd && streamd.state", "failed")
        text = await eventually(
            page, "document.getElementById('state').textContent.startsWith('failed: 404')")
        assert text
    finally:
        await page.close()
