"""
SQS -> one NDJSON client, end to end, against a plain boto3 receive+delete loop.

Starts moto's SQS server and one streamd (C{twistd -n streamd}, its own process) with
one SQS stream per poller count; for each run, pre-queues N messages in a fresh queue
and times how long until the client (this process, a plain blocking socket) has read
all N lines, then checks that SQS deleted them all. The baseline is the loop a user
would write with boto3 (receive 10, delete 10, repeat) against the same server.

    python bench/sqs_bench.py                   # 10,000 messages, pollers 1 and 4
    python bench/sqs_bench.py --messages 2000 --pollers 1 2 8 --runs 3
    python bench/sqs_bench.py --server moto --messages 500

The SQS server runs on the same machine. By default it is bench/fast_sqs.py, whose calls
cost the same at any queue depth; moto's cost grows with the depth (every call scans the
queue), so with --server moto use a few hundred messages, or it measures moto alone.
The ratio between the two clients is the point, not the absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's streamd, as in the twistd it starts

from common import HOST, Streamd, free_port  # noqa: E402

from streamd.testing.sqs import MotoServer  # noqa: E402


class FastServer(MotoServer):
    """bench/fast_sqs.py in a subprocess: SQS calls that cost the same at any depth."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(here, "fast_sqs.py"), str(self.port)],
            stdout=subprocess.PIPE)
        if not self.proc.stdout.readline().startswith(b"listening"):
            raise SystemExit("fast_sqs did not start")
        self.sqs = self.boto3_client()


def fill(moto: MotoServer, n: int) -> str:
    queue = moto.create_queue()
    body = json.dumps({"order": 0, "item": "widget", "qty": 3, "note": "x" * 60})
    moto.send(queue, [body] * n)
    return queue


def baseline(moto: MotoServer, queue: str, n: int) -> float:
    sqs = moto.boto3_client()
    got = 0
    t0 = time.perf_counter()
    while got < n:
        msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1).get("Messages", [])
        if not msgs:
            continue
        got += len(msgs)
        sqs.delete_message_batch(QueueUrl=queue, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
    return time.perf_counter() - t0


def start_streamd(moto: MotoServer, streams: dict[str, tuple[str, int]]) -> Streamd:
    """One streamd with an sqs stream per C{name: (queue, pollers)}."""
    lines = []
    for name, (queue, pollers) in streams.items():
        lines += [f"[streams.{name}]", 'source = "sqs"', f'queue_url = "{queue}"',
                  f'endpoint_url = "{moto.endpoint}"', 'region = "us-east-1"',
                  f"pollers = {pollers}", "wait_time_seconds = 1"]
    streamd = Streamd()
    streamd.start(config="\n".join(lines) + "\n",
                  env={"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    return streamd


def read(streamd: Streamd, name: str, n: int) -> tuple[float, int]:
    """Seconds to read C{n} messages of C{name}, and how many were duplicates."""
    conn = http.client.HTTPConnection(HOST, streamd.port, timeout=60)
    t0 = time.perf_counter()
    conn.request("GET", f"/streams/{name}?limit={n}")
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    ids: list[bytes] = []
    carry = b""
    while len(ids) < n:
        data = resp.read1(65536)
        if not data:
            raise SystemExit(f"stream ended after {len(ids)} messages")
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        # {"id":"<MessageId>",...: the id is the first string on the line
        ids.extend(line[7:line.index(b'"', 7)] for line in lines
                   if line.startswith(b'{"id":'))
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed, len(ids) - len(set(ids))


def drained(moto: MotoServer, queue: str, seconds: float = 30) -> tuple[int, int]:
    """(visible, in flight) once both are 0, or after C{seconds}."""
    deadline = time.monotonic() + seconds
    while True:
        counts = moto.counts(queue)
        if counts == (0, 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--pollers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--server", choices=["fast", "moto"], default="fast",
                    help="fast: bench/fast_sqs.py (default); moto: moto's server")
    args = ap.parse_args()
    n = args.messages
    moto = FastServer() if args.server == "fast" else MotoServer()
    results: dict[str, list[float]] = {"boto3": []}
    try:
        queues = {f"p{p}": [fill(moto, n) for _ in range(args.runs)] for p in args.pollers}
        names = {}
        for p in args.pollers:
            for r in range(args.runs):
                names[f"p{p}r{r}"] = (queues[f"p{p}"][r], p)
        streamd = start_streamd(moto, names)
        try:
            for r in range(args.runs):
                q = fill(moto, n)
                results["boto3"].append(n / baseline(moto, q, n))
                for p in args.pollers:
                    name = f"p{p}r{r}"
                    elapsed, dups = read(streamd, name, n)
                    left = drained(moto, names[name][0])
                    if dups or left != (0, 0):
                        # moto may hand one message to two concurrent receives; SQS
                        # is at-least-once too. Say so rather than hide it.
                        print(f"  note: {name}: {dups} duplicate(s) read; "
                              f"(visible, in flight) left in SQS: {left}")
                    results.setdefault(f"streamd pollers={p}", []).append(n / elapsed)
        finally:
            streamd.stop()
    finally:
        moto.stop()
    base = statistics.median(results["boto3"])
    print(f"{n} messages pre-queued in {args.server}; median of {args.runs} run(s); msgs/s")
    for label, rates in results.items():
        med = statistics.median(rates)
        print(f"  {label:22s} {med:8.0f}   x{med / base:.2f} vs boto3   "
              f"(runs: {', '.join(f'{x:.0f}' for x in rates)})")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
