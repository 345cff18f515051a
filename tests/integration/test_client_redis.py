"""
The client's Redis-backed state and queue, against a private redis-server, while the
client reads a real streamd over TCP. "Another process" is redis-cli, or a second
connection as another process would have.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor

from streamd.client import RedisLink, RedisQueue, RedisState
from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.client import add_fake_source, ids, make_client
from tests.support.web import publish, wait_until, within

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """One private redis-server, then the cluster with "q:jobs" on each of its shards."""
    yield from either(request, home="q:jobs")


def link_to(redis) -> RedisLink:
    """The client's link to the server, or to the cluster."""
    if getattr(redis, "clustered", False):
        return RedisLink.from_url(reactor, redis.url, cluster=True, urls=redis.cluster.urls)
    return RedisLink.from_url(reactor, redis.url)


def cli(redis, *args: str) -> str:
    """redis-cli's answer, as another process sees it."""
    return redis.cli(*args).strip()


@ensure
async def test_another_process_switches_off_a_running_client_and_reads_an_exact_count(
        serve, redis):
    server = await serve()
    link = link_to(redis)
    other = link_to(redis)
    try:
        client = make_client(server, "/streams/news", state=RedisState(link, "tail:news"))
        done = client.start()
        await server.wait_open_streams(1)
        assert cli(redis, "GET", "tail:news:on") == "1"
        await publish(server.url + "/streams/news/messages", *range(5))
        await wait_until(lambda: len(client.queue) == 5)

        # Another holder of the state (another process) switches it off.
        await RedisState(other, "tail:news").turn_off()

        result = await within(done)
        assert (result.count, result.reason) == (5, "off")
        assert await RedisState(other, "tail:news").count() == 5
        assert cli(redis, "GET", "tail:news:count") == "5"
        assert cli(redis, "GET", "tail:news:on") == "0"
        await server.wait_open_streams(0)

        # A second run counts on; a shell can stop it too (PUBLISH NAME:switch off).
        done = client.start()
        await server.wait_open_streams(1)
        await publish(server.url + "/streams/news/messages", 5, 6)
        await wait_until(lambda: len(client.queue) == 7)
        cli(redis, "PUBLISH", "tail:news:switch", "off")
        assert (await within(done)).count == 2
        assert cli(redis, "GET", "tail:news:count") == "7"
    finally:
        await link.close()
        await other.close()


@ensure
async def test_redis_list_queue_pauses_when_full_and_acks_what_consumers_pop(
        serve, redis):
    server = await serve()
    source = add_fake_source(server, "jobs", ack="client")
    link = link_to(redis)
    consumer_link = link_to(redis)
    try:
        queue = RedisQueue(link, "q:jobs", maxsize=3, poll_interval=0.02)
        client = make_client(server, "/streams/jobs", queue=queue)
        done = client.start(limit=5)
        await server.wait_open_streams(1)
        sub = source.subscriptions[0]
        source.push(6, b'{"job": true}')
        await wait_until(lambda: queue.length == 3)
        assert cli(redis, "LLEN", "q:jobs") == "3"  # full: the client waits
        assert client.count == 3 and sub.acked == []

        # Consumers in other processes pop from the head: redis-cli, and a BLPOP client.
        line = cli(redis, "LPOP", "q:jobs")
        assert line == '{"id":"1","stream":"jobs","data":{"job": true}}'
        await wait_until(lambda: ids(sub.acked) == ["1"])  # acked once taken
        consumer = RedisQueue(consumer_link, "q:jobs")
        got = [(await within(consumer.get(timeout=5))).id for _ in range(4)]
        assert got == ["2", "3", "4", "5"]

        result = await within(done)
        assert result.count == 5
        await server.wait_open_streams(0)
        assert ids(sub.acked) == ["1", "2", "3", "4", "5"]
        assert ids(sub.nacked) == ["6"]  # received, never handed over: back to the source
        assert cli(redis, "LLEN", "q:jobs") == "0"
        queue.close()
    finally:
        await link.close()
        await consumer_link.close()
