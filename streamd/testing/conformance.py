"""
A conformance suite for durable queue sources (each message to one client, kept until
acked): does a source keep the promises of L{streamd.interfaces.ISubscription}?

A plugin author describes their source with a L{SourceHarness} (how to make a started
source on a fresh backing store, how many messages a paused subscription may still be
handed) and runs the checks with pytest and pytest-twisted by subclassing
L{SourceConformance}; C{examples/streamd-spool/test_spool.py} in streamd's repository
is a complete example.

Each check runs against a real reactor and the source's real server, waits on what
happens (never on a fixed delay) with a bound, and stops every source it made. The
checks are plain coroutines too (L{CHECKS}), for another test runner.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred

from streamd.framing import NDJSON
from streamd.interfaces import ISource
from streamd.stream import Stream
from streamd.testing import FakeRequest, Recorder


class SourceHarness:
    """
    What the checks need to know about one source kind; subclass it.

    @ivar in_flight: how many messages a subscription may still be handed after
        C{pause()} (a read already under way: a receive batch, a prefetch window).
        The checks hold up to 6 messages unacked in one subscription: configure the
        source so that a client may (a prefetch of at least 6).
    @ivar timeout: seconds any one wait may take.
    """

    in_flight: int = 1
    timeout: float = 10.0

    async def make(self) -> ISource:
        """
        A new source, started, on this harness's backing store (the same queue each
        time: the checks call it again to play a restart of streamd).
        """
        raise NotImplementedError

    async def fill(self, source: ISource, payloads: list[bytes]) -> None:
        """Put these messages into the backing store (default: C{source.publish})."""
        await maybeDeferred(source.publish, payloads, {})

    async def cleanup(self) -> None:
        """Remove the backing store (called once per check, after its sources stopped)."""


def _payloads(tag: str, n: int) -> list[bytes]:
    return [json.dumps({"check": tag, "n": i}).encode() for i in range(n)]


def _reactor():
    from twisted.internet import reactor

    return reactor


async def next_turns(n: int = 3) -> None:
    """Let the reactor run C{n} times round (what a source does "at once" is done)."""
    reactor = _reactor()
    for _ in range(n):
        d: Deferred = Deferred()
        reactor.callLater(0, d.callback, None)
        await d


async def wait_until(predicate: Callable[[], Any], seconds: float = 10.0,
                     what: str = "the condition", *, interval: float = 0.01) -> None:
    """
    Poll C{predicate} on the reactor every C{interval} seconds until it is true;
    AssertionError naming C{what} after C{seconds}. The one wait of streamd's tests
    (C{tests.support.web} re-exports it). C{predicate} may return an awaitable (an
    HTTP request, say), which is awaited.
    """
    reactor = _reactor()
    deadline = reactor.seconds() + seconds
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        d: Deferred = Deferred()
        reactor.callLater(interval, d.callback, None)
        await d


class _Run:
    """One check's sources, stopped (and the store cleaned up) however the check ends."""

    def __init__(self, harness: SourceHarness) -> None:
        self.harness = harness
        self.sources: list[Any] = []

    async def make(self):
        source = await self.harness.make()
        self.sources.append(source)
        return source

    async def stop(self, source) -> None:
        if source in self.sources:
            self.sources.remove(source)
            await maybeDeferred(source.stop)

    async def close(self) -> None:
        for source in list(self.sources):
            await self.stop(source)
        await self.harness.cleanup()

    async def delivered(self, label: str, n: int):
        """A new source, a client of it, and C{n} messages filled and received by it."""
        source = await self.make()
        client = Recorder()
        sub = client.attach(source)
        sent = _payloads(label, n)
        await self.harness.fill(source, sent)
        await self.received(client, n, "the messages are delivered")
        return source, client, sub, sent

    async def received(self, recorder: Recorder, n: int, what: str) -> None:
        await wait_until(lambda: len(recorder.messages) >= n, self.harness.timeout,
                         f"{what} (got {len(recorder.messages)} of {n})")

    async def exactly_these_come_back(self, source, given_back, acked, when: str) -> None:
        """
        A new client of C{source} receives the C{given_back} messages, then a message
        filled after them, and nothing else: none of the C{acked}, none twice.
        """
        client = Recorder(auto_ack=True)
        sub = client.attach(source)
        await self.received(client, len(given_back), f"messages given back {when} return")
        marker = _payloads(f"marker {when}", 1)
        await self.harness.fill(source, marker)
        await wait_until(lambda: marker[0] in client.data(), self.harness.timeout,
                         f"a message filled {when} arrives")
        got = sorted(d for d in client.data() if d != marker[0])
        assert got == sorted(m.data for m in given_back), (
            f"{when}: given back {[m.data for m in given_back]}, acked "
            f"{[m.data for m in acked]}, then a client got {got}")
        sub.cancel()


async def check_pause_stops_reads(h: SourceHarness) -> None:
    """
    A paused subscription takes at most C{in_flight} more messages: the rest go to a
    client that reads. After C{resume()} it takes messages again.
    """
    run = _Run(h)
    try:
        source = await run.make()
        a = Recorder(auto_ack=True)
        sub_a = a.attach(source)
        await h.fill(source, _payloads("warm-up", 1))
        await run.received(a, 1, "the first subscription receives")
        sub_a.pause()
        b = Recorder(auto_ack=True)
        sub_b = b.attach(source)
        n = h.in_flight + 10
        await h.fill(source, _payloads("paused", n))
        await wait_until(lambda: len(a.messages) - 1 + len(b.messages) >= n, h.timeout,
                         "every message is taken by one of the two subscriptions")
        assert len(a.messages) - 1 <= h.in_flight, (
            f"a paused subscription was handed {len(a.messages) - 1} messages; "
            f"in_flight says at most {h.in_flight}")
        sub_b.cancel()
        sub_a.resume()
        before = len(a.messages)
        await h.fill(source, _payloads("resumed", 3))
        await run.received(a, before + 3, "a resumed subscription receives again")
        sub_a.cancel()
    finally:
        await run.close()


async def check_nack_returns(h: SourceHarness) -> None:
    """Nacked messages are delivered again, the same ones, at once."""
    run = _Run(h)
    try:
        source, a, sub, sent = await run.delivered("nack", 5)
        first = list(a.messages[:5])
        sub.nack(first)
        await run.received(a, 10, "nacked messages are delivered again")
        again = a.messages[5:10]
        assert sorted(m.data for m in again) == sorted(m.data for m in first)
        assert sorted(m.data for m in first) == sorted(sent)
        sub.ack(again)
        sub.cancel()
    finally:
        await run.close()


async def check_restart_returns_only_unacked(h: SourceHarness) -> None:
    """
    Delivered messages are kept until acked: after a stop (the consumer settles
    nothing), a new source delivers exactly the unacked ones, never an acked one.
    """
    run = _Run(h)
    try:
        source, a, sub, _ = await run.delivered("restart", 6)
        acked, held = a.messages[:3], a.messages[3:6]
        sub.ack(acked)
        await run.stop(source)
        assert a.ended is not None, "stop() must end open subscriptions (source_ended)"

        again = await run.make()
        await run.exactly_these_come_back(again, held, acked, "after a restart")
    finally:
        await run.close()


async def check_limit_is_exact(h: SourceHarness) -> None:
    """
    A stream with C{limit=3} writes and acks exactly 3 messages; the surplus it was
    handed is given back, so another client receives all the others.
    """
    run = _Run(h)
    try:
        source = await run.make()
        request = FakeRequest()
        stream = Stream(request, source, NDJSON, _reactor(), limit=3, heartbeat=0)
        stream.start()
        sent = _payloads("limit", 8)
        await h.fill(source, sent)
        await wait_until(lambda: stream.ended, h.timeout, "the stream reaches its limit")
        assert stream.end_reason == "limit"
        written = [json.loads(line)["data"] for line in request.lines()]
        assert len(written) == 3
        b = Recorder(auto_ack=True)
        sub_b = b.attach(source)
        await run.received(b, 5, "the surplus goes to another client")
        rest = [json.loads(d) for d in b.data()]
        assert sorted(map(json.dumps, written + rest)) == sorted(
            json.dumps(json.loads(p)) for p in sent), (
            f"written {written}, then another client got {rest}")
        sub_b.cancel()
    finally:
        await run.close()


async def check_settle_after_cancel(h: SourceHarness) -> None:
    """
    Acks and nacks that come after C{cancel()} still count (a stream may ack once its
    bytes have left the process, a while later): the nacked come back, the acked do not.
    """
    run = _Run(h)
    try:
        source, a, sub, _ = await run.delivered("late", 4)
        sub.cancel()
        await next_turns()  # not in the same reactor turn as cancel()
        acked, nacked = a.messages[:2], a.messages[2:4]
        sub.ack(acked)
        sub.nack(nacked)
        sub.ack(acked)  # settled twice: ignored, not an error
        await run.exactly_these_come_back(source, nacked, acked, "after cancel")
    finally:
        await run.close()


#: Every check, by name: each a coroutine function taking a L{SourceHarness}.
CHECKS = {
    "pause_stops_reads": check_pause_stops_reads,
    "nack_returns": check_nack_returns,
    "restart_returns_only_unacked": check_restart_returns_only_unacked,
    "limit_is_exact": check_limit_is_exact,
    "settle_after_cancel": check_settle_after_cancel,
}


class SourceConformance:
    """
    The checks as pytest tests (C{test_pause_stops_reads}, ... one per L{CHECKS}
    entry): subclass it as C{TestSomething} and provide a C{source_harness} fixture
    returning a L{SourceHarness}.
    """


def _as_test(name: str, check):
    @pytest_twisted.ensureDeferred
    async def test(self, source_harness):
        await check(source_harness)

    test.__name__ = test.__qualname__ = f"test_{name}"
    test.__doc__ = check.__doc__
    return test


for _name, _check in CHECKS.items():
    setattr(SourceConformance, f"test_{_name}", _as_test(_name, _check))
