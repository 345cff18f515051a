"""
What readers that read nothing cost streamd: N clients open a stream and never read, one
publish of M bytes of NDJSON goes out, and streamd's RSS is read before and after (issue
11, item 8). Also how long a slow-consumer notice takes to reach a client reading 20 KB/s
(item 7).

    python bench/slow_clients.py --clients 1000 --mbytes 8
    python bench/slow_clients.py --notice

Starts its own `twistd -n streamd` (common.Streamd: this checkout's) on a free port; extra
arguments after `--` go to twistd (e.g. `-- --send-buffer 0`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
import urllib.request

from common import Streamd, rss_kib


def start(extra: list[str], config: str) -> Streamd:
    """streamd with C{config}, no access log, and C{extra} twistd options."""
    streamd = Streamd()
    streamd.start(config=config, args=["--access-log", "off", *extra])
    return streamd


def publish(port: int, body: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/streams/big/messages", data=body,
                                 headers={"Content-Type": "application/x-ndjson"})
    urllib.request.urlopen(req, timeout=120).read()


def open_streams(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /streams/big HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(1024)  # the status line and headers: the stream is open
    return socks


def rss_with_stuck_readers(args, extra: list[str]) -> None:
    # The default bounds (max_pending, max_pending_bytes), or what --pending says.
    table = f"max_pending = {args.pending}\nmax_pending_bytes = {1 << 30}\n" if args.pending else ""
    streamd = start(extra, f"max_body_bytes = {1 << 30}\n[streams.big]\n{table}")
    port, pid = streamd.port, streamd.proc.pid
    try:
        socks = open_streams(port, args.clients)
        time.sleep(1)
        before = rss_kib(pid)["VmRSS"]
        line = json.dumps({"pad": "x" * 190}).encode() + b"\n"
        body = line * (args.mbytes * 1024 * 1024 // len(line))
        publish(port, body)
        time.sleep(2)
        after = rss_kib(pid)["VmRSS"]
        print(f"{args.clients} readers that read nothing, one {len(body) / 1e6:.1f} MB "
              f"publish ({len(body) // len(line)} messages): RSS {before / 1024:.0f} -> "
              f"{after / 1024:.0f} MB (+{(after - before) / 1024:.0f} MB, "
              f"{(after - before) / args.clients:.0f} KB per reader)")
        for s in socks:
            s.close()
    finally:
        streamd.stop(signal.SIGKILL)


def notice_time(args, extra: list[str]) -> None:
    streamd = start(extra, "[streams.big]\nmax_pending = 50\n")
    port = streamd.port
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /streams/big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = bytearray()
        seen: dict[str, float] = {}

        def read() -> None:  # 2,000 bytes every 0.1 s: 20 KB/s
            start = time.monotonic()
            while b"slow consumer" not in got:
                data = s.recv(2000)
                if not data:
                    break
                got.extend(data)
                # Not faster than 20 KB/s since the start, whatever each recv returned.
                time.sleep(max(0.0, start + len(got) / 20_000 - time.monotonic()))
            seen["notice"] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        pad = "x" * 1000
        n = 0
        while "ended" not in seen:
            publish(port, b"".join(json.dumps({"n": n + i, "pad": pad}).encode() + b"\n"
                                   for i in range(20)))
            n += 20
            status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/",
                                                       timeout=5).read())
            if not status.get("open_streams"):
                seen["ended"] = time.monotonic()
        reader.join(args.seconds)
        if "notice" in seen:
            print(f"slow-consumer notice reached a 20 KB/s reader "
                  f"{seen['notice'] - seen['ended']:.1f} s after the policy applied "
                  f"({len(got) / 1024:.0f} KiB read in all)")
        else:
            print(f"no notice within {args.seconds} s ({len(got) / 1024:.0f} KiB read)")
    finally:
        streamd.stop(signal.SIGKILL)


def main() -> None:
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--mbytes", type=int, default=8)
    p.add_argument("--pending", type=int, default=0,
                   help="max_pending for the stream (and no byte bound); default: defaults")
    p.add_argument("--notice", action="store_true", help="time the slow-consumer notice")
    p.add_argument("--seconds", type=float, default=120)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    (notice_time if args.notice else rss_with_stuck_readers)(args, extra)


if __name__ == "__main__":
    main()
