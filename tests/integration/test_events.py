"""
The event store over real HTTP and through its API, once per backend (memory, SQLite,
Redis): AwesomeStream's walk-through, JSON-RPC, filters, slicing, cursors, retention,
restarts, and a store that is down.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from streamd.store.base import Query, make_filters, new_event
from tests.support.events import (
    E1,
    E2,
    E3,
    E4,
    E5,
    WALK_KEYS,
    ShiftedClock,
    call,
    get,
    insert,
    rpc,
    serve_store,
)
from tests.support.web import open_stream, settings, within

# The fixtures store_config, stores and redis_session.
pytest_plugins = ["tests.support.stores"]

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


# -- the store down ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_down_answers_503(serve, tmp_path):
    from streamd.testing.redis import free_port

    (tmp_path / "not-a-dir").write_text("")
    for table, top in [
        ({"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"}, {}),
        ({"backend": "sqlite"}, {"data_dir": str(tmp_path / "not-a-dir")}),
    ]:
        server = await serve(settings(store=table, **top))
        r = await within(treq.post(server.url + "/events", b'{"kind": "a"}',
                                   headers={"Content-Type": "application/json"}))
        assert r.code == 503, table
        assert "event store unavailable" in (await treq.json_content(r))["error"]["message"]
        code, body = await get(server)
        assert code == 503
        tail = await open_stream(server.url + "/events/stream")  # opens, and says why it waits
        await tail.wait_for(1)
        assert tail.items[0]["status"]["source"] == "down"
        tail.close()
        code, answer = await rpc(server, {"id": 1, "method": "items", "args": [],
                                          "kwargs": {}})
        assert answer["result"] is None and "unavailable" in answer["error"]
        r = await within(treq.get(server.url + "/health"))
        assert r.code == 503 and (await treq.json_content(r))["events"]["status"] == "down"


@pytest_twisted.ensureDeferred
async def test_sqlite_reindexes_when_the_keys_change(stores, store_config):
    if store_config.backend != "sqlite":
        pytest.skip("SQLite re-indexes stored events on start; the others: "
                    "docs/howto/event-store.rst (Changing keys later)")
    first = await stores(store_config(keys=["kind"]))
    stored = await first.insert([new_event(json.dumps(e).encode(), first.keys)
                                 for e in (E1, E2, E3)])
    await first.stop()
    second = await stores(store_config(keys=["kind", "repo"]))
    found = await second.query(Query(make_filters({"repo": 17}, second.keys)))
    assert [e.id for e in found] == [stored[1].id, stored[0].id]


# -- access control ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_access_rules_name_the_event_store_events(serve, tmp_path):
    server = await serve(settings(
        store={"backend": "memory"},
        auth={"mode": "token", "max_connections_per_identity": 1, "tokens": [
            {"token": "reader-token-0123", "identity": "reader", "read": ["events"]},
            {"token": "writer-token-0123", "identity": "writer", "read": [],
             "publish": ["events"]},
        ]}))

    async def status(method, path, token=None, body=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        r = await within(treq.request(method, server.url + path, data=body, headers=headers,
                                      unbuffered=True))
        if path.startswith("/events/stream") and r.code == 200:
            return r.code, r
        await treq.content(r)
        return r.code, None

    insert_call = json.dumps({"id": 1, "method": "insert", "args": [{"kind": "a"}]}).encode()
    items_call = json.dumps({"id": 1, "method": "items", "args": []}).encode()
    for method, path, body in [("POST", "/events", b'{"kind": "a"}'), ("GET", "/events", None),
                               ("GET", "/events/stream", None),
                               ("POST", "/jsonrpc", items_call)]:
        assert (await status(method, path, None, body))[0] == 401, path
    assert (await status("POST", "/events", "reader-token-0123", b'{"kind": "a"}'))[0] == 403
    assert (await status("POST", "/jsonrpc", "reader-token-0123", insert_call))[0] == 403
    assert (await status("POST", "/events", "writer-token-0123", b'{"kind": "a"}'))[0] == 201
    assert (await status("GET", "/events", "writer-token-0123"))[0] == 403
    assert (await status("POST", "/jsonrpc", "reader-token-0123", items_call))[0] == 200
    assert (await status("GET", "/events?kind=a", "reader-token-0123"))[0] == 200
    # A token in the query string is not taken for a filter; the tail counts against the
    # identity's limit of open streams.
    code, tail = await status("GET", "/events/stream?access_token=reader-token-0123")
    assert code == 200
    await server.wait_open_streams(1)
    assert (await status("GET", "/events/stream", "reader-token-0123"))[0] == 429
    tail.original._transport.loseConnection()
    await server.wait_open_streams(0)
