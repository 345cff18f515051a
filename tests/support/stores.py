"""
The event store fixtures (a pytest plugin: C{pytest_plugins = ["tests.support.stores"]}):
C{store_config}, once per backend (memory, SQLite in a temporary data directory, Redis
on a private redis-server, then Redis on the session's Redis Cluster through a
C{[redis.events]} connection with C{cluster = true}, the store's slot on each of the
three shards in turn), and C{stores}, started stores stopped after the test.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from streamd.store import make_store
from streamd.testing.redis import redis_session_fixture  # noqa: F401  (a fixture)
from streamd.testing.redis_cluster import redis_cluster_fixture  # noqa: F401  (a fixture)
from tests.support.events import wait_up
from tests.support.web import settings

#: "redis-cluster-N": the Redis store on the cluster, its keys on the Nth primary.
BACKENDS = ["memory", "sqlite", "redis", "redis-cluster-0", "redis-cluster-1",
            "redis-cluster-2"]
_prefixes = itertools.count()


@pytest.fixture(params=BACKENDS)
def store_config(request, tmp_path):
    """
    C{make(**store_table)} -> validated settings for this backend; C{make.backend} is
    the store's (C{"redis"} on the cluster too), C{make.cluster} the cluster or None.
    """
    backend, _, shard = request.param.partition("-cluster-")
    top = {"data_dir": str(tmp_path / "data")}
    extra = {}
    cluster = None
    prefix = f"test{next(_prefixes)}:{request.node.name}:"
    if shard:
        # A prefix whose hash tag ({prefix}: the store's one slot) is on that shard.
        cluster = request.getfixturevalue("redis_cluster")
        cluster.wait_ok()
        prefix = cluster.keys_on_each_shard(prefix)[int(shard)] + ":"
        extra = {"connection": "events", "redis_prefix": prefix}
        top["redis"] = {"events": cluster.table}
    elif backend == "redis":
        server = request.getfixturevalue("redis_session")
        extra = {"redis_url": server.url, "redis_prefix": prefix}

    def make(top_level=None, **table):
        """Settings with this [store] table (plus C{table}) and C{top_level} keys."""
        return settings(store={"backend": backend, **extra, **table},
                        **{**top, **(top_level or {})})

    make.backend = backend
    make.cluster = cluster
    return make


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
