"""
The Redis event store on a Redis Cluster as an operator sets it up: C{[store] backend =
"redis"} with C{connection} naming a C{[redis.NAME]} that has C{cluster = true}, in the
TOML file of C{twistd -n streamd --config FILE}.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq

from streamd.redis.slots import key_slot
from streamd.testing.redis_cluster import redis_cluster_fixture  # noqa: F401  (fixture)
from tests.support.process import StreamdProcess, processes  # noqa: F401  (fixture)
from tests.support.web import open_stream, wait_until, within

ensure = pytest_twisted.ensureDeferred


def store_toml(cluster, prefix: str) -> str:
    return cluster.toml("events") + (
        '[store]\nbackend = "redis"\nconnection = "events"\n'
        f'redis_prefix = "{prefix}"\nkeys = ["kind", "user"]\n')


async def json_of(url: str):
    r = await within(treq.get(url))
    return r.code, await treq.json_content(r)


@ensure
async def test_two_daemons_share_an_event_store_on_the_cluster(
        tmp_path, redis_cluster, processes):  # noqa: F811
    cluster = redis_cluster
    # The store's keys share the slot of its prefix's hash tag: put it on the 2nd shard.
    tag = cluster.keys_on_each_shard("daemon:events:")[1]
    home = cluster.primaries()[1]
    a = StreamdProcess(tmp_path, store_toml(cluster, tag + ":"))
    b = StreamdProcess(tmp_path, store_toml(cluster, tag + ":"))
    processes.extend([a, b])
    await a.started()
    await b.started()

    async def healthy() -> bool:  # both connected to the cluster
        return [(await json_of(p.url + "/health"))[0] for p in (a, b)] == [200, 200]
    await wait_until(healthy, seconds=20)
    code, status = await json_of(b.url + "/health")
    events = status["events"]
    assert {k: events[k] for k in ("backend", "keys", "status", "reason")} == {
        "backend": "redis", "keys": ["kind", "user"], "status": "ok", "reason": None}
    # The store's own cluster connection: each shard, as redis_clusters shows a source's.
    # (a primary may hold several slot ranges once an earlier test migrated one)
    assert {s["primary"] for s in events["shards"]} == {
        f"127.0.0.1:{p.port}" for p in cluster.primaries()}
    assert all(s["up"] for s in events["shards"]) and events["map_refreshes"] >= 1

    tail = await open_stream(b.url + "/events/stream?kind=friend")
    r = await within(treq.post(a.url + "/events", data=b"".join(
        json.dumps({"kind": k, "user": u}).encode() + b"\n"
        for k, u in [("friend", 1), ("watch", 2), ("friend", 3)]),
        headers={"Content-Type": "application/x-ndjson"}))
    assert r.code == 201, await treq.content(r)
    ids = (await treq.json_content(r))["ids"]

    # Inserted through A: B finds them, and B's live tail hears of them.
    code, found = await json_of(b.url + "/events?kind=friend")
    assert [e["id"] for e in found] == [ids[2], ids[0]]
    await tail.wait_for(2)
    assert [e["data"]["user"] for e in tail.items if "data" in e] == [1, 3]
    tail.close()
    # Every key of the store is in the tag's slot, on that shard's primary.
    assert cluster.primary_of("{" + tag + "}") is home
    assert home.command("ZCARD", "{" + tag + "}:all") == 3
    assert home.command("CLUSTER", "COUNTKEYSINSLOT", key_slot(tag)) >= 4

