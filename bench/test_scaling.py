"""Checks of (h) and (w): the scenarios, the per-message reach times, tables and targets."""

import socket
from array import array

from audience import bind_source, reach_times, source_address
from scenarios import medians, select, table, targets


class FakeReader:
    def __init__(self, got):  # (seq, sent at s, received at s)
        self.pairs = array("q", [v for seq, t, _ in got for v in (seq, int(t * 1e6))])
        self.recv = array("d", [r for _, _, r in got])


def test_reach_times_first_and_last_reader_per_message():
    readers = [FakeReader([(0, 10.0, 10.1), (1, 11.0, 11.3), (1, 11.0, 12.0)]),
               FakeReader([(0, 10.0, 10.4), (5, 11.0, 99.0)]), FakeReader([])]
    r = reach_times(readers, bytes([1, 1, 0]))
    assert [round(v, 3) for v in r["first"]] == [0.1, 0.3]
    assert [round(v, 3) for v in r["last"]] == [0.4, 0.3]  # the duplicate does not count
    assert (r["got"], r["accepted"]) == ([2, 1], 2)


def test_sources_spread_over_loopback_addresses():
    assert [source_address(i, 3) for i in range(4)] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]
    with socket.socket() as s:
        bind_source(s, 5, 8)
        assert s.getsockname()[0] == "127.0.0.7"


def test_select_h_and_w_with_overrides():
    (h,), = select("h", quick=False, readers=2000, sources=4)
    assert (h.readers, h.sources, h.burst, h.rate, h.messages) == (2000, 4, True, 1, 10)
    groups = select("w", quick=True, readers=300)
    assert [[s.id for s in g] for g in groups] == [
        ["a-w1", "a-w2"], ["b-w1", "b-w2"], ["c-w1", "c-w2"], ["h-w1", "h-w2"]]
    assert all(not s.pin for g in groups for s in g)
    assert [s.workers for s in groups[0]] == [1, 2] and groups[3][1].readers == 300


def run(scenario, per_s, us, p99=1.0, **extra):
    return {"scenario": scenario, "readers": 15000, "messages": 10, "delivered_per_s": per_s,
            "publish_per_s": per_s, "latency_ms": {"p50": 1.0, "p99": p99, "max": 2.0},
            "lost": 0, "duplicated": 0, "publish_errors": 0, "unparsed": 0, "out_of_range": 0,
            "other_lines": 0, "server_cpu_pct": 90.0, "gen_cpu_pct": 50.0,
            "helper_cpu_pct": 0, "server_core_busy_pct": 90.0, "bench_core_busy_pct": 50.0,
            "other_cpu_pct": 1.0, "server_us_per_delivery": us, "rss_kib": {"peak": 1024},
            "slow": None, **extra}


def test_worker_targets_against_one_worker():
    group = select("w-a", quick=False)[0]
    results = {("a-w1", "streamd"): [run("a-w1", 100_000, 8.0)],
               ("a-w2", "streamd"): [run("a-w2", 140_000, 9.0)],
               ("a-w1", "nchan"): [run("a-w1", 200_000, 4.0)],
               ("a-w2", "nchan"): [run("a-w2", 300_000, 4.0)]}
    lines = targets(group, results)
    assert "target (streamd, 2 workers) deliveries/s >= 1.3x 1 worker's: 140,000 vs " \
        "100,000 (1.40x): met" in lines
    assert any("CPU per delivery within 15%" in x and x.endswith("(1.12x): met")
               for x in lines)
    assert "note: Nchan, 2 workers against 1: 300,000 vs 200,000 (1.50x)" in lines
    assert "| streamd, 2 workers | 100 | 140,000 |" in table(group, results)


def audience(connected, overflows, last):
    return {"audience": {"connected": connected, "listen_overflows": overflows,
                         "listen_drops": 0, "connect_s": 2.0, "kib_per_reader": 9.5,
                         "last_reader_ms": last, "last_reader_max_ms": last + 5,
                         "first_reader_ms": 1.0, "messages_not_to_all": 0,
                         "server_nofile": 20000, "workers_up": None}}


def test_audience_table_and_targets():
    group = select("w-h", quick=False)[0]
    results = {("h-w1", "streamd"): [run("h-w1", 1, 1, **audience(15000, 3, 90.0))],
               ("h-w1", "nchan"): [run("h-w1", 1, 1, **audience(15000, 0, 60.0))],
               ("h-w2", "streamd"): [run("h-w2", 1, 1, **audience(15000, 0, 50.0))]}
    assert medians(results[("h-w1", "streamd")])["overflows"] == 3
    text = table(group, results)
    assert "| streamd, 1 worker | 15,000 of 15,000 | 3 (0) | 2.0 | 9.5 | 90.0 (95.0) |" in text
    lines = targets(group, results)
    assert "target (streamd, 1 worker) 0 listen-queue overflows: 3 (system-wide counter: " \
        "other work counts too): NOT met" in lines
    assert "target (streamd, 2 workers) last reader reached no later than by Nchan with 1 " \
        "worker: 50.0 vs 60.0 ms (median over the messages): met" in lines
