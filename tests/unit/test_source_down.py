"""
A stream whose source is down (issue 20): by default it opens anyway (200, the head, a
C{{"status": {"source": "down", "reason": ...}}} notice, heartbeats) and takes the source's
messages once it is back; C{on_source_down = "refuse"} answers 503 with Retry-After.

The units run a L{Stream} on a L{Clock}; the rest are end to end: streamd in-process on a
real port, a private redis-server stopped and started, treq, curl and a headless
Chromium's EventSource as the readers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jsonschema
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock

from streamd.config import ConfigError
from streamd.errors import InvalidRequest, SourceDown
from streamd.framing import NDJSON, SSE
from streamd.stream import Stream
from streamd.testing import FakeRequest, FakeSource
from streamd.testing.redis import free_port, redis_fixture  # noqa: F401  (fixture)
from streamd.web.common import SOURCE_CHECK, opened, readable
from streamd.web.errors import answer
from streamd.web.openapi import document
from tests.support.amqp_broker import broker  # noqa: F401  (fixture)
from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.sqs_server import moto  # noqa: F401  (fixture)
from tests.support.web import open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


class DownableSource(FakeSource):
    """A fake source that refuses subscribers while down, as every real source does."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__(name)
        self.refuse: Exception | None = None  # raised by the next subscribe
        self.replay: int = 0  # messages delivered from within subscribe

    def subscribe(self, consumer, since=None):
        if self.refuse is not None:
            raise self.refuse
        if self.state[0] != "ok":
            raise SourceDown(self.state[1] or "down")
        sub = super().subscribe(consumer, since)
        if self.replay:
            consumer.deliver(self.make(self.replay))
        return sub


def waiting_stream(source, framing=NDJSON, clock=None, **kw):
    """A Stream opened as the stream route opens one; (stream, request, clock)."""
    clock = clock or Clock()
    request = FakeRequest()
    reading = readable(source, settings(), request, framing, clock, "stream 'f' is down")
    stream = Stream(request, reading, framing, clock, heartbeat=0, **kw)
    stream.start()
    opened(None, reading)  # what the route does with what it returns
    return stream, request, clock


def notices(request) -> list:
    return [json.loads(line) for line in request.lines()]


# -- units ------------------------------------------------------------------------------


def test_waits_says_down_then_up_then_delivers():
    source = DownableSource()
    source.state = ("down", "redis default: cannot reach 127.0.0.1:1")
    stream, request, clock = waiting_stream(source)
    assert notices(request) == [
        {"status": {"source": "down", "reason": "redis default: cannot reach 127.0.0.1:1"}}]
    assert source.subscriptions == [] and not stream.ended
    clock.advance(SOURCE_CHECK * 4)  # still down: nothing more said
    assert len(request.lines()) == 1 and source.subscriptions == []

    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    assert notices(request)[1:] == [{"status": {"source": "up"}}]
    (sub,) = source.subscriptions
    sent = source.push(2)
    assert [n["id"] for n in notices(request)[2:]] == [m.id for m in sent]
    assert sub.acked == sent  # written: acked to the source, straight through
    assert clock.getDelayedCalls() == []  # nothing left looking at the source


def test_the_notices_are_lines_the_openapi_document_describes():
    # A client generated from /openapi.json must be able to read them.
    doc = document()
    line = doc["paths"]["/streams/{name}"]["get"]["responses"]["200"]["content"][
        "application/x-ndjson"]["schema"]
    check = jsonschema.Draft202012Validator({**line, "components": doc["components"]})
    source = DownableSource()
    source.state = ("down", "queue missing")
    stream, request, clock = waiting_stream(source)
    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    source.push(1)
    lines = notices(request)
    assert [next(iter(n)) for n in lines] == ["status", "status", "id"]
    for n in lines:
        check.validate(n)
    with pytest.raises(jsonschema.ValidationError):  # the schema does tell them apart
        check.validate({"status": {"source": "sideways"}})


def test_sse_notice_is_a_status_event():
    source = DownableSource()
    source.state = ("down", "queue missing")
    _, request, clock = waiting_stream(source, SSE)
    assert request.written.endswith(
        b'event: status\ndata: {"source":"down","reason":"queue missing"}\n\n')
    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    assert request.written.endswith(b'event: status\ndata: {"source":"up"}\n\n')


def test_an_up_source_is_opened_as_it_is():
    source = DownableSource()
    request = FakeRequest()
    assert readable(source, settings(), request, NDJSON, Clock(), "x") is source


def test_back_by_the_time_the_stream_subscribes():
    # Several workers count an identity's streams first: the source may be up by then.
    source = DownableSource()
    source.state = ("down", "connecting")
    clock = Clock()
    request = FakeRequest()
    reading = readable(source, settings(), request, NDJSON, clock, "x")
    source.state = ("ok", None)
    stream = Stream(request, reading, NDJSON, clock, heartbeat=0)
    stream.start()
    opened(None, reading)  # what the route does with what it returns
    assert request.lines() == [] and stream.subscription is source.subscriptions[0]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("retry, after", [(3000, b"3"), (500, b"1"), (0, b"1"), (4500, b"5")])
def test_refuse_is_503_with_retry_after(retry, after):
    source = DownableSource()
    source.state = ("down", "queue missing")
    s = settings(on_source_down="refuse", retry=retry)
    with pytest.raises(SourceDown) as e:
        readable(source, s, FakeRequest(), NDJSON, Clock(), "stream 'f' is down")
    assert e.value.message == "stream 'f' is down: queue missing"
    assert answer(e.value) == (503, {b"Retry-After": after})


def test_demand_is_kept_until_the_source_is_back():
    source = DownableSource()
    source.state = ("down", "x")
    stream, request, clock = waiting_stream(source)
    stream.pauseProducing()
    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    (sub,) = source.subscriptions
    assert sub.paused  # the paused reader's source reads nothing
    stream.resumeProducing()
    assert not sub.paused


def test_calls_made_while_the_source_subscribes_are_passed_on():
    # The replay delivered from within subscribe fills limit=1: the stream writes and
    # acks one, gives the other back and ends, all before subscribe returns.
    source = DownableSource()
    source.state = ("down", "x")
    source.replay = 2
    stream, request, clock = waiting_stream(source, limit=1)
    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    (sub,) = source.subscriptions
    assert stream.ended and stream.end_reason == "limit"
    assert [m.id for m in sub.acked] == ["1"] and [m.id for m in sub.nacked] == ["2"]
    assert sub.cancelled
    assert notices(request)[-1]["id"] == "1"


def test_a_reader_that_leaves_stops_the_wait():
    source = DownableSource()
    source.state = ("down", "x")
    stream, _, clock = waiting_stream(source)
    other, _, _ = waiting_stream(source, clock=clock)
    assert len(clock.getDelayedCalls()) == 1  # one look per source, however many wait
    stream.transport_lost()
    assert len(clock.getDelayedCalls()) == 1  # the other still waits
    source.state = ("ok", None)
    clock.advance(SOURCE_CHECK)
    assert [s.consumer for s in source.subscriptions] == [other]
    assert clock.getDelayedCalls() == []


def test_the_last_reader_gone_cancels_the_timer():
    source = DownableSource()
    source.state = ("down", "x")
    stream, _, clock = waiting_stream(source)
    stream.transport_lost()
    assert clock.getDelayedCalls() == []


def test_down_again_when_subscribing_keeps_waiting():
    source = DownableSource()
    source.state = ("down", "x")
    _, request, clock = waiting_stream(source)
    source.state = ("ok", None)
    source.refuse = SourceDown("redis default: connection lost")
    clock.advance(SOURCE_CHECK)
    assert notices(request)[1:] == [
        {"status": {"source": "up"}},
        {"status": {"source": "down", "reason": "redis default: connection lost"}}]
    source.refuse = None
    clock.advance(SOURCE_CHECK)
    assert notices(request)[-1] == {"status": {"source": "up"}}
    assert len(source.subscriptions) == 1


def test_refused_for_good_ends_the_stream_saying_why():
    source = DownableSource()
    source.state = ("down", "x")
    stream, request, clock = waiting_stream(source)
    source.state = ("ok", None)
    source.refuse = InvalidRequest("since: an SQS stream cannot resume by id")
    clock.advance(SOURCE_CHECK)
    assert stream.ended and stream.done.called
    assert notices(request)[-1] == {"end": {"reason": "since: an SQS stream cannot resume by id"}}
    assert clock.getDelayedCalls() == []


def test_the_key_is_top_level_and_per_stream():
    s = settings({"a": {}, "b": {"on_source_down": "wait"}}, on_source_down="refuse")
    assert s.on_source_down == "refuse"
    assert s.streams["a"].on_source_down == "refuse"
    assert s.streams["b"].on_source_down == "wait"
    assert settings().on_source_down == "wait"
    with pytest.raises(ConfigError) as e:
        settings({"a": {"on_source_down": "retry"}})
    assert "streams.a.on_source_down" in str(e.value)


# -- over HTTP --------------------------------------------------------------------------


def add_source(server, name: str, **stream_keys) -> DownableSource:
    source = DownableSource(name)
    server.service.add(name, source, dataclasses.replace(
        server.service.settings.dynamic_stream(name), **stream_keys))
    return source


@ensure
async def test_over_http_wait_refuse_head_and_publish(serve):
    server = await serve()
    waits = add_source(server, "waits")
    refuses = add_source(server, "refuses", on_source_down="refuse", retry=2000)
    waits.state = refuses.state = ("down", "queue missing")

    r = await within(treq.get(server.url + "/streams/refuses"))
    assert r.code == 503 and r.headers.getRawHeaders("retry-after") == ["2"]
    assert (await r.json())["error"]["message"] == "stream 'refuses' is down: queue missing"
    r = await within(treq.post(server.url + "/streams/waits/messages", b"1",
                               headers={"Content-Type": "application/json"}))
    assert r.code == 503 and r.headers.getRawHeaders("retry-after") == ["3"]
    r = await within(treq.head(server.url + "/streams/waits"))
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type") == ["application/x-ndjson"]

    reader = await open_stream(server.url + "/streams/waits")
    sse = await open_stream(server.url + "/streams/waits?format=sse", sse=True)
    assert (await reader.wait_for(1)) == [
        {"status": {"source": "down", "reason": "queue missing"}}]
    items = await sse.wait_for(2)
    assert items[1] == {"event": "status",
                        "data": '{"source":"down","reason":"queue missing"}'}
    waits.state = ("ok", None)
    await reader.wait_for(2)
    await sse.wait_for(3)
    assert reader.items[1] == {"status": {"source": "up"}}
    assert sse.items[2] == {"event": "status", "data": '{"source":"up"}'}
    assert len(waits.subscriptions) == 2
    await publish(server.url + "/streams/waits/messages", {"n": 1})
    await reader.wait_for(3)
    await sse.wait_for(4)
    assert reader.items[2]["data"] == {"n": 1}
    assert json.loads(sse.items[3]["data"]) == {"n": 1}
    # A memory stream is untouched by all this.
    news = await open_stream(server.url + "/streams/news?limit=1")
    await server.wait_open_streams(3)
    await publish(server.url + "/streams/news/messages", {"m": 1})
    await within(news.done)
    assert [i["data"] for i in news.items] == [{"m": 1}]
    reader.close()
    sse.close()
    await server.wait_open_streams(0)


@ensure
async def test_event_store_tail_waits_for_the_store(serve):
    server = await serve(settings(store={"backend": "memory"}))
    store = server.service.store
    store.status = lambda: ("down", "disk full")
    reader = await open_stream(server.url + "/events/stream?kind=a")
    assert (await reader.wait_for(1)) == [{"status": {"source": "down", "reason": "disk full"}}]
    del store.status
    await reader.wait_for(2)
    assert reader.items[1] == {"status": {"source": "up"}}
    r = await within(treq.post(server.url + "/events", b'{"kind": "a", "n": 1}',
                               headers={"Content-Type": "application/json"}))
    assert r.code == 201
    await reader.wait_for(3)
    assert reader.items[2]["data"]["n"] == 1
    reader.close()


# -- a real Redis, down when the reader comes ---------------------------------------------


def redis_settings(redis, **streams):
    return settings(streams, redis={"url": redis.url, "connect_timeout": 0.5})


class Curl(protocol.ProcessProtocol):
    """C{curl -sN URL}: its output, line by line, as it comes."""

    def __init__(self) -> None:
        self.out = b""
        self.ended = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def lines(self) -> list:
        return [json.loads(line) for line in self.out.split(b"\n")[:-1]]

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


def curl(url: str) -> Curl:
    proto = Curl()
    reactor.spawnProcess(proto, shutil.which("curl"), ["curl", "-sN", url])
    return proto






# The page: an EventSource that records what it gets (messages and status events).
WATCH = """
window.seen = {opens: 0, errors: 0, data: [], status: []};
const es = new EventSource(%s);
es.onopen = () => seen.opens++;
es.onerror = () => seen.errors++;
es.onmessage = (e) => seen.data.push(JSON.parse(e.data));
es.addEventListener("status", (e) => seen.status.push(JSON.parse(e.data)));
true
"""


async def seen(page, predicate: str, seconds: float = 15.0):
    """Wait (bounded) until the page's C{seen} makes C{predicate} true; then C{seen}."""
    await wait_until(lambda: defer.ensureDeferred(page.evaluate(predicate)), seconds,
                     interval=0.05)
    return await page.evaluate("seen")




# -- SQS and RabbitMQ: their subscriptions, too, begin once the source is back -----------




