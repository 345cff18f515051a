"""
RabbitMQ -> one NDJSON client through streamd, against a plain pika consumer loop that
acks each message, on the same queue fill.

Each run fills a fresh durable queue on the RabbitMQ at 127.0.0.1:5672 (guest/guest)
with N persistent messages (~110 bytes), then times how long a reader takes to get all
N, and checks the queue is empty afterwards (every message acked):

  - pika: a BlockingConnection consumer (basic_qos(prefetch), basic_consume, one
    basic_ack per message), what a user would write without streamd;
  - streamd: C{twistd -n streamd} (its own process) with an amqp stream on the queue;
    the reader is a plain blocking socket in this process reading
    C{GET /streams/NAME?limit=N}.

    python bench/amqp_bench.py                       # 20,000 messages, prefetch 100
    python bench/amqp_bench.py --messages 50000 --prefetch 50 500 --runs 3

The queues are named amqp-bench-<uuid> and deleted at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
import uuid

import pika
from common import HOST, Streamd

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY = json.dumps({"order": 0, "item": "widget", "qty": 3, "note": "x" * 60}).encode()


class Broker:
    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.ch = self.conn.channel()
        self.queues: list[str] = []

    def fill(self, n: int) -> str:
        q = f"amqp-bench-{uuid.uuid4().hex[:12]}"
        self.queues.append(q)
        self.ch.queue_declare(q, durable=True)
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        for _ in range(n):
            self.ch.basic_publish("", q, BODY, props)
        # A round trip after the publishes: the broker has them all queued.
        while self.ch.queue_declare(q, passive=True).method.message_count < n:
            time.sleep(0.05)
        return q

    def left(self, q: str, seconds: float = 30) -> int:
        """Messages still in the queue (ready or unacked) once it empties, or after a while."""
        deadline = time.monotonic() + seconds
        while True:
            ok = self.ch.queue_declare(q, passive=True).method
            if (ok.message_count == 0 and ok.consumer_count == 0) or time.monotonic() > deadline:
                return ok.message_count
            time.sleep(0.05)

    def close(self) -> None:
        for q in self.queues:
            self.ch.queue_delete(q)
        self.conn.close()


def pika_loop(q: str, n: int, prefetch: int) -> float:
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    t0 = time.perf_counter()
    for got, (method, _props, body) in enumerate(ch.consume(q), 1):
        json.loads(body)  # a consumer does something with the message
        ch.basic_ack(method.delivery_tag)
        if got == n:
            break
    elapsed = time.perf_counter() - t0
    ch.cancel()
    conn.close()
    return elapsed


def start_streamd(streams: dict[str, str], prefetch: int) -> Streamd:
    """One streamd with an amqp stream per queue, once every stream is connected."""
    lines = []
    for name, q in streams.items():
        lines += [f"[streams.{name}]", 'source = "amqp"', f'url = "{URL}"',
                  f'queue = "{q}"', f"prefetch = {prefetch}"]
    streamd = Streamd()
    streamd.start(config="\n".join(lines) + "\n")
    streamd.wait_healthy()
    return streamd


def read(streamd: Streamd, name: str, n: int) -> float:
    conn = http.client.HTTPConnection(HOST, streamd.port, timeout=60)
    t0 = time.perf_counter()
    conn.request("GET", f"/streams/{name}?limit={n}")
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    got = 0
    carry = b""
    while got < n:
        data = resp.read1(65536)
        if not data:
            raise SystemExit(f"stream ended after {got} messages")
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        got += sum(1 for line in lines if line.startswith(b'{"id":'))
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--prefetch", type=int, nargs="+", default=[100])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    n = args.messages
    broker = Broker()
    results: dict[str, list[float]] = {}
    try:
        queues = {f"p{p}r{r}": broker.fill(n) for p in args.prefetch for r in range(args.runs)}
        # One streamd per prefetch value (prefetch is a stream key).
        for p in args.prefetch:
            names = {k: q for k, q in queues.items() if k.startswith(f"p{p}r")}
            streamd = start_streamd(names, p)
            try:
                for r in range(args.runs):
                    q = broker.fill(n)
                    results.setdefault(f"pika, prefetch={p}", []).append(
                        n / pika_loop(q, n, p))
                    left = broker.left(q)
                    if left:
                        print(f"  note: pika run left {left} messages")
                    name = f"p{p}r{r}"
                    results.setdefault(f"streamd, prefetch={p}", []).append(
                        n / read(streamd, name, n))
                    left = broker.left(queues[name])
                    if left:
                        print(f"  note: streamd run left {left} messages")
            finally:
                streamd.stop()
    finally:
        broker.close()
    print(f"{n} messages pre-queued in RabbitMQ; median of {args.runs} run(s); msgs/s")
    for label, rates in results.items():
        med = statistics.median(rates)
        print(f"  {label:22s} {med:8.0f}   (runs: {', '.join(f'{x:.0f}' for x in rates)})")


if __name__ == "__main__":
    main()
