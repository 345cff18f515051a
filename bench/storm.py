"""
A reconnect storm against a fresh C{twistd -n streamd}: 15,000 NDJSON readers connecting
as fast as C{connect()} goes (from 127.0.0.2-9), then one message. Prints, per run, the
readers that were answered 200, those that got the message, and how often the kernel
found a listen queue full (C{ListenOverflows + ListenDrops}, machine-wide: run it on a
quiet machine). tests/integration/test_backlog.py asserts the default; this compares
backlogs and worker counts:

    .venv/bin/python bench/storm.py --backlog 1024,4096 --workers 1,2 --repeat 2
"""

from __future__ import annotations

import argparse
import sys

from common import ROOT, Streamd, raise_nofile, tcp_ext

sys.path.insert(0, ROOT)  # tests.support.storm: the same storm the test opens
from tests.support.storm import storm  # noqa: E402


def run(backlog: int, workers: int, readers: int) -> tuple[int, int, int]:
    server = Streamd()  # returns once it logged that it listens: its workers up
    server.start(workers=workers, backlog=backlog, config="")  # streamd's own defaults
    try:
        before = sum(tcp_ext().values())
        answered, reached = storm(server.port, readers)
        return answered, reached, sum(tcp_ext().values()) - before
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backlog", default="4096", help="backlogs to compare, e.g. 1024,4096")
    p.add_argument("--workers", default="1", help="worker counts to compare, e.g. 1,2")
    p.add_argument("--readers", type=int, default=15_000)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    raise_nofile()  # and so for streamd too
    print("backlog workers  answered  got it  overflows")
    for _ in range(args.repeat):
        for backlog in map(int, args.backlog.split(",")):
            for workers in map(int, args.workers.split(",")):
                answered, reached, overflows = run(backlog, workers, args.readers)
                print(f"{backlog:>7} {workers:>7} {answered:>9} {reached:>7} {overflows:>10}",
                      flush=True)


if __name__ == "__main__":
    main()
