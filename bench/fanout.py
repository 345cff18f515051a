#!/usr/bin/env python3
"""
Fan-out benchmark for streamd: N subscribers read one stream while a publisher posts to it.

By default each scenario starts its own streamd (twistd -n streamd on a free loopback
port) and stops it afterwards; --url targets a server that is already running instead.
Run python bench/fanout.py --help, or see bench/README.md.

Scenarios:
  - burst (default): --subscribers read --messages of --size bytes published at full
    speed in NDJSON batches of --batch lines, --inflight POSTs at a time;
  - rate (--rate R --duration S): the same, paced at R messages per second;
  - idle (--idle N): N streams that receive nothing; the server's RSS before and after
    gives the memory one idle stream holds.
--all runs the three in turn, each against a fresh server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from urllib.parse import quote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wire import CONTROLS, HTTPConnection, Subscriber  # noqa: E402

LINENO_RE = re.compile(r":\d+\)$")
LISTENING_RE = re.compile(r"streamd listening on tcp:([0-9.]+):(\d+)")
HOST = "127.0.0.1"
OPEN_CONCURRENCY = 100  # connections being set up at once (the listen backlog is small)


# --------------------------------------------------------------------------- the server


def twistd_command() -> list[str]:
    """The twistd beside this interpreter, or the same entry point through C{-c}."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    # `python -m twisted` is `twist`, which has no -n/--pidfile: call twistd's entry point.
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()"]


def read_proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Server:
    """A streamd started for one scenario, or the one C{--url} names."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.host = HOST
        self.port = 0
        self.pid = args.pid

    def start(self) -> None:
        if self.args.url:
            u = urlsplit(self.args.url)
            if u.hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit("fanout.py only talks to 127.0.0.1")
            self.port = u.port or 80
            return
        self.dir = tempfile.mkdtemp(prefix="streamd-bench-")
        cmd = twistd_command() + ["-n", "--pidfile=", "streamd",
                                  "--listen", "tcp:0:interface=127.0.0.1"]
        if self.args.max_pending:
            cmd += ["--max-pending", str(self.args.max_pending)]
        cmd += self.args.server_arg
        self.command = cmd
        self.log_path = os.path.join(self.dir, "server.log")
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in self.args.server_env))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as f:
                m = LISTENING_RE.search(f.read())
            if m:
                self.port = int(m.group(2))  # on 127.0.0.1, whatever interface it names
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise SystemExit(f"streamd did not start ({' '.join(cmd)}):\n{tail}")

    def log_tail(self, n: int = 20) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def rss(self) -> dict[str, int]:
        return read_proc_status(self.pid) if self.pid else {}

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def stop(self) -> dict:
        """Stop the server we started; report tracebacks it logged."""
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with open(self.log_path, errors="replace") as f:
            log = f.read()
        problems = log.count("Traceback") + log.count("Unhandled")
        report = {"exit_code": self.proc.returncode, "log_problems": problems}
        if problems or self.args.keep_logs:
            report["log"] = self.log_path
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.proc = None
        return report


async def get_json(server: Server, path: str) -> dict:
    conn = HTTPConnection(server.host, server.port)
    try:
        status, body = await conn.request("GET", path, headers={"Connection": "close"})
    finally:
        conn.close()
    return json.loads(body)


async def wait_open_streams(server: Server, target: int, timeout: float) -> int:
    """Poll C{GET /} until it counts C{target} open streams; return the last count seen."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        seen = (await get_json(server, "/")).get("open_streams", -1)
        if seen == target or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- subscribers


def stream_request(server: Server, name: str, limit: int | None) -> bytes:
    path = f"/streams/{quote(name)}"
    if limit:
        path += f"?limit={limit}"
    return (f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            "Accept: application/x-ndjson\r\n\r\n").encode()


async def open_subscribers(host: str, port: int, request: bytes, count: int, total: int,
                           slow: int, deadline: float) -> list[Subscriber]:
    """
    Open C{count} streams, at most L{OPEN_CONCURRENCY} connecting at a time; the first
    C{slow} of them stop reading once open.
    """
    loop = asyncio.get_running_loop()
    subs = [Subscriber(request, total, slow=i < slow) for i in range(count)]
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(sub: Subscriber) -> None:
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                sub.fail("not opened: timeout")
                return
            try:
                await asyncio.wait_for(loop.create_connection(lambda: sub, host, port), left)
                await asyncio.wait_for(asyncio.shield(sub.opened), deadline - time.monotonic())
            except (OSError, asyncio.TimeoutError) as e:
                sub.fail(f"not opened: {type(e).__name__} {e}")

    await asyncio.gather(*(one(s) for s in subs))
    return subs


async def drain_subscribers(subs: list[Subscriber], quiet: float, deadline: float) -> None:
    """Wait until every stream ended, nothing arrived for C{quiet} seconds, or the deadline."""
    last_progress, last_seen = time.monotonic(), -1
    subs = [s for s in subs if not s.slow]  # a reader that stopped reading never finishes
    while time.monotonic() < deadline:
        live = [s for s in subs if not s.finished.done()]
        if not live:
            return
        seen = sum(s.received for s in subs)
        if seen != last_seen:
            last_progress, last_seen = time.monotonic(), seen
        elif time.monotonic() - last_progress > quiet:
            return
        await asyncio.sleep(0.05)


async def release_slow(subs: list[Subscriber], deadline: float) -> None:
    """
    Let the readers that stopped read again, to learn what the server did to them (a final
    error line and a close, or a stream still open), within a few seconds.
    """
    slow = [s for s in subs if s.slow]
    if not slow:
        return
    for s in slow:
        if s.transport is not None and not s.finished.done():
            s.transport.resume_reading()
    for s in slow:
        s.slow = False  # so that drain_subscribers waits for them too
    await drain_subscribers(slow, 1.0, min(deadline, time.monotonic() + 5))
    for s in slow:
        s.slow = True


def close_subscribers(subs: list[Subscriber]) -> list[dict]:
    for s in subs:
        s.close()
    return [s.result() for s in subs]


class LocalGroup:
    """Subscribers in this process, on the publisher's event loop."""

    def __init__(self, host, port, request, count, total, slow=0):
        self.args = (host, port, request, count, total, slow)
        self.subs: list[Subscriber] = []

    async def open(self, deadline: float) -> int:
        self.subs = await open_subscribers(*self.args, deadline)
        return sum(1 for s in self.subs if s.status == 200 and s.ended is None)

    async def drain(self, quiet: float | None, deadline: float) -> float:
        """Wait for the end of delivery; return CPU seconds spent elsewhere (none here)."""
        if quiet is not None:
            await drain_subscribers(self.subs, quiet, deadline)
        return 0.0

    async def release(self, deadline: float) -> None:
        """After the measurement: let the stopped readers read again (L{release_slow})."""
        await release_slow(self.subs, deadline)

    def results(self) -> list[dict]:
        return close_subscribers(self.subs)


def _child(conn, runner, host, port, request, count, total, slow, deadline_in) -> None:
    """A subscriber process: open, say so, wait for the word to drain or close, report."""
    async def main():
        subs = await open_subscribers(host, port, request, count, total, slow,
                                      time.monotonic() + deadline_in)
        conn.send(sum(1 for s in subs if s.status == 200 and s.ended is None))
        loop = asyncio.get_running_loop()
        cpu0 = time.process_time()  # from here, delivery may begin
        quiet, left = await loop.run_in_executor(None, conn.recv)
        if quiet is not None:
            await drain_subscribers(subs, quiet, time.monotonic() + left)
        conn.send(time.process_time() - cpu0)  # the parsing after this is not measured
        if quiet is not None:
            await release_slow(subs, time.monotonic() + left)
        return close_subscribers(subs)

    conn.send(runner(main()))


class ChildGroup:
    """Subscribers in a child process (C{--procs}), so they get a core of their own."""

    def __init__(self, host, port, request, count, total, slow=0, runner=asyncio.run):
        self.args = (host, port, request, count, total, slow)
        self.runner = runner
        self._results: list[dict] = []

    async def _recv(self, deadline: float):
        left = deadline - time.monotonic()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.conn.poll, max(left, 0)):
            raise TimeoutError("subscriber process did not answer")
        return await loop.run_in_executor(None, self.conn.recv)

    async def open(self, deadline: float) -> int:
        ctx = multiprocessing.get_context("fork")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(theirs, self.runner, *self.args,
                                deadline - time.monotonic()), daemon=True)
        self.proc.start()
        return await self._recv(deadline)

    async def drain(self, quiet: float | None, deadline: float) -> float:
        """Tell the child to drain (or close); return the CPU seconds it spent draining."""
        try:
            self.conn.send((quiet, deadline - time.monotonic()))
            return await self._recv(deadline + 10)
        except BaseException:
            self.proc.kill()
            raise

    async def release(self, deadline: float) -> None:
        """Collect the results, once the child let its stopped readers read again."""
        try:
            self._results = await self._recv(deadline + 30)
        finally:
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()

    def results(self) -> list[dict]:
        return self._results


def make_groups(args, server: Server, request: bytes, count: int, total: int,
                slow: int = 0) -> list:
    procs = max(1, min(args.procs, count))
    sizes = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    if procs == 1:
        return [LocalGroup(server.host, server.port, request, count, total, slow)]
    runner = event_loop_runner(args)
    return [ChildGroup(server.host, server.port, request, n, total, slow if i == 0 else 0,
                       runner) for i, n in enumerate(sizes)]


# --------------------------------------------------------------------------- the publisher


def payload(seq: int, size: int) -> bytes:
    """
    One message: C{seq} and the send time first (found by a bytes search), then padding.
    The send time is C{time.time()} in integer microseconds.
    """
    head = b'{"seq":%d,"t":%d,"pad":"' % (seq, time.time_ns() // 1000)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def publish(args, server: Server, name: str, total: int, batch: int, inflight: int,
                  rate: float | None, deadline: float) -> dict:
    """Publish C{total} messages in POSTs of C{batch}, C{inflight} at a time, maybe paced."""
    path = f"/streams/{quote(name)}/messages"
    free: asyncio.Queue = asyncio.Queue()
    conns = [HTTPConnection(server.host, server.port) for _ in range(inflight)]
    for c in conns:
        free.put_nowait(c)
    stats = {"posts": 0, "accepted": 0, "errors": 0, "error_sample": None}
    accepted = bytearray(total)  # 1 for each seq the server answered 202 for

    async def post(conn: HTTPConnection, body: bytes, first: int, n: int) -> None:
        try:
            status, answer = await conn.request(
                "POST", path, body, {"Content-Type": "application/x-ndjson"})
            ids = json.loads(answer).get("ids", []) if status == 202 else []
            if status != 202 or len(ids) != n:
                raise ValueError(f"HTTP {status}: {answer[:200]!r}")
            stats["accepted"] += n
            accepted[first : first + n] = b"\x01" * n
        except Exception as e:  # counted and reported, the run goes on
            conn.close()
            stats["errors"] += 1
            stats["error_sample"] = stats["error_sample"] or f"{type(e).__name__}: {e}"
        finally:
            stats["posts"] += 1
            free.put_nowait(conn)

    loop = asyncio.get_running_loop()
    tasks = []
    start = time.time()
    t0 = loop.time()
    sent = 0
    try:
        for first in range(0, total, batch):
            if rate:
                delay = t0 + first / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            conn = await asyncio.wait_for(free.get(), left)
            n = min(batch, total - first)
            body = b"\n".join(payload(seq, args.size) for seq in range(first, first + n)) + b"\n"
            tasks.append(asyncio.ensure_future(post(conn, body, first, n)))
            sent += n
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for c in conns:
            c.close()
    stats.update(sent=sent, first_send=start, last_ack=time.time(), accepted_seqs=accepted)
    return stats


# --------------------------------------------------------------------------- scenarios


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def merge(results: list[dict], accepted: bytes | None = None) -> dict:
    """
    Sum up what the subscribers saw. A message is lost when the server accepted it (202)
    and a subscriber never got it; one the publisher never sent (timeout) is not lost.
    """
    published = [i for i, a in enumerate(accepted or b"") if a]
    lat = array("d")
    out = {"subscribers": len(results), "unique": 0, "lost": 0, "duplicated": 0,
           "out_of_range": 0, "unparsed": 0, "other_lines": 0,
           "controls": dict.fromkeys(CONTROLS, 0), "samples": {}, "ended": {}}
    first = [r["first_recv"] for r in results if r["first_recv"]]
    last = [r["last_recv"] for r in results if r["last_recv"]]
    for r in results:
        out["unique"] += r["unique"]
        counts = r["counts"]
        out["lost"] += sum(1 for i in published if not counts[i])
        out["duplicated"] += r["duplicated"]
        out["out_of_range"] += r["out_of_range"]
        out["unparsed"] += r["unparsed"]
        out["other_lines"] += r["other_lines"]
        for k, v in r["controls"].items():
            out["controls"][k] += v
        for k, v in r["samples"].items():
            out["samples"].setdefault(k, v)
        why = r["ended"] if not r["ended"].startswith("HTTP") else r["ended"][:60]
        out["ended"][why] = out["ended"].get(why, 0) + 1
        lat.frombytes(r["latencies"])
    out["first_recv"] = min(first) if first else None
    out["last_recv"] = max(last) if last else None
    values = sorted(lat)
    out["latency_ms"] = {"p50": percentile(values, 0.50) * 1e3,
                         "p99": percentile(values, 0.99) * 1e3,
                         "max": values[-1] * 1e3 if values else float("nan")}
    return out


def start_profiler(args, server: Server):
    if not args.profile or not server.pid:
        return None
    fmt = "flamegraph" if args.profile.endswith(".svg") else "raw"
    # Blocking mode (py-spy pauses the server for each sample): --nonblocking reads stacks
    # while they change, and then put most samples on the wrong line.
    cmd = [args.py_spy, "record", "--pid", str(server.pid), "--rate", "250", "--idle",
           "--format", fmt, "-o", args.profile]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_profiler(args, prof) -> dict | None:
    if prof is None:
        return None
    prof.send_signal(signal.SIGINT)
    try:
        _, err = prof.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        prof.kill()
        return {"file": args.profile, "error": "py-spy did not stop"}
    out = {"file": args.profile}
    if prof.returncode not in (0, -signal.SIGINT):
        out["error"] = err.decode(errors="replace")[-300:]
    if not args.profile.endswith(".svg") and os.path.exists(args.profile):
        out.update(profile_summary(args.profile))
    return out


def profile_summary(path: str, n: int = 12) -> dict:
    """
    From py-spy's collapsed stacks (taken with C{--idle}): the share of samples the server
    spent idle, and the functions (line numbers folded) where it spent the busy ones, both
    in themselves (self) and with what they called (inclusive).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle_samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            frames = [LINENO_RE.sub(")", frame) for frame in stack.split(";")]
            total += c
            if frames[-1].startswith(("poll (", "EPollReactor.doPoll")):
                idle_samples += c
                continue
            own[frames[-1]] = own.get(frames[-1], 0) + c
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + c
    busy = max(1, total - idle_samples)

    def top(table):
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [(name, round(100.0 * c / busy, 1)) for name, c in ranked]

    return {"samples": total, "idle_pct": round(100.0 * idle_samples / max(1, total), 1),
            "self": top(own), "inclusive": top(
                {k: v for k, v in inclusive.items() if "streamd/" in k or "web/" in k})}


async def fanout(args, server: Server, mode: str) -> dict:
    """Scenarios burst and rate: subscribers open, then the publisher goes."""
    deadline = time.monotonic() + args.timeout
    if mode == "rate":
        total = int(args.rate * args.duration)
        batch, inflight = args.batch or 1, args.inflight or 8
    else:
        total = args.messages
        batch, inflight = args.batch or 50, args.inflight or 4
    name = f"bench-{mode}-{os.getpid()}-{int(time.time())}"
    base = (await get_json(server, "/")).get("open_streams", 0)
    rss0 = server.rss()
    slow = min(args.slow, args.subscribers)
    groups = make_groups(args, server, stream_request(server, name, total if args.limit else None),
                         args.subscribers, total, slow)
    opened = sum(await asyncio.gather(*(g.open(deadline) for g in groups)))
    seen = await wait_open_streams(server, base + opened, min(10, deadline - time.monotonic()))
    rss_open = server.rss()
    cpu0, main_cpu0 = server.cpu(), time.process_time()
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    prof = start_profiler(args, server)
    pub = await publish(args, server, name, total, batch, inflight,
                        args.rate if mode == "rate" else None, deadline)
    child_cpu = await asyncio.gather(*(g.drain(args.quiet, deadline) for g in groups))
    cpu1, client_cpu = server.cpu(), time.process_time() - main_cpu0 + sum(child_cpu)
    busy, wall = machine_busy_seconds() - busy0, time.monotonic() - wall0
    # CPU that neither the server nor this client used: other work on the machine, which
    # makes the figures worth less (it competes for the same cores).
    other = max(0.0, busy - client_cpu - (cpu1 - cpu0 if cpu0 is not None else 0.0))
    profile = stop_profiler(args, prof)
    for g in groups:
        await g.release(deadline)
    results = [r for g in groups for r in g.results()]
    m = merge([r for r in results if not r["slow"]], pub["accepted_seqs"])
    stuck = merge([r for r in results if r["slow"]], pub["accepted_seqs"]) if slow else None
    window = (m["last_recv"] - pub["first_send"]) if m["last_recv"] else None
    report = {
        "scenario": mode, "stream": name, "subscribers": args.subscribers, "opened": opened,
        "open_streams_seen": seen - base, "messages": total, "size": args.size,
        "batch": batch, "inflight": inflight, "procs": len(groups),
        "rate": args.rate if mode == "rate" else None,
        "published": pub["accepted"], "publish_errors": pub["errors"],
        "publish_error_sample": pub["error_sample"],
        "publish_seconds": pub["last_ack"] - pub["first_send"],
        "delivered": m["unique"], "expected": pub["accepted"] * (args.subscribers - slow),
        "timed_out": time.monotonic() >= deadline,
        "seconds": window,
        "delivered_per_s": m["unique"] / window if window else 0.0,
        "latency_ms": m["latency_ms"], "lost": m["lost"], "duplicated": m["duplicated"],
        "out_of_range": m["out_of_range"], "unparsed": m["unparsed"],
        "controls": m["controls"],
        "other_lines": m["other_lines"], "samples": m["samples"], "ended": m["ended"],
        "client_cpu_s": client_cpu,
        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None else None,
        "window_s": wall, "other_cpu_s": other, "cores": os.cpu_count(),
        # Server CPU per delivery hardly depends on what else runs on the machine.
        "server_us_per_delivery": ((cpu1 - cpu0) / m["unique"] * 1e6
                                   if cpu0 is not None and m["unique"] else None),
        "rss_kib": {"start": rss0.get("VmRSS"), "streams_open": rss_open.get("VmRSS"),
                    "end": server.rss().get("VmRSS"), "peak": server.rss().get("VmHWM")},
        "profile": profile,
        "slow": slow and {"readers": slow, "received": stuck["unique"],
                          "ended": stuck["ended"], "controls": stuck["controls"],
                          "samples": stuck["samples"]},
    }
    return report


async def close_groups(groups: list, deadline: float) -> list[dict]:
    """Hang up every stream of these groups; return what each subscriber saw."""
    await asyncio.gather(*(g.drain(None, deadline) for g in groups))
    for g in groups:
        await g.release(deadline)
    return [r for g in groups for r in g.results()]


async def idle(args, server: Server) -> dict:
    """Scenario idle: the server memory one open, quiet stream costs."""
    deadline = time.monotonic() + args.timeout
    name = f"bench-idle-{os.getpid()}-{int(time.time())}"
    request = stream_request(server, name, None)
    base = (await get_json(server, "/")).get("open_streams", 0)
    # Warm up first, so that RSS "before" already holds the code paths and buffers that
    # any first stream allocates once.
    warm = make_groups(args, server, request, 20, 0)
    await asyncio.gather(*(g.open(deadline) for g in warm))
    await close_groups(warm, deadline)
    await wait_open_streams(server, base, min(10, deadline - time.monotonic()))
    rss_before = server.rss()
    t0 = time.monotonic()
    groups = make_groups(args, server, request, args.idle, 0)
    opened = sum(await asyncio.gather(*(g.open(deadline) for g in groups)))
    open_s = time.monotonic() - t0
    seen = await wait_open_streams(server, base + opened, min(20, deadline - time.monotonic()))
    # Let deferred allocations settle (bounded): the answer is memory at rest.
    await asyncio.sleep(min(args.settle, max(0, deadline - time.monotonic())))
    rss_open = server.rss()
    t1 = time.monotonic()
    results = await close_groups(groups, deadline)
    left = await wait_open_streams(server, base, min(20, max(0, deadline - time.monotonic())))
    close_s = time.monotonic() - t1
    rss_closed = server.rss()
    m = merge(results)
    per = None
    if rss_before and rss_open and opened:
        per = (rss_open["VmRSS"] - rss_before["VmRSS"]) / opened
    early = {k: v for k, v in m["ended"].items() if k != "closed by client"}
    return {
        "scenario": "idle", "stream": name, "streams": args.idle, "opened": opened,
        "open_streams_seen": seen - base, "open_seconds": open_s,
        "open_streams_after_close": left - base, "close_seconds": close_s,
        "rss_kib": {"before": rss_before.get("VmRSS"), "streams_open": rss_open.get("VmRSS"),
                    "after_close": rss_closed.get("VmRSS"), "peak": rss_closed.get("VmHWM")},
        "kib_per_idle_stream": per, "controls": m["controls"], "ended_early": early,
        "samples": m["samples"],
    }


# --------------------------------------------------------------------------- output


def fmt_rss(kib) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "n/a"


def summary(r: dict) -> str:
    lines = []
    srv = r.get("server", {})
    per = r.get("server_us_per_delivery")
    cost = (f"server CPU per delivery {per:.2f} us (one core would deliver "
            f"{1e6 / per:,.0f} msgs/s)" if per else "server CPU per delivery n/a")
    if r["scenario"] == "idle":
        rss = r["rss_kib"]
        per = r["kib_per_idle_stream"]
        lines += [
            f"== idle: {r['streams']} idle streams ==",
            f"opened      {r['opened']} in {r['open_seconds']:.2f} s "
            f"(GET / counted {r['open_streams_seen']})",
            f"server RSS  before {fmt_rss(rss['before'])}, with streams open "
            f"{fmt_rss(rss['streams_open'])}, after closing {fmt_rss(rss['after_close'])} "
            f"(peak {fmt_rss(rss['peak'])})",
            "per stream  " + (f"{per:.1f} KiB per idle stream" if per is not None else "n/a"),
            f"closed      open_streams back to {r['open_streams_after_close']} "
            f"in {r['close_seconds']:.2f} s",
        ]
        if r["ended_early"]:
            lines.append(f"ended early {r['ended_early']}")
    else:
        lat, rss = r["latency_ms"], r["rss_kib"]
        what = (f"{r['rate']:g} msg/s for {r['messages'] / r['rate']:g} s"
                if r["scenario"] == "rate" else "full speed")
        lines += [
            f"== {r['scenario']}: {r['subscribers']} subscribers x {r['messages']} messages of "
            f"{r['size']} B, {what} (batch {r['batch']}, {r['inflight']} in flight, "
            f"{r['procs']} client proc on {r.get('client_loop', '?')}) ==",
            f"opened      {r['opened']}/{r['subscribers']} (GET / counted "
            f"{r['open_streams_seen']})" + (f", {r['slow']['readers']} of them stop reading"
                                            if r.get("slow") else ""),
            f"published   {r['published']}/{r['messages']} in {r['publish_seconds']:.2f} s "
            f"({r['published'] / max(r['publish_seconds'], 1e-9):,.0f} msg/s), "
            f"{r['publish_errors']} POST errors",
            f"delivered   {r['delivered']:,}/{r['expected']:,} in "
            f"{(r['seconds'] or 0):.2f} s: {r['delivered_per_s']:,.0f} msgs/s",
            f"latency     p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  "
            f"max {lat['max']:.1f} ms",
            f"lost        {r['lost']:,}  duplicated {r['duplicated']:,}  "
            f"out of range {r['out_of_range']}  unparsed {r['unparsed']}  "
            f"other lines {r['other_lines']}",
            "control     " + "  ".join(f"{k} {v}" for k, v in r["controls"].items()),
            f"ended       {r['ended']}",
            *(["TIMED OUT   (--timeout)"] if r["timed_out"] else []),
            f"cost        {cost}",
            f"cpu         server {r['server_cpu_s'] or 0:.2f} s, client {r['client_cpu_s']:.2f} s, "
            f"other processes {r['other_cpu_s']:.2f} s (in {r['window_s']:.2f} s on "
            f"{r['cores']} cores)" + (" - machine busy, figures suspect"
                                     if r["other_cpu_s"] > 0.1 * r["window_s"] else ""),
            f"server RSS  start {fmt_rss(rss['start'])}, streams open "
            f"{fmt_rss(rss['streams_open'])}, end {fmt_rss(rss['end'])} "
            f"(peak {fmt_rss(rss['peak'])})",
        ]
        if r.get("slow"):
            s = r["slow"]
            lines.append(f"slow        {s['readers']} stopped reading: got {s['received']:,} msgs, "
                         f"ended {s['ended']}, control {s['controls']}")
            lines += [f"  first {k} line to a slow reader: {v}" for k, v in s["samples"].items()]
        if r["publish_error_sample"]:
            lines.append(f"POST error  {r['publish_error_sample']}")
        if r.get("profile"):
            p = r["profile"]
            lines.append(f"profile     {p['file']} {p.get('error', '')}")
            if "samples" in p:
                lines.append(f"  {p['samples']} samples, {p['idle_pct']}% idle; "
                             "of the busy ones, where (self):")
                lines += [f"   {pct:5.1f}%  {name}" for name, pct in p["self"]]
                lines.append("  inclusive (streamd and twisted.web):")
                lines += [f"   {pct:5.1f}%  {name}" for name, pct in p["inclusive"]]
    for k, v in r.get("samples", {}).items():
        lines.append(f"first {k} line: {v}")
    if srv.get("log_problems"):
        lines.append(f"server log  {srv['log_problems']} tracebacks/unhandled: {srv['log']}")
    return "\n".join(lines)


def median_report(mode: str, runs: list[dict]) -> dict:
    """The median of each headline figure over repeated runs (each had a fresh server)."""
    ok = [r for r in runs if "error" not in r]

    def med(get):
        values = [v for v in (get(r) for r in ok) if v is not None]
        return statistics.median(values) if values else None

    if mode == "idle":
        return {"scenario": mode, "runs": len(runs),
                "kib_per_idle_stream": med(lambda r: r["kib_per_idle_stream"])}
    return {"scenario": mode, "runs": len(runs),
            "delivered_per_s": med(lambda r: r["delivered_per_s"]),
            "p50_ms": med(lambda r: r["latency_ms"]["p50"]),
            "p99_ms": med(lambda r: r["latency_ms"]["p99"]),
            "max_ms": med(lambda r: r["latency_ms"]["max"]),
            "lost": sum(r["lost"] for r in ok), "duplicated": sum(r["duplicated"] for r in ok)}


def median_summary(m: dict) -> str:
    if m["scenario"] == "idle":
        return f"== idle, median of {m['runs']} runs: {m['kib_per_idle_stream']:.1f} KiB/stream"
    return (f"== {m['scenario']}, median of {m['runs']} runs: {m['delivered_per_s']:,.0f} msgs/s, "
            f"p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, max {m['max_ms']:.1f} ms; "
            f"lost {m['lost']}, duplicated {m['duplicated']} (all runs)")


# --------------------------------------------------------------------------- main


def event_loop_runner(args):
    """C{asyncio.run}, on uvloop when it is installed (a cheaper client) unless told not to."""
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            args.loop = "asyncio"
        else:
            return uvloop.run
    return asyncio.run


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = hard if hard != resource.RLIM_INFINITY else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), target), hard))


def wait_quiet(limit: float, cores: float = 0.25) -> float | None:
    """
    Wait up to C{limit} seconds for the machine to be quiet (other work using under
    C{cores} cores over one second); return how busy it was when we stopped waiting.
    """
    deadline = time.monotonic() + limit
    while True:
        b0 = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - b0
        if busy < cores or time.monotonic() >= deadline:
            return busy


async def run_scenario(args, mode: str) -> dict:
    server = Server(args)
    server.start()
    try:
        coro = idle(args, server) if mode == "idle" else fanout(args, server, mode)
        try:
            report = await asyncio.wait_for(coro, args.timeout + 30)
        except asyncio.TimeoutError:
            report = {"scenario": mode, "error": f"timed out after {args.timeout + 30} s"}
    finally:
        srv = server.stop()
    report["server"] = srv
    if server.proc is None and not args.url:
        report["server"]["command"] = " ".join(server.command)
    return report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="use this running streamd (http://127.0.0.1:PORT) "
                   "instead of starting one")
    p.add_argument("--pid", type=int, help="the --url server's PID, for RSS and CPU")
    p.add_argument("--all", action="store_true", help="run burst, rate and idle in turn")
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--messages", type=int, default=5000, help="messages in a burst")
    p.add_argument("--size", type=int, default=200, help="bytes per published message")
    p.add_argument("--batch", type=int, help="messages per POST (burst 50, rate 1)")
    p.add_argument("--inflight", type=int, help="POSTs in flight (burst 4, rate 8)")
    p.add_argument("--rate", type=float, help="paced: messages per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of paced publishing")
    p.add_argument("--idle", type=int, help="open this many idle streams, measure RSS")
    p.add_argument("--slow", type=int, default=0, metavar="N",
                   help="N of the subscribers stop reading once open (stuck clients): the "
                   "figures are then for the others")
    p.add_argument("--procs", type=int, default=1, help="client processes for subscribers")
    p.add_argument("--no-limit", dest="limit", action="store_false",
                   help="do not ask ?limit=N (streams then end by the quiet timeout)")
    p.add_argument("--quiet", type=float, default=5.0,
                   help="stop waiting after this many seconds without a delivery")
    p.add_argument("--settle", type=float, default=1.0, help="idle: seconds before RSS")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each scenario this many times (fresh server each) and "
                   "print the medians")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each scenario, wait up to S seconds for other processes "
                   "to leave the CPU (a shared machine)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per scenario")
    p.add_argument("--max-pending", type=int, help="passed to the streamd started")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the streamd started (repeatable)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for the streamd started (repeatable), e.g. "
                   "MALLOC_TRIM_THRESHOLD_=67108864")
    p.add_argument("--keep-logs", action="store_true", help="keep the server log")
    p.add_argument("--profile", help="py-spy the server during delivery: FILE.svg for a "
                   "flame graph, any other name for collapsed stacks and a top list")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or os.path.join(
        os.path.dirname(sys.executable), "py-spy"))
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="client event loop (uvloop when installed, else asyncio)")
    p.add_argument("--json", action="store_true",
                   help="print JSON on stdout (the summary goes to stderr)")
    args = p.parse_args(argv)
    if args.all and args.rate is None:
        args.rate = 500.0
    if args.all and args.idle is None:
        args.idle = 5000
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.all:
        modes = ["burst", "rate", "idle"]
    else:
        modes = ["idle" if args.idle else "rate" if args.rate else "burst"]
    raise_fd_limit(max(args.idle or 0, args.subscribers) + 1024)
    reports, medians = [], []
    out = sys.stderr if args.json else sys.stdout
    for mode in modes:
        runs = []
        for _ in range(max(1, args.repeat)):
            busy = wait_quiet(args.wait_quiet) if args.wait_quiet else None
            report = event_loop_runner(args)(run_scenario(args, mode))
            report["client_loop"] = args.loop
            report["busy_cores_before"] = busy
            runs.append(report)
            print(summary(report) if "error" not in report else report, file=out, flush=True)
            print(file=out)
        reports += runs
        if len(runs) > 1:
            medians.append(median_report(mode, runs))
            print(median_summary(medians[-1]) + "\n", file=out, flush=True)
    if args.json:
        print(json.dumps({"scenarios": reports, "medians": medians}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
