"""
The SQS source end to end: streamd in-process on a real TCP port, read by a real HTTP
client (treq), against moto's SQS server in a subprocess. Waits are on events with a
bound; "nothing more happened" is shown against another stream's activity, not a delay.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from tests.support.sqs_proxy import sqs_proxy  # noqa: F401  (fixture)
from tests.support.sqs_server import moto, queue  # noqa: F401  (fixtures)
from tests.support.web import non_reading_client, open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    # moto accepts any keys; the standard chain finds these in the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def sqs(endpoint, **streams):
    """Settings with one SQS stream per keyword: name=(queue_url, {keys})."""
    tables = {}
    for name, (url, keys) in streams.items():
        tables[name] = {"source": "sqs", "queue_url": url, "endpoint_url": endpoint,
                        "region": "us-east-1", "wait_time_seconds": 1, **keys}
    return settings(tables)


async def settled(moto, queue_url, expected, seconds=10.0):  # noqa: F811
    """Wait until SQS reports (visible, in flight) == expected."""
    await wait_until(lambda: moto.counts(queue_url) == expected, seconds, interval=0.1)


async def post_ack(server, name, session, ids):
    resp = await within(treq.post(f"{server.url}/streams/{name}/ack",
                                  json={"session": session, "ids": ids}))
    return resp.code, await treq.json_content(resp)


@ensure
async def test_round_trip_ndjson_and_sse_deleted_after_write(serve, moto, queue):  # noqa: F811
    server = await serve(sqs(moto.endpoint, orders=(queue, {})))
    nd = await open_stream(server.url + "/streams/orders")
    ids = await publish(server.url + "/streams/orders/messages", {"n": 1}, {"s": "007"})
    await nd.wait_for(2)
    assert [(m["id"], m["data"]) for m in nd.messages()] == [
        (ids[0], {"n": 1}), (ids[1], {"s": "007"})]
    assert nd.messages()[0]["attributes"]["ApproximateReceiveCount"] == 1
    await settled(moto, queue, (0, 0))
    nd.close()
    await server.wait_open_streams(0)

    sse = await open_stream(server.url + "/streams/orders?format=sse", sse=True)
    moto.send(queue, ["not json", '{"a": [1, 2]}'])
    events = await sse.wait_for(3)
    assert [json.loads(e["data"]) for e in events[1:]] == ["not json", {"a": [1, 2]}]
    await settled(moto, queue, (0, 0))
    sse.close()


@ensure
async def test_batches_and_long_polling_without_a_busy_loop(serve, moto, queue,  # noqa: F811
                                                            sqs_proxy):  # noqa: F811
    server = await serve(sqs(sqs_proxy.url, orders=(queue, {"max_messages": 4})))
    reader = await open_stream(server.url + "/streams/orders")
    url = server.url + "/streams/orders/messages"
    await publish(url, *[{"i": i} for i in range(25)])
    assert sqs_proxy.calls["SendMessageBatch"] == 3  # 10 + 10 + 5
    await reader.wait_for(25)
    assert sorted(m["data"]["i"] for m in reader.messages()) == list(range(25))
    assert sqs_proxy.calls["ReceiveMessage"] >= 7  # at most 4 per receive
    # Idle: each ReceiveMessage is a 1-second long poll, not a spin.
    from twisted.internet import reactor

    start, t0 = sqs_proxy.calls["ReceiveMessage"], reactor.seconds()
    await within(sqs_proxy.when(lambda c: c["ReceiveMessage"] >= start + 3), 10)
    assert reactor.seconds() - t0 >= 1.9
    reader.close()


@ensure
async def test_queue_delivery_three_clients_each_message_exactly_once(
        serve, moto, queue):  # noqa: F811
    server = await serve(sqs(moto.endpoint, orders=(queue, {})))
    readers = [await open_stream(server.url + "/streams/orders") for _ in range(3)]
    await server.wait_open_streams(3)
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(60)])
    await wait_until(lambda: sum(len(r.messages()) for r in readers) >= 60)
    got = [m["id"] for r in readers for m in r.messages()]
    assert sorted(got) == sorted(sent)  # every one, none twice
    assert all(r.messages() for r in readers)  # shared out, not all to one client
    await settled(moto, queue, (0, 0))
    for r in readers:
        r.close()


@ensure
async def test_broadcast_every_client_gets_every_message(serve, moto, queue):  # noqa: F811
    server = await serve(sqs(moto.endpoint, news=(queue, {"delivery": "broadcast"})))
    a = await open_stream(server.url + "/streams/news")
    b = await open_stream(server.url + "/streams/news")
    await server.wait_open_streams(2)
    sent = moto.send(queue, [json.dumps(i) for i in range(15)])
    await a.wait_for(15)
    await b.wait_for(15)
    assert [m["id"] for m in a.messages()] == [m["id"] for m in b.messages()]
    assert sorted(m["id"] for m in a.messages()) == sorted(sent)
    await settled(moto, queue, (0, 0))
    a.close()
    b.close()


@ensure
async def test_client_acks_delete_max_unacked_and_foreign_sessions(
        serve, moto, queue, sqs_proxy):  # noqa: F811
    keys = {"ack": "client", "max_unacked": 5, "max_messages": 5, "heartbeat": 0.1,
            "visibility_timeout": 60}
    server = await serve(sqs(sqs_proxy.url, orders=(queue, keys)))
    moto.send(queue, [json.dumps(i) for i in range(20)])
    a = await open_stream(server.url + "/streams/orders")
    session = a.response.headers.getRawHeaders("streamd-session")[0]
    await a.wait_for(5)
    polls = sqs_proxy.calls["ReceiveMessage"]
    # At the limit: heartbeats keep coming, receives do not.
    await wait_until(lambda: sum("heartbeat" in i for i in a.items) >= 3)
    assert sqs_proxy.calls["ReceiveMessage"] == polls
    assert len(a.messages()) == 5 and moto.counts(queue) == (15, 5)  # nothing deleted

    other = await open_stream(server.url + "/streams/orders")
    other_session = other.response.headers.getRawHeaders("streamd-session")[0]
    first = [m["id"] for m in a.messages()]
    assert await post_ack(server, "orders", other_session, first) == (
        200, {"acked": 0, "unknown": 5})
    other.close()
    await server.wait_open_streams(1)
    assert moto.counts(queue)[1] >= 5  # still not deleted

    assert await post_ack(server, "orders", session, first) == (
        200, {"acked": 5, "unknown": 0})
    await a.wait_for(len(a.items) + 5)  # resumed: the next five
    await wait_until(lambda: len(a.messages()) >= 10)
    assert len(set(m["id"] for m in a.messages())) == 10
    await settled(moto, queue, (10, 5))
    a.close()


@ensure
async def test_client_ack_mode_client_vanishes_nothing_lost(serve, moto, queue):  # noqa: F811
    keys = {"ack": "client", "max_unacked": 5, "visibility_timeout": 60}
    server = await serve(sqs(moto.endpoint, orders=(queue, keys)))
    sent = moto.send(queue, [json.dumps(i) for i in range(20)])
    a = await open_stream(server.url + "/streams/orders")
    session_a = a.response.headers.getRawHeaders("streamd-session")[0]
    await a.wait_for(5)
    acked = [m["id"] for m in a.messages()[:3]]
    assert (await post_ack(server, "orders", session_a, acked))[1]["acked"] == 3
    a.close()  # two delivered, never acknowledged
    await server.wait_open_streams(0)

    b = await open_stream(server.url + "/streams/orders")
    session_b = b.response.headers.getRawHeaders("streamd-session")[0]
    done: set[str] = set()
    while len(done) < 17:
        await b.wait_for(len(done) + 1, seconds=10)  # long before the 60 s timeout
        new = [m["id"] for m in b.messages() if m["id"] not in done]
        assert (await post_ack(server, "orders", session_b, new))[1]["acked"] == len(new)
        done.update(new)
    assert sorted(done | set(acked)) == sorted(sent)
    await settled(moto, queue, (0, 0))
    b.close()


@ensure
async def test_limit_deletes_exactly_n_and_the_rest_is_visible_at_once(
        serve, moto, queue):  # noqa: F811
    server = await serve(sqs(moto.endpoint, orders=(queue, {"visibility_timeout": 60})))
    moto.send(queue, [json.dumps(i) for i in range(25)])
    reader = await open_stream(server.url + "/streams/orders?limit=7")
    await within(reader.done)
    assert len(reader.messages()) == 7
    await settled(moto, queue, (18, 0))  # 7 deleted, the rest back without the 60 s


async def stalled_reader(server, moto, sqs_proxy, big):  # noqa: F811
    """
    A client that never reads, on stream "big", once streamd stopped writing to it
    (kernel and Twisted buffers full); "tick" long-polls an empty queue each second
    and serves as the clock. Returns (client, big's Stream, tick's reader).
    """
    slow = await non_reading_client(server, "/streams/big")
    ticker = await open_stream(server.url + "/streams/tick")
    await wait_until(lambda: len(server.app.open_streams) == 2)
    stream = next(s for s in server.app.open_streams if s.name == "big")
    tick = server.service.sources["tick"].queue_url
    for _ in range(10):
        # Pauses come and go while the kernel buffers fill: wait for one that lasts
        # a whole tick.
        await wait_until(lambda: stream.source_paused, 20)
        before = stream.written
        base = sqs_proxy.calls["ReceiveMessage", tick]
        await within(sqs_proxy.when(lambda c, b=base: c["ReceiveMessage", tick] > b), 5)
        if stream.source_paused and stream.written == before:
            return slow, stream, ticker
    raise AssertionError("the stream never stayed paused")


def two_queues(moto, sqs_proxy, **keys):  # noqa: F811
    big, tick = moto.create_queue(), moto.create_queue()
    moto.send(big, [json.dumps("x" * 40_000)] * 150)  # 6 MB: more than buffers hold
    return big, sqs(sqs_proxy.url, big=(big, keys), tick=(tick, {}))


@ensure
async def test_paused_client_no_receive_while_paused(serve, moto, sqs_proxy):  # noqa: F811
    big, config = two_queues(moto, sqs_proxy)
    server = await serve(config)
    slow, stream, ticker = await stalled_reader(server, moto, sqs_proxy, big)
    tick = server.service.sources["tick"].queue_url
    for _ in range(5):
        paused_polls = sqs_proxy.calls["ReceiveMessage", big]
        written = stream.written
        base = sqs_proxy.calls["ReceiveMessage", tick]
        await within(sqs_proxy.when(
            lambda c, b=base: c["ReceiveMessage", tick] >= b + 3), 10)
        # The kernel may still grow the client's buffer and let a few more writes
        # through; judge only a window in which the stream stayed paused throughout.
        if stream.written == written and stream.source_paused:
            assert sqs_proxy.calls["ReceiveMessage", big] == paused_polls
            break
    else:
        raise AssertionError("the stream never stayed paused for three ticks")
    # What streamd holds for it: what the stream queued plus at most one batch.
    visible, in_flight = moto.counts(big)
    assert in_flight <= stream.written + stream.queued + 10
    ticker.close()
    slow.transport.abortConnection()


@ensure
async def test_vanished_write_ack_client_loses_at_most_the_socket_buffers(
        serve, moto, sqs_proxy):  # noqa: F811
    big, config = two_queues(moto, sqs_proxy, visibility_timeout=60)
    server = await serve(config)
    slow, stream, ticker = await stalled_reader(server, moto, sqs_proxy, big)
    slow.transport.abortConnection()  # the client vanishes, having read nothing
    await within(slow.lost)
    await server.wait_open_streams(1)
    await wait_until(lambda: moto.counts(big)[1] == 0, 10, interval=0.1)
    visible, _ = moto.counts(big)
    deleted = 150 - visible
    # Deleted means its bytes reached the kernel, and it died in the socket buffers:
    # that is the loss, bounded by the kernel's buffers (the client's receive buffer
    # and our send buffer, 64 KiB by default, which the kernel doubles).
    assert deleted == stream.sent > 0
    with open("/proc/sys/net/ipv4/tcp_rmem") as r:
        bound = int(r.read().split()[2]) + 2 * 64 * 1024
    assert deleted * 40_000 <= bound + 40_000
    assert visible == 150 - stream.sent  # the rest is back at once, not after 60 s
    ticker.close()


@ensure
async def test_queue_missing_then_created_down_then_up(serve, moto):  # noqa: F811
    import uuid

    name = "late-" + uuid.uuid4().hex[:8]
    url = f"{moto.endpoint}/123456789012/{name}"
    server = await serve(sqs(moto.endpoint, late=(url, {})))
    resp = await within(treq.get(server.url + "/health"))
    health = await treq.json_content(resp)
    assert resp.code == 503 and health["sources"]["late"]["status"] == "down"
    assert "QueueDoesNotExist" in health["sources"]["late"]["reason"]
    # A reader that comes while the queue is missing is told, and waits.
    reader = await open_stream(server.url + "/streams/late")
    await reader.wait_for(1)
    assert reader.items[0]["status"]["source"] == "down"
    assert "QueueDoesNotExist" in reader.items[0]["status"]["reason"]

    assert moto.sqs.create_queue(QueueName=name)["QueueUrl"] == url
    await wait_until(lambda: server.service.sources["late"].status() == ("ok", None), 15)
    moto.send(url, ['{"back": true}'])
    await wait_until(lambda: reader.messages(), 15)
    assert {"status": {"source": "up"}} in reader.items
    assert reader.messages()[0]["data"] == {"back": True}
    reader.close()


@ensure
async def test_5xx_answers_are_retried_and_nothing_is_lost(serve, moto, queue,  # noqa: F811
                                                           sqs_proxy):  # noqa: F811
    server = await serve(sqs(sqs_proxy.url, orders=(queue, {})))
    reader = await open_stream(server.url + "/streams/orders")
    sqs_proxy.faults.update({"SendMessageBatch": 1, "ReceiveMessage": 2,
                             "DeleteMessageBatch": 2})
    ids = await publish(server.url + "/streams/orders/messages", *range(15))
    await reader.wait_for(15)
    assert sorted(m["id"] for m in reader.messages()) == sorted(ids)
    await settled(moto, queue, (0, 0))
    assert sqs_proxy.injected == 5
    text = (await treq.content(await within(treq.get(server.url + "/metrics")))).decode()
    for op, n in (("SendMessageBatch", 1), ("ReceiveMessage", 2), ("DeleteMessageBatch", 2)):
        assert f'streamd_sqs_requests_total{{operation="{op}",outcome="server_error"}} ' \
            f'{n:.1f}' in text
    reader.close()


@ensure
async def test_fifo_order_within_each_group(serve, moto):  # noqa: F811
    fifo = moto.create_queue(fifo=True, ContentBasedDeduplication="true")
    server = await serve(sqs(moto.endpoint, jobs=(fifo, {"max_messages": 3})))
    url = server.url + "/streams/jobs/messages"
    resp = await within(treq.post(url, data=b"{}", headers={"Content-Type": "application/json"}))
    assert resp.code == 400  # a FIFO queue needs group_id
    for i in range(10):
        for g in "abc":
            await publish(f"{url}?group_id={g}", {"g": g, "i": i})
    reader = await open_stream(server.url + "/streams/jobs")
    await reader.wait_for(30, seconds=20)
    for g in "abc":
        assert [m["data"]["i"] for m in reader.messages() if m["data"]["g"] == g] == \
            list(range(10))
    reader.close()


@ensure
async def test_no_credentials_source_down_saying_so(serve, moto, queue, monkeypatch,  # noqa: F811
                                                    tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = await serve(sqs(moto.endpoint, orders=(queue, {})))
    resp = await within(treq.get(server.url + "/health"))
    assert resp.code == 503
    source = (await treq.json_content(resp))["sources"]["orders"]
    assert source["status"] == "down" and "no AWS credentials" in source["reason"]


@ensure
async def test_an_eventsource_reconnecting_with_last_event_id_gets_its_stream(
        serve, moto, queue):  # noqa: F811
    # A browser's EventSource reconnects by itself with Last-Event-ID, and never again
    # after an answer other than 200: an SQS stream opens for it (what was not deleted
    # comes back by itself), while an explicit ?since= is still the client's mistake.
    server = await serve(sqs(moto.endpoint, orders=(queue, {})))
    sse = await open_stream(server.url + "/streams/orders?format=sse", sse=True,
                            headers={"Last-Event-ID": "some-message-id"})
    moto.send(queue, ['{"after": "reconnect"}'])
    events = await sse.wait_for(2)
    assert json.loads(events[-1]["data"]) == {"after": "reconnect"}
    sse.close()
    resp = await within(treq.get(server.url + "/streams/orders?since=some-message-id"))
    assert resp.code == 400
    assert "cannot resume by id" in (await treq.json_content(resp))["error"]["message"]
