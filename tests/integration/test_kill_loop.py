"""
Nothing lost under SIGKILL (issue 11, item 1): for each durable source, N messages
are put in first; a real C{twistd -n streamd} process serves them to three HTTP
clients reading NDJSON, and is SIGKILLed after a random number of lines, restarted
and killed again, STREAMD_KILLS times (20 by default). A last process serves the rest
and stops on SIGTERM. Then every message must have reached a client at least once,
or still be in its source (counted: the list and the processing lists, the group's
pending and unread entries, SQS's visible and hidden messages). Duplicates are what
at-least-once allows after a crash: they are counted and shown, not failed.

The Redis list runs over plain TCP and over TLS (an C{ssl:} listener with a certificate
the tests make, read with C{HTTPSConnection}: issue 20), with one worker and with two.

STREAMD_KILL_SEED makes the kill points repeatable; the seed in use is printed.
Waits are bounded and on events (lines read, log lines, process exits).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from streamd.testing.redis import redis_fixture  # noqa: F401  (fixture)
from streamd.testing.redis_cluster import redis_cluster_fixture  # noqa: F401  (fixture)
from tests.support.h2 import certificate
from tests.support.process import StreamdProcess, processes, stream_config  # noqa: F401
from tests.support.sqs_server import moto  # noqa: F401  (fixture)

KILLS = int(os.environ.get("STREAMD_KILLS", "20"))
SEED = int(os.environ.get("STREAMD_KILL_SEED", str(random.randrange(10**6))))
READERS = 3
#: Seconds for any one wait: a start, lines to arrive, a reader to see its end.
WAIT = 20.0
#: Seconds a round waits for its lines before it kills anyway (nothing left to read:
#: every source offers again what a killed process held within this time).
ROUND_WAIT = 5.0
#: Seconds the last process may take to serve everything not yet read.
DRAIN = 30.0


def connection(proc: StreamdProcess, timeout: float) -> http.client.HTTPConnection:
    """An HTTP/1.1 connection to C{proc}: over TLS (not verified) if it listens so."""
    if getattr(proc, "tls", False):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's self-signed certificate
        context.set_alpn_protocols(["http/1.1"])
        return http.client.HTTPSConnection("127.0.0.1", proc.port, timeout=timeout,
                                           context=context)
    return http.client.HTTPConnection("127.0.0.1", proc.port, timeout=timeout)


class Reader(threading.Thread):
    """One HTTP client reading a stream's NDJSON lines until the connection ends."""

    def __init__(self, proc: StreamdProcess, path: str, sink: Sink) -> None:
        super().__init__(daemon=True)
        self.proc, self.path, self.sink = proc, path, sink

    def run(self) -> None:
        conn = connection(self.proc, DRAIN)
        try:
            conn.request("GET", self.path)
            response = conn.getresponse()
            if response.status != 200:
                self.sink.errors.append(f"{response.status} {response.read()!r}")
                return
            while True:
                line = response.readline()
                if not line.endswith(b"\n"):
                    return  # the end, or a line cut short by the kill: not received
                self.sink.line(json.loads(line))
        except (OSError, http.client.HTTPException):
            return  # reset by the kill
        finally:
            conn.close()
            self.sink.ended()


@dataclass
class Sink:
    """
    What the readers of one process received: message numbers in order, and (with
    those of earlier processes) the set of numbers seen.
    """

    seen: set[int]
    running: int = READERS
    numbers: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def line(self, item: dict) -> None:
        if "data" in item:
            with self.changed:
                self.numbers.append(item["data"]["n"])
                self.seen.add(item["data"]["n"])
                self.changed.notify_all()

    def ended(self) -> None:
        with self.changed:
            self.running -= 1
            self.changed.notify_all()

    def wait(self, predicate, seconds: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), seconds)


def serve(tmp_path, config: str, started: list, got: Counter, workers: int = 1,
          tls: bool = False) -> tuple:
    """A streamd process (over TLS: C{tls}) and its readers of stream "jobs", all reading."""
    proc = StreamdProcess(tmp_path, config, workers, tls=certificate() if tls else None)
    started.append(proc)
    proc.wait_started(WAIT)
    healthy(proc)
    sink = Sink(seen=set(got))
    readers = [Reader(proc, "/streams/jobs", sink) for _ in range(READERS)]
    for r in readers:
        r.start()
    return proc, sink, readers


def healthy(proc: StreamdProcess) -> None:
    """Wait (bounded) until the process says its source is up: it listens before that."""
    deadline = time.monotonic() + WAIT
    while True:
        conn = connection(proc, WAIT)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        finally:
            conn.close()
        assert time.monotonic() < deadline and proc.proc.poll() is None, (
            "streamd's source did not come up:\n" + "".join(proc.log[-20:]))
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(0.05)  # a bounded wait on the process, not a sleep


def finish(proc: StreamdProcess, sink: Sink, readers: list[Reader]) -> None:
    """Once the process is gone: wait for its readers to see their streams end."""
    proc.proc.wait(WAIT)
    assert sink.wait(lambda s: s.running == 0), "a reader did not see its stream end"
    for r in readers:
        r.join(WAIT)
    assert not sink.errors, sink.errors


def kill_loop(tmp_path, started: list, config: str, n: int, left, workers: int = 1,
              tls: bool = False) -> dict:
    """
    Serve n messages (numbered 0..n-1) under KILLS SIGKILLs, then drain them; the
    counts (see L{check}). C{left()} returns the numbers still in the source. With
    C{workers}, each SIGKILL hits the parent and every worker at once; with C{tls},
    the readers read over TLS.
    """
    rng = random.Random(SEED)
    got: Counter[int] = Counter()
    t0 = time.monotonic()
    idle_kills = 0
    for round_ in range(KILLS):
        proc, sink, readers = serve(tmp_path, config, started, got, workers, tls)
        # Spread the kill points so that messages are left for every round.
        unread = n - len(got)
        k = rng.randint(1, max(1, 2 * unread // (KILLS - round_ + 1)))
        if not sink.wait(lambda s, k=k: len(s.numbers) >= k or not s.running, ROUND_WAIT):
            idle_kills += 1  # nothing more to read: killed all the same
        proc.crash()
        finish(proc, sink, readers)
        got.update(sink.numbers)

    proc, sink, readers = serve(tmp_path, config, started, got, workers, tls)
    sink.wait(lambda s: len(s.seen) >= n, DRAIN)
    proc.proc.terminate()
    finish(proc, sink, readers)
    got.update(sink.numbers)

    still = left()
    missing = set(range(n)) - set(got)
    lost = missing - set(still)
    return {
        "messages": n, "kills": KILLS, "idle_kills": idle_kills, "seed": SEED,
        "received": len(got), "duplicates": sum(got.values()) - len(got),
        "left_in_source": len(still), "accounted": len(set(got) | set(still)),
        "not_received": len(missing), "lost": len(lost),
        "lost_numbers": sorted(lost)[:20], "seconds": round(time.monotonic() - t0, 1),
    }


def check(source: str, result: dict) -> None:
    print(f"\n{source}: {json.dumps(result)}")
    assert result["lost"] == 0, (
        f"{source}: {result['lost']} of {result['messages']} messages lost over "
        f"{result['kills']} SIGKILLs (neither received by a client nor left in the "
        f"source; first: {result['lost_numbers']}); {result}")
    assert result["not_received"] == 0, (
        f"{source}: {result['not_received']} messages still in the source, not served "
        f"within {DRAIN} s; {result}")


def payloads(n: int) -> list[str]:
    return [json.dumps({"n": i}) for i in range(n)]


def numbers(values) -> list[int]:
    return [json.loads(v)["n"] for v in values]


REDIS_N = 2000


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_redis_list_loses_nothing_under_sigkill(tmp_path, redis, processes, scheme,  # noqa: F811
                                                 workers):
    for start in range(0, REDIS_N, 500):
        redis.command("RPUSH", "jobs", *payloads(REDIS_N)[start:start + 500])
    config = (f'[redis]\nurl = "{redis.url}"\n'
              '[streams.jobs]\nsource = "redis-list"\nkey = "jobs"\ninstance = "kill-loop"\n')

    def left() -> list[int]:
        # The list, and the processing lists of every instance that ever held one.
        keys = [b"jobs", *redis.command("KEYS", "jobs:streamd:processing:*")]
        return [n for key in keys for n in numbers(redis.command("LRANGE", key, 0, -1))]

    check(f"redis-list over {scheme}, {workers} worker(s)",
          kill_loop(tmp_path, processes, config, REDIS_N, left, workers, scheme == "https"))


def test_redis_list_on_a_cluster_loses_nothing_under_sigkill(tmp_path, redis_cluster,  # noqa: F811
                                                             processes):  # noqa: F811
    # The same on a Redis Cluster (issue 22): each batch RPUSHed, then WAIT 1 1000.
    for node in redis_cluster.primaries():
        node.command("FLUSHALL")
    for start in range(0, REDIS_N, 500):
        redis_cluster.push_replicated("jobs", *payloads(REDIS_N)[start:start + 500])
    config = (redis_cluster.toml() + '[streams.jobs]\nsource = "redis-list"\nkey = "jobs"\n'
              'instance = "kill-loop"\n')

    def left() -> list[int]:
        node = redis_cluster.primary_of("jobs")  # the list's keys share its slot
        keys = [b"jobs", *node.command("KEYS", "{jobs}:streamd:processing:*")]
        return [n for key in keys for n in numbers(node.command("LRANGE", key, 0, -1))]

    check("redis-list on a cluster", kill_loop(tmp_path, processes, config, REDIS_N, left))


#: XADD every ARGV as the "data" field of a new entry.
XADD_ALL = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'data', ARGV[i]) end"


def test_redis_stream_group_loses_nothing_under_sigkill(tmp_path, redis, processes):  # noqa: F811
    for start in range(0, REDIS_N, 500):
        redis.command("EVAL", XADD_ALL, 1, "jobs", *payloads(REDIS_N)[start:start + 500])
    config = (f'[redis]\nurl = "{redis.url}"\n'
              '[streams.jobs]\nsource = "redis-stream"\nkey = "jobs"\ngroup = "workers"\n'
              'start = "0"\ninstance = "kill-loop"\nclaim_idle = 2\n')

    def left() -> list[int]:
        # Entries not acknowledged: pending in the group, or never read by it.
        entries = {eid: fields[1] for eid, fields in redis.command("XRANGE", "jobs", "-", "+")}
        pending = {p[0] for p in redis.command("XPENDING", "jobs", "workers", "-", "+",
                                               REDIS_N)}
        group = redis.command("XINFO", "GROUPS", "jobs")[0]
        last = dict(zip(group[::2], group[1::2], strict=False))[b"last-delivered-id"]

        def after(eid: bytes) -> bool:
            return tuple(map(int, eid.split(b"-"))) > tuple(map(int, last.split(b"-")))
        return numbers(v for eid, v in entries.items() if eid in pending or after(eid))

    check("redis-stream (group)", kill_loop(tmp_path, processes, config, REDIS_N, left))


SQS_N = 300
#: Seconds a message a killed streamd held stays hidden before SQS offers it again.
SQS_VISIBILITY = 3


@pytest.mark.parametrize("workers", [1, 2])
def test_sqs_loses_nothing_under_sigkill(tmp_path, moto, processes, workers):  # noqa: F811
    queue = moto.create_queue()
    moto.send(queue, payloads(SQS_N))
    config = stream_config(queue, moto.endpoint, "jobs", visibility_timeout=SQS_VISIBILITY,
                           pollers=2)

    def left() -> list[int]:
        # Visible and hidden ones: a hidden one comes back when its visibility ends.
        messages = moto.receive_all(queue, sum(moto.counts(queue)), SQS_VISIBILITY + WAIT)
        return numbers(m["Body"] for m in messages)

    check(f"sqs, {workers} worker(s)",
          kill_loop(tmp_path, processes, config, SQS_N, left, workers))

