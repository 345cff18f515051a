"""
Redis Cluster end to end: a real cluster the tests start (six redis-server, 3 primaries
and 3 replicas, L{streamd.testing.redis_cluster}), streamd in-process, real HTTP clients.
"""

import json

import pytest_twisted
import treq
from twisted.internet import defer, reactor

from streamd.client import RedisLink
from streamd.redis.cluster import ClusterConnection
from streamd.redis.connection import connection_settings
from streamd.redis.slots import key_slot
from streamd.store.base import Notice, Query, new_event
from streamd.store.redis import RedisStore
from streamd.testing.redis_cluster import (  # noqa: F401  (fixtures)
    redis_cluster_fixture,
    redis_cluster_private_fixture,
)
from tests.support.web import open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred
N = 2000


def connect(cluster) -> ClusterConnection:
    return ClusterConnection(
        connection_settings(cluster.url, cluster=True, urls=tuple(cluster.urls)), reactor)


def numbers(reader) -> list[int]:
    return [m["data"]["n"] for m in reader.messages()]


@ensure
async def test_commands_reach_keys_on_every_shard_and_follow_a_migration(redis_cluster):
    conn = connect(redis_cluster)
    try:
        assert await within(conn.wait_for(lambda: conn.up))
        # Three primaries (other tests of the session may have moved single slots).
        assert len({s["primary"] for s in conn.shards()}) == 3
        assert all(s["up"] for s in conn.shards())
        keys = redis_cluster.keys_on_each_shard("live:k")
        for key in keys:
            await conn.command("DEL", key)
            await conn.command("RPUSH", key, b"1", b"007")
        assert [await conn.command("LRANGE", k, 0, -1) for k in keys] == [[b"1", b"007"]] * 3
        assert await conn.eval("return redis.call('LLEN', KEYS[1])", [keys[1]], []) == 2
        # Half-way through a migration the key answers ASK; once done, MOVED.
        target = redis_cluster.primaries()[2]
        migration = redis_cluster.begin_migration(key_slot(keys[0]), target)
        redis_cluster.move_keys(migration)
        assert await conn.command("LLEN", keys[0]) == 2
        assert conn.redirections == 1
        redis_cluster.end_migration(migration)
        assert await conn.command("LLEN", keys[0]) == 2
        assert conn.redirections == 2
        assert conn.slots[key_slot(keys[0])][1] == target.port
    finally:
        await conn.close()


def list_config(cluster, **stream):
    stream.setdefault("source", "redis-list")
    stream.setdefault("key", "jobs")
    stream.setdefault("instance", "live")
    stream.setdefault("block", 0.2)
    return settings({"jobs": stream}, redis=cluster.table)


@ensure
async def test_list_primary_killed_mid_way_every_message_delivered_after_failover(
        redis_cluster_private, serve):
    cluster = redis_cluster_private
    for start in range(0, N, 500):
        cluster.push_replicated("jobs", *[json.dumps({"n": n}) for n in range(start, start + 500)])
    server = await serve(list_config(cluster, heartbeat=0))
    readers = [await open_stream(server.url + "/streams/jobs") for _ in range(3)]

    def got() -> set[int]:
        return {n for r in readers for n in numbers(r)}
    await wait_until(lambda: len(got()) >= N // 3)
    cluster.kill_primary_of("jobs")
    source = server.service.sources["jobs"]
    await wait_until(lambda: source.status()[0] == "down", seconds=10)
    await wait_until(lambda: len(got()) == N, seconds=60)
    received = sum(len(numbers(r)) for r in readers)
    print(f"\nfailover: {N} messages, {received - N} delivered twice, "
          f"{source.conn.refreshes} map readings, {source.conn.redirections} redirections")
    assert got() == set(range(N))
    assert source.status()[0] == "ok"
    for r in readers:
        r.close()


@ensure
async def test_stream_readers_across_a_slot_migration_lose_nothing_and_get_no_duplicate(
        redis_cluster, serve):
    cluster = redis_cluster
    cluster.command("DEL", "events")
    server = await serve(settings({"events": {
        "source": "redis-stream", "key": "events", "block": 0.2, "start": "0"}},
        redis=cluster.table))
    readers = [await open_stream(server.url + "/streams/events") for _ in range(2)]
    ids = []
    for n in range(300):
        ids.append(cluster.command("XADD", "events", "*", "data", json.dumps({"n": n})))
    await wait_until(lambda: all(len(r.messages()) >= 100 for r in readers))
    target = next(p for p in cluster.primaries() if p is not cluster.primary_of("events"))
    migration = cluster.begin_migration(key_slot("events"), target)
    cluster.move_keys(migration)  # the stream now answers ASK
    for n in range(300, 400):
        ids.append(cluster.command("XADD", "events", "*", "data", json.dumps({"n": n})))
    cluster.end_migration(migration)
    for n in range(400, 500):
        ids.append(cluster.command("XADD", "events", "*", "data", json.dumps({"n": n})))
    await wait_until(lambda: all(len(r.messages()) >= 500 for r in readers), seconds=30)
    for r in readers:
        assert [m["id"] for m in r.messages()] == [i.decode() for i in ids]
        assert numbers(r) == list(range(500))
        r.close()


@ensure
async def test_list_across_a_slot_migration_loses_nothing(redis_cluster, serve):
    cluster = redis_cluster
    cluster.command("DEL", "moving")
    server = await serve(settings({"moving": {
        "source": "redis-list", "key": "moving", "instance": "mig", "block": 0.2}},
        redis=cluster.table))
    readers = [await open_stream(server.url + "/streams/moving") for _ in range(3)]
    cluster.push_replicated("moving", *[json.dumps({"n": n}) for n in range(300)])

    def got() -> set[int]:
        return {n for r in readers for n in numbers(r)}
    await wait_until(lambda: len(got()) >= 100)
    target = next(p for p in cluster.primaries() if p is not cluster.primary_of("moving"))
    migration = cluster.begin_migration(key_slot("moving"), target)
    cluster.push_replicated("moving", *[json.dumps({"n": n}) for n in range(300, 400)])
    cluster.end_migration(migration)
    cluster.push_replicated("moving", *[json.dumps({"n": n}) for n in range(400, 500)])
    await wait_until(lambda: len(got()) == 500, seconds=30)
    assert got() == set(range(500))
    for r in readers:
        r.close()
    # GET / shows each shard; /metrics counts the redirections and map readings.
    info = await (await within(treq.get(server.url + "/"))).json()
    shards = info["redis_clusters"]["default"]["shards"]
    assert len({s["primary"] for s in shards}) == 3 and all(s["up"] for s in shards)
    text = (await (await within(treq.get(server.url + "/metrics"))).text())
    counted = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("streamd_redis_redirections_total",
                                   "streamd_redis_map_refreshes_total"))}
    assert counted["streamd_redis_map_refreshes_total"] >= 1
    assert counted["streamd_redis_redirections_total"] >= 1  # the migrated slot's MOVED


def gaps(reader) -> list[dict]:
    return [i["gap"] for i in reader.items if "gap" in i]


@ensure
async def test_sharded_pubsub_on_three_shards_and_a_gap_notice_after_a_failover(
        redis_cluster_private, serve):
    cluster = redis_cluster_private
    channels = cluster.keys_on_each_shard("news.")
    server = await serve(settings({"news": {
        "source": "redis-pubsub", "channels": channels, "sharded": True, "heartbeat": 0}},
        redis=cluster.table))
    source = server.service.sources["news"]
    readers = [await open_stream(server.url + "/streams/news") for _ in range(2)]
    await wait_until(lambda: all(
        cluster.primary_of(c).command("PUBSUB", "SHARDNUMSUB", c)[1] == 1 for c in channels))
    for n in range(30):
        cluster.command("SPUBLISH", channels[n % 3], json.dumps({"n": n}))
    for r in readers:
        await r.wait_for(30)
        assert sorted(numbers(r)) == list(range(30))  # in order per channel only
        assert {m["attributes"]["channel"] for m in r.messages()} == set(channels)

    cluster.kill_primary_of(channels[1])
    await wait_until(lambda: all(gaps(r) for r in readers), seconds=20)
    assert gaps(readers[0])[0]["reason"] == "redis was unavailable"
    await wait_until(lambda: source.status()[0] == "ok", seconds=20)
    await wait_until(lambda: cluster.primary_of(channels[1]).proc is not None and
                     cluster.primary_of(channels[1]).command(
                         "PUBSUB", "SHARDNUMSUB", channels[1])[1] == 1, seconds=20)
    for n in range(30, 60):
        cluster.command("SPUBLISH", channels[n % 3], json.dumps({"n": n}))
    for r in readers:
        await r.wait_for(60 + len(gaps(r)))
        assert sorted(numbers(r)[-30:]) == list(range(30, 60))
        r.close()


@ensure
async def test_event_store_and_client_link_on_the_cluster(redis_cluster):
    cluster = redis_cluster
    stores = [RedisStore(["kind"], reactor, cluster.url, prefix="live:", cluster=True,
                         urls=cluster.urls) for _ in range(2)]
    link = RedisLink.from_url(reactor, cluster.url, cluster=True, urls=cluster.urls)
    heard = []
    try:
        for store in stores:
            store.start()
        assert stores[0].prefix == "{live}:"
        await wait_until(lambda: all(s.status()[0] == "ok" for s in stores))
        stores[1].listen(heard.append)
        stored = await stores[0].insert([new_event(b'{"kind":"k","n":%d}' % n, ("kind",))
                                         for n in range(5)])
        found = await stores[1].query(Query(filters=(("kind", ("k",)),)))
        assert [e.id for e in found] == [e.id for e in reversed(stored)]
        await wait_until(lambda: any(isinstance(h, Notice) for h in heard))
        keys = cluster.keys_on_each_shard("live:link:")
        for key in keys:
            await within(link.command("SET", key, b"007"))
        assert [await within(link.command("GET", k)) for k in keys] == [b"007"] * 3
        got = defer.Deferred()
        await within(link.subscribe(b"live:news", got.callback))
        cluster.command("PUBLISH", "live:news", "hello")
        assert await within(got) == b"hello"
    finally:
        for store in stores:
            await store.stop()
        await link.close()


@ensure
async def test_channel_store_shared_by_two_instances_on_the_cluster(redis_cluster, serve):
    cluster = redis_cluster
    cluster.command("DEL", "live:channels")
    conf = settings(redis=cluster.table,
                    channels={"backend": "redis", "idle": 30, "prefix": "live:channels"})
    a = await serve(conf)
    b = await serve(conf)
    r = await within(treq.put(f"{a.url}/channels/X", data=b"2",
                              headers={"Content-Type": "application/json"}))
    assert r.code == 200, await treq.content(r)
    await wait_until(lambda: b.service.channels.get("X") == b"2")
    assert cluster.command("HGET", "live:channels", "X") == b"2"


@ensure
async def test_two_instances_share_a_list_and_sharded_channels(redis_cluster, serve):
    cluster = redis_cluster
    cluster.command("DEL", "shared")
    channel = cluster.keys_on_each_shard("shared.news.")[2]

    def conf(instance):
        return settings({
            "shared": {"source": "redis-list", "key": "shared", "instance": instance,
                       "block": 0.2},
            "news": {"source": "redis-pubsub", "channels": [channel], "sharded": True}},
            redis=cluster.table)
    a = await serve(conf("a"))
    b = await serve(conf("b"))
    on_a = await open_stream(a.url + "/streams/shared")
    on_b = await open_stream(b.url + "/streams/shared")
    cluster.push_replicated("shared", *[json.dumps({"n": n}) for n in range(200)])
    await wait_until(lambda: len(on_a.messages()) + len(on_b.messages()) == 200, 20)
    assert sorted(numbers(on_a) + numbers(on_b)) == list(range(200))  # each once
    assert cluster.command("SMEMBERS", "{shared}:streamd:instances") != []
    news = await open_stream(b.url + "/streams/news")
    await wait_until(lambda: cluster.primary_of(channel).command(
        "PUBSUB", "SHARDNUMSUB", channel)[1] == 1)
    await publish(a.url + "/streams/news/messages", {"n": 1})  # SPUBLISH through A
    await news.wait_for(1)
    assert numbers(news) == [1]
    for r in (on_a, on_b, news):
        r.close()


@ensure
async def test_sharded_pubsub_follows_its_slot_to_another_primary(redis_cluster, serve):
    cluster = redis_cluster
    channel = "live.moving.news"
    server = await serve(settings({"moving": {
        "source": "redis-pubsub", "channels": [channel], "sharded": True, "heartbeat": 0}},
        redis=cluster.table))
    reader = await open_stream(server.url + "/streams/moving")

    def subscribed() -> bool:
        return cluster.primary_of(channel).command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
    await wait_until(subscribed)
    cluster.command("SPUBLISH", channel, "1")
    await reader.wait_for(1)
    target = next(p for p in cluster.primaries() if p is not cluster.primary_of(channel))
    cluster.migrate_slot(key_slot(channel), target)
    # Redis ends the subscription on the old primary; the hub goes to the new one.
    await wait_until(lambda: gaps(reader) and subscribed(), seconds=20)
    cluster.command("SPUBLISH", channel, "2")
    await wait_until(lambda: len(reader.messages()) == 2)
    assert [m["data"] for m in reader.messages()] == [1, 2]
    assert len(gaps(reader)) == 1
    reader.close()


def sharded_clients(node) -> int:
    """Connections to C{node} that hold sharded subscriptions (CLIENT LIST's ssub)."""
    lines = node.command("CLIENT", "LIST").decode().splitlines()
    return sum(1 for line in lines if " ssub=0 " not in line and " ssub=" in line)


@ensure
async def test_sharded_pubsub_keeps_one_connection_per_shard_not_per_slot(
        redis_cluster, serve):
    cluster = redis_cluster
    first, second, third = cluster.primaries()
    # Three channels in three slots of the first primary, one on the second.
    mine: dict[int, str] = {}
    n = 0
    while len(mine) < 3:
        channel = f"per.shard.{n}"
        if cluster.primary_of(channel) is first:
            mine.setdefault(key_slot(channel), channel)
        n += 1
    channels = [*mine.values(), cluster.keys_on_each_shard("per.shard.other.")[1]]
    before = [sharded_clients(p) for p in (first, second, third)]
    server = await serve(settings({"wide": {
        "source": "redis-pubsub", "channels": channels, "sharded": True, "heartbeat": 0}},
        redis=cluster.table))
    # Readers arriving together, while the first one's SSUBSCRIBEs are in flight: each
    # is a reader of the stream at once (not one waiting for a source that is "down").
    readers = await defer.gatherResults([
        defer.ensureDeferred(open_stream(server.url + "/streams/wide")) for _ in range(10)])
    await wait_until(lambda: all(cluster.primary_of(c).command(
        "PUBSUB", "SHARDNUMSUB", c)[1] == 1 for c in channels))
    after = [sharded_clients(p) for p in (first, second, third)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 0]
    for i, channel in enumerate(channels * 5):
        cluster.command("SPUBLISH", channel, json.dumps({"n": i}))
    for reader in readers:
        await wait_until(lambda r=reader: len(r.messages()) == 20)
        assert sorted(numbers(reader)) == list(range(20))
        assert {m["attributes"]["channel"] for m in reader.messages()} == set(channels)
        reader.close()
