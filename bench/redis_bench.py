#!/usr/bin/env python3
"""
Redis pub/sub fan-out benchmark: N HTTP subscribers of a C{redis-pubsub} stream, fed by
raw RESP pipelining (PUBLISH, as another program would), next to the same subscribers of a
memory stream fed over HTTP, in the same run and against the same streamd.

It starts a private redis-server and C{twistd -n streamd} on free loopback ports, opens
the subscribers (raw asyncio sockets: cheap, since they share the machine with the
server), publishes C{--messages} payloads C{{"seq":N,"t":SENT,...}} and prints, per source:
delivered msgs/s (deliveries across subscribers / (last receive - first send)), latency
p50/p99/max (receive - send), lost (never received by a subscriber) and the control lines
seen (a C{gap} or C{dropped} line, a slow-consumer C{error}).

    python bench/redis_bench.py                       # 100 subscribers x 2,000 msgs, full speed
    python bench/redis_bench.py --rate 1000           # paced: 1,000 msg/s
    python bench/redis_bench.py --subscribers 10 --messages 500   # a quick look
    python bench/redis_bench.py --only list,stream    # read rates of redis-list, redis-stream
    python bench/redis_bench.py --redis single,cluster --repeat 3   # one Redis, then a cluster

C{--redis cluster}: the same on a private Redis Cluster (3 primaries, 3 replicas) through
a streamd with C{cluster = true}: C{cluster-pubsub} (PUBLISH, carried by the cluster bus
to the node streamd subscribes on) and C{cluster-spubsub} (SPUBLISH to the channel's
primary, C{sharded = true}). C{single,cluster}: both, alternately, C{--repeat} times.

C{--only list} and C{--only stream} measure how fast streamd reads a queue that is
already full: C{--messages} payloads are pushed first (RPUSH into a list, XADD into a
stream), then C{--readers} clients read them (a list's messages are shared out among the
readers, a stream's are read whole by each, from C{since=0}), C{--batch} per Redis read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import cpu_seconds, free_port, percentile, wait_for

HOST = "127.0.0.1"
SEQ_RE = re.compile(rb'"seq":(\d+),"t":([0-9.]+)')
CONTROL_RE = re.compile(rb'^\{"(gap|dropped|error|shutdown)"', re.M)
LISTENING_RE = re.compile(rb"streamd listening on tcp:[0-9.]+:(\d+)")






def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", HOST,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
    wait_for(answers, 10, "redis-server")
    return proc


def start_streamd(workdir: str, redis_toml: str, max_pending: int,
                  batch: int = 50, name: str = "streamd") -> tuple[subprocess.Popen, int]:
    """C{twistd -n streamd} on the C{[redis]} table C{redis_toml}; C{name} its files'."""
    conf = os.path.join(workdir, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(f'heartbeat = 0\nmax_pending = {max_pending}\n{redis_toml}'
                '[streams.rps]\nsource = "redis-pubsub"\nchannels = ["bench"]\n'
                '[streams.rpss]\nsource = "redis-pubsub"\nchannels = ["bench"]\n'
                'sharded = true\n'
                '[streams.mem]\nsource = "memory"\nbuffer = 0\n'
                f'[streams.rl]\nsource = "redis-list"\nkey = "benchlist"\nbatch = {batch}\n'
                f'[streams.rs]\nsource = "redis-stream"\nkey = "benchstream"\n'
                f'batch = {batch}\nstart = "0"\n')
    log = os.path.join(workdir, f"{name}.log")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    cmd = [twistd] if os.access(twistd, os.X_OK) else [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    # This checkout's streamd, whatever is installed.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [*cmd, "--pidfile=", "-n", "--logfile", log, "streamd", "--config", conf,
         "--listen", f"tcp:0:interface={HOST}"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    found: list[int] = []

    def listening() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"streamd exited {proc.returncode}; see {log}")
        if os.path.exists(log):
            with open(log, "rb") as f:
                m = LISTENING_RE.search(f.read())
            if m:
                found.append(int(m.group(1)))
        return bool(found)
    wait_for(listening, 30, "streamd to listen")

    def healthy() -> bool:  # it connects to Redis once listening
        with socket.create_connection((HOST, found[0]), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(12).endswith(b"200")
    wait_for(healthy, 10, "streamd's sources to be up")
    return proc, found[0]


def numsub(port: int, channel: bytes) -> int:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$%d\r\n%s\r\n"
                  % (len(channel), channel))
        return int(s.recv(4096).split(b"\r\n")[-2][1:])




class Subscriber(asyncio.Protocol):
    """
    One HTTP client of a stream. A sampled one finds each payload's seq and send time
    (latency, duplicates); the others only count payloads, at C speed, so that the
    clients (which share the machine with the server) do not become the bottleneck.
    """

    def __init__(self, path: str, total: int, sample: bool) -> None:
        self.path = path
        self.sample = sample
        self.seen = bytearray(total)
        self.latencies: list[float] = []
        self.controls: dict[str, int] = {}
        self.received = 0
        self.last = 0.0
        self.buf = b""
        self.head = True
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"stream refused: {buf[:200]!r}")
            buf = buf[end + 4:]
            self.head = False
            self.ready.set_result(None)
        # Whole lines only (a TCP segment may end mid-line); chunk-size lines never match.
        cut = buf.rfind(b"\n") + 1
        block, self.buf = buf[:cut], buf[cut:]
        if not block:
            return
        self.last = now
        if b'\n{"' in block or block.startswith(b'{"'):
            for m in CONTROL_RE.finditer(block):
                kind = m.group(1).decode()
                self.controls[kind] = self.controls.get(kind, 0) + 1
        if not self.sample:
            self.received += block.count(b'"seq":')
            return
        seen, lat = self.seen, self.latencies
        for m in SEQ_RE.finditer(block):
            seq = int(m.group(1))
            if not seen[seq]:
                seen[seq] = 1
                self.received += 1
                lat.append(now - float(m.group(2)))

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def payload(seq: int, size: int) -> bytes:
    head = b'{"seq":%d,"t":%.6f,"pad":"' % (seq, time.time())
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def pace(sent: int, rate: float, start: float) -> None:
    if rate:
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)


async def publish_resp(port: int, total: int, size: int, batch: int, rate: float,
                       verb: bytes = b"PUBLISH") -> None:
    """C{verb} (PUBLISH, SPUBLISH) over one connection, C{batch} per write (pipelined)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    start = time.monotonic()
    for first in range(0, total, batch):
        await pace(first, rate, start)
        out = []
        for seq in range(first, min(total, first + batch)):
            p = payload(seq, size)
            out.append(b"*3\r\n$%d\r\n%s\r\n$5\r\nbench\r\n$%d\r\n%s\r\n"
                       % (len(verb), verb, len(p), p))
        writer.write(b"".join(out))
        for _ in out:
            line = await reader.readline()
            if not line.startswith(b":"):
                raise SystemExit(f"PUBLISH failed: {line!r}")
    writer.close()


async def fill(port: int, total: int, size: int, command: list[bytes]) -> None:
    """C{command + [payload]} for each payload (RPUSH KEY, XADD KEY * data), pipelined."""
    reader, writer = await asyncio.open_connection(HOST, port)
    for first in range(0, total, 500):
        out = []
        for seq in range(first, min(total, first + 500)):
            args = [*command, payload(seq, size)]
            out.append(b"*%d\r\n" % len(args)
                       + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        writer.write(b"".join(out))
        for _ in out:
            line = await reader.readline()
            if line[:1] not in (b":", b"$"):
                raise SystemExit(f"{command[0].decode()} failed: {line!r}")
            if line[:1] == b"$":
                await reader.readline()
    writer.close()


async def drain(subs, expected: int, since: float, cpu0: float, streamd, quiet: float,
                poll: float) -> tuple[float, int, float]:
    """
    Wait until the subscribers have C{expected} messages in all, or nothing arrived for
    C{quiet} seconds (lost, or a slow-consumer disconnect); close them. Returns the
    server's CPU seconds since C{cpu0}, the messages delivered and the last arrival.
    """
    while sum(s.received for s in subs) < expected:
        last = max([s.last for s in subs] + [since])
        if time.time() - last > quiet:
            break
        await asyncio.sleep(poll)
    cpu = cpu_seconds(streamd.pid) - cpu0
    for s in subs:
        s.transport.close()
    delivered = sum(s.received for s in subs)
    return cpu, delivered, max(s.last for s in subs) or time.time()


async def read_scenario(name: str, path: str, expected: int, args, streamd, sport) -> dict:
    """C{--readers} clients read a queue filled beforehand; msgs/s from GET to the last."""
    loop = asyncio.get_running_loop()
    cpu0, t0 = cpu_seconds(streamd.pid), time.time()
    subs = []
    for _ in range(args.readers):
        _, sub = await loop.create_connection(
            lambda: Subscriber(path, args.messages, False), HOST, sport)
        subs.append(sub)
    cpu, delivered, end = await drain(subs, expected, t0, cpu0, streamd, args.quiet, 0.01)
    return {"source": name, "readers": len(subs), "messages": args.messages,
            "size": args.size, "batch": args.batch, "delivered": delivered,
            "lost": expected - delivered,
            "msgs_per_s": round(delivered / max(end - t0, 1e-9)),
            "server_cpu_s": round(cpu, 2)}


async def publish_http(port: int, total: int, size: int, batch: int, rate: float) -> None:
    """POST NDJSON batches of C{batch} lines over one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    start = time.monotonic()
    for first in range(0, total, batch):
        await pace(first, rate, start)
        body = b"".join(payload(s, size) + b"\n" for s in range(first, min(total, first + batch)))
        writer.write(b"POST /streams/mem/messages HTTP/1.1\r\nHost: %s\r\n"
                     b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n%s"
                     % (HOST.encode(), len(body), body))
        status = await reader.readline()
        length, chunked = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            low = line.lower()
            if low.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                chunked = True
        if chunked:
            while (n := int((await reader.readline()).strip(), 16)):
                await reader.readexactly(n + 2)
            await reader.readline()
        else:
            await reader.readexactly(length)
        if b" 202 " not in status:
            raise SystemExit(f"publish failed: {status!r}")
    writer.close()




async def scenario(name: str, path: str, publisher, args, streamd, sport, ready=None) -> dict:
    loop = asyncio.get_running_loop()
    subs = []
    for n in range(args.subscribers):
        _, sub = await loop.create_connection(
            lambda n=n: Subscriber(path, args.messages, n < args.sample), HOST, sport)
        subs.append(sub)
    await asyncio.wait_for(asyncio.gather(*(s.ready for s in subs)), 30)
    if ready is not None:
        wait_for(ready, 10, "the subscription to be active")
    cpu0, t0 = cpu_seconds(streamd.pid), time.time()
    await publisher(args.messages, args.size, args.batch, args.rate)
    sent_at = time.time()
    # Done when every subscriber has everything, or nothing arrived for --quiet seconds.
    expected = args.messages * len(subs)
    cpu, delivered, end = await drain(subs, expected, sent_at, cpu0, streamd, args.quiet, 0.05)
    lat = sorted(x for s in subs for x in s.latencies)
    controls: dict[str, int] = {}
    for s in subs:
        for k, v in s.controls.items():
            controls[k] = controls.get(k, 0) + v
    return {
        "source": name, "subscribers": len(subs), "messages": args.messages,
        "size": args.size, "rate": args.rate or "full speed", "delivered": delivered,
        "lost": expected - delivered, "msgs_per_s": round(delivered / max(end - t0, 1e-9)),
        "latency_sampled_from": min(args.sample, len(subs)),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 1),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "server_cpu_s": round(cpu, 2), "controls": controls,
    }


def summary(r: dict) -> str:
    if "readers" in r:
        return (f"{r['source']:<14} {r['readers']} readers, {r['messages']} msgs of "
                f"{r['size']} B queued, batch {r['batch']}: {r['msgs_per_s']:,} msgs/s read, "
                f"lost {r['lost']}, server CPU {r['server_cpu_s']} s")
    return (f"{r['source']:<14} {r['subscribers']} subscribers x {r['messages']} msgs of "
            f"{r['size']} B ({r['rate']}): {r['msgs_per_s']:,} msgs/s delivered, latency "
            f"(from {r['latency_sampled_from']} subscribers) "
            f"p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']} ms, lost "
            f"{r['lost']}, server CPU {r['server_cpu_s']} s, controls {r['controls'] or '-'}")


class Target:
    """One Redis (C{single}) or a private Redis Cluster, and the streamd that uses it."""

    def __init__(self, kind: str, workdir: str, args) -> None:
        self.kind = kind
        self.prefix = "" if kind == "single" else "cluster-"  # of the results' names
        self.streamd = self.redis = self.cluster = None
        if kind == "single":
            self.rport = free_port()
            self.redis = start_redis(self.rport)
            toml = f'[redis]\nurl = "redis://{HOST}:{self.rport}/0"\n'
        else:
            from streamd.testing.redis_cluster import RedisCluster
            os.makedirs(os.path.join(workdir, "cluster"))
            self.cluster = RedisCluster(os.path.join(workdir, "cluster"))
            self.cluster.start()
            toml = self.cluster.toml()
        try:
            self.streamd, self.sport = start_streamd(workdir, toml, args.max_pending,
                                                     args.batch, f"streamd-{kind}")
        except BaseException:
            self.stop()
            raise

    def port_of(self, key: str) -> int:
        """The port of the Redis that holds C{key} (on a cluster: its primary)."""
        return self.rport if self.cluster is None else self.cluster.primary_of(key).port

    def subscribed(self, sharded: bool) -> bool:
        if self.cluster is None:
            return numsub(self.rport, b"bench") == 1
        nodes = [self.cluster.primary_of("bench")] if sharded else self.cluster.live()
        verb = "SHARDNUMSUB" if sharded else "NUMSUB"  # classic: per node, so add up
        return sum(n.command("PUBSUB", verb, "bench")[1] for n in nodes) == 1

    def stop(self) -> None:
        if self.streamd is not None:
            self.streamd.send_signal(signal.SIGTERM)
            self.streamd.wait(30)
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
        if self.cluster is not None:
            self.cluster.stop()


async def pubsub(t: Target, args) -> list[dict]:
    """(e): the pub/sub scenarios of C{t} (on one Redis, the memory stream beside them)."""
    def resp(verb: bytes):
        async def publish(n, size, batch, rate):
            await publish_resp(t.port_of("bench"), n, size, batch, rate, verb)
        return publish

    async def http(n, size, batch, rate):
        await publish_http(t.sport, n, size, batch, rate)

    if t.cluster is None:
        return [await scenario("redis-pubsub", "/streams/rps", resp(b"PUBLISH"), args,
                               t.streamd, t.sport, lambda: t.subscribed(False)),
                await scenario("memory", "/streams/mem", http, args, t.streamd, t.sport)]
    return [await scenario("cluster-pubsub", "/streams/rps", resp(b"PUBLISH"), args,
                           t.streamd, t.sport, lambda: t.subscribed(False)),
            await scenario("cluster-spubsub", "/streams/rpss", resp(b"SPUBLISH"), args,
                           t.streamd, t.sport, lambda: t.subscribed(True))]


async def run(args) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="streamd-bench-")
    targets: list[Target] = []
    try:
        for kind in args.redis.split(","):
            targets.append(Target(kind, workdir, args))
        results = []
        only = args.only.split(",")
        n = args.messages
        for _ in range(args.repeat):
            for t in targets:  # alternately, so that both see the same noise
                streamd, sport = t.streamd, t.sport
                if "pubsub" in only:
                    results.extend(await pubsub(t, args))
                if "list" in only:
                    await fill(t.port_of("benchlist"), n, args.size, [b"RPUSH", b"benchlist"])
                    results.append(await read_scenario(
                        f"{t.prefix}redis-list", f"/streams/rl?limit={n}", n, args, streamd,
                        sport))
                if "stream" in only:
                    rport = t.port_of("benchstream")
                    await fill(rport, n, args.size, [b"XADD", b"benchstream", b"*", b"data"])
                    results.append(await read_scenario(
                        f"{t.prefix}redis-stream", f"/streams/rs?since=0&limit={n}",
                        n * args.readers, args, streamd, sport))
                    with socket.create_connection((HOST, rport), timeout=5) as s:
                        s.sendall(b"DEL benchstream\r\n")  # empty for the next repeat
                        s.recv(64)
        return results
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=200, help="payload bytes")
    p.add_argument("--batch", type=int, default=50, help="PUBLISHes per write / lines per POST")
    p.add_argument("--rate", type=float, default=0, help="messages per second (0: full speed)")
    p.add_argument("--max-pending", type=int, default=10000,
                   help="the server's max_pending (per subscriber queue)")
    p.add_argument("--quiet", type=float, default=3.0,
                   help="seconds without a delivery that end a scenario")
    p.add_argument("--sample", type=int, default=10,
                   help="subscribers that time every message (the others count them)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", default="pubsub",
                   help="comma-separated: pubsub (with memory beside it), list, stream")
    p.add_argument("--readers", type=int, default=1,
                   help="list, stream: clients reading the filled queue")
    p.add_argument("--redis", default="single",
                   help="comma-separated: single (one redis-server), cluster (a private "
                        "Redis Cluster of 3 primaries and 3 replicas), run alternately")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = p.parse_args(argv)
    for r in asyncio.run(run(args)):
        print(json.dumps(r) if args.json else summary(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
