"""
Several instances, one logical service: two twistd processes sharing one Redis and one
SQS queue, as behind a load balancer; then sharing a Redis Cluster, with the shared list
on each of its three shards in turn.
"""

from __future__ import annotations

import json
import signal

import pytest
import pytest_twisted
import treq

from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.process import StreamdProcess, processes  # noqa: F401  (fixture)
from tests.support.sqs_server import moto  # noqa: F401  (fixture)
from tests.support.web import open_stream, publish, wait_until

ensure = pytest_twisted.ensureDeferred


async def healthy(url: str, seconds: float = 20.0) -> None:
    """Wait (bounded) until the instance reports every source up on /health."""
    last: dict = {}

    def probe() -> bool:
        if "pending" not in last:
            last["pending"] = True
            d = treq.get(url + "/health")
            d.addCallback(lambda r: last.update(code=r.code))
            d.addBoth(lambda _: last.pop("pending", None))
        return last.get("code") == 200

    await wait_until(probe, seconds)


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """A private redis-server, then the cluster with the list "work" on each shard."""
    yield from either(request, home="work")


def redis_toml(redis) -> str:
    if getattr(redis, "clustered", False):
        return redis.cluster.toml()
    return f'[redis]\nurl = "{redis.url}"\n'


def shared_config(redis, queue_url: str, endpoint: str) -> str:
    return redis_toml(redis) + f"""
[streams.news]
source = "redis-pubsub"
channels = ["news"]

[streams.work]
source = "redis-list"
key = "work"
block = 0.2

[streams.jobs]
source = "sqs"
queue_url = "{queue_url}"
endpoint_url = "{endpoint}"
region = "us-east-1"
wait_time_seconds = 1
# Long enough that a delete is never later than the message's visibility, on a loaded
# machine too (with 2 s, one message was once received twice); short enough for the
# SIGKILL part below.
visibility_timeout = 5
"""


@ensure
async def test_two_instances_one_service(tmp_path, redis, moto, processes):  # noqa: F811
    queue = moto.create_queue()
    conf = shared_config(redis, queue, moto.endpoint)
    a = StreamdProcess(tmp_path, conf)
    b = StreamdProcess(tmp_path, conf)
    processes.extend([a, b])
    await a.started()
    await b.started()
    await healthy(a.url)
    await healthy(b.url)

    # Redis pub/sub: published through A, read by a client of B.
    news = await open_stream(b.url + "/streams/news")
    await wait_until(lambda: redis.command("PUBSUB", "NUMSUB", "news")[1] == 1)
    await publish(a.url + "/streams/news/messages", {"headline": "hello"})
    assert (await news.wait_for(1))[0]["data"] == {"headline": "hello"}
    news.close()

    # A Redis list read by both instances (each its own processing list): each message
    # once. Pushed by another program; on a cluster, the list is on the param's shard.
    work = [await open_stream(p.url + "/streams/work") for p in (a, b)]
    redis.command("RPUSH", "work", *[json.dumps({"w": i}) for i in range(40)])
    await wait_until(lambda: sum(len(r.messages()) for r in work) >= 40, 20)
    assert sorted(m["data"]["w"] for r in work for m in r.messages()) == list(range(40))
    for r in work:
        r.close()
    if getattr(redis, "clustered", False):
        return  # the rest is SQS's, the same whatever Redis is

    # An SQS queue stream spread over both instances: each message once.
    on_a = await open_stream(a.url + "/streams/jobs")
    on_b = await open_stream(b.url + "/streams/jobs")
    sent = await publish(a.url + "/streams/jobs/messages", *[{"n": i} for i in range(30)])
    await wait_until(lambda: len(on_a.messages()) + len(on_b.messages()) >= 30, 20)
    got = [m["id"] for m in on_a.messages() + on_b.messages()]
    assert sorted(got) == sorted(sent)  # all of them, none twice
    await wait_until(lambda: moto.counts(queue) == (0, 0), 15, interval=0.1)
    on_a.close()
    on_b.close()

    # Killing one instance loses nothing durable: A's client holds messages it never
    # acknowledged when A dies; they reach B's client after the visibility timeout.
    held = await open_stream(a.url + "/streams/jobs?ack=client")
    more = await publish(b.url + "/streams/jobs/messages", *[{"m": i} for i in range(10)])
    await held.wait_for(1)
    a.proc.send_signal(signal.SIGKILL)
    assert await a.exited() == -signal.SIGKILL
    held.done.addErrback(lambda _: None)
    rest = await open_stream(b.url + "/streams/jobs")
    await wait_until(lambda: {m["id"] for m in rest.messages()} == set(more), 20)
    await wait_until(lambda: moto.counts(queue) == (0, 0), 15, interval=0.1)
    rest.close()
    assert json.loads(json.dumps(sorted(more)))  # ids are plain strings
