"""redis-stream end to end: a private redis-server, streamd in-process, real HTTP clients."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from streamd.sources import Services, make_source
from streamd.testing import Recorder
from streamd.testing.redis import RedisServer, needs_redis_server
from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.redis_tables import idle, reads, redis_table, single_only
from tests.support.web import open_stream, publish, settings, wait_until, within

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """One private redis-server, then the cluster with "events" on each of its shards."""
    yield from either(request, home="events")


def config(redis, **stream):
    stream.setdefault("source", "redis-stream")
    stream.setdefault("key", "events")
    stream.setdefault("block", 0.2)
    return settings({"events": stream}, redis=redis_table(redis))


def xadd(redis, data: str, *more: str) -> str:
    return redis.command("XADD", "events", "*", "data", data, *more).decode()


@ensure
async def test_round_trip_ndjson_and_sse_published_over_http_and_by_redis_cli(redis, serve):
    server = await serve(config(redis))
    nd = await open_stream(server.url + "/streams/events")
    sse = await open_stream(server.url + "/streams/events?format=sse", sse=True)
    await wait_until(lambda: redis.cli("CLIENT", "LIST").count("cmd=xread") == 2)
    ids = await publish(server.url + "/streams/events/messages", {"via": "http"})
    assert ids == [redis.command("XREVRANGE", "events", "+", "-", "COUNT", 1)[0][0].decode()]
    cli_id = redis.cli("XADD", "events", "*", "data", '{"code":"007","price":1.50}',
                       "source", "cli").strip()
    # An entry written by another program, without a data field: its fields.
    other = redis.cli("XADD", "events", "*", "temp", "21.5", "unit", "C").strip()
    items = await nd.wait_for(3)
    assert items == [
        {"id": ids[0], "stream": "events", "data": {"via": "http"}},
        {"id": cli_id, "stream": "events", "data": {"code": "007", "price": 1.5},
         "attributes": {"source": "cli"}},
        {"id": other, "stream": "events", "data": {"temp": "21.5", "unit": "C"}},
    ]
    assert b'"data":{"code":"007","price":1.50}' in nd.raw
    events = await sse.wait_for(4)
    assert [(e["id"], e["data"]) for e in events[1:]] == [
        (ids[0], '{"via": "http"}'), (cli_id, '{"code":"007","price":1.50}'),
        (other, '{"temp":"21.5","unit":"C"}')]
    nd.close()
    sse.close()


@ensure
async def test_resume_by_id_with_no_gap_and_no_duplicate(redis, serve):
    server = await serve(config(redis))
    first = [xadd(redis, str(n)) for n in range(3)]
    reader = await open_stream(server.url + "/streams/events?since=0")
    items = await reader.wait_for(3)
    assert [m["id"] for m in items] == first
    reader.close()
    await server.wait_open_streams(0)
    later = [xadd(redis, str(n)) for n in range(3, 6)]
    # A browser reconnecting sends Last-Event-ID; curl users pass ?since=.
    sse = await open_stream(server.url + "/streams/events?format=sse",
                            {"Last-Event-ID": first[-1]}, sse=True)
    nd = await open_stream(server.url + f"/streams/events?since={first[1]}")
    events = await sse.wait_for(4)
    assert [e["id"] for e in events[1:]] == later
    items = await nd.wait_for(4)
    assert [m["id"] for m in items] == [first[2]] + later
    await publish(server.url + "/streams/events/messages", 6)
    assert [m["data"] for m in await nd.wait_for(5)] == [2, 3, 4, 5, 6]
    sse.close()
    nd.close()


@ensure
async def test_start_positions_and_trimmed_gap(redis, serve):
    server = await serve(config(redis))
    ids = [xadd(redis, str(n)) for n in range(5)]
    last2 = await open_stream(server.url + "/streams/events?since=-2&limit=2")
    await within(last2.done)
    assert [m["data"] for m in last2.items] == [3, 4]
    new = await open_stream(server.url + "/streams/events?since=$&limit=1")
    await wait_until(lambda: "cmd=xread" in redis.cli("CLIENT", "LIST"))
    xadd(redis, "5")
    await within(new.done)
    assert [m["data"] for m in new.items] == [5]
    redis.command("XTRIM", "events", "MAXLEN", "2")  # entries 0-3 are gone
    trimmed = await open_stream(server.url + f"/streams/events?since={ids[0]}&limit=2")
    await within(trimmed.done)
    assert trimmed.items[0] == {"gap": {"since": ids[0], "missed": None, "reason": "trimmed"}}
    assert [m["data"] for m in trimmed.items[1:]] == [4, 5]
    # An id from the future (the stream was re-created): said so, then new entries.
    future = await open_stream(server.url + "/streams/events?since=99999999999999-0&limit=1")
    await wait_until(lambda: bool(future.items))
    assert future.items[0]["gap"]["reason"] == "unknown id"
    await wait_until(lambda: "cmd=xread" in redis.cli("CLIENT", "LIST"))
    xadd(redis, "6")
    await within(future.done)
    assert future.items[1]["data"] == 6
    bad = await within(treq.get(server.url + "/streams/events?since=yesterday"))
    assert bad.code == 400


@ensure
async def test_publish_trims_with_maxlen(redis, serve):
    server = await serve(config(redis, maxlen=100))
    await publish(server.url + "/streams/events/messages", *range(1000))
    # Approximate trimming: whole nodes go, so a little more than maxlen stays.
    assert 100 <= redis.command("XLEN", "events") < 1000
    await publish(server.url + "/streams/events/messages?maxlen=0", 1)


@ensure
async def test_group_mode_two_clients_each_entry_once_acked_after_write(redis, serve):
    server = await serve(config(redis, group="workers"))
    r1 = await open_stream(server.url + "/streams/events")
    r2 = await open_stream(server.url + "/streams/events")
    await wait_until(lambda: redis.cli("CLIENT", "LIST").count("cmd=xreadgroup") == 2)
    redis.command("XADD", "events", "*", "data", "0")
    redis.command("XADD", "events", "*", "data", "1")
    await publish(server.url + "/streams/events/messages", *range(2, 40))
    await wait_until(lambda: len(r1.items) + len(r2.items) == 40)
    got = [m["data"] for m in r1.messages() + r2.messages()]
    assert sorted(got) == list(range(40))
    assert r1.messages() and r2.messages()
    # Written, hence acknowledged: nothing pending in the group.
    await wait_until(lambda: redis.command("XPENDING", "events", "workers")[0] == 0)
    r1.close()
    r2.close()


@ensure
async def test_group_mode_client_ack_and_entries_of_a_dead_consumer_are_claimed(redis, serve):
    redis.command("XGROUP", "CREATE", "events", "workers", "$", "MKSTREAM")
    ids = [xadd(redis, str(n)) for n in range(4)]
    # Another consumer took two entries and died without acknowledging them.
    redis.command("XREADGROUP", "GROUP", "workers", "dead", "COUNT", 2, "STREAMS", "events", ">")
    server = await serve(config(redis, group="workers", claim_idle=0.3, ack="client"))
    reader = await open_stream(server.url + "/streams/events")
    items = await reader.wait_for(4)
    assert sorted(m["id"] for m in items) == ids  # two new, two claimed once idle
    session = reader.response.headers.getRawHeaders("streamd-session")[0]
    resp = await within(treq.post(
        server.url + "/streams/events/ack",
        json.dumps({"session": session, "ids": ids[:3]}).encode(),
        headers={"Content-Type": "application/json"}))
    assert (await treq.json_content(resp))["acked"] == 3
    await wait_until(lambda: redis.command("XPENDING", "events", "workers")[0] == 1)
    reader.close()  # the fourth was never acknowledged: given back...
    await server.wait_open_streams(0)
    again = await open_stream(server.url + "/streams/events?ack=write&limit=1")
    await within(again.done)  # ...and delivered to the next client
    assert [m["id"] for m in again.items] == [ids[3]]
    await wait_until(lambda: redis.command("XPENDING", "events", "workers")[0] == 0)


@ensure
async def test_paused_client_issues_no_reads(redis, serve):
    server = await serve(config(redis, max_pending=100000, max_pending_bytes=1 << 30,
                                batch=100))
    big = "x" * 4000
    for _ in range(30):
        redis.command("XADD", "events", "*", "data", json.dumps([big] * 25))  # 100 KB each
    from tests.support.web import non_reading_client

    client = await non_reading_client(server, "/streams/events?since=0")
    await server.wait_open_streams(1)
    (stream,) = server.app.open_streams
    sub = stream.subscription
    await wait_until(lambda: sub.paused and not sub.reading)
    resumes = []
    resume = sub.resume
    sub.resume = lambda: (resumes.append(1), resume())
    for _ in range(5):
        count, before = len(resumes), reads(redis, "cmdstat_xread")
        await wait_until(lambda: idle(redis, sub.reader) >= 2, seconds=10)
        if len(resumes) == count:
            break
    assert len(resumes) == count and sub.paused
    assert reads(redis, "cmdstat_xread") == before
    client.transport.abortConnection()


@ensure
async def test_redis_restart_during_a_stream_cursor_and_group(redis, serve):
    single_only(redis)
    events = {"source": "redis-stream", "key": "events", "block": 0.2, "heartbeat": 0}
    s = settings({"events": events, "jobs": {**events, "key": "jobs", "group": "workers"}},
                 redis={"url": redis.url})
    server = await serve(s)
    cursor = await open_stream(server.url + "/streams/events")
    group = await open_stream(server.url + "/streams/jobs")
    await wait_until(lambda: "cmd=xreadgroup" in redis.cli("CLIENT", "LIST"))
    await publish(server.url + "/streams/events/messages", 1)
    await publish(server.url + "/streams/jobs/messages", 1)
    await cursor.wait_for(1)
    await group.wait_for(1)
    redis.stop()
    await wait_until(lambda: server.service.sources["events"].status()[0] == "down")
    health = await within(treq.get(server.url + "/health"))
    assert health.code == 503
    assert {s["status"] for s in (await treq.json_content(health))["sources"].values()} == {
        "down"}
    redis.start()
    # Back by itself (how soon: test_redis_units.py's
    # test_reconnection_waits_grow_to_reconnect_max).
    await wait_until(lambda: server.service.sources["events"].status()[0] == "ok")
    # Both continue: the cursor after its last id, the group re-created.
    await publish(server.url + "/streams/events/messages", 2)
    await publish(server.url + "/streams/jobs/messages", 2)
    assert [m["data"] for m in await cursor.wait_for(2)] == [1, 2]
    assert [m["data"] for m in await group.wait_for(2)] == [1, 2]
    cursor.close()
    group.close()


@ensure
async def test_group_mode_filtered_clients_share_the_entries(redis, serve):
    server = await serve(config(redis, group="workers"))
    ra = await open_stream(server.url + "/streams/events?where.kind=a")
    rb = await open_stream(server.url + "/streams/events?where.kind=b")
    await wait_until(lambda: redis.cli("CLIENT", "LIST").count("cmd=xreadgroup") == 2)
    kinds = ["a", "b"] * 10
    await publish(server.url + "/streams/events/messages",
                  *[{"kind": k, "n": n} for n, k in enumerate(kinds)])
    await wait_until(lambda: len(ra.items) + len(rb.items) == 20)
    assert sorted(m["data"]["n"] for m in ra.messages()) == list(range(0, 20, 2))
    assert sorted(m["data"]["n"] for m in rb.messages()) == list(range(1, 20, 2))
    await wait_until(lambda: redis.command("XPENDING", "events", "workers")[0] == 0)
    ra.close()
    rb.close()


@needs_redis_server
@ensure
async def test_group_acks_across_a_redis_restart(tmp_path, serve):
    redis = RedisServer(persist_dir=str(tmp_path))  # keeps its data over a restart
    redis.start()
    try:
        server = await serve(config(redis, group="workers", ack="client", heartbeat=0))
        reader = await open_stream(server.url + "/streams/events")
        await wait_until(lambda: "cmd=xreadgroup" in redis.cli("CLIENT", "LIST"))
        ids = [xadd(redis, str(n)) for n in range(3)]
        await reader.wait_for(3)
        redis.restart()
        await wait_until(lambda: server.service.sources["events"].status()[0] == "ok")
        session = reader.response.headers.getRawHeaders("streamd-session")[0]
        resp = await within(treq.post(
            server.url + "/streams/events/ack",
            json.dumps({"session": session, "ids": ids[:2]}).encode(),
            headers={"Content-Type": "application/json"}))
        assert (await treq.json_content(resp))["acked"] == 2
        await wait_until(lambda: redis.command("XPENDING", "events", "workers")[0] == 1)
        later = xadd(redis, "3")
        assert (await reader.wait_for(4))[3]["id"] == later  # reading goes on
        reader.close()
        await server.wait_open_streams(0)
        again = await open_stream(server.url + "/streams/events?ack=write&limit=2")
        await within(again.done)  # the unacknowledged two, for the next client
        assert sorted(m["id"] for m in again.items) == [ids[2], later]
    finally:
        redis.stop()


# -- group mode: a consumer name freed by one client and reused by the next ----------


async def group_source(redis):
    """A started redis-stream source on C{events}, group C{g}, built as streamd does."""
    s = config(redis, group="g", instance="t", batch=5, start="0")
    source = make_source(s.streams["events"], Services(reactor=reactor, settings=s))
    await source.start()
    return source


class SlowPool:
    """Holds the source's pool commands named C{names} until L{release} (a slow pool)."""

    def __init__(self, source, *names: str) -> None:
        self.conn = source.conn
        self.real = source.conn.command
        self.names = names
        self.waiting: list = []
        self.conn.command = self.command

    def command(self, *args):
        if args[0] not in self.names:
            return self.real(*args)
        d: Deferred = Deferred()
        self.waiting.append((args, d))
        return d

    def release(self) -> None:
        """Send what was held, and from now on every command at once."""
        del self.conn.command
        waiting, self.waiting = self.waiting, []
        for args, d in waiting:
            self.real(*args).chainDeferred(d)


async def only_these_then_a_marker(redis, recorder, expected: list[bytes]) -> None:
    """C{recorder} gets C{expected}, then a marker added now, and nothing else."""
    xadd(redis, '"marker"')
    await wait_until(lambda: b'"marker"' in recorder.data())
    assert sorted(recorder.data()) == sorted([*expected, b'"marker"'])


@ensure
async def test_group_name_goes_to_the_next_client_once_done_and_its_acks_answered(redis):
    source = await group_source(redis)
    try:
        for n in range(3):
            xadd(redis, str(n))
        a = Recorder()
        sub = a.attach(source)
        await wait_until(lambda: len(a.messages) == 3)
        name = sub.consumer_name
        sub.cancel()
        await wait_until(lambda: not sub.reading)  # its last read has ended
        assert source.free_names == []  # it still holds 3: acks may still come
        slow = SlowPool(source, "XACK")
        sub.ack(a.messages)  # acks after cancel() count...
        assert source.free_names == [name] and len(slow.waiting) == 1
        waiting: list[str] = []
        settled = source.settled
        source.settled = lambda n: (waiting.append(n), settled(n))[1]
        b = Recorder(auto_ack=True)
        assert b.attach(source).consumer_name == name
        # ...and the next client reads the name's pending entries only once they are in.
        await wait_until(lambda: waiting == [name])
        assert b.messages == []
        slow.release()
        await only_these_then_a_marker(redis, b, [])
        assert redis.command("XPENDING", "events", "g")[0] == 0
    finally:
        await source.stop()


@ensure
async def test_group_entry_given_back_goes_once_to_the_client_reusing_the_name(redis):
    # The redis-stream case of the conformance suite's "limit is exact": the next client
    # takes the given-back entries with XAUTOCLAIM under the reused name and acks them
    # at once; reading the name's pending entries then must not hand them out again.
    source = await group_source(redis)
    try:
        for n in range(5):
            xadd(redis, str(n))
        a = Recorder()
        sub = a.attach(source)
        await wait_until(lambda: len(a.messages) == 5)
        sub.ack(a.messages[:3])
        sub.nack(a.messages[3:])
        sub.cancel()
        await wait_until(lambda: source.free_names == [sub.consumer_name])
        slow = SlowPool(source, "XACK")
        b = Recorder(auto_ack=True)
        assert b.attach(source).consumer_name == sub.consumer_name
        await wait_until(lambda: len(b.messages) >= 2 and slow.waiting)
        slow.release()
        await only_these_then_a_marker(redis, b, [b"3", b"4"])
        await wait_until(lambda: redis.command("XPENDING", "events", "g")[0] == 0)
    finally:
        await source.stop()


@ensure
async def test_group_settling_twice_is_ignored(redis):
    source = await group_source(redis)
    try:
        for n in range(2):
            xadd(redis, str(n))
        a = Recorder()
        sub = a.attach(source)
        await wait_until(lambda: len(a.messages) == 2)
        sub.nack(a.messages[:1])
        sub.ack(a.messages[:1])  # nacked already: no XACK (it is up for another client)
        sub.ack(a.messages[1:])
        sub.cancel()
        b = Recorder(auto_ack=True)
        b.attach(source)
        await only_these_then_a_marker(redis, b, [b"0"])
    finally:
        await source.stop()


@ensure
async def test_group_entry_a_filter_refuses_is_the_other_clients_at_once(redis):
    source = await group_source(redis)
    try:
        a = Recorder()
        sub_a = a.attach(source)
        xadd(redis, "0")
        await wait_until(lambda: len(a.messages) == 1)
        b = Recorder()
        sub_b = b.attach(source)
        sub_a.skip(a.messages)
        assert b.data() == [b"0"]
        # In the group now, not at b's next refresh: a's name may be reused before.
        await source.settled(sub_a.consumer_name)
        ((_, owner, _, _),) = redis.command("XPENDING", "events", "g", "-", "+", 10)
        assert owner.decode() == sub_b.consumer_name
        sub_b.ack(b.messages)
        sub_a.cancel()
        sub_b.cancel()
    finally:
        await source.stop()
