"""
The tables and targets of the scaling scenarios: (h), a large audience connecting at once,
and (w), scenarios (a), (b), (c) and (h) with two server workers against one. They work
on the medians C{scenarios.medians} makes, C{med[(scenario id, server)]}.
"""

from __future__ import annotations

import os

from harness import Spec

#: (w)'s targets: 2 workers against streamd's own 1-worker figure, in the same run.
A_SPEEDUP, A_US_SLACK, C_SPEEDUP, B_P99_MS = 1.3, 0.15, 1.6, 5.0


def num(v, fmt="{:,.0f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def ms(v) -> str:
    return num(v, "{:.1f}")


def pct(v) -> str:
    return num(v, "{:.0f}%")


def audience_title(s: Spec, readers: int, messages: int) -> str:
    return (f"(h) {readers:,} NDJSON readers connecting at once from {s.sources} source "
            f"addresses, then {messages} x {s.size} B at {s.rate:g} msg/s (one per POST)"
            + (f", {s.variant}, nothing pinned" if s.variant else ""))


def audience_medians(runs: list[dict]) -> dict:
    """The (h) figures over runs: worst connected and overflows, medians of the rest."""
    a = [r["audience"] for r in runs]

    def med(key):
        values = sorted(x[key] for x in a if x.get(key) is not None)
        return values[len(values) // 2] if values else None

    def worst(key, fn):
        values = [x[key] for x in a if x.get(key) is not None]
        return fn(values) if values else None

    return {"readers": max(r["readers"] for r in runs),
            "messages": max(r["messages"] for r in runs),
            "connected": worst("connected", min), "overflows": worst("listen_overflows", max),
            "drops": worst("listen_drops", max), "connect_s": med("connect_s"),
            "kib_per_reader": med("kib_per_reader"), "last_reader_ms": med("last_reader_ms"),
            "last_reader_max_ms": worst("last_reader_max_ms", max),
            "first_reader_ms": med("first_reader_ms"),
            "not_to_all": sum(x.get("messages_not_to_all") or 0 for x in a),
            "server_nofile": worst("server_nofile", min), "workers_up": worst("workers_up", min)}


def audience_table(group: list[Spec], med: dict) -> str:
    def title(s: Spec) -> str:  # with the runs' figures (a --json file's, with --tables)
        ran = [m for (sid, _), m in med.items() if sid == s.id and "readers" in m]
        return audience_title(s, max([m["readers"] for m in ran] or [s.readers]),
                              max([m["messages"] for m in ran] or [s.messages]))

    lines = [" / ".join(title(s) for s in group), "",
             "| server | connected | listen overflows (drops) | connect s | KiB per reader | "
             "to last reader ms, median (max) | to first reader ms | p99 ms | lost | "
             "server CPU | generator CPU | others | server fd limit | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in group:
        for (sid, srv), m in med.items():
            if sid != s.id:
                continue
            name = f"{srv}, {s.variant}" if s.variant else srv
            if "connected" not in m:
                lines.append(f"| {name} | failed: {m['errors'][:1]} |")
                continue
            lines.append(
                f"| {name} | {num(m['connected'])} of {m['readers']:,} | {num(m['overflows'])} "
                f"({num(m['drops'])}) | {num(m['connect_s'], '{:.1f}')} | "
                f"{num(m['kib_per_reader'], '{:.1f}')} | {ms(m['last_reader_ms'])} "
                f"({ms(m['last_reader_max_ms'])}) | {ms(m['first_reader_ms'])} | "
                f"{ms(m.get('p99'))} | {m.get('lost', 'n/a')} | {pct(m.get('server_cpu_pct'))} "
                f"| {pct(m.get('gen_cpu_pct'))} | {pct(m.get('other_cpu_pct'))} | "
                f"{num(m['server_nofile'])} | {m['runs']}"
                + (f" ({m['failed']} failed)" if m.get("failed") else "") + " |")
    return "\n".join(lines)


def judge(out: list[str], what: str, ok: bool | None, detail: str) -> None:
    verdict = "n/a" if ok is None else "met" if ok else "NOT met"
    out.append(f"target {what}: {detail}: {verdict}")


def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def audience_targets(group: list[Spec], med: dict) -> list[str]:
    """(h): everyone connected, no overflow; with 2 workers, no later than Nchan with 1."""
    out: list[str] = []
    for s in group:
        m = med.get((s.id, "streamd"), {})
        if "connected" not in m:
            continue
        who = f"streamd, {s.variant}" if s.variant else "streamd"
        judge(out, f"({who}) {m['readers']:,} of {m['readers']:,} connected",
              m["connected"] == m["readers"], f"{num(m['connected'])}")
        judge(out, f"({who}) 0 listen-queue overflows",
              None if m["overflows"] is None else m["overflows"] == 0,
              f"{num(m['overflows'])} (system-wide counter: other work counts too)")
    two = next((s for s in group if s.workers == 2), None)
    one = next((s for s in group if s.workers == 1), None)
    if two is None:
        out.append("target (streamd, 2 workers) last reader reached no later than by Nchan "
                   "with 1 worker: n/a here (--scenario w runs it)")
        return out
    sd = med.get((two.id, "streamd"), {}).get("last_reader_ms")
    nc = med.get((one.id, "nchan"), {}).get("last_reader_ms") if one else None
    judge(out, "(streamd, 2 workers) last reader reached no later than by Nchan with 1 worker",
          None if sd is None or nc is None else sd <= nc,
          f"{ms(sd)} vs {ms(nc)} ms (median over the messages)")
    return out


def worker_targets(group: list[Spec], med: dict) -> list[str]:
    """(w): 2 workers against streamd's own 1-worker figures of the same run."""
    out = [f"note: (w) pins nothing: the server's processes and the load generator share "
           f"this machine's {os.cpu_count()} CPUs (with 2 workers on 2 cores, they compete "
           "with the generator for both)"]
    base = group[0].id.rsplit("-w", 1)[0]
    one = med.get((f"{base}-w1", "streamd"), {})
    two = med.get((f"{base}-w2", "streamd"), {})
    if "p99" in two:
        judge(out, "(streamd, 2 workers) 0 lost, 0 duplicated",
              two["lost"] == 0 and two["duplicated"] == 0,
              f"lost {two['lost']}, duplicated {two['duplicated']}")
    if base == "a" and "p99" in two:
        r = ratio(two["delivered_per_s"], one.get("delivered_per_s"))
        judge(out, f"(streamd, 2 workers) deliveries/s >= {A_SPEEDUP}x 1 worker's",
              None if r is None else r >= A_SPEEDUP,
              f"{num(two['delivered_per_s'])} vs {num(one.get('delivered_per_s'))} "
              f"({num(r, '{:.2f}')}x)")
        r = ratio(two["server_us_per_delivery"], one.get("server_us_per_delivery"))
        judge(out, f"(streamd, 2 workers) server CPU per delivery within "
              f"{A_US_SLACK:.0%} of 1 worker's", None if r is None else r <= 1 + A_US_SLACK,
              f"{num(two['server_us_per_delivery'], '{:.1f}')} vs "
              f"{num(one.get('server_us_per_delivery'), '{:.1f}')} us ({num(r, '{:.2f}')}x)")
    elif base == "c" and "p99" in two:
        r = ratio(two["publish_per_s"], one.get("publish_per_s"))
        judge(out, f"(streamd, 2 workers) POSTs/s >= {C_SPEEDUP}x 1 worker's",
              None if r is None else r >= C_SPEEDUP,
              f"{num(two['publish_per_s'])} vs {num(one.get('publish_per_s'))} "
              f"({num(r, '{:.2f}')}x)")
    elif base == "b" and "p99" in two:
        judge(out, f"(streamd, 2 workers) p99 <= {B_P99_MS:g} ms", two["p99"] <= B_P99_MS,
              f"{ms(two['p99'])} ms")
    key = {"a": "delivered_per_s", "c": "publish_per_s"}.get(base)
    n1, n2 = med.get((f"{base}-w1", "nchan"), {}), med.get((f"{base}-w2", "nchan"), {})
    if key and n1.get(key) and n2.get(key):
        out.append(f"note: Nchan, 2 workers against 1: {num(n2[key])} vs {num(n1[key])} "
                   f"({n2[key] / n1[key]:.2f}x)")
    for s in group:
        up = med.get((s.id, "streamd"), {}).get("workers_up")
        if s.workers > 1 and up is not None and up != s.workers:
            out.append(f"note: streamd's GET / said {up} of {s.workers} workers up")
    return out
