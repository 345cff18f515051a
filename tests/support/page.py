"""Helpers of tests that test_page.py shared."""

from __future__ import annotations

from twisted.internet import defer, reactor

from tests.support import browser


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
