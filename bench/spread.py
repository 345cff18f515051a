#!/usr/bin/env python3
"""
How evenly do a server's workers share new connections? Starts C{twistd -n streamd
--workers N}, opens C{--connections} NDJSON readers at once (keep-alive GETs of one stream),
and prints how many each worker holds (from GET /'s "workers" list), for the two ways of
sharing a port: one SO_REUSEPORT socket per worker (streamd's choice), and one socket all
workers accept on (STREAMD_SHARED_LISTEN_SOCKET set).

    python bench/spread.py --workers 2 --connections 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HOST, Streamd  # noqa: E402


async def open_readers(port: int, n: int) -> list:
    async def one():
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(f"GET /streams/spread HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        return writer

    return await asyncio.gather(*(one() for _ in range(n)))


async def workers_of(port: int) -> list[dict]:
    def get() -> list[dict]:
        request = urllib.request.Request(f"http://{HOST}:{port}/",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["workers"]

    return await asyncio.to_thread(get)


async def measure(workers: int, connections: int, shared: bool) -> list[int]:
    server = Streamd(cpu=None)
    env = {"STREAMD_SHARED_LISTEN_SOCKET": "1"} if shared else {}
    server.start(workers=workers, env=env)
    try:
        writers = await open_readers(server.port, connections)
        for _ in range(200):
            counts = [w["open_streams"] for w in await workers_of(server.port)]
            if sum(counts) >= connections:
                break
            await asyncio.sleep(0.05)
        for w in writers:
            w.close()
        return counts
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    print(f"{opts.connections} connections at once, {opts.workers} workers, "
          f"{opts.repeat} runs each")
    for shared in (False, True):
        name = "one socket for all workers" if shared else "SO_REUSEPORT, a socket each"
        runs = [asyncio.run(measure(opts.workers, opts.connections, shared))
                for _ in range(opts.repeat)]
        spreads = [max(c) / (sum(c) / len(c)) for c in runs]
        print(f"{name:32} per worker: {runs}; busiest / mean: "
              f"median {statistics.median(spreads):.2f}")


if __name__ == "__main__":
    main()
