"""The tests of test_source_down.py that need other processes (moved from it)."""

from __future__ import annotations

import json
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.protocols.portforward import ProxyFactory

from streamd.testing.redis import free_port, redis_fixture  # noqa: F401  (fixture)
from tests.support.amqp_broker import URL as AMQP_URL
from tests.support.amqp_broker import broker  # noqa: F401  (fixture)
from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.sqs_server import moto  # noqa: F401  (fixture)
from tests.support.web import open_stream, settings, wait_until, within
from tests.unit.test_source_down import WATCH, curl, redis_settings, seen

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_redis_list_read_with_curl_from_before_the_first_connection(redis, serve):
    if shutil.which("curl") is None:
        pytest.skip("curl is not on PATH")
    redis.stop()
    # Started while Redis is away: the source has never been up.
    server = await serve(redis_settings(redis, jobs={
        "source": "redis-list", "key": "jobs", "instance": "t", "block": 0.2}))
    assert server.service.sources["jobs"].status()[0] == "down"
    reader = curl(server.url + "/streams/jobs?limit=2")
    try:
        await wait_until(lambda: reader.out.count(b"\n") >= 1)
        (notice,) = reader.lines()
        assert notice["status"]["source"] == "down" and notice["status"]["reason"]
        redis.start()
        # Pushed at once, before streamd has reconnected: a list keeps it.
        redis.command("RPUSH", "jobs", '{"n": 1}', '{"n": 2}')
        await within(reader.ended)
        assert reader.lines()[1:] == [
            {"status": {"source": "up"}},
            {"id": "1", "stream": "jobs", "data": {"n": 1}},
            {"id": "2", "stream": "jobs", "data": {"n": 2}}]
        await wait_until(lambda: redis.command("LLEN", "jobs:streamd:processing:t") == 0)
    finally:
        if reader.ended.called is False:
            reader.transport.signalProcess("KILL")


@ensure
async def test_redis_pubsub_reader_during_a_restart(redis, serve):
    server = await serve(redis_settings(redis, news={
        "source": "redis-pubsub", "channels": ["news"]}))
    redis.stop()
    await wait_until(lambda: server.service.sources["news"].status()[0] == "down")
    reader = await open_stream(server.url + "/streams/news")
    assert (await reader.wait_for(1))[0]["status"]["source"] == "down"
    redis.start()
    await reader.wait_for(2)
    assert reader.items[1] == {"status": {"source": "up"}}
    # At most once: what counts is what is published once Redis has the subscription.
    await wait_until(lambda: redis.command("PUBSUB", "NUMSUB", "news")[1] == 1)
    redis.command("PUBLISH", "news", '{"back": true}')
    await reader.wait_for(3)
    assert reader.items[2]["data"] == {"back": True}
    reader.close()


@ensure
async def test_eventsource_opened_while_redis_is_down_gets_what_comes_after(
        redis, serve, chromium):
    server = await serve(redis_settings(redis, jobs={
        "source": "redis-list", "key": "jobs", "instance": "t", "block": 0.2}))
    source = server.service.sources["jobs"]
    # Its start-up recovery (an EVAL) answered first: one lost with Redis is logged
    # as an unhandled error (redis_list.py gives it no errback).
    await wait_until(lambda: not source.pending)
    redis.stop()
    await wait_until(lambda: source.status()[0] == "down")
    async with chromium.running("source_down_eventsource") as page:
        await page.open(server.url + "/health")  # any page of streamd's origin
        await wait_until(lambda: defer.ensureDeferred(
            page.evaluate("location.origin")).addCallback(lambda o: o == server.url))
        await page.evaluate(WATCH % json.dumps("/streams/jobs"))
        got = await seen(page, "seen.status.length >= 1")
        assert got["opens"] == 1 and got["status"][0]["source"] == "down"
        redis.start()
        redis.command("RPUSH", "jobs", '{"n": 1}')
        got = await seen(page, "seen.data.length >= 1")
        redis.command("RPUSH", "jobs", '{"n": 2}')
        got = await seen(page, "seen.data.length >= 2")
        assert got["data"] == [{"n": 1}, {"n": 2}]
        assert got["status"] == [got["status"][0], {"source": "up"}]
        # One connection all along: no error, no reconnection, no reload.
        assert (got["opens"], got["errors"]) == (1, 0)
        await page.evaluate("es.close(), true")
    await server.wait_open_streams(0)


@ensure
async def test_sqs_queue_missing_then_created(serve, moto, monkeypatch):  # noqa: F811
    import uuid

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = "late-" + uuid.uuid4().hex[:8]
    url = f"{moto.endpoint}/123456789012/{name}"
    server = await serve(settings({"late": {
        "source": "sqs", "queue_url": url, "endpoint_url": moto.endpoint,
        "region": "us-east-1", "wait_time_seconds": 1}}))
    reader = await open_stream(server.url + "/streams/late")
    notice = (await reader.wait_for(1))[0]["status"]
    assert notice["source"] == "down" and "QueueDoesNotExist" in notice["reason"]
    moto.sqs.create_queue(QueueName=name)
    moto.send(url, ['{"back": true}'])  # before streamd sees the queue: SQS keeps it
    await reader.wait_for(3, seconds=15)
    assert reader.items[1] == {"status": {"source": "up"}}
    assert reader.items[2]["data"] == {"back": True}
    reader.close()


@ensure
async def test_amqp_broker_unreachable_then_back(serve, broker):  # noqa: F811
    # streamd reaches RabbitMQ through a forwarder that is not listening yet.
    queue = broker.queue()
    port = free_port()
    via = AMQP_URL.replace(":5672/", f":{port}/")
    server = await serve(settings({"jobs": {
        "source": "amqp", "url": via, "queue": queue, "reconnect_max": 0.2,
        "connect_timeout": 1}}))
    reader = await open_stream(server.url + "/streams/jobs")
    assert (await reader.wait_for(1))[0]["status"]["source"] == "down"
    broker.publish(queue, ['{"n": 1}'])  # while streamd is away: the queue keeps it
    forwarder = reactor.listenTCP(port, ProxyFactory("127.0.0.1", 5672),
                                  interface="127.0.0.1")
    try:
        await reader.wait_for(3, seconds=15)
        assert reader.items[1] == {"status": {"source": "up"}}
        assert reader.items[2]["data"] == {"n": 1}
        reader.close()
        await server.wait_open_streams(0)
        await server.app.stop(5)  # its connection goes before the forwarder does
    finally:
        await forwarder.stopListening()
