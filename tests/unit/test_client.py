"""
streamd.client against a real streamd over TCP (the C{serve} fixture): the limit, the
switch, reconnection and resumption, errors, back-pressure and acknowledgements.
"""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError

from streamd.client import (
    Backoff,
    ClientError,
    GaveUp,
    MemoryQueue,
    MemoryState,
    Result,
    StreamClient,
)
from tests.support.client import FAST, add_fake_source, ids, make_client, the_stream  # noqa: F401
from tests.support.web import publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred











@ensure
async def test_limit_hands_over_exactly_n_of_many_in_one_chunk(serve):
    server = await serve()
    client = make_client(server, "/streams/news")
    done = client.start(limit=7)
    await server.wait_open_streams(1)
    stream = the_stream(server)
    await publish(server.url + "/streams/news/messages", *[{"n": i} for i in range(50)])
    result = await within(done)
    assert result == Result(count=7, reason="limit", last_id="7")
    # The server wrote all 50 in one write; the client handed over 7, not 8.
    assert stream.written == 50
    assert [r.data for r in client.queue.get_nowait()] == [{"n": i} for i in range(7)]
    assert client.state.counter == 7
    await server.wait_open_streams(0)  # and it hung up

    # The next run resumes after the last record handed over, not the last received.
    result = await within(client.start(limit=7))
    assert (result.count, result.last_id) == (7, "14")
    assert [r.data for r in client.queue.get_nowait()] == [{"n": i} for i in range(7, 14)]
    assert client.state.counter == 14


@ensure
async def test_switch_off_from_another_object_stops_every_client_sharing_it(serve):
    server = await serve()
    state = MemoryState()
    news = make_client(server, "/streams/news", state=state)
    sports = make_client(server, "/streams/sports", state=state)
    d_news, d_sports = news.start(), sports.start()
    await server.wait_open_streams(2)
    await publish(server.url + "/streams/news/messages", 1, 2, 3)
    await publish(server.url + "/streams/sports/messages", 1, 2)
    await wait_until(lambda: len(news.queue) == 3 and len(sports.queue) == 2)

    state.turn_off()  # e.g. an admin endpoint of the application holding the state

    assert (await within(d_news)).reason == "off"
    assert (await within(d_sports)).count == 2
    assert state.counter == 5
    await server.wait_open_streams(0)
    # Records published after the switch went off are not handed over.
    await publish(server.url + "/streams/news/messages", 4)
    assert len(news.queue) == 3


@ensure
async def test_reconnects_after_the_server_drops_and_resumes_with_no_gap(serve):
    server = await serve()
    client = make_client(server, "/streams/news", backoff=Backoff(initial=0.3, jitter=0.1))
    done = client.start(limit=6)
    await server.wait_open_streams(1)
    url = server.url + "/streams/news/messages"
    await publish(url, 1, 2, 3)
    await wait_until(lambda: len(client.queue) == 3)

    the_stream(server).request.transport.abortConnection()
    await server.wait_open_streams(0)
    await publish(url, 4, 5)  # while the client is away
    await server.wait_open_streams(1)
    await publish(url, 6, 7)

    result = await within(done)
    assert (result.count, result.reason, result.reconnects, result.gaps) == (6, "limit", 1, 0)
    records = client.queue.get_nowait()
    assert [r.data for r in records] == [1, 2, 3, 4, 5, 6]
    assert ids(records) == ["1", "2", "3", "4", "5", "6"]


@ensure
async def test_sse_reconnects_with_last_event_id(serve):
    server = await serve()
    client = make_client(server, "/streams/news", sse=True,
                         backoff=Backoff(initial=0.3, jitter=0.1))
    done = client.start(limit=3)
    await server.wait_open_streams(1)
    url = server.url + "/streams/news/messages"
    await publish(url, {"a": 1})
    await wait_until(lambda: len(client.queue) == 1)
    the_stream(server).request.transport.abortConnection()
    await server.wait_open_streams(0)
    await publish(url, {"a": 2}, {"a": 3})
    result = await within(done)
    assert (result.count, result.reconnects) == (3, 1)
    assert [r.data for r in client.queue.get_nowait()] == [{"a": 1}, {"a": 2}, {"a": 3}]


@ensure
async def test_5xx_is_retried_until_the_stream_is_back(serve):
    server = await serve()
    source = add_fake_source(server, "orders", on_source_down="refuse")
    source.state = ("down", "maintenance")
    client = make_client(server, "/streams/orders")
    done = client.start(limit=1)
    await wait_until(lambda: client.reconnects >= 2)  # 503, 503, ...
    source.state = ("ok", None)
    await server.wait_open_streams(1)
    source.push(1, b'{"ok": true}')
    result = await within(done)
    assert result.count == 1 and result.reconnects >= 2
    assert client.queue.get_nowait()[0].data == {"ok": True}


@ensure
async def test_network_errors_are_retried_then_given_up_after_max_retries():
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory())
    url = f"http://127.0.0.1:{port.getHost().port}/streams/news"
    await port.stopListening()  # nothing listens there now: connection refused
    client = StreamClient(url, reactor=reactor, backoff=FAST, max_retries=2)
    with pytest.raises(GaveUp) as e:
        await within(client.start())
    assert e.value.attempts == 2 and "refused" in e.value.last_error.lower()
    assert client.reconnects == 1


@ensure
async def test_a_silent_connection_is_replaced_after_idle_timeout(serve):
    server = await serve()
    client = make_client(server, "/streams/quiet?heartbeat=0", idle_timeout=0.2)
    done = client.start(limit=1)
    await wait_until(lambda: client.reconnects >= 1)
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/quiet/messages", "hello")
    assert (await within(done)).count == 1


@ensure
async def test_cancelling_a_run_stops_it_and_hangs_up(serve):
    server = await serve()
    client = make_client(server, "/streams/news")
    done = client.start()
    await server.wait_open_streams(1)
    done.cancel()
    assert done.called  # with CancelledError, at once
    done.addErrback(lambda f: f.trap(CancelledError))
    await server.wait_open_streams(0)
    assert not client.running


@ensure
async def test_4xx_stops_with_the_servers_message(serve):
    server = await serve(settings(streams={"news": {"source": "memory"}}))
    client = make_client(server, "/streams/other")
    with pytest.raises(ClientError) as e:
        await within(client.start(limit=1))
    assert e.value.status == 404
    assert e.value.message == "no stream named 'other'"
    assert e.value.result.count == 0


@ensure
async def test_token_is_sent_as_bearer_header_or_access_token(serve):
    server = await serve()
    seen = []
    for token_param in (False, True):
        client = make_client(server, "/streams/news", token="s3cret",
                             token_param=token_param, headers={"X-Trace": "t1"},
                             params={"heartbeat": "7"})
        done = client.start(limit=1)
        await server.wait_open_streams(1)
        stream = the_stream(server)
        assert stream.request.getHeader(b"x-trace") == b"t1"
        assert stream.heartbeat == 7
        request = stream.request
        seen.append((request.getHeader(b"authorization"), request.args.get(b"access_token")))
        await publish(server.url + "/streams/news/messages", 1)
        await within(done)
        await server.wait_open_streams(0)
    assert seen == [(b"Bearer s3cret", None), (None, [b"s3cret"])]


@ensure
async def test_a_full_queue_pauses_the_servers_stream_and_drops_nothing(serve):
    server = await serve(settings(max_pending=1_000_000, max_pending_bytes=1 << 30))
    queue = MemoryQueue(maxsize=10)
    client = make_client(server, "/streams/big", queue=queue)
    done = client.start()
    await server.wait_open_streams(1)
    stream = the_stream(server)
    url = server.url + "/streams/big/messages"
    pad = "x" * 1000
    sent = 0
    # Publish until the server holds messages for this client: its stream stayed paused
    # across publish round trips (the kernel's socket buffers fill first). A client that
    # kept reading would drain it between publishes.
    while stream.queued < 2000:
        await publish(url, *[{"n": sent + i, "pad": pad} for i in range(500)])
        sent += 500
        assert sent <= 40_000, "the server's stream was never held paused"
    assert stream.source_paused
    await wait_until(lambda: len(queue) == 10)  # the bound held
    assert len(client.handover.pending) < 100  # the rest waits in the sockets and the server
    got = []
    while len(got) < sent:
        got.append((await within(queue.get())).data["n"])
    assert got == list(range(sent))  # all of them, in order
    await wait_until(lambda: not stream.source_paused)
    client.stop()
    assert (await within(done)).count == sent


@ensure
async def test_acks_once_taken_so_records_not_consumed_go_back_to_the_source(serve):
    server = await serve()
    source = add_fake_source(server, "jobs", ack="client", max_unacked=100)
    client = make_client(server, "/streams/jobs")
    done = client.start(limit=3)
    await server.wait_open_streams(1)
    stream = the_stream(server)
    sub = source.subscriptions[0]
    source.push(5)
    await wait_until(lambda: len(client.queue) == 3)
    await wait_until(lambda: stream.written == 5)
    assert not done.called  # the run waits until its 3 records are acknowledged
    assert sub.acked == []
    for _ in range(3):
        await client.queue.get()
    result = await within(done)
    assert result.count == 3
    await server.wait_open_streams(0)
    assert ids(sub.acked) == ["1", "2", "3"]
    assert ids(sub.nacked) == ["4", "5"]  # written, never handed over: back to the source


@ensure
async def test_acks_keep_a_client_ack_stream_flowing_past_max_unacked(serve):
    server = await serve(settings(streams={"news": {"source": "memory", "ack": "client",
                                                    "max_unacked": 2}}))
    client = make_client(server, "/streams/news")
    done = client.start(limit=6)
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/news/messages", 1, 2, 3, 4, 5, 6)
    got = [(await within(client.queue.get())).data for _ in range(6)]
    assert got == [1, 2, 3, 4, 5, 6]  # without acks the server stops after 2
    assert (await within(done)).count == 6


@ensure
async def test_manual_acks_are_sent_when_the_application_says(serve):
    server = await serve()
    source = add_fake_source(server, "jobs", ack="client")
    client = make_client(server, "/streams/jobs", ack="manual")
    done = client.start(limit=2)
    await server.wait_open_streams(1)
    sub = source.subscriptions[0]
    source.push(2)
    first = await within(client.queue.get())
    second = await within(client.queue.get())
    client.ack([first])
    await wait_until(lambda: len(sub.acked) == 1)
    assert ids(sub.acked) == ["1"] and not done.called
    client.ack([second])
    assert (await within(done)).count == 2
    assert ids(sub.acked) == ["1", "2"] and sub.nacked == []


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    b = Backoff(initial=0.5, factor=2.0, maximum=3.0, jitter=0.5)
    assert [b.delay(k, lambda: 0.0) for k in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay(2, lambda: 1.0) == 0.5  # the most jitter takes off half


@ensure
async def test_switching_off_while_waiting_for_acks_gives_untaken_records_back(serve):
    server = await serve()
    source = add_fake_source(server, "jobs", ack="client")
    client = make_client(server, "/streams/jobs")
    done = client.start(limit=2)
    await server.wait_open_streams(1)
    sub = source.subscriptions[0]
    source.push(2)
    await wait_until(lambda: len(client.queue) == 2)
    assert not done.called  # waiting for a consumer to take them
    client.state.turn_off()  # e.g. the consuming process is going away
    assert (await within(done)).count == 2
    await server.wait_open_streams(0)
    assert sub.acked == [] and ids(sub.nacked) == ["1", "2"]  # redelivered later


@ensure
async def test_token_auth_against_a_server_that_checks_it(serve):
    server = await serve(settings(
        auth={"mode": "token", "tokens": [
            {"token": "alice-token", "identity": "alice", "read": ["news"],
             "publish": ["news"]}]},
        streams={"news": {"source": "memory", "ack": "client", "max_unacked": 1}}))
    url = server.url + "/streams/news/messages"
    for token_param in (False, True):
        client = make_client(server, "/streams/news", token="alice-token",
                             token_param=token_param)
        done = client.start(limit=2)
        await server.wait_open_streams(1)
        await publish_as(url, "alice-token", 1, 2)
        # Two records through a window of one: the acks were authorised too.
        assert [(await within(client.queue.get())).data for _ in range(2)] == [1, 2]
        assert (await within(done)).count == 2
        await server.wait_open_streams(0)

    wrong = make_client(server, "/streams/news", token="mallory")
    with pytest.raises(ClientError) as e:
        await within(wrong.start(limit=1))
    assert e.value.status == 401


async def publish_as(url: str, token: str, *values) -> None:
    body = b"".join(json.dumps(v).encode() + b"\n" for v in values)
    r = await within(treq.post(url, data=body, headers={
        "Content-Type": "application/x-ndjson", "Authorization": f"Bearer {token}"}))
    assert r.code == 202, await treq.content(r)


@ensure
async def test_a_shutdown_notice_means_reconnect_and_an_end_notice_means_done(serve):
    server = await serve()
    client = make_client(server, "/streams/news")
    done = client.start()
    await server.wait_open_streams(1)
    the_stream(server).source_ended("shutdown")  # {"shutdown": true}, then a clean end
    await wait_until(lambda: client.reconnects == 1 and len(server.app.open_streams) == 1)
    assert not done.called
    the_stream(server).source_ended("queue deleted")  # {"end": {...}}: for good
    result = await within(done)
    assert (result.reason, result.reconnects) == ("ended", 1)
