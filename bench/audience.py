"""
The large audience of (h): thousands of readers connecting at once, then a few paced
messages. Beside the usual figures a run reports how many readers connected, how often the
kernel found a listen queue full during the burst, the server memory each reader costs, and
for each message how long it took to reach its last reader.

The readers are spread over several loopback source addresses (127.0.0.2, 127.0.0.3, ...),
so that no single address runs short of ephemeral ports; C{IP_BIND_ADDRESS_NO_PORT} leaves
the port to C{connect()}, which picks one per destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time

from common import LISTEN_COUNTERS, tcp_ext

#: Linux's value, for Pythons whose socket module does not name it.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def source_address(i: int, sources: int) -> str:
    """The loopback address reader C{i} connects from: 127.0.0.2 to 127.0.0.(sources+1)."""
    return f"127.0.0.{2 + i % sources}"


def bind_source(sock: socket.socket, i: int, sources: int) -> None:
    with contextlib.suppress(OSError):  # not Linux, or an old one: bind() picks the port
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source_address(i, sources), 0))


class Burst:
    """What a burst of connections cost: counters and RSS before and after it."""

    def __init__(self, server) -> None:
        self.counters0 = tcp_ext()
        self.rss0 = server.rss()["VmRSS"]
        self.t0 = time.monotonic()
        self.t_open: float | None = None
        self.figures: dict = {}

    def opened(self) -> None:
        """Every reader's connection either opened its stream or failed."""
        self.t_open = time.monotonic()

    async def after(self, server, name: str, opened: int, seen: int, settle: float,
                    get_json) -> None:
        """
        Once the server counted the readers (and C{settle} seconds later): the figures.
        C{get_json(server, path)} reads the server's info (streamd: its workers).
        """
        await asyncio.sleep(max(0.0, settle))
        counters = tcp_ext()
        rss = server.rss()["VmRSS"]
        try:
            status, info = await get_json(server, server.info_path(name))
        except (OSError, ValueError):
            status, info = 0, {}
        delta = {k: counters.get(k, 0) - self.counters0.get(k, 0) for k in LISTEN_COUNTERS
                 if k in counters}
        self.figures = {
            "connected": opened, "subscribers_counted": seen,
            "connect_s": (self.t_open or time.monotonic()) - self.t0,
            "listen_overflows": delta.get("ListenOverflows"),
            "listen_drops": delta.get("ListenDrops"),
            "rss_before_kib": self.rss0, "rss_connected_kib": rss,
            "kib_per_reader": (rss - self.rss0) / opened if opened else None,
            "server_nofile": server.nofile(),
            "server_pids": len(server.pids()),
            "workers_up": server.workers_up(info) if status == 200 else None,
        }


def before_burst(server) -> Burst:
    return Burst(server)


def reach_times(subs, accepted: bytes) -> dict:
    """
    For each message the server accepted: when it reached its first and its last reader
    (seconds after the publisher's timestamp) and how many readers got it. A duplicate
    does not count; a reader that never got a message is counted in C{missing}.
    """
    total = len(accepted)
    first = [float("inf")] * total
    last = [float("-inf")] * total
    got = [0] * total
    for s in subs:
        if not s.recv:
            continue
        pairs, recv = s.pairs, s.recv
        seen = set()
        for k in range(len(recv)):
            seq = pairs[2 * k]
            if 0 <= seq < total and seq not in seen:
                seen.add(seq)
                delay = recv[k] - pairs[2 * k + 1] / 1e6
                first[seq] = min(first[seq], delay)
                last[seq] = max(last[seq], delay)
                got[seq] += 1
    seqs = [i for i in range(total) if accepted[i] and got[i]]
    return {"first": [first[i] for i in seqs], "last": [last[i] for i in seqs],
            "got": [got[i] for i in seqs], "accepted": sum(accepted)}


def audience_figures(burst: Burst, subs, accepted: bytes) -> dict:
    """The (h) figures of a run: the burst's, and per message, first and last reader."""
    reach = reach_times(subs, accepted)
    connected = burst.figures.get("connected", 0)
    last_ms = [v * 1e3 for v in reach["last"]]
    first_ms = [v * 1e3 for v in reach["first"]]
    return {
        "audience": {
            **burst.figures,
            "last_reader_ms": statistics.median(last_ms) if last_ms else None,
            "last_reader_max_ms": max(last_ms) if last_ms else None,
            "first_reader_ms": statistics.median(first_ms) if first_ms else None,
            "last_reader_per_msg_ms": [round(v, 1) for v in last_ms],
            "messages_reached": len(last_ms), "messages_accepted": reach["accepted"],
            # Messages some connected reader did not get (they are also in "lost").
            "messages_not_to_all": sum(1 for g in reach["got"] if g < connected),
        }
    }
