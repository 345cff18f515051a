"""
A Redis Cluster that speaks TLS only (C{rediss://}, C{--tls-cluster yes}): streamd reads
the slot map over TLS and opens TLS connections to the primaries that map names by IP,
checking each node's certificate against C{tls_ca}.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq

from streamd.testing.redis import require
from streamd.testing.redis_cluster import RedisCluster
from tests.support.web import open_stream, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_lists_on_three_shards_of_a_tls_cluster(tmp_path, serve):
    require("redis-cli")
    cluster = RedisCluster(str(tmp_path), tls=True)
    cluster.start()
    try:
        assert cluster.url.startswith("rediss://localhost:")
        keys = cluster.keys_on_each_shard("tls:jobs:")
        streams = {f"s{i}": {"source": "redis-list", "key": key, "instance": "tls",
                             "block": 0.2} for i, key in enumerate(keys)}
        server = await serve(settings(streams, redis=cluster.table))
        await wait_until(lambda: all(s.status()[0] == "ok"
                                     for s in server.service.sources.values()), 20)
        readers = [await open_stream(f"{server.url}/streams/s{i}") for i in range(3)]
        for key in keys:
            cluster.command("RPUSH", key, *[json.dumps({"n": n}) for n in range(20)])
        for r in readers:
            await r.wait_for(20)
            assert [m["data"]["n"] for m in r.messages()] == list(range(20))
            r.close()
        r = await within(treq.get(server.url + "/"))
        shards = (await treq.json_content(r))["redis_clusters"]["default"]["shards"]
        assert len(shards) == 3 and all(s["up"] for s in shards)
    finally:
        cluster.stop()
