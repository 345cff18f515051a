"""
HTTP/2 flow control against a real C{twistd -n streamd} (issue 20), served on an C{ssl:}
listener with a certificate the tests make (L{tests.support.h2.certificate}):

 - twenty streams of one connection whose client never opens their windows, a sibling
   stream on the same connection that reads everything, one 6 MB NDJSON publish: the
   server's memory grows by 50 MB at most, the sibling gets all of it, and the stalled
   streams are ended (the slow-consumer notice, or C{RST_STREAM} after the grace
   period). The client is the C{h2} library over a TLS socket; its streams' initial
   window is h2's default (64 KiB), or 4 MiB (near Chromium's 6 MiB, and less than the
   publish: with Twisted's own HTTP/2, up to a window of every stream waited in the
   server);
 - twenty EventSources in headless Chromium, all on one HTTP/2 connection, get every one
   of 100 messages a second with a 99th percentile latency of 50 ms at most (in the best
   of up to three 5-second rounds: see L{ROUNDS}).

C{pytest -s} prints the measured figures. C{STREAMD_TEST_TWISTED_H2=1} serves HTTP/2 with
Twisted's own classes instead (L{tests.support.h2.TWISTD}), to see these tests fail there.
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task

from tests.support.browser import chromium_fixture  # noqa: F401  (fixture)
from tests.support.h2 import StreamdProcess, h2_connect
from tests.support.page import eventually
from tests.support.web import wait_until, within

STALLED = 20
#: One message of the 6 MB publish: about 200 bytes, as in bench/slow_clients.py.
LINE = json.dumps({"pad": "x" * 190}).encode() + b"\n"
MESSAGES = 6_000_000 // len(LINE)


@pytest.fixture
def streamd_h2(tmp_path):
    server = StreamdProcess(str(tmp_path), "--access-log", "off")
    try:
        yield server
        assert not server.tracebacks(), f"tracebacks in {server.log}"
    finally:
        server.stop()


async def open_streams(server: StreamdProcess) -> int:
    response = await within(treq.get(server.url + "/"))
    return (await treq.json_content(response))["open_streams"]


@pytest.mark.parametrize("window", [65_535, 4 << 20], ids=["64KiB", "4MiB"])
@pytest_twisted.ensureDeferred
async def test_stalled_h2_streams_are_bounded_and_ended_while_a_sibling_reads_all(
        streamd_h2, window):
    server = streamd_h2
    client = await h2_connect(server.tls_port, window=window)
    try:
        sibling = client.get("/streams/big")
        stalled = [client.get("/streams/big", acknowledge=False) for _ in range(STALLED)]
        await within(defer.gatherResults([r.head for r in [sibling, *stalled]]))
        await wait_until(lambda: _equals(open_streams(server), STALLED + 1))
        before = server.memory_kib()["VmRSS"]

        published = time.monotonic()
        response = await within(treq.post(
            server.url + "/streams/big/messages", LINE * MESSAGES,
            headers={"Content-Type": "application/x-ndjson"}), 60)
        assert response.code == 202
        await treq.content(response)

        # The sibling gets every message, in order.
        await sibling.wait_lines(MESSAGES, seconds=60)
        got = time.monotonic() - published
        lines = sibling.lines()
        assert len(lines) == MESSAGES
        assert [json.loads(line)["id"] for line in lines] == \
            [str(n) for n in range(1, MESSAGES + 1)]
        assert sibling.received >= 6_000_000
        growth = server.memory_kib()["VmHWM"] - before
        assert growth <= 50 * 1024, f"RSS grew by {growth} KiB"

        # The stalled ones are ended: the notice, or (their window full) a reset.
        await within(defer.gatherResults([r.done for r in stalled]), 60)
        ended = time.monotonic() - published
        for r in stalled:
            assert r.reset is not None or b"slow consumer" in r.body, r.body[-200:]
        memory = server.memory_kib()
        growth = memory["VmHWM"] - before
        print(f"\nwindow {window}: {MESSAGES} messages ({len(LINE) * MESSAGES} bytes); "
              f"RSS before {before} KiB, peak {memory['VmHWM']} KiB (+{growth / 1024:.1f} "
              f"MiB); sibling had all after {got:.1f} s; stalled: "
              f"{sum(r.reset is not None for r in stalled)} reset, "
              f"{sum(b'slow consumer' in r.body for r in stalled)} with the notice, "
              f"all ended after {ended:.1f} s; each received "
              f"{sorted({r.received for r in stalled})} bytes")
        assert growth <= 50 * 1024
        assert sibling.reset is None and not sibling.done.called  # still open
    finally:
        client.transport.loseConnection()
        await within(client.lost)


async def _equals(d, expected) -> bool:
    return (await d) == expected


# Each EventSource records every message's number and its latency: now - the time the
# test published it (one clock: the browser and the test share the machine).
OPEN_TIMED = """
window.sources = [];
for (let i = 0; i < %d; i++) {
  const es = new EventSource("/streams/%s?format=sse");
  es.got = [];
  es.latency = [];
  es.onmessage = (e) => {
    const now = performance.timeOrigin + performance.now();
    const m = JSON.parse(e.data);
    es.got.push(m.n);
    es.latency.push(now - m.t);
  };
  sources.push(es);
}
true
"""

RATE = 100  # messages a second
SECONDS = 5  # in a measured round
WARMUP = RATE  # messages before the first round (the publisher's connections open)
#: Rounds at most: a busy machine (CI, or two cores shared by several test runs) can
#: stall any process for tens of milliseconds, and a stall of 50 ms in 5 s is a p99 of
#: 50 ms. The best round must be within the bound; every round is printed. (With
#: Twisted's own HTTP/2 every round's p99 was 0.1-2.4 s.)
ROUNDS = 3


@pytest_twisted.ensureDeferred
async def test_twenty_eventsources_over_h2_get_every_message_p99_under_50ms(
        streamd_h2, chromium):
    server = streamd_h2
    origin = f"https://127.0.0.1:{server.tls_port}"
    chromium.flags.append("--ignore-certificate-errors")  # the test's self-signed certificate
    async with chromium.running("test_twenty_eventsources_over_h2_p99") as page:
        await page.open(origin + "/health")
        await eventually(page, "location.origin", origin)
        assert await page.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        await page.evaluate(OPEN_TIMED % (20, "tick"))
        await eventually(page, "sources.every(es => es.readyState === 1)")
        await wait_until(lambda: _equals(open_streams(server), 20))

        sent: list[defer.Deferred] = []

        async def publish(count: int) -> None:
            """C{count} more messages, one POST each, RATE a second."""
            end = len(sent) + count

            def one() -> None:
                if len(sent) == end:
                    loop.stop()
                    return
                body = json.dumps({"n": len(sent), "t": time.time() * 1000}).encode()
                d = treq.post(server.url + "/streams/tick/messages", body,
                              headers={"Content-Type": "application/json"})
                # Read the answer: only then is its connection free for the next POST.
                sent.append(d.addCallback(lambda r: treq.content(r).addCallback(lambda _: r)))

            loop = task.LoopingCall(one)
            loop.clock = reactor
            await within(loop.start(1 / RATE), count / RATE + 20)
            await eventually(page, f"sources.every(es => es.got.length >= {end})", True, 20)

        await publish(WARMUP)
        rounds = []
        for _ in range(ROUNDS):
            first = len(sent)
            await publish(RATE * SECONDS)
            latency = sorted(await page.evaluate(
                f"sources.flatMap(es => es.latency.filter((_, i) => es.got[i] >= {first}))"))
            assert len(latency) == 20 * RATE * SECONDS
            rounds.append((latency[len(latency) // 2], latency[int(len(latency) * 0.99)],
                           latency[-1]))
            print(f"\n20 EventSources over h2, {RATE * SECONDS} messages at {RATE}/s: "
                  "latency p50 {:.1f} ms, p99 {:.1f} ms, max {:.1f} ms".format(*rounds[-1]))
            if rounds[-1][1] <= 50:
                break

        responses = await within(defer.gatherResults(sent), 20)
        assert {r.code for r in responses} == {202}
        # Every message, once, and in the same order everywhere (the order the server
        # took the concurrent POSTs in).
        got = await page.evaluate("sources.map(es => es.got.join())")
        assert len(set(got)) == 1
        assert sorted(map(int, got[0].split(","))) == list(range(len(sent)))
        assert min(p99 for _, p99, _ in rounds) <= 50, rounds
