"""
One measured run of a scenario against one server: open the readers, publish, wait for
every reader to get the END message, and sum up what the readers saw (deliveries/s,
latency, lost and duplicated) and what it cost (server and generator CPU, per-CPU busy
time, server RSS). Scenarios (L{Spec}) are declared in C{scenarios.py}.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from array import array
from dataclasses import dataclass

from audience import audience_figures, before_burst, bind_source
from common import HOST, Redis, cpu_busy, percentile
from load import Publisher, http_framer, parse_http, parse_resp, resp_framer
from profile_server import start_profiler, stop_profiler
from wire import CONTROLS, HTTPConnection, Subscriber, digest_held

OPEN_CONCURRENCY = 100  # connections being set up at once (listen backlogs are small)
SLOW_RCVBUF = 8192  # a slow reader's receive buffer, so that it reads a little at a time
SEEN = bytes([0] + [1] * 255)  # a reader's count per seq (0-255), made 0 or 1


@dataclass
class Spec:
    """One scenario: who reads, what is published, how fast."""

    id: str
    title: str
    readers: int = 100
    messages: int = 5000
    size: int = 200
    rate: float | None = None  # messages per second; None: full speed
    conns: int = 4  # publishing connections, one request in flight on each
    sse: bool = False
    source: str = "http"  # or "redis": one PUBLISH per message, streamd only
    slow: int = 0  # readers that read at slow_rate bytes/s (their figures are apart)
    slow_rate: float = 20_000
    idle: int = 0  # > 0: the idle-streams scenario, this many streams
    servers: tuple[str, ...] = ("streamd", "nchan")
    # (h): the readers connect all at once (no OPEN_CONCURRENCY gate), from this many
    # source addresses (127.0.0.2, ...; 0: the kernel's choice, 127.0.0.1); the run then
    # reports connected, listen-queue overflows, RSS per reader and when each message
    # reached its last reader (audience.py)
    burst: bool = False
    sources: int = 0
    # (w): the server's worker processes (streamd --workers N, Nchan worker_processes N)
    # and whether server and generator are pinned as usual (False: nothing pinned)
    workers: int = 1
    pin: bool = True
    variant: str = ""  # shown beside the server's name in the tables, e.g. "2 workers"


@dataclass
class Options:
    timeout: float = 300.0  # seconds per run: every wait is bounded
    quiet: float = 5.0  # stop waiting after this long without a byte for any reader
    settle: float = 1.0  # idle: seconds before reading RSS
    server_cpu: int | None = 0
    bench_cpu: int | None = 1
    profile: str | None = None
    py_spy: str | None = None


# --------------------------------------------------------------------------- readers


async def get_json(server, path: str) -> tuple[int, dict]:
    conn = HTTPConnection(HOST, server.port)
    try:
        status, body = await conn.request("GET", path, headers={
            "Connection": "close", **server.info_headers})
    finally:
        conn.close()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


async def wait_subscribers(server, name: str, target: int, timeout: float) -> int:
    """Poll the server until it counts C{target} subscribers; return the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        status, info = await get_json(server, server.info_path(name))
        seen = server.subscribers(info) if status == 200 else 0
        if seen == target or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def open_readers(port: int, request: bytes, count: int, total: int, deadline: float,
                       sse: bool = False, read_rate: float | None = None,
                       burst: bool = False, sources: int = 0) -> list[Subscriber]:
    """
    Open C{count} streams, at most L{OPEN_CONCURRENCY} connecting at a time (a C{burst}:
    all at once), each bound to one of C{sources} loopback addresses in turn if > 0.
    """
    loop = asyncio.get_running_loop()
    subs = [Subscriber(request, total, read_rate, sse) for _ in range(count)]
    gate = asyncio.Semaphore(count if burst else OPEN_CONCURRENCY)
    index = iter(range(count))

    async def one(sub: Subscriber) -> None:
        async with gate:
            sock = None
            try:
                sock = socket.socket()
                sock.setblocking(False)
                if sources:
                    bind_source(sock, next(index), sources)
                if read_rate is not None:  # before connecting: it sets the window
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
                left = deadline - time.monotonic()
                await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), left)
                await loop.create_connection(lambda: sub, sock=sock)
                await asyncio.wait_for(asyncio.shield(sub.opened), deadline - time.monotonic())
            except (OSError, asyncio.TimeoutError) as e:
                if sock is not None:
                    sock.close()
                sub.fail(f"not opened: {type(e).__name__} {e}")

    await asyncio.gather(*(one(s) for s in subs))
    return subs


def live(subs: list[Subscriber]) -> int:
    return sum(1 for s in subs if s.status == 200 and s.ended is None)


async def wait_end(subs: list[Subscriber], quiet: float, deadline: float) -> None:
    """Until every reader got END or ended, nothing came for C{quiet} s, or the deadline."""
    waiting = [s for s in subs if s.ended is None]
    last_progress, last_seen = time.monotonic(), -1
    while waiting and time.monotonic() < deadline:
        waiting = [s for s in waiting if s.ended is None and not s.saw_end()]
        seen = sum(s.received for s in waiting)
        if seen != last_seen:
            last_progress, last_seen = time.monotonic(), seen
        elif time.monotonic() - last_progress > quiet:
            return
        # Each look costs about a microsecond per reader: with thousands, look less often,
        # so that the generator keeps reading what is still arriving.
        await asyncio.sleep(max(0.005, 5e-6 * len(waiting)))


# --------------------------------------------------------------------------- figures


def merge(results: list[dict], accepted: bytes) -> dict:
    """
    Sum up what the readers saw. A message is lost when the server accepted it and a reader
    never got it; one the server refused or the publisher never sent is not lost.
    """
    n_accepted = sum(accepted)
    accepted_bits = int.from_bytes(accepted, "big")  # one bit per seq: bytes are 0 or 1
    lat = array("d")
    out = {"readers": len(results), "unique": 0, "lost": 0, "duplicated": 0,
           "out_of_range": 0, "unparsed": 0, "other_lines": 0,
           "controls": dict.fromkeys(CONTROLS, 0), "samples": {}, "ended": {}}
    for r in results:
        out["unique"] += r["unique"]
        got = int.from_bytes(r["counts"][: len(accepted)].translate(SEEN), "big")
        out["lost"] += n_accepted - (accepted_bits & got).bit_count()
        for k in ("duplicated", "out_of_range", "unparsed", "other_lines"):
            out[k] += r[k]
        for k, v in r["controls"].items():
            out["controls"][k] += v
        for k, v in r["samples"].items():
            out["samples"].setdefault(k, v)
        why = r["ended"][:60]
        out["ended"][why] = out["ended"].get(why, 0) + 1
        lat.frombytes(r["latencies"])
    last = [r["last_recv"] for r in results if r["last_recv"]]
    out["last_recv"] = max(last) if last else None
    values = sorted(lat)
    out["latency_ms"] = {"p50": percentile(values, 0.50) * 1e3,
                         "p99": percentile(values, 0.99) * 1e3,
                         "max": values[-1] * 1e3 if values else float("nan")}
    return out


class Meter:
    """CPU seconds of the server, the generator (this process), helpers and each CPU."""

    def __init__(self, server, helpers=(), opts: Options | None = None) -> None:
        self.server, self.helpers, self.opts = server, list(helpers), opts or Options()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.srv0 = self.server.cpu_seconds()
        self.gen0 = time.process_time()
        self.help0 = [h.cpu_seconds() for h in self.helpers]
        self.busy0 = cpu_busy()

    def stop(self) -> dict:
        wall = max(time.monotonic() - self.t0, 1e-9)
        srv = self.server.cpu_seconds() - self.srv0
        gen = time.process_time() - self.gen0
        helpers = sum(h.cpu_seconds() for h in self.helpers) - sum(self.help0)
        busy = {k: v - self.busy0.get(k, 0.0) for k, v in cpu_busy().items()}
        o = self.opts
        other = max(0.0, busy.get("all", 0.0) - srv - gen - helpers)

        def core(cpu):
            return 100 * busy.get(f"cpu{cpu}", 0.0) / wall if cpu is not None else None

        return {
            "window_s": wall, "server_cpu_s": srv, "gen_cpu_s": gen, "helper_cpu_s": helpers,
            "server_cpu_pct": 100 * srv / wall, "gen_cpu_pct": 100 * gen / wall,
            "helper_cpu_pct": 100 * helpers / wall,
            # Busy time of the server's and the generator's CPUs, whoever used it: other
            # work on the machine (not pinned) shows as the difference.
            "server_core_busy_pct": core(o.server_cpu), "bench_core_busy_pct": core(o.bench_cpu),
            "other_cpu_s": other, "other_cpu_pct": 100 * other / wall,
        }


# --------------------------------------------------------------------------- runs


def stream_name(spec: Spec) -> str:
    """A fresh name per run (word characters only, as Nchan's location wants)."""
    return f"bench_{spec.id.replace('-', '_')}_{os.getpid()}_{time.monotonic_ns() % 10**9}"


def make_publisher(spec: Spec, server, name: str, redis: Redis | None) -> Publisher:
    if spec.source == "redis":
        return Publisher(HOST, redis.port, resp_framer(b"bench"), parse_resp, (200,),
                         spec.messages, spec.size, spec.conns, spec.rate)
    suffix = b"" if spec.sse else server.ndjson_suffix
    frame = http_framer(HOST, server.port, server.pub_path(name), "application/json", suffix)
    return Publisher(HOST, server.port, frame, parse_http, server.pub_ok, spec.messages,
                     spec.size, spec.conns, spec.rate)


async def run_fanout(spec: Spec, server, opts: Options, redis: Redis | None = None) -> dict:
    """Readers open, the publisher goes, every reader gets everything (or not): figures."""
    deadline = time.monotonic() + opts.timeout
    name = "redis" if spec.source == "redis" else stream_name(spec)
    request = server.sub_request(name, spec.sse)
    total = spec.messages
    rss0 = server.rss()
    burst = before_burst(server) if spec.burst else None
    fast = await open_readers(server.port, request, spec.readers, total, deadline, spec.sse,
                              burst=spec.burst, sources=spec.sources)
    if burst is not None:
        burst.opened()
    slow = await open_readers(server.port, request, spec.slow, total, deadline, spec.sse,
                              spec.slow_rate) if spec.slow else []
    opened = live(fast) + live(slow)
    seen = await wait_subscribers(server, name, opened, min(10 + spec.readers / 1000,
                                                            deadline - time.monotonic()))
    if burst is not None:
        await burst.after(server, name, opened, seen, min(opts.settle, deadline -
                                                          time.monotonic()), get_json)
    if redis is not None:
        await asyncio.get_running_loop().run_in_executor(None, wait_numsub, redis)
    pub = make_publisher(spec, server, name, redis)
    await pub.connect()
    rss_open = server.rss()
    meter = Meter(server, [redis] if redis else [], opts)
    meter.start()
    prof = start_profiler(opts, server)
    guard = asyncio.ensure_future(bound_memory(fast + slow))
    try:
        published = await pub.run(deadline)
        await wait_end(fast, opts.quiet, deadline)
        usage = meter.stop()
        profile = stop_profiler(opts, prof)
        prof = None
        t_end = time.time()
        slow_report = await release_slow(slow, t_end, opts.quiet, deadline) if slow else None
    finally:
        guard.cancel()
        pub.close()
        if prof is not None:
            stop_profiler(opts, prof)
    rss_end = server.rss()
    results = []
    for s in fast:
        s.close()
        results.append(s.result())
    m = merge(results, published["accepted_seqs"])
    first_send = published["first_send"]
    window = (m["last_recv"] - first_send) if m["last_recv"] else None
    extra = audience_figures(burst, fast, published["accepted_seqs"]) if burst else {}
    return {
        "scenario": spec.id, "server": server.name, "stream": name,
        "readers": spec.readers, "opened": opened, "subscribers_seen": seen,
        "messages": total, "size": spec.size, "rate": spec.rate, "conns": spec.conns,
        "sse": spec.sse, "published": published["accepted"], "publish_errors":
        published["errors"], "publish_error_sample": published["error_sample"],
        "publish_per_s": published["accepted"] / max(published["last_answer"] - first_send,
                                                     1e-9),
        "delivered": m["unique"], "expected": published["accepted"] * spec.readers,
        "seconds": window, "delivered_per_s": m["unique"] / window if window else 0.0,
        "latency_ms": m["latency_ms"], "lost": m["lost"], "duplicated": m["duplicated"],
        "out_of_range": m["out_of_range"], "unparsed": m["unparsed"],
        "other_lines": m["other_lines"], "controls": m["controls"], "samples": m["samples"],
        "ended": m["ended"], "timed_out": time.monotonic() >= deadline, **usage,
        # What a delivery costs the server hardly depends on other work on the machine.
        "server_us_per_delivery": usage["server_cpu_s"] / m["unique"] * 1e6 if m["unique"]
        else None,
        "rss_kib": {"start": rss0["VmRSS"], "streams_open": rss_open["VmRSS"],
                    "end": rss_end["VmRSS"], "peak": rss_end["VmHWM"]},
        "slow": slow_report, "profile": profile, "workers": server.workers, **extra,
    }


async def bound_memory(subs: list[Subscriber]) -> None:
    """Let the readers parse what they hold when it adds up to too much (L{digest_held})."""
    while True:
        await asyncio.sleep(0.5)
        digest_held(subs)


def wait_numsub(redis: Redis) -> None:
    """Until streamd's Redis source has subscribed (it does so at start, maybe later)."""
    deadline = time.monotonic() + 10
    while redis.numsub(b"bench") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)


async def release_slow(slow: list[Subscriber], t_end: float, quiet: float,
                       deadline: float) -> dict:
    """
    What the slow readers got while the fast ones were served; then let them read at full
    speed (for a few seconds at most) to learn what the server kept for them and how their
    streams end (streamd: a slow-consumer error and a close; Nchan: everything, late).
    """
    during = []
    for s in slow:
        during.append(s.count_until(t_end))
        s.release()
    await wait_end(slow, min(quiet, 2.0), min(deadline, time.monotonic() + 10))
    results = []
    for s in slow:
        s.close()
        results.append(s.result())
    m = merge(results, b"")
    return {"readers": len(slow), "got_during_run": sum(during), "got_in_all": m["unique"],
            "controls": {k: v for k, v in m["controls"].items() if v},
            "ended": m["ended"], "samples": m["samples"]}


async def run_idle(spec: Spec, server, opts: Options) -> dict:
    """The server memory one open, quiet stream costs (RSS, on a freshly started server)."""
    deadline = time.monotonic() + opts.timeout
    name = stream_name(spec)
    request = server.sub_request(name, spec.sse)
    # Warm up first, so that RSS "before" already holds what any first stream allocates once.
    warm = await open_readers(server.port, request, 20, 0, deadline)
    await wait_subscribers(server, name, live(warm), 10)
    for s in warm:
        s.close()
    await wait_subscribers(server, name, 0, 10)
    rss_before = server.rss()
    t0 = time.monotonic()
    subs = await open_readers(server.port, request, spec.idle, 0, deadline)
    opened = live(subs)
    open_s = time.monotonic() - t0
    seen = await wait_subscribers(server, name, opened, min(30, deadline - time.monotonic()))
    await asyncio.sleep(min(opts.settle, max(0, deadline - time.monotonic())))
    rss_open = server.rss()
    ended = {}
    for s in subs:
        if s.ended is not None:
            ended[s.ended[:60]] = ended.get(s.ended[:60], 0) + 1
        s.close()
    left = await wait_subscribers(server, name, 0, min(20, max(0, deadline - time.monotonic())))
    per = (rss_open["VmRSS"] - rss_before["VmRSS"]) / opened if opened else None
    return {"scenario": spec.id, "server": server.name, "streams": spec.idle,
            "opened": opened, "subscribers_seen": seen, "open_seconds": open_s,
            "subscribers_after_close": left, "ended_early": ended,
            "rss_kib": {"before": rss_before["VmRSS"], "streams_open": rss_open["VmRSS"],
                        "after_close": server.rss()["VmRSS"], "peak": rss_open["VmHWM"]},
            "kib_per_idle_stream": per}
