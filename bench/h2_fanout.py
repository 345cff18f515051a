#!/usr/bin/env python3
"""
Fan-out over HTTP/2: N streams read one stream name over one or several TLS connections
(h2 by ALPN, the C{h2} library as the client), while a publisher POSTs M messages over
HTTP/1.1. Prints deliveries per second, latency (receive time - send time, carried in
each payload), lost and duplicated messages, and the server's CPU and RSS.

By default it starts its own streamd (twistd -n streamd with an C{ssl:} listener on a
self-signed certificate made with openssl, and a C{tcp:} one for publishing, both on
loopback) and stops it afterwards; C{--tls-port P --port Q --pid PID} target one that
is already running. Only 127.0.0.1 is ever contacted. It needs the h2 library (the
C{http2} or C{test} extra: C{pip install -e '.[test]'}).

    python bench/h2_fanout.py                                 # 100 streams, 1 connection
    python bench/h2_fanout.py --streams 100 --connections 10 # 10 streams per connection
    python bench/h2_fanout.py --json                          # the report as JSON
    python bench/h2_fanout.py --streams 20 --rate 100 --batch 1 --inflight 1  # latency

C{--stalled N} adds N streams to the first connection that never hand their window back
(the server must pause and end them without holding their bytes); C{--twisted-h2} serves
HTTP/2 with Twisted's own classes instead of C{streamd.web.h2}'s, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HOST, Streamd, cpu_seconds, free_port, payload, percentile, rss_kib  # noqa: E402

SEQ_RE = re.compile(rb'"seq":(\d+),"t":(\d+)')
#: twistd beside this Python; with STREAMD_TWISTED_H2 set (--twisted-h2), Twisted's HTTP/2.
TWISTD = [sys.executable, "-c", """
import os
if os.environ.get("STREAMD_TWISTED_H2"):
    from twisted.web import http
    import streamd.web.site
    streamd.web.site.HTTPChannelSwitch = http._GenericHTTPChannelProtocol
from twisted.scripts.twistd import run
run()
"""]


# --------------------------------------------------------------------------- the server


class Server:
    """The streamd under test: started here (and stopped), or one already running."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.streamd: Streamd | None = None
        self.tls_port, self.port, self.pid = args.tls_port, args.port, args.pid

    def start(self) -> None:
        if self.tls_port:
            if not self.port:
                raise SystemExit("--tls-port needs --port (plain HTTP, for publishing)")
            return
        self.streamd = Streamd()
        key, cert = (os.path.join(self.streamd.dir, n) for n in ("key.pem", "cert.pem"))
        # The README's command for a self-signed certificate.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "30", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key,
                        "-out", cert], check=True, capture_output=True)
        self.tls_port = free_port()
        tls = f"ssl:{self.tls_port}:interface={HOST}:privateKey={key}:certKey={cert}"
        try:
            self.streamd.start(config="", twistd=TWISTD, args=["--listen", tls,
                                                               *self.args.server_arg],
                               env={"STREAMD_TWISTED_H2": "1" if self.args.twisted_h2
                                    else ""})
        except RuntimeError as e:
            raise SystemExit(f"streamd did not start: {e}") from None
        self.port, self.pid = self.streamd.port, self.streamd.proc.pid

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None

    def rss_kib(self) -> dict[str, int]:
        return rss_kib(self.pid) if self.pid else {}

    def stop(self) -> None:
        if self.streamd is None:
            return
        report = self.streamd.stop()
        if report.get("log_problems"):
            print(f"server log has {report['log_problems']} traceback(s): {report['log']}",
                  file=sys.stderr)
        self.streamd = None


# --------------------------------------------------------------------------- readers


class Reader(asyncio.Protocol):
    """
    One TLS connection carrying C{count} streams. It reads as fast as it can and keeps
    each piece of body with its receive time; the lines are parsed after the measurement.
    """

    def __init__(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        self.count = count
        self.opened = loop.create_future()  # all streams have their response head
        self.finished = loop.create_future()  # all streams ended, or the connection did
        self.pieces: dict[int, list[tuple[float, bytes]]] = {}
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()

    def _head(self, stream: int, status: int) -> None:
        self.status[stream] = status
        if len(self.status) == self.count and not self.opened.done():
            self.opened.set_result(None)

    def _end(self, stream: int) -> None:
        self.ended.add(stream)
        if len(self.ended) == self.count and not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc) -> None:
        for f in (self.opened, self.finished):
            if not f.done():
                f.set_result(None)

    def results(self, total: int) -> list[dict]:
        """Per stream: messages by sequence number, and each one's latency."""
        out = []
        for stream, pieces in self.pieces.items():
            counts = bytearray(total)
            latencies = []
            rest = b""
            for when, data in pieces:
                # Whole lines only: over HTTP/1.1 a chunk's size line is a line of its own.
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    m = SEQ_RE.search(line)
                    if m:
                        seq = int(m.group(1))
                        if seq < total:
                            counts[seq] += 1
                        latencies.append(when - int(m.group(2)) / 1e6)
            out.append({"status": self.status.get(stream), "counts": counts,
                        "latencies": latencies, "ended": stream in self.ended})
        return out


class H2Reader(Reader):
    """C{count} HTTP/2 streams of C{path} on one connection, each window handed back at once."""

    alpn = "h2"

    def __init__(self, path: str, count: int, window: int, stalled: int = 0) -> None:
        super().__init__(count)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.path, self.window = path.encode(), window
        self.stalled = stalled  # streams that never hand their window back
        self.stalled_ids: set[int] = set()
        self.stalled_bytes = 0
        self.stalled_ended: dict[int, str] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            raise SystemExit("the server did not negotiate h2")
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window})
        self.conn.increment_flow_control_window(2**30 - 65535)
        for i in range(self.count + self.stalled):
            sid = self.conn.get_next_available_stream_id()
            if i < self.count:
                self.pieces[sid] = []
            else:
                self.stalled_ids.add(sid)
            self.conn.send_headers(sid, [
                (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", self.path), (b"accept", b"application/x-ndjson")], end_stream=True)
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        for ev in self.conn.receive_data(data):
            stalled = getattr(ev, "stream_id", None) in self.stalled_ids
            if isinstance(ev, h2.events.DataReceived):
                if stalled:
                    self.stalled_bytes += len(ev.data)
                    continue
                self.pieces[ev.stream_id].append((now, ev.data))
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif stalled:
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.stalled_ended[ev.stream_id] = type(ev).__name__
            elif isinstance(ev, h2.events.ResponseReceived):
                self._head(ev.stream_id, int(dict(ev.headers)[b":status"]))
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                self._end(ev.stream_id)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)


class H1Reader(Reader):
    """One HTTP/1.1 stream of C{path} on its own TLS connection (C{--http1}: the baseline)."""

    alpn = "http/1.1"

    def __init__(self, path: str, count: int, window: int, stalled: int = 0) -> None:
        super().__init__(1)
        self.path = path
        self.pieces[0] = []
        self.head = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\n"
                        "Accept: application/x-ndjson\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if 0 not in self.status:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self._head(0, int(head.split(b" ", 2)[1]))
        self.pieces[0].append((now, data))
        if data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk: the stream ended
            self._end(0)


# --------------------------------------------------------------------------- the publisher


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """A response body after C{head}: Content-Length, or chunked (klein's answers)."""
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        return await reader.readexactly(int(length.group(1)))
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += (await reader.readexactly(size + 2))[:size]
        if not size:
            return body


async def post(port: int, path: str, bodies, deadline: float, pace=None) -> int:
    """
    POST each C{(lines, body)} of C{bodies} on one keep-alive HTTP/1.1 connection,
    each once C{pace()} lets it (--rate); return the lines the server accepted (202).
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    accepted = 0
    try:
        while True:
            if pace is not None:
                await pace()
            lines, body = next(bodies, (0, None))
            if body is None:
                break
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
                         f"application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          deadline - time.monotonic())
            await read_body(reader, head)
            if head.startswith(b"HTTP/1.1 202"):
                accepted += lines
    finally:
        writer.close()
    return accepted


async def publish(args, server: Server, name: str, deadline: float) -> tuple[int, float]:
    """M messages in POSTs of --batch lines, over --inflight connections at once."""
    batches = [range(first, min(first + args.batch, args.messages))
               for first in range(0, args.messages, args.batch)]
    # Bodies are made as they are sent, so that each carries its own send time.
    bodies = ((len(batch), b"".join(payload(s, args.size) + b"\n" for s in batch))
              for batch in batches)
    start = time.time()
    pace = None
    if args.rate:  # one POST every batch/rate seconds, on whichever lane is free
        due = [time.monotonic()]

        async def pace() -> None:
            due[0] += args.batch / args.rate
            await asyncio.sleep(max(0.0, due[0] - time.monotonic()))

    lanes = [post(server.port, f"/streams/{name}/messages", bodies, deadline, pace)
             for _ in range(args.inflight)]
    return sum(await asyncio.gather(*lanes)), start


# --------------------------------------------------------------------------- the run


async def run(args) -> dict:
    server = Server(args)
    server.start()
    try:
        return await measure(args, server)
    finally:
        server.stop()


async def measure(args, server: Server) -> dict:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    name = f"h2-bench-{os.getpid()}"
    limit = f"?limit={args.messages}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed certificate
    kind = H1Reader if args.http1 else H2Reader
    context.set_alpn_protocols([kind.alpn])
    connections = args.streams if args.http1 else args.connections
    per_conn = [args.streams // connections + (i < args.streams % connections)
                for i in range(connections)]
    readers = []
    for i, n in enumerate(per_conn):
        stalled = 0 if i else args.stalled
        _, reader = await loop.create_connection(
            lambda n=n, stalled=stalled: kind(f"/streams/{name}{limit}", n, args.window,
                                              stalled),
            HOST, server.tls_port, ssl=context, server_hostname="localhost")
        readers.append(reader)
    await asyncio.wait_for(asyncio.gather(*(r.opened for r in readers)),
                           deadline - time.monotonic())
    rss_open = server.rss_kib().get("VmRSS")
    cpu0, client0 = server.cpu(), time.process_time()
    published, first_send = await publish(args, server, name, deadline)
    # Every stream ends by itself after --messages (?limit=); wait for that, bounded.
    done = asyncio.gather(*(r.finished for r in readers))
    try:
        await asyncio.wait_for(done, max(0.1, deadline - time.monotonic()))
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    cpu1, client_cpu = server.cpu(), time.process_time() - client0
    stalled = None
    if args.stalled and not args.http1:  # bounded: until the server ended them all
        first = readers[0]
        while len(first.stalled_ended) < args.stalled and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        ends = list(first.stalled_ended.values())
        stalled = {"streams": args.stalled, "bytes_received": first.stalled_bytes,
                   **{kind: ends.count(kind) for kind in sorted(set(ends))}, "ended_after_s":
                   round(time.time() - first_send, 1) if len(ends) == args.stalled else None}
    for r in readers:
        r.transport.close()

    streams = [s for r in readers for s in r.results(args.messages)]
    delivered = sum(sum(1 for c in s["counts"] if c) for s in streams)
    lost = sum(sum(1 for c in s["counts"] if not c) for s in streams)
    duplicated = sum(sum(c - 1 for c in s["counts"] if c > 1) for s in streams)
    latencies = sorted(x for s in streams for x in s["latencies"])
    last_recv = max((when for r in readers for p in r.pieces.values() for when, _ in p),
                    default=None)
    window = last_recv - first_send if last_recv else None

    def pct(q: float) -> float | None:
        return round(percentile(latencies, q) * 1e3, 1) if latencies else None

    server_cpu = cpu1 - cpu0 if cpu0 is not None else None
    return {
        "protocol": kind.alpn, "streams": args.streams, "connections": connections,
        "messages": args.messages,
        "size": args.size, "batch": args.batch, "inflight": args.inflight,
        "window": args.window, "published": published, "delivered": delivered,
        "expected": published * args.streams, "lost": lost, "duplicated": duplicated,
        "statuses": sorted({s["status"] for s in streams}, key=str),
        "streams_ended": sum(s["ended"] for s in streams), "timed_out": timed_out,
        "seconds": round(window, 3) if window else None,
        "delivered_per_s": round(delivered / window) if window else 0,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "server_cpu_s": server_cpu, "client_cpu_s": round(client_cpu, 2),
        "server_us_per_delivery": round(server_cpu / delivered * 1e6, 2)
        if server_cpu and delivered else None,
        "rss_kib": {"streams_open": rss_open, **server.rss_kib()},
        "stalled": stalled, "http2": "twisted" if args.twisted_h2 else "streamd",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=100, help="HTTP/2 streams (readers)")
    p.add_argument("--connections", type=int, default=1,
                   help="TLS connections the streams are spread over (at most 100 streams "
                        "each: Twisted's SETTINGS_MAX_CONCURRENT_STREAMS)")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=200, help="bytes per payload")
    p.add_argument("--batch", type=int, default=50, help="messages per POST")
    p.add_argument("--inflight", type=int, default=4, help="POST connections at once")
    p.add_argument("--window", type=int, default=1 << 20,
                   help="the readers' HTTP/2 stream window (SETTINGS_INITIAL_WINDOW_SIZE)")
    p.add_argument("--rate", type=float, default=0,
                   help="messages a second, paced (default: as fast as the POSTs go)")
    p.add_argument("--stalled", type=int, default=0,
                   help="streams on the first connection that never hand their window back")
    p.add_argument("--twisted-h2", action="store_true",
                   help="serve HTTP/2 with Twisted's own classes, not streamd.web.h2's")
    p.add_argument("--http1", action="store_true",
                   help="the baseline: HTTP/1.1 over the same TLS port, a connection a stream")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run")
    p.add_argument("--tls-port", type=int, help="a running streamd's TLS port (h2)")
    p.add_argument("--port", type=int, help="... and its plain HTTP port, for publishing")
    p.add_argument("--pid", type=int, help="... and its PID, for CPU and RSS")
    p.add_argument("--server-arg", action="append", default=[],
                   help="an option for the streamd started here (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args()
    if -(-args.streams // args.connections) > 100:
        p.error("at most 100 streams per connection: raise --connections")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    lat = report["latency_ms"]
    print(f"{report['streams']} {report['protocol']} streams on {report['connections']} "
          f"TLS connection(s) ({report['http2']}'s HTTP/2), "
          f"{report['messages']} msgs of {report['size']} B ({report['batch']} per POST, "
          f"{report['inflight']} in flight)")
    print(f"  delivered {report['delivered']}/{report['expected']} in {report['seconds']} s: "
          f"{report['delivered_per_s']:,} msgs/s; latency p50 {lat['p50']} ms, "
          f"p99 {lat['p99']} ms, max {lat['max']} ms")
    print(f"  lost {report['lost']}, duplicated {report['duplicated']}, statuses "
          f"{report['statuses']}, streams ended {report['streams_ended']}"
          f"{' (TIMED OUT)' if report['timed_out'] else ''}")
    print(f"  server CPU {report['server_cpu_s']} s "
          f"({report['server_us_per_delivery']} us per delivery), client CPU "
          f"{report['client_cpu_s']} s, server RSS {report['rss_kib']}")
    if report["stalled"]:
        print(f"  stalled streams: {report['stalled']}")


if __name__ == "__main__":
    main()
