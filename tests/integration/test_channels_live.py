"""The tests of test_channels.py that need other processes (moved from it)."""

import json

import pytest
import pytest_twisted
import treq

from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.web import open_stream, settings, wait_until, within


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """A private redis-server, then the cluster with the channels' hash on each shard."""
    yield from either(request, home="streamd:channels")


ensure = pytest_twisted.ensureDeferred


@ensure
async def test_redis_channels_shared_by_two_instances_and_survive_an_outage(redis, serve):
    table = redis.table if getattr(redis, "clustered", False) else {"url": redis.url}
    conf = settings(redis=table, channels={"backend": "redis", "idle": 30})
    a = await serve(conf)
    b = await serve(conf)

    async def put(server, name, value):
        r = await within(treq.put(f"{server.url}/channels/{name}",
                                  data=json.dumps(value).encode(),
                                  headers={"Content-Type": "application/json"}))
        assert r.code == 200, await treq.content(r)

    await put(a, "X", 2)
    await wait_until(lambda: b.service.channels.get("X") == b"2")
    r = await within(treq.post(b.url + "/subscriptions", data=b'{"channels": ["X", "Y"]}',
                               headers={"Content-Type": "application/json"}))
    sub = await treq.json_content(r)
    reader = await open_stream(b.url + sub["stream"])
    assert (await reader.wait_for(1))[0] == {"X": 2, "Y": None}
    await put(a, "Y", 85)  # set through instance A, seen by B's subscriber
    assert (await reader.wait_for(2))[1] == {"Y": 85}
    assert redis.command("HGET", "streamd:channels", "Y") == b"85"
    if getattr(redis, "clustered", False):
        reader.close()
        return  # the session's cluster stays up: test_redis_cluster_live fails one over
    # Redis goes away; a change another program makes before streamd is back (this
    # runs with no reactor turn in between, so streamd cannot have reconnected yet)
    # reaches the subscriber when streamd re-reads the hash on reconnection.
    redis.stop()
    await wait_until(lambda: b.service.channels.status()[0] == "down")
    redis.start()
    redis.command("HSET", "streamd:channels", "X", "3")
    assert (await reader.wait_for(3))[2] == {"X": 3}
    await wait_until(lambda: a.service.channels.status()[0] == "ok")
    await put(a, "Y", 86)
    assert (await reader.wait_for(4))[3] == {"Y": 86}
    reader.close()
