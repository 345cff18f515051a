"""redis-pubsub end to end: a private redis-server, streamd in-process, real HTTP clients."""

import shutil

import pytest
import pytest_twisted
import treq

from streamd.testing.redis import RedisServer, needs_redis_server
from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.redis_tables import redis_table, single_only
from tests.support.web import open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """One private redis-server, then the cluster (classic pub/sub: any node)."""
    yield from either(request, home="news")


def config(redis, **stream):
    stream.setdefault("source", "redis-pubsub")
    return settings({"news": stream}, redis=redis_table(redis))


def numsub(redis, channel: str) -> int:
    return redis.command("PUBSUB", "NUMSUB", channel)[1]


@ensure
async def test_round_trip_ndjson_and_sse_published_over_http_and_by_redis_cli(
        redis, serve):
    server = await serve(config(redis, channels=["news"]))
    nd = await open_stream(server.url + "/streams/news")
    sse = await open_stream(server.url + "/streams/news?format=sse", sse=True)
    await wait_until(lambda: numsub(redis, "news") == 1)
    await publish(server.url + "/streams/news/messages", {"via": "http"})
    # Another program publishing: bytes kept as sent ("007" and 1.50 untouched), and a
    # value that is not JSON arrives as a JSON string.
    redis.cli("PUBLISH", "news", '{"code":"007","price":1.50}')
    redis.cli("PUBLISH", "news", "007")
    items = await nd.wait_for(3)
    assert [m["data"] for m in items] == [{"via": "http"}, {"code": "007", "price": 1.5}, "007"]
    assert b'"data":{"code":"007","price":1.50}' in nd.raw
    assert items[0]["attributes"] == {"channel": "news"}
    events = await sse.wait_for(4)  # the retry preamble, then three messages
    assert [e["data"] for e in events[1:]] == [
        '{"via": "http"}', '{"code":"007","price":1.50}', '"007"']
    nd.close()
    sse.close()


@ensure
async def test_patterns(redis, serve):
    server = await serve(config(redis, patterns=["sport.*"]))
    reader = await open_stream(server.url + "/streams/news")
    await wait_until(lambda: redis.command("PUBSUB", "NUMPAT") == 1)
    redis.cli("PUBLISH", "weather.today", '"no"')
    redis.cli("PUBLISH", "sport.tennis", '{"score":"6-4"}')
    items = await reader.wait_for(1)
    assert items[0]["data"] == {"score": "6-4"}
    assert items[0]["attributes"] == {"channel": "sport.tennis", "pattern": "sport.*"}
    # A pattern-only stream needs to be told where to publish.
    resp = await within(treq.post(server.url + "/streams/news/messages", data=b"1",
                                  headers={"Content-Type": "application/json"}))
    assert resp.code == 400
    await publish(server.url + "/streams/news/messages?channel=sport.golf", {"hole": 1})
    items = await reader.wait_for(2)
    assert items[1]["data"] == {"hole": 1}
    reader.close()


@ensure
async def test_redis_subscribed_while_a_client_wants_the_channel(redis, serve):
    server = await serve(config(redis, channels=["a", "b"]))
    assert numsub(redis, "a") == 0  # nobody asked yet
    r1 = await open_stream(server.url + "/streams/news")
    r2 = await open_stream(server.url + "/streams/news")
    await wait_until(lambda: numsub(redis, "a") == 1 and numsub(redis, "b") == 1)
    r1.close()
    await server.wait_open_streams(1)
    redis.cli("PUBLISH", "b", "2")
    await r2.wait_for(1)  # still subscribed for the remaining client
    assert numsub(redis, "a") == 1
    r2.close()
    await server.wait_open_streams(0)
    await wait_until(lambda: numsub(redis, "a") == 0 and numsub(redis, "b") == 0)


@ensure
async def test_redis_restart_resubscribes_with_a_gap_notice(redis, serve):
    single_only(redis)
    server = await serve(config(redis, channels=["news"], heartbeat=0))
    reader = await open_stream(server.url + "/streams/news")
    await wait_until(lambda: numsub(redis, "news") == 1)
    redis.cli("PUBLISH", "news", "1")
    await reader.wait_for(1)

    redis.stop()
    await wait_until(lambda: server.service.sources["news"].status()[0] == "down")
    health = await within(treq.get(server.url + "/health"))
    assert health.code == 503
    body = await treq.json_content(health)
    assert body["sources"]["news"]["status"] == "down"

    redis.start()
    # Reconnected and resubscribed by itself (how soon: test_redis_units.py's
    # test_reconnection_waits_grow_to_reconnect_max).
    await wait_until(lambda: numsub(redis, "news") == 1)
    items = await reader.wait_for(2)
    assert items[1]["gap"]["reason"] == "redis was unavailable"
    redis.cli("PUBLISH", "news", "2")
    items = await reader.wait_for(3)
    assert items[2]["data"] == 2
    await wait_until(lambda: server.service.sources["news"].status()[0] == "ok", seconds=2)
    assert (await within(treq.get(server.url + "/health"))).code == 200
    metrics = await (await within(treq.get(server.url + "/metrics"))).text()
    assert ('streamd_source_reconnects_total{source="redis-pubsub",stream="news"} 1.0'
            in metrics)
    reader.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
@needs_redis_server
@ensure
async def test_rediss_url_with_a_private_ca(tmp_path, serve):
    tls = RedisServer(tls_dir=str(tmp_path))  # speaks TLS only
    tls.start()
    try:
        s = settings({"news": {"source": "redis-pubsub", "channels": ["news"]}},
                     redis={"url": tls.url, "tls_ca": tls.ca})
        server = await serve(s)
        reader = await open_stream(server.url + "/streams/news")
        await wait_until(lambda: numsub(tls, "news") == 1)
        await publish(server.url + "/streams/news/messages", {"tls": True})
        items = await reader.wait_for(1)
        assert items[0]["data"] == {"tls": True}
        reader.close()
    finally:
        tls.stop()
