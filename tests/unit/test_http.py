"""End to end over real TCP: streamd's HTTP API read by a real HTTP client (treq)."""

import json

import pytest
import pytest_twisted
import treq

from streamd.service import REAP_INTERVAL
from tests.support.web import (
    non_reading_client,
    open_stream,
    publish,
    settings,
    stub,
    wait_until,
    within,
)

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_ndjson_round_trip_with_headers_before_first_message(serve):
    server = await serve()
    reader = await open_stream(server.url + "/streams/news")
    # The status line and headers arrived although nothing was published yet.
    assert reader.response.headers.getRawHeaders("content-type") == ["application/x-ndjson"]
    await server.wait_open_streams(1)
    ids = await publish(server.url + "/streams/news/messages", {"n": 1}, {"s": "007"})
    await reader.wait_for(2)
    assert reader.items == [
        {"id": ids[0], "stream": "news", "data": {"n": 1}},
        {"id": ids[1], "stream": "news", "data": {"s": "007"}},
    ]
    reader.close()


@ensure
async def test_publish_single_json_value(serve):
    server = await serve()
    resp = await within(treq.post(server.url + "/streams/a/messages", data=b'[1, 2]',
                                  headers={"Content-Type": "application/json"}))
    assert resp.code == 202
    assert (await treq.json_content(resp)) == {"ids": ["1"]}


@ensure
async def test_sse_by_accept_header_and_by_format(serve):
    server = await serve()
    r1 = await open_stream(server.url + "/streams/s", {"Accept": "text/event-stream"}, sse=True)
    r2 = await open_stream(server.url + "/streams/s?format=sse", sse=True)
    assert r1.response.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    await server.wait_open_streams(2)
    await publish(server.url + "/streams/s/messages", {"a": 1})
    for r in (r1, r2):
        items = await r.wait_for(2)
        assert items[0]["retry"] == "3000"
        assert items[1] == {"id": "1", "data": '{"a": 1}'}
        r.close()


@ensure
async def test_limit_ends_response_cleanly_after_exactly_n(serve):
    server = await serve()
    reader = await open_stream(server.url + "/streams/l?limit=3")
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/l/messages", *range(10))
    await within(reader.done)  # the terminating chunk arrived: the response ended
    assert [m["data"] for m in reader.items] == [0, 1, 2]
    await server.wait_open_streams(0)


def open_stubbed(http, url: str) -> list[bytes]:
    """GET a stream through StubTreq; returns the list its body's chunks are added to."""
    chunks: list[bytes] = []
    d = http.get(url, unbuffered=True)
    http.flush()
    response = d.result  # StubTreq answers in memory: the head is there at once
    assert response.code == 200
    treq.collect(response, chunks.append)
    return chunks


def test_heartbeat_when_idle():
    _, http, clock = stub()
    nd = open_stubbed(http, "http://x/streams/h?heartbeat=0.1")
    sse = open_stubbed(http, "http://x/streams/h?heartbeat=0.1&format=sse")
    clock.advance(0.05)
    http.flush()
    assert b"".join(nd) == b"" and b"heartbeat" not in b"".join(sse)  # SSE: its retry hint
    clock.advance(0.05)
    http.flush()
    assert set(json.loads(b"".join(nd))) == {"heartbeat"}
    assert b"\n: heartbeat" in b"".join(sse)


def test_heartbeat_configured_per_stream():
    _, http, clock = stub(settings({"quiet": {"heartbeat": 0.1}}, store={"backend": "memory"}))
    quiet = open_stubbed(http, "http://x/streams/quiet")  # the default is 15 s
    clock.advance(0.05)
    http.flush()
    assert b"".join(quiet) == b""
    clock.advance(0.05)
    http.flush()
    assert "heartbeat" in json.loads(b"".join(quiet))


@ensure
async def test_resume_by_since_and_last_event_id(serve):
    server = await serve()
    await publish(server.url + "/streams/r/messages", "a", "b", "c")
    reader = await open_stream(server.url + "/streams/r?since=1")
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/r/messages", "d")
    await reader.wait_for(3)
    assert [(m["id"], m["data"]) for m in reader.items] == [("2", "b"), ("3", "c"), ("4", "d")]
    sse = await open_stream(server.url + "/streams/r?format=sse", {"Last-Event-ID": "3"},
                            sse=True)
    items = await sse.wait_for(2)
    assert items[1] == {"id": "4", "data": '"d"'}
    reader.close()
    sse.close()


@ensure
async def test_resume_gap_when_no_longer_buffered(serve):
    server = await serve(settings(buffer=2))
    await publish(server.url + "/streams/g/messages", 1, 2, 3, 4, 5)
    reader = await open_stream(server.url + "/streams/g?since=1&limit=2")
    await within(reader.done)
    assert reader.items[0] == {"gap": {"since": "1", "missed": 2, "reason": "no longer buffered"}}
    assert [m["data"] for m in reader.items[1:]] == [4, 5]


@ensure
async def test_client_disconnect_releases_subscription(serve):
    server = await serve()
    reader = await open_stream(server.url + "/streams/d")
    await server.wait_open_streams(1)
    source = server.service.sources["d"]
    assert len(source.subscribers) == 1
    reader.close()
    await wait_until(lambda: not source.subscribers)
    await server.wait_open_streams(0)


@ensure
async def test_client_that_stops_reading_is_disconnected_and_memory_stays_bounded(
        serve, monkeypatch):
    monkeypatch.setattr("streamd.slow.SLOW_CLOSE_GRACE", 0.2)
    server = await serve(settings(max_pending=50))
    slow = await non_reading_client(server, "/streams/big")
    fast = await open_stream(server.url + "/streams/big")
    await server.wait_open_streams(2)
    stream = next(s for s in server.app.open_streams if s.request.channel.transport is not None
                  and s.request.getClientAddress().port == slow.transport.getHost().port)
    transport = stream.request.transport
    payload = {"pad": "x" * 2000}
    # Publish until the slow reader's socket and Twisted's buffer fill and the policy fires.
    sent = 0
    while not stream.ended and sent < 20000:
        # Batches well under max_pending: a reader that keeps up is never over it.
        await publish(server.url + "/streams/big/messages", *([payload] * 20))
        sent += 20
        assert stream.queued <= 50  # never more than max_pending queued for it
    assert stream.ended and stream.end_reason == "slow consumer"
    # Its connection is closed: the grace period for the final line ran out.
    await wait_until(lambda: transport.disconnected)
    await fast.wait_for(sent)  # the reader that keeps up got everything
    assert len(fast.messages()) == sent
    fast.close()


@ensure
async def test_slow_client_with_drop_oldest_stays_bounded_and_connected(serve):
    server = await serve(settings({"lossy": {"max_pending": 10, "slow_policy": "drop-oldest"}}))
    slow = await non_reading_client(server, "/streams/lossy")
    await server.wait_open_streams(1)
    stream = next(iter(server.app.open_streams))
    sent = 0
    while stream.dropped_total < 90 and sent < 20000:
        await publish(server.url + "/streams/lossy/messages", *([{"pad": "y" * 4000}] * 50))
        sent += 50
        assert stream.queued <= 10  # never more than max_pending held for it
    assert stream.dropped_total >= 90 and not stream.ended
    slow.transport.abortConnection()
    await server.wait_open_streams(0)


async def error_of(response):
    body = await treq.json_content(response)
    assert set(body) == {"error"}
    assert body["error"]["status"] == response.code
    return body["error"]["message"]


@ensure
async def test_error_statuses_are_json(serve):
    server = await serve(settings({"only": {}}, max_body_bytes=1000, max_message_bytes=100))
    url = server.url
    r = await treq.get(url + "/streams/missing")
    assert r.code == 404 and "missing" in await error_of(r)
    r = await treq.get(url + "/nowhere")
    assert r.code == 404
    await error_of(r)
    r = await treq.delete(url + "/streams/only")
    assert r.code == 405 and "GET" in await error_of(r)
    r = await treq.post(url + "/streams/only/messages", data=b'{"a": 1}\n{bad\n',
                        headers={"Content-Type": "application/x-ndjson"})
    assert r.code == 400 and "line 2" in await error_of(r)
    r = await treq.post(url + "/streams/only/messages", data=b'{"a": "' + b"x" * 200 + b'"}',
                        headers={"Content-Type": "application/json"})
    assert r.code == 413 and "max_message_bytes" in await error_of(r)
    r = await treq.post(url + "/streams/only/messages", data=b"1\n" * 600,
                        headers={"Content-Type": "application/x-ndjson"})
    assert r.code == 413 and "max_body_bytes" in await error_of(r)
    r = await treq.post(url + "/streams/only/messages", data=b"hi",
                        headers={"Content-Type": "text/plain"})
    assert r.code == 415
    await error_of(r)
    r = await treq.get(url + "/streams/only?limit=0")
    assert r.code == 400 and "limit" in await error_of(r)
    r = await treq.get(url + "/streams/only?since=abc")
    assert r.code == 400 and "since" in await error_of(r)
    r = await treq.get(url + "/streams/only?format=xml")
    assert r.code == 400 and "format" in await error_of(r)
    # Nothing of a rejected body was published.
    reader = await open_stream(url + "/streams/only?since=0&heartbeat=0.05")
    items = await reader.wait_for(1)
    assert "heartbeat" in items[0]
    reader.close()


@ensure
async def test_index_and_health(serve):
    server = await serve(settings({"a": {}, "b": {"source": "memory"}}))
    reader = await open_stream(server.url + "/streams/a")
    await server.wait_open_streams(1)
    r = await treq.get(server.url + "/")
    body = await treq.json_content(r)
    assert body["service"] == "streamd" and body["open_streams"] == 1
    assert body["sources"]["a"] == {
        "source": "memory", "status": "ok", "reason": None, "declared": True, "readers": 1,
        "paused_readers": 0, "published": 0, "delivered": 0, "published_per_second": 0.0,
        "delivered_per_second": 0.0}
    r = await treq.get(server.url + "/health")
    assert r.code == 200
    reader.close()


@ensure
async def test_health_503_when_a_source_is_down():
    app, http, _ = stub(settings({"a": {"on_source_down": "refuse"}},
                                 store={"backend": "memory"}))
    from streamd.testing import FakeSource

    fake = FakeSource("f")
    fake.state = ("down", "queue missing")
    app.service.add("f", fake, app.service.stream_settings["a"])
    r = await http.get("http://streamd/health")
    assert r.code == 503
    assert (await r.json())["sources"]["f"]["reason"] == "queue missing"
    r = await http.get("http://streamd/streams/f")
    assert r.code == 503 and "queue missing" in await error_of(r)
    assert r.headers.getRawHeaders("retry-after") == ["3"]


@ensure
async def test_client_ack_session_over_http(serve):
    server = await serve()
    reader = await open_stream(server.url + "/streams/c?ack=client")
    session = reader.response.headers.getRawHeaders("streamd-session")[0]
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/c/messages", 1, 2)
    await reader.wait_for(2)

    async def ack(body):
        r = await treq.post(server.url + "/streams/c/ack", data=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"})
        return r.code, await treq.json_content(r)

    assert await ack({"session": session, "ids": ["1", "9"]}) == (200, {"acked": 1, "unknown": 1})
    code, body = await ack({"session": "not-mine", "ids": ["2"]})
    assert code == 404
    code, body = await ack({"session": session, "ids": "2"})
    assert code == 400
    reader.close()


@ensure
async def test_head_of_a_stream_answers_headers_without_opening_it():
    app, http, _ = stub()
    r = await http.head("http://streamd/streams/h?format=sse")
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    assert not app.open_streams


@pytest.mark.parametrize(("accept", "sse"), [
    (None, False),
    ("text/event-stream", True),
    ("application/json, text/event-stream", True),
    ("text/event-stream, */*;q=0.1", True),
    ("*/*", False),
    # A wildcard is what curl and scripts send: it never chooses SSE (nor did the
    # first release's substring match).
    ("text/*", False),
    ("text/*, application/json;q=0.5", False),
    ("application/x-ndjson", False),
    # q=0 means "not this": it refuses SSE (a substring match used to choose it).
    ("text/event-stream;q=0", False),
    ("text/event-stream;q=0, */*", False),
    # Parameters other than q do not change the type asked for.
    ("text/event-stream; charset=utf-8", True),
    # Both named with the same weight: SSE, as when any mention of it chose it.
    ("application/x-ndjson, text/event-stream", True),
    ("text/event-stream;q=0.5, application/x-ndjson", False),
])
@ensure
async def test_accept_header_chooses_the_framing(accept, sse):
    _, http, _ = stub()
    headers = {"Accept": accept} if accept is not None else {}
    r = await http.head("http://streamd/streams/s", headers=headers)
    ctype = r.headers.getRawHeaders("content-type")[0]
    assert ctype.startswith("text/event-stream" if sse else "application/x-ndjson"), ctype
    # ?format= wins over Accept.
    r = await http.head("http://streamd/streams/s?format=ndjson", headers=headers)
    assert r.headers.getRawHeaders("content-type")[0].startswith("application/x-ndjson")


@ensure
async def test_unused_dynamic_streams_are_forgotten():
    app, http, clock = stub(settings(buffer_ttl=1, store={"backend": "memory"}))
    await app.start()
    r = await http.post("http://streamd/streams/once/messages", data=b"1",
                        headers={"Content-Type": "application/json"})
    assert r.code == 202
    r = await http.get("http://streamd/streams/kept")
    assert r.code == 200 and len(app.open_streams) == 1
    clock.advance(REAP_INTERVAL)  # past buffer_ttl: the periodic sweep forgets "once"
    assert "once" not in app.service.sources
    assert "kept" in app.service.sources  # still read by a client
    await app.stop(1)


@ensure
async def test_unsupported_methods_on_events_are_405():
    _, http, _ = stub()
    for path in ("/events", "/events/"):
        r = await http.request("DELETE", "http://streamd" + path)
        assert r.code == 405, path
        assert r.headers.getRawHeaders("allow") == ["GET, HEAD, POST"]
