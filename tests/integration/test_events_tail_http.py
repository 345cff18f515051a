"""
The live tail (C{GET /events/stream}) over real HTTP, once per backend: filters, limit,
since / Last-Event-ID, SSE, heartbeat, a client that stops reading, the hand-over under
racing inserts; with Redis, inserts of another instance and a server restart.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor

from streamd.store import tail as tail_module
from streamd.store.base import make_filters, new_event
from streamd.testing.redis import RedisServer, needs_redis_server
from tests.support.events import (
    insert,
    serve_store,
    wait_up,
)
from tests.support.web import open_stream, settings, within

# The fixtures store_config, stores and redis_session.
pytest_plugins = ["tests.support.stores"]

# -- live tail --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tail_live_with_filter_and_limit(serve, store_config):
    server = await serve_store(serve, store_config)
    await insert(server, {"kind": "friend", "n": 0})  # before the tail: not sent
    reader = await open_stream(server.url + "/events/stream?kind=friend&limit=2")
    await server.wait_open_streams(1)
    ids = await insert(server, {"kind": "watch", "n": 1}, {"kind": "friend", "n": 2},
                       {"kind": "friend", "n": 3}, {"kind": "friend", "n": 4})
    await within(reader.done)
    assert [(m["id"], m["data"]) for m in reader.messages()] == [
        (ids[1], {"kind": "friend", "n": 2}), (ids[2], {"kind": "friend", "n": 3})]
    assert reader.messages()[0]["stream"] == "events"


@pytest_twisted.ensureDeferred
async def test_tail_since_and_last_event_id_sse(serve, store_config):
    server = await serve_store(serve, store_config)
    ids = await insert(server, *({"kind": "k", "n": n} for n in range(5)))
    reader = await open_stream(server.url + f"/events/stream?since={ids[1]}&limit=4")
    more = await insert(server, {"kind": "k", "n": 5})
    await within(reader.done)
    assert [m["id"] for m in reader.messages()] == ids[2:] + more
    sse = await open_stream(server.url + "/events/stream?kind=k&format=sse&limit=2",
                            headers={"Last-Event-ID": ids[2]}, sse=True)
    await within(sse.done)
    events = [i for i in sse.items if "data" in i]
    assert [e["id"] for e in events] == ids[3:5]
    assert json.loads(events[0]["data"]) == {"kind": "k", "n": 3}
    r = await within(treq.get(server.url + "/events/stream?since=yesterday"))
    assert r.code == 400
    r = await within(treq.get(server.url + "/events/stream?colour=red"))
    assert r.code == 400 and b"indexed keys: kind, user" in await treq.content(r)


@pytest_twisted.ensureDeferred
async def test_tail_handover_under_concurrent_inserts(serve, store_config, monkeypatch):
    """
    Many rounds: stored events after the client's id, while more are inserted as the
    tail catches up (small pages, so the catch-up spans many queries and reactor
    turns): every matching event exactly once, in id order.
    """
    monkeypatch.setattr(tail_module, "PAGE", 5)
    raced = []
    inserted = tail_module.TailSubscription._inserted

    def spy(self, events):
        if not self.live:
            raced.append(len(events))
        return inserted(self, events)

    monkeypatch.setattr(tail_module.TailSubscription, "_inserted", spy)
    server = await serve_store(serve, store_config)
    racing = 30
    for r in range(10):
        stored = await insert(server, *({"kind": f"r{r}", "n": n} for n in range(150)),
                              {"kind": "noise"})
        since = stored[7 * r]
        expected = [i for i in stored[:150] if int(i) > int(since)]
        url = (f"{server.url}/events/stream?kind=r{r}&since={since}"
               f"&limit={len(expected) + racing + 1}")

        async def race(r=r):
            # One insert after another, so that some land before the catch-up is
            # over, some during its last query, some after the hand-over; the first
            # few go out at once.
            early = [defer.ensureDeferred(insert(server, {"kind": f"r{r}", "n": 1000 + n}))
                     for n in range(5)]
            ids = [i[0] for i in await defer.gatherResults(early)]
            for n in range(5, racing):
                mine, _noise = await insert(server, {"kind": f"r{r}", "n": 1000 + n},
                                            {"kind": "noise"})
                ids.append(mine)
            return ids

        stream_d = defer.ensureDeferred(open_stream(url))
        racing_d = defer.ensureDeferred(race())
        reader = await stream_d
        racing_ids = await within(racing_d)
        # A last event after the race ends the stream; a duplicate would come before it
        # and push it past the limit.
        racing_ids += await insert(server, {"kind": f"r{r}", "n": "last"})
        await within(reader.done)
        got = [m["id"] for m in reader.messages()]
        assert len(got) == len(set(got)), f"round {r}: duplicates"
        assert got == sorted(got, key=int), f"round {r}: out of order"
        assert got == sorted(expected + racing_ids, key=int), f"round {r}"
    if store_config.backend != "memory":  # the memory store answers at once: no race
        assert raced, "no insert raced a catch-up: this test proved nothing"


@pytest_twisted.ensureDeferred
async def test_redis_tail_sees_inserts_of_another_instance(stores, store_config):
    if store_config.backend != "redis":
        pytest.skip("only a Redis store is shared by several instances")
    from streamd.framing import NDJSON
    from streamd.store.tail import EventTail
    from streamd.stream import Stream
    from streamd.testing import FakeRequest
    from tests.support.web import wait_until

    s = store_config()
    here, there = await stores(s), await stores(s)
    mine = await here.insert([new_event(b'{"kind":"k","n":0}', here.keys)])
    request = FakeRequest()
    stream = Stream(request, EventTail(here, make_filters({"kind": "k"}, here.keys)),
                    NDJSON, reactor, heartbeat=0)
    stream.start(mine[0].id - 1)  # from our own insert on: then the other instance's
    theirs = await there.insert([new_event(b'{"kind":"k","n":%d}' % n, there.keys)
                                 for n in (1, 2)])
    await wait_until(lambda: len(request.lines()) >= 3)
    more = await here.insert([new_event(b'{"kind":"k","n":3}', here.keys)])
    await wait_until(lambda: len(request.lines()) >= 4)
    got = [json.loads(line)["id"] for line in request.lines()]
    assert got == [str(e.id) for e in mine + theirs + more]
    stream.end("done")


@needs_redis_server
@pytest_twisted.ensureDeferred
async def test_redis_store_comes_back_after_a_server_restart(stores, tmp_path):
    from streamd.framing import NDJSON
    from streamd.store.tail import EventTail
    from streamd.stream import Stream
    from streamd.testing import FakeRequest
    from tests.support.web import wait_until

    server = RedisServer()
    server.start()
    try:
        s = settings(store={"backend": "redis", "redis_url": server.url})
        here, there = await stores(s), await stores(s)
        first = await here.insert([new_event(b'{"kind":"k"}', here.keys)])
        request = FakeRequest()
        stream = Stream(request, EventTail(here, ()), NDJSON, reactor, heartbeat=0)
        stream.start(first[0].id - 1)
        await wait_until(lambda: len(request.lines()) == 1)
        server.stop()
        await wait_until(lambda: here.status()[0] == "down")
        with pytest.raises(Exception, match="not connected"):
            await there.insert([new_event(b'{"kind":"k"}', there.keys)])
        server.start()  # same port, empty (no persistence in the test server)
        await wait_until(lambda: here.status()[0] == "ok" and there.status()[0] == "ok")
        # The notice connection subscribed again: another instance's insert reaches
        # the tail.
        theirs = await there.insert([new_event(b'{"kind":"k"}', there.keys)])
        await wait_until(lambda: len(request.lines()) == 2)
        assert json.loads(request.lines()[1])["id"] == str(theirs[0].id)
        stream.end("done")
    finally:
        server.stop()


# -- more of the tail: heartbeat, a client that stops reading -----------------------------------


@pytest_twisted.ensureDeferred
async def test_tail_heartbeat(serve, store_config):
    server = await serve_store(serve, store_config)
    reader = await open_stream(server.url + "/events/stream?kind=quiet&heartbeat=0.05")
    items = await reader.wait_for(1)
    assert "heartbeat" in items[0]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_tail_of_a_client_that_stops_reading_is_not_cut_off(serve, store_config):
    """
    A memory stream queues for a stuck client, then cuts it off as a slow consumer once
    max_pending are queued; a tail holds at most a page (max_pending) and leaves the
    rest in the store, to catch up on resume.
    """
    from tests.support.web import non_reading_client

    server = await serve(store_config({"max_pending": 40}))
    await wait_up(server.service.store)
    # Keep the client: a paused, idle transport is referenced by nothing else, and a
    # garbage-collected one closes its socket.
    client = await non_reading_client(server, "/events/stream?kind=big")
    await server.wait_open_streams(1)
    [stream] = server.app.open_streams
    blob = "x" * 4000
    inserted = 0
    for _ in range(100):  # 20 MB, in inserts of 100 events (more than max_pending)
        await insert(server, *({"kind": "big", "blob": blob} for _ in range(100)))
        inserted += 100
        assert not stream.ended, stream.end_reason
        assert stream.queued <= 40
        if stream.written + stream.queued < inserted - 1000:
            break  # well behind: the rest is in the store, not in the stream
    assert stream.written + stream.queued < inserted - 1000
    client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_tail_says_when_retention_removed_events_after_its_id(serve, store_config):
    server = await serve_store(serve, store_config, max_events=3)
    ids = await insert(server, *({"kind": "k", "n": n} for n in range(6)))
    reader = await open_stream(server.url + f"/events/stream?since={ids[0]}&limit=3")
    await within(reader.done)
    assert reader.items[0] == {"gap": {"since": ids[0], "missed": None,
                                       "reason": "removed by retention"}}
    assert [m["id"] for m in reader.messages()] == ids[3:]
    # An id after what was removed: no notice.
    reader = await open_stream(server.url + f"/events/stream?since={ids[3]}&limit=2")
    await within(reader.done)
    assert [m["id"] for m in reader.items] == ids[4:]


@pytest_twisted.ensureDeferred
async def test_head_on_the_tail_opens_nothing(serve, store_config):
    server = await serve_store(serve, store_config)
    r = await within(treq.head(server.url + "/events/stream?kind=a&format=sse"))
    assert r.code == 200
    assert r.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert not server.app.open_streams
