"""
Per-stream activity on C{GET /}: readers, paused readers, messages published and
written, and their rates per second (sampled on a clock: no sleeping here).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest_twisted
import treq
from twisted.internet.task import Clock

from streamd.web.activity import SAMPLE_INTERVAL, Activity
from tests.support.web import open_stream, publish, settings, wait_until, within


def reader(name: str, written: int = 0, paused: bool = False) -> SimpleNamespace:
    return SimpleNamespace(name=name, written=written, source_paused=paused)


def test_rates_over_the_last_interval():
    clock = Clock()
    streams = [reader("news"), reader("news", paused=True), reader("other")]
    names = {"news", "other"}
    activity = Activity(clock, lambda: streams, lambda: names)
    activity.start()

    activity.publish("news", 10)
    streams[0].written = streams[1].written = 10
    clock.advance(SAMPLE_INTERVAL)
    status = activity.describe({"news": {}, "other": {}})
    assert status["news"] == {"readers": 2, "paused_readers": 1, "published": 10,
                              "delivered": 20, "published_per_second": 10.0,
                              "delivered_per_second": 20.0}
    assert status["other"]["readers"] == 1 and status["other"]["delivered_per_second"] == 0

    # A reader that ends keeps its count in the total; a quiet second rates 0.
    activity.ended(streams.pop(0))
    clock.advance(SAMPLE_INTERVAL)
    status = activity.describe({"news": {}})["news"]
    assert (status["readers"], status["delivered"], status["delivered_per_second"]) == (1, 20, 0)

    activity.publish("news", 3)
    streams[0].written += 3
    clock.advance(SAMPLE_INTERVAL)
    assert activity.rates["news"] == (3.0, 3.0)
    clock.advance(SAMPLE_INTERVAL)
    assert activity.rates["news"] == (0.0, 0.0)
    activity.stop()
    assert not clock.getDelayedCalls()


def test_names_that_go_away_are_forgotten():
    clock = Clock()
    names = {"news"}
    activity = Activity(clock, lambda: [], lambda: names)
    activity.publish("news", 1)
    activity.ended(reader("subscription:abc", written=5))  # not a source's stream
    activity.sample()
    assert dict(activity.delivered()) == {}
    names.clear()  # the dynamic stream was reaped
    activity.sample()
    assert not activity.published and not activity.rates


@pytest_twisted.ensureDeferred
async def test_index_shows_readers_and_rates(serve):
    server = await serve(settings({"news": {}, "quiet": {}}))
    readers = [await open_stream(server.url + "/streams/news") for _ in range(2)]
    await server.wait_open_streams(2)
    await publish(server.url + "/streams/news/messages", *range(5))
    for r in readers:
        await r.wait_for(5)
    # Within a sample interval, the rates show the burst.
    await wait_until(lambda: server.app.activity.rates.get("news", (0, 0))[0] > 0, 3)
    info = await treq.json_content(await within(treq.get(server.url + "/")))
    news = info["sources"]["news"]
    assert (news["readers"], news["published"], news["delivered"]) == (2, 5, 10)
    assert news["published_per_second"] > 0 and news["delivered_per_second"] > 0
    assert info["sources"]["quiet"]["readers"] == 0
    for r in readers:
        r.close()
