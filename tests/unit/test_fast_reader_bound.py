"""
Issue 20: a large publish reaches a reader that keeps reading, while readers that read
nothing stay bounded (L{streamd.slow}: what counts against max_pending and
max_pending_bytes is what a stream holds beyond what it shares with the others, and a
stream holding more than that in all must make progress).

The units run streams of a memory source on one L{Clock}, each over a L{FakeOutbox}
(the kernel: a reader "reads" when the test takes its bytes). The last test is end to
end: a real C{twistd -n streamd} process with the default bounds (max_pending 1000,
max_pending_bytes 1 MiB), 20 raw HTTP/1.1 sockets that send a GET and never read, one
C{curl -N} that reads as fast as it can, and one 6 MB NDJSON publish of 3,000 messages
of 2 KB; the server's memory is read from /proc (VmRSS before, VmHWM, the peak, after).
Its waits are on process output and the server's status, each with a bound.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request

from twisted.internet.task import Clock

from streamd.framing import NDJSON
from streamd.slow import SLOW_CLOSE_GRACE
from streamd.sources.memory import MemorySource
from streamd.stream import Stream
from streamd.testing import FakeOutbox, FakeRequest
from tests.support.process import StreamdProcess

MESSAGES = 3000
STUCK = 20
MB = 1024 * 1024

PAYLOAD = b'"' + b"x" * 2000 + b'"'


class Reader:
    """One stream of C{source} on C{clock}, whose bytes leave only when it reads."""

    def __init__(self, source, clock, **kw) -> None:
        self.request = FakeRequest()
        self.outbox = FakeOutbox(self.request, open=False)
        kw.setdefault("heartbeat", 0)
        self.stream = Stream(self.request, source, NDJSON, clock, outbox=self.outbox, **kw)
        self.stream.start()

    def read(self, chunks: int | None = None) -> None:
        """Take what was written, C{chunks} times (default: until nothing more comes)."""
        while self.outbox.waiting and chunks != 0:
            self.outbox.take()
            chunks = None if chunks is None else chunks - 1

    def lines(self) -> list:
        return [json.loads(line) for line in self.request.lines()]

    def ids(self) -> list[int]:
        return [int(m["id"]) for m in self.lines() if "id" in m]


def holding(*readers) -> bool:
    """Whether any of C{readers} is still down as holding part of a shared batch."""
    return any(r.stream.pending.holds_shared() for r in readers)


def big_publish(source, clock, n: int = MESSAGES) -> None:
    source.publish([PAYLOAD] * n)  # 6 MB: one batch
    clock.advance(0)  # the end of the reactor turn: every stream has it


def test_a_reader_that_keeps_reading_gets_all_of_a_publish_far_over_the_bounds():
    clock = Clock()
    mem = MemorySource("m", clock)
    fast = Reader(mem, clock)  # the defaults: 1000 messages, 1 MiB
    big_publish(mem, clock)
    assert not fast.stream.ended  # 3,000 messages, 6 MB queued: the publish it is on
    fast.read()
    assert fast.ids() == list(range(1, MESSAGES + 1))
    clock.advance(3 * SLOW_CLOSE_GRACE)
    assert not fast.stream.ended and not holding(fast)


class EvenIds:
    def matches(self, message) -> bool:
        return int(message.id) % 2 == 0


def test_a_filtered_reader_that_keeps_reading_gets_all_of_its_part_of_a_big_publish():
    clock = Clock()
    mem = MemorySource("m", clock)
    fast = Reader(mem, clock, filter=EvenIds())
    big_publish(mem, clock)  # its part: 1,500 messages, 3 MB of its own
    assert not fast.stream.ended
    fast.read()
    assert fast.ids() == list(range(2, MESSAGES + 1, 2))


def test_20_stuck_readers_share_the_batch_and_are_cut_only_after_no_progress():
    clock = Clock()
    mem = MemorySource("m", clock)
    stuck = [Reader(mem, clock) for _ in range(STUCK)]
    fast = Reader(mem, clock)
    big_publish(mem, clock)
    fast.read()
    assert fast.ids() == list(range(1, MESSAGES + 1))
    for r in stuck:  # one chunk written, the rest queued: shared, so nobody's own
        assert not r.stream.ended and r.stream.queued > 2900 and r.stream.own == 0
    clock.advance(SLOW_CLOSE_GRACE)  # no progress for the grace period
    for r in stuck:
        assert r.stream.ended and r.stream.end_reason == "slow consumer"
        assert r.lines()[-1] == {"error": {"message": "slow consumer", "max_pending": 1000,
                                           "max_pending_bytes": 1024 * 1024}}
        assert r.request.transport.disconnecting  # closed once that line is out
        assert r.stream.queued == 0  # what it held is let go
    assert not fast.stream.ended and not holding(fast, *stuck)


def test_a_batch_queued_behind_counts_only_for_the_one_left_holding_it():
    clock = Clock()
    mem = MemorySource("m", clock)
    a, b = Reader(mem, clock), Reader(mem, clock)
    big_publish(mem, clock)
    a.read(3)
    b.read(3)
    big_publish(mem, clock)  # a bulk import's next POST, while both are on the first
    assert not a.stream.ended and not b.stream.ended  # shared: nobody's own
    a.read()
    assert a.ids() == list(range(1, 2 * MESSAGES + 1))
    clock.advance(0)
    # b alone holds the second publish now, behind the one it is writing: 6 MB of its
    # own, far over max_pending_bytes.
    assert b.stream.ended and b.stream.end_reason == "slow consumer"
    assert not a.stream.ended


def test_progress_keeps_a_reader_over_its_bounds_in_all_stopping_does_not():
    clock = Clock()
    mem = MemorySource("m", clock)
    readers = [Reader(mem, clock) for _ in range(2)]
    big_publish(mem, clock)
    for _ in range(10):  # a chunk each every 4 s: slow, but reading
        clock.advance(SLOW_CLOSE_GRACE * 0.8)
        for r in readers:
            r.read(1)
    assert not any(r.stream.ended for r in readers)
    clock.advance(SLOW_CLOSE_GRACE)  # then nothing
    clock.advance(SLOW_CLOSE_GRACE)
    assert all(r.stream.end_reason == "slow consumer" for r in readers)


def test_drop_oldest_drops_a_shared_batch_only_once_its_readers_stop():
    clock = Clock()
    mem = MemorySource("m", clock)
    readers = [Reader(mem, clock, slow_policy="drop-oldest", max_pending=100)
               for _ in range(2)]
    big_publish(mem, clock, 500)
    assert all(r.stream.dropped_total == 0 for r in readers)  # shared: nobody's own
    readers[0].read()
    assert readers[0].ids() == list(range(1, 501))
    clock.advance(0)
    # The other holds it alone now: down to its bounds at once (the newest 100).
    other = readers[1]
    assert other.stream.queued == 100 and not other.stream.ended
    other.read()
    lines = other.lines()
    assert {"dropped": other.stream.dropped_total} in lines
    assert other.ids()[-100:] == list(range(401, 501))


def test_drop_oldest_readers_that_stop_drop_down_to_their_bounds():
    clock = Clock()
    mem = MemorySource("m", clock)
    readers = [Reader(mem, clock, slow_policy="drop-oldest", max_pending=100)
               for _ in range(2)]
    big_publish(mem, clock, 500)
    assert all(r.stream.queued > 400 for r in readers)
    clock.advance(SLOW_CLOSE_GRACE)
    for r in readers:
        assert r.stream.queued == 100 and r.stream.dropped_total > 300
        assert not r.stream.ended




def wait_for(server: StreamdProcess, predicate, seconds: float, what: str) -> None:
    """Poll C{predicate} until true, or fail after C{seconds} (or if streamd exits)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(0.05)  # a bounded wait on the process, not a sleep
        assert server.proc.poll() is None, "streamd exited:\n" + "".join(server.log[-20:])


def get(server: StreamdProcess, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        return r.read()


def open_streams(server: StreamdProcess) -> int:
    return json.loads(get(server, "/"))["open_streams"]


class Curl:
    """C{curl -sN URL}: every line it prints, as it prints it."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(["curl", "-sN", url], stdout=subprocess.PIPE)
        self.lines: list[bytes] = []
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if b'"error"' in line or len(self.lines) >= MESSAGES:
                self.done.set()
        self.done.set()  # the response ended

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)




