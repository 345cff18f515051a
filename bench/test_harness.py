"""Checks of the benchmark's sums and tables (run with C{pytest bench})."""

from array import array

from harness import merge
from scenarios import GROUPS, QUICK, SCENARIOS, medians, select, table, targets


def reader(counts: list[int], latencies=(0.001,)) -> dict:
    return {"unique": sum(1 for c in counts if c), "counts": bytes(counts),
            "duplicated": sum(c - 1 for c in counts if c > 1), "out_of_range": 0,
            "unparsed": 0, "other_lines": 0, "controls": {"end": 1}, "samples": {},
            "ended": "closed by client", "latencies": array("d", latencies).tobytes(),
            "last_recv": 1.0}


def test_merge_counts_lost_only_among_accepted():
    accepted = bytearray([1, 1, 0, 1, 1])  # seq 2 was refused: never lost
    m = merge([reader([1, 2, 0, 0, 1]), reader([1, 1, 0, 1, 1, 0])], accepted)
    assert (m["unique"], m["lost"], m["duplicated"]) == (7, 1, 1)
    assert m["controls"]["end"] == 2


def run(server: str, per_s: float, p99: float, gen=50.0) -> dict:
    return {"scenario": "a", "server": server, "delivered_per_s": per_s, "publish_per_s":
            per_s / 100, "latency_ms": {"p50": 1.0, "p99": p99, "max": 2 * p99}, "lost": 0,
            "duplicated": 0, "publish_errors": 0, "unparsed": 0, "out_of_range": 0,
            "other_lines": 0, "server_cpu_pct": 99.0, "gen_cpu_pct": gen, "helper_cpu_pct": 0,
            "server_core_busy_pct": 100.0, "bench_core_busy_pct": gen, "other_cpu_pct": 1.0,
            "server_us_per_delivery": 2.0, "rss_kib": {"peak": 1024}, "slow": None}


def test_medians_table_and_targets():
    results = {("a", "streamd"): [run("streamd", v, 10.0) for v in (100, 300, 200)],
               ("a", "nchan"): [run("nchan", 250, 5.0, gen=95.0), {"error": "boom"}]}
    m = medians(results[("a", "streamd")])
    assert (m["delivered_per_s"], m["gen_bound"]) == (200, 0)
    text = table([SCENARIOS[0]], results)
    assert "| streamd | 100 | 200 |" in text
    assert "| nchan | 100 | ≥ 250 |" in text and "(1 failed)" in text
    lines = targets([SCENARIOS[0]], results)
    assert "target deliveries/s >= Nchan's: 200 vs 250: NOT met" in lines


def test_every_scenario_is_selectable_and_has_a_quick_form():
    assert {s.id for s in SCENARIOS} == set(QUICK) == {i for g in GROUPS.values() for i in g}
    groups = select("all", quick=True)
    assert [s.id for g in groups for s in g] == [s.id for s in SCENARIOS
                                                 if s.id[0] != "h" and "-w" not in s.id]
    groups = select("all,h,w", quick=True)
    assert sorted(s.id for g in groups for s in g) == sorted(s.id for s in SCENARIOS)
    assert select("g", quick=False)[0][1].slow == 1
    assert [[s.id for s in g] for g in select("a,c,a-sse", quick=False)] == [
        ["a"], ["a-sse"], ["c"]]
