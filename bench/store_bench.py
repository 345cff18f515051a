"""
Event store benchmark: insert rate, and the latency of filter queries, for the
SQLite and Redis backends at 100,000 and 1,000,000 events.

    python bench/store_bench.py [--backends sqlite,redis] [--sizes 100000,1000000]

Events look like C{{"kind": "k3", "user": 1234, "repo": 56, "n": i, "text": "..."}}
with 10 kinds, 10,000 users and 1,000 repos, uniformly at random (seeded), indexed on
kind, user and repo. Inserts go through the store's own API in batches of 1,000 (one
SQLite transaction or one Redis script each). Queries, one at a time, through the
store's API (so SQLite's thread hop and Redis's round trip count), newest first,
C{end=20}:
  - two-key: C{kind=kX AND user=U}
  - two-key-or: C{kind=kX AND user IN (U1, U2, U3)}
  - one-key: C{kind=kX} (a tenth of all events match)
The Redis backend uses a private redis-server started on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, task

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import Redis, percentile  # noqa: E402

from streamd.store.base import Query, make_filters, new_event  # noqa: E402
from streamd.store.redis import RedisStore  # noqa: E402
from streamd.store.sqlite import SQLiteStore  # noqa: E402

KEYS = ("kind", "user", "repo")


def events(rng: random.Random, n: int, start: int):
    for i in range(start, start + n):
        yield json.dumps({"kind": f"k{rng.randrange(10)}", "user": rng.randrange(10_000),
                          "repo": rng.randrange(1000), "n": i,
                          "text": "something happened here"}).encode()


async def fill(store, rng, have: int, target: int, batch: int) -> float:
    """Insert up to C{target} events; return the insert rate (events/s)."""
    t0 = time.perf_counter()
    n = have
    while n < target:
        size = min(batch, target - n)
        await store.insert([new_event(raw, KEYS) for raw in events(rng, size, n)])
        n += size
    return (target - have) / (time.perf_counter() - t0)


async def measure(store, rng, queries: int) -> dict[str, tuple[float, float, float]]:
    shapes = {
        "two-key": lambda: {"kind": f"k{rng.randrange(10)}", "user": rng.randrange(10_000)},
        "two-key-or": lambda: {"kind": f"k{rng.randrange(10)}",
                               "user": [rng.randrange(10_000) for _ in range(3)]},
        "one-key": lambda: {"kind": f"k{rng.randrange(10)}"},
    }
    out = {}
    for name, make in shapes.items():
        times, found = [], 0
        for _ in range(queries):
            q = Query(make_filters(make(), KEYS), 0, 20)
            t0 = time.perf_counter()
            result = await store.query(q)
            times.append((time.perf_counter() - t0) * 1000)
            found += len(result)
        times.sort()
        out[name] = (percentile(times, 0.50), percentile(times, 0.99), found / queries)
    return out


async def run(reactor, args) -> None:
    rows = []
    for backend in args.backends.split(","):
        tmp = tempfile.mkdtemp(prefix="streamd-bench-")
        redis = None
        try:
            if backend == "sqlite":
                store = SQLiteStore(KEYS, reactor, os.path.join(tmp, "events.sqlite3"))
            else:
                redis = Redis()
                redis.start()
                store = RedisStore(KEYS, reactor, redis.url)
            await defer.maybeDeferred(store.start)
            while store.status()[0] != "ok":
                await task.deferLater(reactor, 0.05, lambda: None)
            rng = random.Random(1)
            have = 0
            for size in sorted(int(s) for s in args.sizes.split(",")):
                rate = await fill(store, rng, have, size, args.batch)
                have = size
                stats = await measure(store, random.Random(2), args.queries)
                for shape, (p50, p99, avg) in stats.items():
                    rows.append((backend, size, rate, shape, p50, p99, avg))
                    print(f"{backend:6} {size:>9,} insert {rate:>9,.0f}/s  {shape:10} "
                          f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({avg:.1f} found)",
                          flush=True)
            await store.stop()
        finally:
            if redis is not None:
                redis.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| backend | events | insert rate (events/s) | query | p50 (ms) | p99 (ms) | "
          "avg found |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for backend, size, rate, shape, p50, p99, avg in rows:
        print(f"| {backend} | {size:,} | {rate:,.0f} | {shape} | {p50:.2f} | {p99:.2f} | "
              f"{avg:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    task.react(run, [parser.parse_args()])


if __name__ == "__main__":
    main()
