"""
The event store fixtures (a pytest plugin: C{pytest_plugins = ["store_fixtures"]}):
C{store_config}, once per backend (memory, SQLite in a temporary data directory, Redis
on a private redis-server), and C{stores}, started stores stopped after the test.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted
from conftest import settings
from events_helpers import wait_up
from twisted.internet import defer, reactor

from streamd.store import make_store
from streamd.testing.redis import redis_session_fixture  # noqa: F401  (a fixture)

BACKENDS = ["memory", "sqlite", "redis"]
_prefixes = itertools.count()


@pytest.fixture(params=BACKENDS)
def store_config(request, tmp_path):
    """C{make(**store_table)} -> validated settings for this backend."""
    backend = request.param
    top = {"data_dir": str(tmp_path / "data")}
    extra = {}
    if backend == "redis":
        server = request.getfixturevalue("redis_session")
        extra = {"redis_url": server.url,
                 "redis_prefix": f"test{next(_prefixes)}:{request.node.name}:"}

    def make(top_level=None, **table):
        """Settings with this [store] table (plus C{table}) and C{top_level} keys."""
        return settings(store={"backend": backend, **extra, **table},
                        **{**top, **(top_level or {})})

    make.backend = backend
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
