"""
The amqp source in a real streamd process (C{twistd -n streamd --config FILE}) against
the real RabbitMQ: nothing is lost when streamd is SIGKILLed mid-stream, or when the
broker drops its connection (C{rabbitmqctl close_connection}).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.support.amqp_broker import URL, broker, close_connections  # noqa: F401  (fixture)
from tests.support.process import StreamdProcess, processes  # noqa: F401  (fixture)
from tests.support.web import open_stream, wait_until, within

ensure = pytest_twisted.ensureDeferred


def stream_config(name: str, **keys) -> str:
    lines = [f"[streams.{name}]", 'source = "amqp"', f'url = "{URL}"',
             "reconnect_max = 0.5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


async def connected(streamd) -> None:
    """Started, and every source connected (it listens while they connect)."""
    await streamd.started()
    await wait_until(lambda: all(s["status"] == "ok" for s in
                                 health(streamd.url)["sources"].values()), 15)


def health(url: str) -> dict:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


@ensure
async def test_sigkill_mid_stream_every_unacked_message_comes_back(
        tmp_path, broker, processes):  # noqa: F811
    queue = broker.queue()
    sent = broker.publish(queue, [json.dumps({"i": i}) for i in range(30)])
    first = StreamdProcess(tmp_path, stream_config("jobs", queue=queue, ack="client",
                                                   max_unacked=5, prefetch=10))
    processes.append(first)
    await connected(first)
    reader = await open_stream(first.url + "/streams/jobs")
    await reader.wait_for(5)
    session = reader.response.headers.getRawHeaders("streamd-session")[0]
    acked = [m["id"] for m in reader.messages()[:3]]
    r = await within(treq.post(first.url + "/streams/jobs/ack",
                               json={"session": session, "ids": acked}))
    assert (await r.json())["acked"] == 3
    await reader.wait_for(8)
    in_hand = {m["id"] for m in reader.messages()} - set(acked)

    first.proc.kill()  # SIGKILL: no shutdown, no nack
    await first.exited()
    reader.done.addErrback(lambda _: None)

    second = StreamdProcess(tmp_path, stream_config("jobs", queue=queue))
    processes.append(second)
    await connected(second)
    # The broker requeued what the killed streamd held (its connection died with it).
    # An ack the client made may not have reached the broker before the kill: then
    # that message comes again (at least once), but nothing is missing.
    again = await open_stream(second.url + "/streams/jobs")
    await wait_until(lambda: set(acked) | {m["id"] for m in again.messages()} >= set(sent))
    got = {m["id"]: m for m in again.messages()}
    assert set(acked) | set(got) == set(sent)
    assert all(got[i]["attributes"]["redelivered"] for i in in_hand)
    await wait_until(lambda: broker.ready(queue) == 0)
    again.close()


@ensure
async def test_a_dropped_broker_connection_loses_nothing(tmp_path, broker, processes):  # noqa: F811
    queue, exchange = broker.name(), broker.name("x")
    streamd = StreamdProcess(
        tmp_path, stream_config("jobs", queue=queue, prefetch=5)
        + stream_config("news", exchange=exchange))
    processes.append(streamd)
    await connected(streamd)
    jobs = await open_stream(streamd.url + "/streams/jobs")
    news = await open_stream(streamd.url + "/streams/news")
    await wait_until(lambda: broker.consumers(queue) == 1)
    sent = broker.publish(queue, [json.dumps({"i": i}) for i in range(10)])
    await jobs.wait_for(10)

    me = f"{socket.gethostname()}:{streamd.proc.pid}"
    closed = await deferToThread(close_connections, me, "test drop")
    assert closed == 2  # one connection per stream
    # Down (the reason from the broker), then up again by itself within a second or so.
    await wait_until(lambda: "down" in
                     {s["status"] for s in health(streamd.url)["sources"].values()}
                     or broker.consumers(queue) == 1, 15)
    await wait_until(lambda: health(streamd.url)["sources"]["jobs"]["status"] == "ok"
                     and broker.consumers(queue) == 1, 15)
    assert any("320 CONNECTION_FORCED - test drop" in line for line in streamd.log)

    # The streams stayed open: jobs continues, news says what it may have missed.
    sent += broker.publish(queue, [json.dumps({"i": i}) for i in range(10, 20)])
    await wait_until(lambda: {m["id"] for m in jobs.messages()} >= set(sent), 15)
    await news.wait_for(1)
    assert news.items == [{"gap": {"missed": None,
                                   "reason": "the broker connection was lost"}}]
    jobs.close()
    news.close()
    await wait_until(lambda: broker.consumers(queue) == 0)
    assert broker.ready(queue) == 0  # nothing requeued and left over: all were acked
    metrics = urllib.request.urlopen(streamd.url + "/metrics", timeout=5).read().decode()
    assert 'streamd_source_reconnects_total{source="amqp",stream="jobs"} 1.0' in metrics
