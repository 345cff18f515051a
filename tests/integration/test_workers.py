"""
Several workers (C{twistd -n streamd --workers 2}), as real processes on one port: one
broker across them. Readers on both workers get every message once, in order, with the
same ids; a resume lands on either worker; channels agree; a worker that is SIGKILLed
comes back; one scrape counts for all; SIGTERM ends it all with exit status 0.

Which worker serves a connection is the kernel's choice: the tests find out from
C{GET /}'s C{workers} list. Waits are bounded and on events.
"""

from __future__ import annotations

import functools
import json
import os
import signal

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from tests.support.process import StreamdProcess, processes  # noqa: F401  (fixture)
from tests.support.web import open_stream, wait_until, within

ensure = pytest_twisted.ensureDeferred
JSON = {"Content-Type": "application/json"}


async def status(proc: StreamdProcess) -> dict:
    response = await within(treq.get(proc.url + "/", headers={"Accept": "application/json"},
                                     persistent=False))
    assert response.code == 200
    return await treq.json_content(response)


async def per_worker(proc: StreamdProcess) -> list[int]:
    return [w["open_streams"] for w in (await status(proc))["workers"]]


async def open_on(proc: StreamdProcess, path: str, want: int | None = None, **kw):
    """
    Open a stream, on worker C{want} if given (new connections until one lands there,
    at most 40): the reader and the index of the worker that serves it.
    """
    if kw.get("sse"):
        kw["headers"] = {"Accept": "text/event-stream", **kw.get("headers", {})}
    for _ in range(40):
        before = await per_worker(proc)
        total = sum(before)
        reader = await open_stream(proc.url + path, **kw)
        await wait_until(functools.partial(gone, proc, total + 1))
        now = await per_worker(proc)
        index = next(i for i, (a, b) in enumerate(zip(before, now, strict=True)) if b > a)
        if want is None or index == want:
            return reader, index
        reader.close()
        await wait_until(functools.partial(gone, proc, total))
    raise AssertionError(f"no connection of 40 landed on worker {want}")


async def messages(reader, n: int, seconds: float = 20) -> list:
    await wait_until(lambda: len(reader.messages()) >= n, seconds)
    return reader.messages()


async def gone(proc: StreamdProcess, total: int) -> bool:
    """Whether C{total} streams are open over all workers."""
    return sum(await per_worker(proc)) == total


async def post(proc: StreamdProcess, path: str, body: bytes, method: str = "POST",
               expect: int = 202) -> dict:
    # A new connection each time: the kernel spreads them over the workers.
    response = await within(treq.request(method, proc.url + path, data=body, headers=JSON,
                                         persistent=False))
    assert response.code == expect, await treq.content(response)
    return await treq.json_content(response)


async def started(tmp_path, processes, config: str = "") -> StreamdProcess:  # noqa: F811
    proc = StreamdProcess(tmp_path, config, workers=2)
    processes.append(proc)
    await proc.started()
    return proc


@ensure
async def test_readers_on_both_workers_get_every_message_once_in_order(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)
    readers = [(await open_on(proc, "/streams/news", want=i))[0] for i in (0, 1, 0, 1)]
    assert await per_worker(proc) == [2, 2]

    sem = defer.DeferredSemaphore(8)
    posts = [sem.run(lambda i=i: defer.ensureDeferred(
        post(proc, "/streams/news/messages", json.dumps({"n": i}).encode())))
        for i in range(1000)]
    answers = await within(defer.gatherResults(posts), 60)
    ids = sorted(int(a["ids"][0]) for a in answers)
    assert ids == list(range(1, 1001))

    by_id = {a["ids"][0]: n for n, a in enumerate(answers)}
    for reader in readers:
        await reader.wait_for(1000, 60)
        got = reader.messages()
        assert [m["id"] for m in got] == [str(i) for i in range(1, 1001)]
        assert all(m["data"] == {"n": by_id[m["id"]]} for m in got)
        reader.close()

    response = await within(treq.get(proc.url + "/metrics", persistent=False))
    families = {f.name: f for f in text_string_to_metric_families(
        (await treq.content(response)).decode())}
    published = [s.value for s in families["streamd_messages_in"].samples
                 if s.name == "streamd_messages_in_total"]
    assert published == [1000]
    delivered = [s.value for s in families["streamd_messages_out"].samples
                 if s.name == "streamd_messages_out_total"]
    assert delivered == [4000]


@ensure
async def test_a_resume_on_the_other_worker_has_no_gap_and_no_duplicate(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)
    first, where = await open_on(proc, "/streams/news", sse=True)
    for n in range(10):
        await post(proc, "/streams/news/messages", json.dumps({"n": n}).encode())
    last = (await messages(first, 10))[-1]["id"]
    assert last == "10"
    first.close()
    for n in range(10, 15):
        await post(proc, "/streams/news/messages", json.dumps({"n": n}).encode())

    again, there = await open_on(proc, "/streams/news", want=1 - where, sse=True,
                                 headers={"Last-Event-ID": last})
    assert there != where
    for n in range(15, 20):
        await post(proc, "/streams/news/messages", json.dumps({"n": n}).encode())
    got = await messages(again, 10)
    assert [m["id"] for m in got] == [str(i) for i in range(11, 21)]
    assert [json.loads(m["data"])["n"] for m in got] == list(range(10, 20))
    assert not [i for i in again.items if i.get("event") == "gap"]
    again.close()


@ensure
async def test_a_channel_subscription_is_one_on_every_worker(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)
    for name, value in (("X", 2), ("Y", 85)):
        await post(proc, f"/channels/{name}", json.dumps(value).encode(), "PUT", 200)
    sub = await post(proc, "/subscriptions", b'{"channels": ["X", "Y", "Z"]}', expect=201)
    path = f"/subscriptions/{sub['id']}/stream"
    readers = [(await open_on(proc, path, want=i))[0] for i in (0, 1)]
    for r in readers:
        await r.wait_for(1)
        assert r.items[0] == {"X": 2, "Y": 85, "Z": None}
    # A change made on any worker, a PATCH on any worker: both streams see both.
    for n in range(6):
        await post(proc, "/channels/Y", str(n).encode(), "PUT", 200)
    await post(proc, f"/subscriptions/{sub['id']}", b'{"add": ["W"], "remove": ["X"]}',
               "PATCH", 200)
    await post(proc, "/channels/W", b'"w"', "PUT", 200)
    await post(proc, "/channels/X", b'"not watched"', "PUT", 200)
    await post(proc, "/channels/Y", b"7", "PUT", 200)
    expected = [{"X": 2, "Y": 85, "Z": None}, *({"Y": n} for n in range(6)),
                {"W": None}, {"W": "w"}, {"Y": 7}]
    for r in readers:
        await r.wait_for(len(expected))
        assert [i for i in r.items if "Updates" not in i] == expected
    described = await within(treq.get(proc.url + f"/subscriptions/{sub['id']}",
                                      persistent=False))
    assert (await treq.json_content(described))["channels"] == ["Y", "Z", "W"]
    response = await within(treq.delete(proc.url + f"/subscriptions/{sub['id']}",
                                        persistent=False))
    assert response.code == 204
    for r in readers:
        await within(r.done, 10)


@ensure
async def test_a_killed_worker_comes_back_and_its_readers_resume(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)
    reader, where = await open_on(proc, "/streams/news", sse=True)
    for n in range(5):
        await post(proc, "/streams/news/messages", json.dumps({"n": n}).encode())
    await messages(reader, 5)
    workers = (await status(proc))["workers"]
    pid = workers[where]["pid"]
    os.kill(pid, signal.SIGKILL)
    await within(reader.done.addErrback(lambda _: None), 10)

    async def back() -> bool:
        w = (await status(proc))["workers"][where]
        return w["up"] and w["pid"] != pid

    await wait_until(back, 5)  # the parent started it again within 5 s
    for n in range(5, 10):
        await post(proc, "/streams/news/messages", json.dumps({"n": n}).encode())
    again, _ = await open_on(proc, "/streams/news", want=where, sse=True,
                             headers={"Last-Event-ID": "5"})
    assert [m["id"] for m in await messages(again, 5)] == ["6", "7", "8", "9", "10"]
    again.close()
    assert proc.wait_log(f"worker {where} ended", 1)


@ensure
async def test_sigterm_ends_every_reader_and_exits_0(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)
    readers = [(await open_on(proc, "/streams/news", want=i))[0] for i in (0, 1)]
    pids = [w["pid"] for w in (await status(proc))["workers"]]
    proc.proc.send_signal(signal.SIGTERM)
    for r in readers:
        await within(r.done, 20)
        assert r.items[-1] == {"shutdown": True} or "shutdown" in json.dumps(r.items[-1])
    assert await proc.exited() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@ensure
async def test_one_event_store_and_its_live_tails_across_workers(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes)  # the embedded SQLite store, in the parent
    tails = [(await open_on(proc, "/events/stream?kind=friend", want=i))[0] for i in (0, 1)]
    for n in range(20):  # new connections: inserted on both workers
        await post(proc, "/events", json.dumps({"kind": "friend" if n % 2 else "watch",
                                               "n": n}).encode(), expect=201)
    for tail in tails:
        got = await messages(tail, 10)
        assert [m["data"]["n"] for m in got] == list(range(1, 20, 2))
        tail.close()
    for _ in range(4):  # whichever worker answers, the same events
        response = await within(treq.get(proc.url + "/events?kind=friend&end=20",
                                         persistent=False))
        assert [e["data"]["n"] for e in await treq.json_content(response)] == list(
            range(19, 0, -2))


@ensure
async def test_max_connections_per_identity_counts_every_worker(tmp_path, processes):  # noqa: F811
    proc = await started(tmp_path, processes, '[auth]\nmode = "identifier"\n'
                         'public = ["status"]\nmax_connections_per_identity = 2\n')
    mine = [(await open_on(proc, "/streams/a?identifier=me", want=i))[0] for i in (0, 1)]
    for _ in range(6):  # new connections, on either worker: each one too many
        response = await within(treq.get(proc.url + "/streams/a?identifier=me",
                                         persistent=False))
        assert response.code == 429
        assert response.headers.getRawHeaders("retry-after") == ["10"]
        await treq.content(response)
    other, _ = await open_on(proc, "/streams/a?identifier=you")
    mine[0].close()
    await wait_until(lambda: gone(proc, 2))
    again, _ = await open_on(proc, "/streams/a?identifier=me")
    for r in (again, other, mine[1]):
        r.close()
