"""
The event store, end to end over real HTTP, once per backend: memory, SQLite (in a
temporary data directory) and Redis (a private redis-server on a free port).
"""

from __future__ import annotations

import itertools
import json

import pytest
import pytest_twisted
import treq
from conftest import open_stream, settings, within
from store_redis_server import redis_server  # noqa: F401  (a fixture)
from twisted.internet import defer, reactor

from streamd.store import make_store
from streamd.store import tail as tail_module
from streamd.store.base import Query, make_filters, new_event

BACKENDS = ["memory", "sqlite", "redis"]
WALK_KEYS = ["user", "kind", "repo"]

E1 = {"kind": "create-repo", "repo": 17, "user": 291, "name": "frist",
      "description": "This is my first repo ever!"}
E2 = {"kind": "delete-repo", "repo": 17, "user": 291, "reason": "Made a typo :("}
E3 = {"kind": "watch", "repo": 2842, "user": 291, "owner": 23}
E4 = {"kind": "friend", "user": 291, "friend": 23}
E5 = {"kind": "friend", "user": 23, "friend": 291}

_prefixes = itertools.count()


@pytest.fixture(params=BACKENDS)
def store_config(request, tmp_path):
    """C{make(**store_table)} -> validated settings for this backend."""
    backend = request.param
    top = {"data_dir": str(tmp_path / "data")}
    extra = {}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        extra = {"redis_url": server.url,
                 "redis_prefix": f"test{next(_prefixes)}:{request.node.name}:"}

    def make(**table):
        return settings(store={"backend": backend, **extra, **table}, **top)

    make.backend = backend
    return make


class ShiftedClock:
    """The real reactor, with C{seconds()} moved forward by C{offset} (for retention)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def __getattr__(self, name):
        return getattr(reactor, name)


@pytest_twisted.async_yield_fixture
async def stores():
    """C{await open_store(settings)}: a started store, stopped after the test."""
    opened = []

    async def open_store(s, clock=reactor):
        store = make_store(s, clock)
        await defer.maybeDeferred(store.start)
        opened.append(store)
        await wait_up(store)
        return store

    yield open_store
    for store in opened:
        await defer.maybeDeferred(store.stop)


async def wait_up(store) -> None:
    from conftest import wait_until

    await wait_until(lambda: store.status()[0] == "ok")


# -- helpers -------------------------------------------------------------------------


async def rpc(server, body, path="/jsonrpc"):
    r = await within(treq.post(server.url + path, json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"}))
    content = await treq.content(r)
    return r.code, (json.loads(content) if content else None)


async def call(server, method, *args, **kwargs):
    code, answer = await rpc(server, {"id": "x", "method": method, "args": list(args),
                                      "kwargs": kwargs})
    assert code == 200 and answer["error"] is None, answer
    return answer["result"]


async def insert(server, *events, ndjson=True):
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    ctype = "application/x-ndjson" if ndjson else "application/json"
    r = await within(treq.post(server.url + "/events", body,
                               headers={"Content-Type": ctype}))
    assert r.code == 201, await treq.content(r)
    return (await treq.json_content(r))["ids"]


async def get(server, query=""):
    r = await within(treq.get(server.url + "/events" + query))
    return r.code, await treq.json_content(r)


async def serve_store(serve, store_config, **table):
    server = await serve(store_config(**table))
    await wait_up(server.app.events.store)
    return server


# -- AwesomeStream's walk-through ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_awesomestream_walkthrough(serve, store_config):
    server = await serve_store(serve, store_config, keys=WALK_KEYS)
    for e in (E1, E2, E3, E4, E5):
        assert isinstance(await call(server, "insert", e), str)
    assert await call(server, "items") == [E5, E4, E3, E2, E1]
    assert await call(server, "items", kind="friend") == [E5, E4]
    assert await call(server, "items", kind="friend", user=23) == [E5]
    assert await call(server, "items", user=[23, 291]) == [E5, E4, E3, E2, E1]
    assert await call(server, "items", user=[23, 291], start=1, end=3) == [E4, E3]
    # The same over GET /events (query strings are text: "23" finds the number 23).
    code, body = await get(server, "?user=23&user=291&start=1&end=3")
    assert code == 200 and [e["data"] for e in body] == [E4, E3]
    code, body = await get(server, "?kind=friend&user=23")
    assert [e["data"] for e in body] == [E5]


@pytest_twisted.ensureDeferred
async def test_awesomestream_client_posts_to_root(serve, store_config):
    # AwesomeStream's Client sends every call to "/", whatever the URL's path.
    server = await serve_store(serve, store_config, keys=WALK_KEYS)
    code, answer = await rpc(server, {"id": "1", "method": "insert", "args": [E4],
                                      "kwargs": {}}, path="/")
    assert code == 200 and answer["error"] is None and answer["id"] == "1"
    code, answer = await rpc(server, {"id": "2", "method": "items", "args": [],
                                      "kwargs": {"kind": "friend"}}, path="/")
    assert answer == {"id": "2", "result": [E4], "error": None}


# -- the JSON-RPC formats --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_jsonrpc_formats(serve, store_config):
    server = await serve_store(serve, store_config, keys=WALK_KEYS)
    # JSON-RPC 2.0, positional and named params.
    code, answer = await rpc(server, {"jsonrpc": "2.0", "id": 7, "method": "insert",
                                      "params": [E3]})
    assert code == 200 and answer["jsonrpc"] == "2.0" and answer["id"] == 7
    eid = answer["result"]
    code, answer = await rpc(server, {"jsonrpc": "2.0", "id": 8, "method": "items",
                                      "params": {"repo": 2842, "with_ids": True}})
    [item] = answer["result"]
    assert item["id"] == eid and item["data"] == E3 and isinstance(item["ts"], float)
    # Errors: 2.0 codes; AwesomeStream's format gives a string.
    code, answer = await rpc(server, {"jsonrpc": "2.0", "id": 9, "method": "drop"})
    assert answer["error"]["code"] == -32601
    code, answer = await rpc(server, {"jsonrpc": "2.0", "id": 10, "method": "items",
                                      "params": {"colour": "red"}})
    assert answer["error"]["code"] == -32602
    assert "indexed keys: user, kind, repo" in answer["error"]["message"]
    code, answer = await rpc(server, {"id": "a", "method": "items", "args": [],
                                      "kwargs": {"colour": "red"}})
    assert answer["result"] is None and "indexed keys: user, kind, repo" in answer["error"]
    # A notification gets no answer; a batch gets a list.
    code, answer = await rpc(server, {"jsonrpc": "2.0", "method": "insert", "params": [E4]})
    assert code == 204 and answer is None
    code, answer = await rpc(server, [
        {"jsonrpc": "2.0", "id": 1, "method": "items", "params": {"kind": "friend"}},
        {"jsonrpc": "2.0", "id": 2, "method": "items", "params": {"start": "x"}},
    ])
    assert answer[0]["result"] == [E4] and answer[1]["error"]["code"] == -32602
    r = await within(treq.post(server.url + "/jsonrpc", b"{nope",
                               headers={"Content-Type": "application/json"}))
    assert r.code == 400 and (await treq.json_content(r))["error"]["code"] == -32700


# -- HTTP insert and filters -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_insert_and_filter(serve, store_config):
    server = await serve_store(serve, store_config, keys=["kind", "user", "tags"])
    [one] = await insert(server, {"kind": "a", "user": 1}, ndjson=False)
    ids = await insert(server, {"kind": "b", "user": 1}, {"kind": "a", "user": 2},
                       {"kind": "b", "user": "2", "tags": ["x", "y"]}, {"other": True})
    assert len(ids) == 4 and [one, *ids] == sorted([one, *ids], key=int)
    code, body = await get(server)
    assert [e["id"] for e in body] == [*reversed(ids), one]
    assert body[-1]["data"] == {"kind": "a", "user": 1}
    # AND across keys, OR within a key.
    code, body = await get(server, "?kind=b&user=2&user=1")
    assert [e["id"] for e in body] == [ids[2], ids[0]]
    code, body = await get(server, "?kind=a&user=2")
    assert [e["id"] for e in body] == [ids[1]]
    code, body = await get(server, "?tags=y")  # each element of a list is indexed
    assert [e["id"] for e in body] == [ids[2]]
    code, body = await get(server, "?kind=zzz")
    assert (code, body) == (200, [])
    code, body = await get(server, "?colour=red")
    assert code == 400
    assert body["error"]["message"] == (
        "colour: not an indexed key (indexed keys: kind, user, tags)")
    for bad in (b"[1, 2]", b"{nope"):
        r = await within(treq.post(server.url + "/events", bad,
                                   headers={"Content-Type": "application/json"}))
        assert r.code == 400


# -- slicing and cursors ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slicing_and_cursors(serve, store_config):
    server = await serve_store(serve, store_config)
    ids = await insert(server, *({"kind": "odd" if n % 2 else "even", "n": n}
                                 for n in range(60)))
    newest = list(reversed(ids))
    code, body = await get(server)  # default: 0 to 20
    assert [e["id"] for e in body] == newest[:20]
    code, body = await get(server, "?start=5&end=8")
    assert [e["id"] for e in body] == newest[5:8]
    # Cursor paging through the odd events, 7 at a time.
    odd = [i for i, n in zip(ids, range(60), strict=True) if n % 2][::-1]
    seen, cursor = [], ""
    while True:
        code, body = await get(server, f"?kind=odd&end=7{cursor}")
        if not body:
            break
        seen += [e["id"] for e in body]
        cursor = f"&before={body[-1]['id']}"
    assert seen == odd
    for query in ("?start=0&end=1001", "?start=3&end=2", "?before=abc", "?start=-1"):
        code, body = await get(server, query)
        assert code == 400, query
    code, body = await get(server, "?start=10&end=1010")
    assert [e["id"] for e in body] == newest[10:]


# -- retention -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retention_max_events(stores, store_config):
    store = await stores(store_config(max_events=5))
    ids = []
    for n in range(4):
        stored = await store.insert([new_event(b'{"kind":"k","n":%d}' % (n * 3 + i),
                                               store.keys) for i in range(3)])
        ids += [e.id for e in stored]
    found = await store.query(Query())
    assert [e.id for e in found] == ids[::-1][:5]
    assert await store.count() == 5
    found = await store.query(Query(make_filters({"kind": "k"}, store.keys)))
    assert [e.id for e in found] == ids[::-1][:5]
    assert [e.id for e in await store.after((), 0, 100)] == ids[-5:]


@pytest_twisted.ensureDeferred
async def test_retention_max_age(stores, store_config):
    clock = ShiftedClock()
    store = await stores(store_config(max_age=60), clock)
    old = await store.insert([new_event(b'{"kind":"k"}', store.keys)])
    clock.offset = 61.0  # a minute later, by the store's clock
    assert await store.query(Query()) == []
    assert await store.after(make_filters({"kind": "k"}, store.keys), 0, 10) == []
    new = await store.insert([new_event(b'{"kind":"k"}', store.keys)])
    assert [e.id for e in await store.query(Query())] == [new[0].id]
    assert await store.count() == 1  # the old one is gone, not just hidden
    assert old[0].id < new[0].id


# -- restart persistence --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_survive_a_restart(stores, store_config):
    if store_config.backend == "memory":
        pytest.skip("the memory store keeps nothing across a restart, by design")
    s = store_config(keys=WALK_KEYS)
    first = await stores(s)
    before = await first.insert([new_event(json.dumps(e).encode(), first.keys)
                                 for e in (E1, E2, E3)])
    await first.stop()
    second = await stores(s)
    found = await second.query(Query(make_filters({"user": 291}, second.keys)))
    assert [json.loads(e.data) for e in found] == [E3, E2, E1]
    assert [e.id for e in found] == [e.id for e in reversed(before)]
    after = await second.insert([new_event(json.dumps(E4).encode(), second.keys)])
    assert after[0].id > before[-1].id  # ids keep growing across the restart


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
    from conftest import wait_until

    from streamd.framing import NDJSON
    from streamd.store.tail import EventTail
    from streamd.stream import Stream
    from streamd.testing import FakeRequest

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
