"""redis-list end to end: a private redis-server, streamd in-process, real HTTP clients."""

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from streamd.testing.redis import RedisServer, needs_redis_server
from streamd.testing.redis_cluster import PARAMS, either, redis_cluster_fixture  # noqa: F401
from tests.support.daemon import start as start_daemon
from tests.support.redis_tables import base, config, idle, llen, processing, reads, single_only  # noqa: F401
from tests.support.web import (
    non_reading_client,
    open_stream,
    publish,
    wait_until,
    within,
)

ensure = pytest_twisted.ensureDeferred


@pytest.fixture(name="redis", params=PARAMS)
def redis_fixture(request):
    """One private redis-server, then the cluster with "jobs" on each of its shards."""
    yield from either(request)


async def ack(server, reader, ids):
    session = reader.response.headers.getRawHeaders("streamd-session")[0]
    resp = await within(treq.post(
        server.url + "/streams/jobs/ack", json.dumps({"session": session, "ids": ids}).encode(),
        headers={"Content-Type": "application/json"}))
    assert resp.code == 200, await treq.content(resp)
    return await treq.json_content(resp)


@ensure
async def test_round_trip_ndjson_and_sse_published_over_http_and_by_redis_cli(redis, serve):
    server = await serve(config(redis))
    await publish(server.url + "/streams/jobs/messages", {"via": "http"}, {"n": 2})
    redis.cli("RPUSH", "jobs", '{"code":"007","price":1.50}')
    reader = await open_stream(server.url + "/streams/jobs?limit=3")
    await within(reader.done)
    assert [m["data"] for m in reader.items] == [
        {"via": "http"}, {"n": 2}, {"code": "007", "price": 1.5}]
    assert b'"data":{"code":"007","price":1.50}' in reader.raw
    # Written, so removed: nothing left in the list or the processing list.
    await wait_until(lambda: llen(redis) == 0 and llen(redis, processing(redis)) == 0)

    sse = await open_stream(server.url + "/streams/jobs?format=sse&limit=1", sse=True)
    redis.cli("RPUSH", "jobs", "plain text")
    await within(sse.done)
    assert sse.items[1]["data"] == '"plain text"'


@ensure
async def test_two_clients_share_the_queue_each_message_once(redis, serve):
    server = await serve(config(redis))
    r1 = await open_stream(server.url + "/streams/jobs")
    r2 = await open_stream(server.url + "/streams/jobs")
    await wait_until(lambda: "cmd=blmove" in redis.cli("CLIENT", "LIST")
                     and redis.cli("CLIENT", "LIST").count("cmd=blmove") == 2)
    redis.command("RPUSH", "jobs", *[str(n) for n in range(40)])
    await wait_until(lambda: len(r1.items) + len(r2.items) == 40)
    got1 = [m["data"] for m in r1.messages()]
    got2 = [m["data"] for m in r2.messages()]
    assert got1 and got2
    assert sorted(got1 + got2) == list(range(40))
    await wait_until(lambda: llen(redis, processing(redis)) == 0)
    r1.close()
    r2.close()


@ensure
async def test_unacknowledged_messages_of_a_killed_client_go_back(redis, serve):
    server = await serve(config(redis, ack="client"))
    redis.command("RPUSH", "jobs", *[str(n) for n in range(5)])
    reader = await open_stream(server.url + "/streams/jobs")
    items = await reader.wait_for(5)
    assert (await ack(server, reader, [items[0]["id"], items[1]["id"]]))["acked"] == 2
    await wait_until(lambda: llen(redis, processing(redis)) == 3)
    reader.close()  # killed before acknowledging the other three
    await wait_until(lambda: llen(redis) == 3 and llen(redis, processing(redis)) == 0)
    # Back at the head of the list, in order, for the next client.
    again = await open_stream(server.url + "/streams/jobs?ack=write&limit=3")
    await within(again.done)
    assert [m["data"] for m in again.items] == [2, 3, 4]


@ensure
async def test_paused_client_issues_no_reads_and_gives_back_when_killed(redis, serve):
    server = await serve(config(redis, max_pending=100000, max_pending_bytes=1 << 30))
    big = json.dumps({"pad": "x" * 4000})
    redis.command("RPUSH", "jobs", *[big] * 3000)  # 12 MB: more than the socket buffers
    client = await non_reading_client(server, "/streams/jobs")
    await server.wait_open_streams(1)
    (stream,) = server.app.open_streams
    await wait_until(lambda: stream.source_paused)
    await wait_until(lambda: stream.subscription.paused and not stream.subscription.reading)

    sub = stream.subscription
    resumes = []
    resume = sub.resume
    sub.resume = lambda: (resumes.append(1), resume())
    for _ in range(5):
        # The kernel may still take a little more now and then (a short resume and a
        # read): look at a window in which the stream stayed paused.
        count, before, length = len(resumes), reads(redis), llen(redis)
        assert length > 0  # not everything was taken: the reader stopped
        # Wait on the reader's connection going idle in Redis, not on a fixed delay.
        await wait_until(lambda: idle(redis, sub.reader) >= 2, seconds=10)
        if len(resumes) == count:
            break
    assert len(resumes) == count and sub.paused
    assert reads(redis) == before and llen(redis) == length

    client.transport.abortConnection()
    await server.wait_open_streams(0)
    # What was taken but never left the process went back; only those whose bytes
    # reached the kernel are gone.
    await wait_until(lambda: llen(redis, processing(redis)) == 0)
    assert llen(redis) + stream.sent == 3000
    assert stream.sent < stream.written  # some were written, never sent, and given back


@ensure
async def test_redis_restart_during_a_stream(redis, serve):
    single_only(redis)
    server = await serve(config(redis, heartbeat=0))
    reader = await open_stream(server.url + "/streams/jobs")
    redis.command("RPUSH", "jobs", "1")
    await reader.wait_for(1)
    redis.stop()
    await wait_until(lambda: server.service.sources["jobs"].status()[0] == "down")
    health = await within(treq.get(server.url + "/health"))
    assert health.code == 503
    assert (await treq.json_content(health))["sources"]["jobs"]["status"] == "down"
    resp = await within(treq.post(server.url + "/streams/jobs/messages", data=b"2",
                                  headers={"Content-Type": "application/json"}))
    assert resp.code == 503
    redis.start()
    # Back without a new request: the source reconnects by itself (how soon is
    # test_reconnection_waits_grow_to_reconnect_max's), and the stream goes on.
    await wait_until(lambda: server.service.sources["jobs"].status()[0] == "ok")
    health = await within(treq.get(server.url + "/health"))
    assert health.code == 200
    redis.command("RPUSH", "jobs", "2")
    items = await reader.wait_for(2)
    assert items[1]["data"] == 2
    reader.close()


@needs_redis_server
@ensure
async def test_acks_across_a_redis_restart_nothing_lost_nothing_dropped(tmp_path, serve):
    redis = RedisServer(persist_dir=str(tmp_path))  # keeps its data over a restart
    redis.start()
    try:
        server = await serve(config(redis, ack="client", heartbeat=0))
        redis.command("RPUSH", "jobs", "1", "2", "3", "4")
        reader = await open_stream(server.url + "/streams/jobs")
        items = await reader.wait_for(4)
        await ack(server, reader, [items[0]["id"]])
        await wait_until(lambda: llen(redis, processing(redis)) == 3)
        redis.restart()
        await wait_until(lambda: server.service.sources["jobs"].status()[0] == "ok")
        # Acknowledged after the restart: removed; the reader goes on where it was.
        await ack(server, reader, [items[1]["id"], items[2]["id"]])
        await wait_until(lambda: llen(redis, processing(redis)) == 1)
        redis.command("RPUSH", "jobs", "5")
        assert (await reader.wait_for(5))[4]["data"] == 5
        reader.close()  # 4 and 5 were never acknowledged: back in the list, in order
        await wait_until(lambda: llen(redis, processing(redis)) == 0)
        assert redis.command("LRANGE", "jobs", 0, -1) == [b"4", b"5"]
    finally:
        redis.stop()


@ensure
async def test_shutdown_while_redis_is_down_does_not_hang(redis, serve):
    single_only(redis)
    server = await serve(config(redis))
    reader = await open_stream(server.url + "/streams/jobs")
    await server.wait_open_streams(1)
    redis.stop()
    await within(defer.maybeDeferred(server.service.sources["jobs"].stop))
    await within(reader.done)  # the client got the end of its stream


@ensure
async def test_processing_list_of_a_dead_instance_is_taken_back(redis, serve):
    redis.command("RPUSH", processing(redis, "ghost"), "41", "42")
    redis.command("SADD", f"{base(redis)}:streamd:instances", "ghost")  # its heartbeat key expired
    server = await serve(config(redis))
    reader = await open_stream(server.url + "/streams/jobs?limit=2")
    await within(reader.done)
    assert [m["data"] for m in reader.items] == [41, 42]
    # The dead instance leaves the registry once its list is taken back (the messages
    # may reach the reader first: another connection reads them).
    registry = f"{base(redis)}:streamd:instances"
    await wait_until(lambda: redis.command("SMEMBERS", registry) == [b"test"])


async def healthy(port: int) -> None:
    """Wait (bounded) until a daemon's sources are up: it connects to Redis after listening."""
    await wait_until(lambda: _health(port) == 200)


def _health(port: int) -> int:
    # A blocking request is fine here: the daemon is another process.
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@ensure
async def test_restarted_streamd_takes_back_its_processing_list_after_sigkill(
        redis, tmp_path, monkeypatch):
    # The daemon imports this checkout's streamd, whatever is installed.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    conf = tmp_path / "streamd.toml"
    redis_toml = redis.cluster.toml() if getattr(redis, "clustered", False) else (
        f'[redis]\nurl = "{redis.url}"\n')
    conf.write_text(
        redis_toml +
        '[streams.jobs]\nsource = "redis-list"\nkey = "jobs"\ninstance = "test"\n'
        'ack = "client"\n')
    redis.command("RPUSH", "jobs", "1", "2", "3", "4")
    proc, port = start_daemon(tmp_path, "--config", str(conf))
    try:
        await healthy(port)
        reader = await open_stream(f"http://127.0.0.1:{port}/streams/jobs")
        await reader.wait_for(4)  # held, never acknowledged
        assert llen(redis, processing(redis)) == 4 and llen(redis) == 0
        reader.close()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Whatever the killed streamd was doing, its processing list is still in Redis...
    assert llen(redis, processing(redis)) == 4
    again = tmp_path / "again"  # a fresh log file to find the new port in
    again.mkdir()
    proc, port = start_daemon(again, "--config", str(conf))
    try:
        await healthy(port)
        # ...and a restarted streamd with the same instance name takes it back.
        reader = await open_stream(f"http://127.0.0.1:{port}/streams/jobs?ack=write&limit=4")
        await within(reader.done)
        assert [m["data"] for m in reader.items] == [1, 2, 3, 4]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@ensure
async def test_filtered_clients_share_the_queue_by_filter(redis, serve):
    server = await serve(config(redis))
    ra = await open_stream(server.url + "/streams/jobs?where.kind=a")
    rb = await open_stream(server.url + "/streams/jobs?where.kind=b")
    await wait_until(lambda: redis.cli("CLIENT", "LIST").count("cmd=blmove") == 2)
    kinds = ["a", "b"] * 10 + ["c"]
    redis.command("RPUSH", "jobs", *[json.dumps({"kind": k, "n": n}) for n, k in enumerate(kinds)])
    await wait_until(lambda: len(ra.items) + len(rb.items) == 20)
    assert sorted(m["data"]["n"] for m in ra.messages()) == list(range(0, 20, 2))
    assert sorted(m["data"]["n"] for m in rb.messages()) == list(range(1, 20, 2))
    # The one nobody wants is held back (not lost, not spun on), then returned to the list.
    await wait_until(lambda: llen(redis, processing(redis)) + llen(redis) == 1)
    assert b'"kind": "c"' in (redis.command("LRANGE", processing(redis), 0, -1) or [b""])[0] + (
        redis.command("LRANGE", "jobs", 0, -1) or [b""])[0]
    ra.close()
    rb.close()
