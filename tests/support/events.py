"""
Helpers shared by the event store test modules: AwesomeStream's walk-through events,
a clock that can be moved forward, and small HTTP helpers.
"""

from __future__ import annotations

import json

import treq
from twisted.internet import reactor

from tests.support.web import wait_until, within

WALK_KEYS = ["user", "kind", "repo"]

E1 = {"kind": "create-repo", "repo": 17, "user": 291, "name": "frist",
      "description": "This is my first repo ever!"}
E2 = {"kind": "delete-repo", "repo": 17, "user": 291, "reason": "Made a typo :("}
E3 = {"kind": "watch", "repo": 2842, "user": 291, "owner": 23}
E4 = {"kind": "friend", "user": 291, "friend": 23}
E5 = {"kind": "friend", "user": 23, "friend": 291}


class ShiftedClock:
    """The real reactor, with C{seconds()} moved forward by C{offset} (for retention)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def __getattr__(self, name):
        return getattr(reactor, name)


async def wait_up(store) -> None:
    """Wait until the store says it is up (Redis: connected)."""
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
    await wait_up(server.service.store)
    return server
