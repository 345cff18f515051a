"""
How fast streamd.client hands records over. A streamd (twistd, a subprocess) holds N
records of ~90 bytes in a memory stream's buffer (published beforehand, in batches of
1000); a StreamClient in another process reads them with C{since=0} (the server writes
them as fast as the socket takes them, so the client is the bottleneck) into an
unbounded MemoryQueue, or a bounded one (maxsize 100, so the transport is paused and
resumed all along) drained by a consumer. Prints records/s from the first record handed
over to the N-th.

    python bench/client_throughput.py [N]
"""

from __future__ import annotations

import os
import subprocess
import sys

from common import HOST, ROOT, Streamd

ENV = {**os.environ, "PYTHONPATH": ROOT}
PUBLISHER = r"""
import json, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
pad = "x" * 60
headers = {"Content-Type": "application/x-ndjson"}
for start in range(0, n, 1000):
    rows = range(start, min(n, start + 1000))
    body = "".join(json.dumps({"n": i, "pad": pad}) + "\n" for i in rows).encode()
    urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30).read()
"""


def run_one(base: str, stream: str, n: int, sse: bool, maxsize: int | None) -> float:
    code = f"""
import sys, time
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from streamd.client import MemoryQueue, StreamClient
async def main(reactor):
    queue = MemoryQueue(maxsize={maxsize!r})
    client = StreamClient({base + "/streams/" + stream!r}, reactor=reactor, sse={sse!r},
                          queue=queue, since="0")
    first = []
    async def consume():
        while True:
            await queue.get()
            if not first:
                first.append(time.perf_counter())
    consumer = ensureDeferred(consume())
    consumer.addErrback(lambda f: None)
    print("ready", flush=True)
    result = await client.start(limit={n})
    print(result.count / (time.perf_counter() - first[0]), flush=True)
    consumer.cancel()
react(lambda r: ensureDeferred(main(r)))
"""
    subprocess.run([sys.executable, "-c", PUBLISHER, f"{base}/streams/{stream}/messages",
                    str(n)], check=True, env=ENV)
    reader = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "ready"
    rate = float(reader.stdout.readline())
    reader.wait(30)
    return rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    streamd = Streamd()
    streamd.start(config="", args=["--max-pending", "1000000", "--buffer", "1000000"])
    base = f"http://{HOST}:{streamd.port}"
    try:
        for i, (sse, maxsize) in enumerate([(False, None), (True, None), (False, 100)]):
            rate = run_one(base, f"bench{i}", n, sse, maxsize)
            label = ("sse" if sse else "ndjson") + (f", queue maxsize {maxsize}"
                                                   if maxsize else ", unbounded queue")
            print(f"{n} records, {label}: {rate:,.0f} records/s")
    finally:
        streamd.stop()


if __name__ == "__main__":
    main()
