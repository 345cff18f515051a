"""
The amqp source against the real RabbitMQ on 127.0.0.1:5672: streamd in-process on a
real TCP port, read by real HTTP clients, each test on its own queue and exchange
names. The process tests (SIGKILL, a dropped connection) are in test_amqp_process.py.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from streamd import config, sources
from streamd.testing.conformance import SourceConformance, SourceHarness
from tests.support.amqp_broker import URL, broker  # noqa: F401  (fixture)
from tests.support.web import non_reading_client, open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


def amqp(top=None, **streams):
    """Settings with one amqp stream per keyword: name={keys}; C{top}: top-level keys."""
    return settings({name: {"source": "amqp", "url": URL, **keys}
                     for name, keys in streams.items()}, **(top or {}))


def test_config_errors_name_the_key():
    for table, problem in [
        ({}, "streams.j.queue: give queue (queue mode: each message to one client) or "
             "exchange (broadcast), not both"),
        ({"queue": "a", "exchange": "b"}, "streams.j.queue: give queue"),
        ({"queue": "a", "url": "http://x"}, "streams.j.url: expected amqp://"),
        ({"queue": "a", "url": "amqp://u:secret@h:nope/"}, "streams.j.url: bad URL"),
        ({"queue": "a", "prefetch": 0}, "streams.j.prefetch: must be at least 1"),
        ({"exchange": "a", "exchange_type": "x"}, "streams.j.exchange_type: expected one"),
        ({"queue": "a", "tls_ca": "/etc/hostname"}, "streams.j.tls_ca: "),
        ({"queue": "a", "reconnect_max": 0.05}, "streams.j.reconnect_max: must be at least"),
    ]:
        with pytest.raises(config.ConfigError) as e:
            sources.check_streams(
                config.load_settings({"streams": {"j": {"source": "amqp", **table}}}, {}))
        assert str(e.value).startswith(problem), str(e.value)
        assert "secret" not in str(e.value)


@ensure
async def test_round_trip_acked_after_the_write(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp(jobs={"queue": queue}))
    info = await (await within(treq.get(server.url + "/"))).json()
    jobs = info["sources"]["jobs"]
    assert (jobs["source"], jobs["status"], jobs["reason"]) == ("amqp", "ok", None)
    assert broker.ready(queue) == 0  # declared (durable) by streamd

    reader = await open_stream(server.url + "/streams/jobs")
    ids = await publish(server.url + "/streams/jobs/messages", {"n": 1}, {"s": "007"})
    broker.publish(queue, ["not json", b"\xff\xfe"], headers={"k": "v"})
    await reader.wait_for(4)
    got = reader.messages()
    assert [m["id"] for m in got[:2]] == ids
    assert [m["data"] for m in got] == [{"n": 1}, {"s": "007"}, "not json", "//4="]
    assert got[0]["attributes"] == {"routing_key": queue, "redelivered": False,
                                    "content_type": "application/json"}
    assert got[2]["attributes"]["headers"] == {"k": "v"}
    assert got[3]["attributes"]["body_encoding"] == "base64"
    reader.close()
    await server.wait_open_streams(0)
    assert broker.ready(queue) == 0 and broker.drain(queue) == []  # acked, not requeued

    sse = await open_stream(server.url + "/streams/jobs?format=sse", sse=True)
    broker.publish(queue, ['{"a": [1, 2]}'])
    events = await sse.wait_for(2)
    assert json.loads(events[1]["data"]) == {"a": [1, 2]}
    sse.close()


@ensure
async def test_queue_mode_three_clients_each_message_exactly_once(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp(jobs={"queue": queue, "prefetch": 5}))
    readers = [await open_stream(server.url + "/streams/jobs") for _ in range(3)]
    await wait_until(lambda: broker.consumers(queue) == 3)
    sent = broker.publish(queue, [json.dumps({"i": i}) for i in range(60)])
    await wait_until(lambda: sum(len(r.messages()) for r in readers) >= 60)
    got = [m["id"] for r in readers for m in r.messages()]
    assert sorted(got) == sorted(sent)
    assert all(r.messages() for r in readers)  # shared out by the broker
    for r in readers:
        r.close()
    await server.wait_open_streams(0)
    assert broker.drain(queue) == []


@ensure
async def test_broadcast_every_client_gets_every_message(serve, broker):  # noqa: F811
    exchange = broker.name("x")
    server = await serve(amqp(news={"exchange": exchange, "routing_key": "news.#"}))
    a = await open_stream(server.url + "/streams/news")
    b = await open_stream(server.url + "/streams/news")
    source = server.service.sources["news"]
    await wait_until(lambda: all(s.link and s.link.tag for s in source.subscribers)
                     and len(source.subscribers) == 2)
    url = server.url + "/streams/news/messages"
    await publish(url + "?routing_key=news.eu", *range(5))
    await publish(url + "?routing_key=sport", "not bound: nobody gets it")
    broker.publish("news.us", ["5"], exchange=exchange)
    await a.wait_for(6)
    await b.wait_for(6)
    assert [m["data"] for m in a.messages()] == [0, 1, 2, 3, 4, 5]
    assert [m["id"] for m in a.messages()] == [m["id"] for m in b.messages()]
    assert a.messages()[0]["attributes"]["exchange"] == exchange
    a.close()
    await wait_until(lambda: len(source.subscribers) == 1 and len(source.links) == 1)
    b.close()


@ensure
async def test_limit_is_exact_and_the_rest_stays_in_the_queue(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp(jobs={"queue": queue, "prefetch": 50}))
    sent = broker.publish(queue, [json.dumps(i) for i in range(10)])
    reader = await open_stream(server.url + "/streams/jobs?limit=3")
    await within(reader.done)
    assert [m["id"] for m in reader.messages()] == sent[:3]
    # The surplus of the prefetch window was nacked (requeued), not lost or acked.
    await wait_until(lambda: broker.ready(queue) == 7)
    assert [mid for mid, _, _ in broker.drain(queue)] == sent[3:]


@ensure
async def test_a_paused_client_stops_consuming(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp({"max_pending": 10000}, jobs={"queue": queue, "prefetch": 10}))
    big = "x" * 20000
    # (held: a paused transport is referenced by nothing else, and would be collected)
    slow = await non_reading_client(server, "/streams/jobs")
    await wait_until(lambda: broker.consumers(queue) == 1)
    broker.publish(queue, [json.dumps({"i": i, "pad": big}) for i in range(400)])
    # The client reads nothing: its stream pauses, its consumer is cancelled, and the
    # messages wait in the broker, not in streamd.
    await wait_until(lambda: broker.consumers(queue) == 0)
    stream = next(iter(server.app.open_streams))
    # Every message is in the stream (at most a few prefetch windows' worth: what it
    # took before its transport filled) or back in the queue (what was on its way when
    # the consumer was cancelled, requeued by pika).
    await wait_until(lambda: stream.accepted + broker.ready(queue) == 400)
    taken = stream.accepted
    assert 0 < taken < 400
    # Another client gets the rest (the slow one may still take a little more, should
    # the kernel let its transport drain, but all is taken exactly once).
    reader = await open_stream(server.url + "/streams/jobs")
    await wait_until(lambda: stream.accepted + len(reader.messages()) == 400)
    assert broker.ready(queue) == 0
    reader.close()
    slow.transport.abortConnection()


@ensure
async def test_client_ack_vanished_client_loses_nothing(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp(jobs={"queue": queue, "ack": "client", "max_unacked": 5}))
    sent = broker.publish(queue, [json.dumps(i) for i in range(20)])
    first = await open_stream(server.url + "/streams/jobs")
    await first.wait_for(5)
    session = first.response.headers.getRawHeaders("streamd-session")[0]
    acked = [m["id"] for m in first.messages()[:2]]
    r = await within(treq.post(server.url + "/streams/jobs/ack",
                               json={"session": session, "ids": acked}))
    assert (await r.json()) == {"acked": 2, "unknown": 0}
    await first.wait_for(7)
    first.close()  # vanishes holding 5 unacknowledged messages
    await server.wait_open_streams(0)
    second = await open_stream(server.url + "/streams/jobs?ack=write&limit=18")
    await within(second.done)
    again = [m["id"] for m in second.messages()]
    assert sorted(acked + again) == sorted(sent)
    # Everything the first stream held (written or not, up to the prefetch) came back.
    redelivered = {m["id"] for m in second.messages() if m["attributes"]["redelivered"]}
    assert redelivered == set(sent) - set(acked)


@ensure
async def test_down_at_start_then_503_when_refused(serve):
    server = await serve(settings({"jobs": {
        "source": "amqp", "url": "amqp://guest:guest@127.0.0.1:1/%2F", "queue": "q",
        "reconnect_max": 0.2, "connect_timeout": 1, "on_source_down": "refuse"}}))
    r = await within(treq.get(server.url + "/health"))
    assert r.code == 503
    reason = (await r.json())["sources"]["jobs"]["reason"]
    assert "refused" in reason.lower(), reason
    r = await within(treq.get(server.url + "/streams/jobs"))
    assert r.code == 503


@ensure
async def test_bad_credentials_say_so(serve, broker):  # noqa: F811
    server = await serve(settings({"jobs": {
        "source": "amqp", "url": "amqp://guest:wrong@127.0.0.1:5672/%2F",
        "queue": broker.name(), "reconnect_max": 0.2}}))
    info = await (await within(treq.get(server.url + "/"))).json()
    assert info["sources"]["jobs"]["status"] == "down"
    assert "403 ACCESS_REFUSED - Login was refused" in info["sources"]["jobs"]["reason"]


@ensure
async def test_metrics(serve, broker):  # noqa: F811
    queue = broker.name()
    server = await serve(amqp(jobs={"queue": queue}))
    reader = await open_stream(server.url + "/streams/jobs?limit=2")
    await publish(server.url + "/streams/jobs/messages", 1, 2)
    await within(reader.done)
    text = (await treq.content(await treq.get(server.url + "/metrics"))).decode()
    assert 'streamd_amqp_messages_total{event="published",stream="jobs"} 2.0' in text
    await wait_until(lambda: broker.ready(queue) == 0)
    text = (await treq.content(await treq.get(server.url + "/metrics"))).decode()
    assert 'streamd_amqp_messages_total{event="acked",stream="jobs"} 2.0' in text


class AMQPHarness(SourceHarness):
    in_flight = 10  # the prefetch window

    def __init__(self, broker) -> None:  # noqa: F811
        self.broker = broker
        self.settings = config.load_settings({"streams": {"c": {
            "source": "amqp", "url": URL, "queue": broker.name(), "prefetch": 10}}}, {})

    async def make(self):
        from twisted.internet import reactor

        from streamd.sources import Services, make_source

        source = make_source(self.settings.streams["c"],
                             Services(reactor=reactor, settings=self.settings))
        await source.start()
        return source


class TestAMQPConformance(SourceConformance):
    @pytest.fixture
    def source_harness(self, broker):  # noqa: F811
        return AMQPHarness(broker)
