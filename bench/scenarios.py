"""
The scenarios of issue 12, their targets, and the tables of their medians.

Each scenario runs against streamd and against nginx + Nchan (except (e), Redis pub/sub,
which is streamd's alone); every message is its own request (POST, or PUBLISH for (e)).
(h), a large audience, and (w), 2 server workers against 1, are run by name only (not by
"all"); their tables and targets are in C{scaling.py}.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from harness import Spec
from scaling import audience_medians, audience_table, audience_targets, ms, num, pct, worker_targets

SCENARIOS = [
    Spec("a", "(a) 100 NDJSON readers, 5,000 x 200 B, one per POST, 4 POST connections, "
         "full speed", readers=100, messages=5000),
    Spec("a-sse", "(a) SSE: 100 SSE readers, 5,000 x 200 B, one per POST, 4 POST "
         "connections, full speed", readers=100, messages=5000, sse=True),
    Spec("b", "(b) 100 NDJSON readers, 500 msg/s for 10 s (200 B, one per POST)",
         readers=100, messages=5000, rate=500),
    Spec("c", "(c) 1 NDJSON reader, 20,000 x 1 KB, one per POST, 4 POST connections, "
         "full speed: the POST rate", readers=1, messages=20000, size=1024),
    Spec("d", "(d) 1,000 NDJSON readers, 50 msg/s for 10 s (200 B, one per POST)",
         readers=1000, messages=500, rate=50),
    Spec("e", "(e) Redis pub/sub: 100 NDJSON readers, 5,000 x 200 B, one PUBLISH per "
         "message, 4 Redis connections, full speed", readers=100, messages=5000,
         source="redis", servers=("streamd",)),
    Spec("f", "(f) 5,000 idle NDJSON streams: server memory per idle stream", idle=5000),
    Spec("g-base", "(g) without the slow reader: 10 NDJSON readers, 20,000 x 200 B, one "
         "per POST, 4 POST connections, full speed", readers=10, messages=20000),
    Spec("g", "(g) the same 10 readers plus 1 reading at 20 KB/s", readers=10,
         messages=20000, slow=1, slow_rate=20_000),
    Spec("h", "(h) 15,000 NDJSON readers connecting at once, then 1 msg/s for 10 s",
         readers=15000, messages=10, rate=1, burst=True, sources=8),
]
#: (w): (a), (b), (c) and (h) with 1 and with 2 server workers, nothing pinned.
WORKER_BASES = ("a", "b", "c", "h")
SCENARIOS += [replace(s, id=f"{s.id}-w{n}", title=f"(w) {s.title}, {n} worker"
                      f"{'s' if n > 1 else ''}, nothing pinned", workers=n, pin=False,
                      variant=f"{n} worker{'s' if n > 1 else ''}")
              for s in SCENARIOS if s.id in WORKER_BASES for n in (1, 2)]
BY_ID = {s.id: s for s in SCENARIOS}
#: The scenarios printed together as one table.
GROUPS = {"a": ["a"], "a-sse": ["a-sse"], "b": ["b"], "c": ["c"], "d": ["d"], "e": ["e"],
          "f": ["f"], "g": ["g-base", "g"], "h": ["h"],
          **{f"w-{b}": [f"{b}-w1", f"{b}-w2"] for b in WORKER_BASES}}
#: What "all" runs: issue 12's scenarios; (h) and (w) are run by name.
ALL = ["a", "a-sse", "b", "c", "d", "e", "f", "g"]
#: What --scenario X selects: (a) is NDJSON and SSE; w is (w) of (a), (b), (c) and (h).
NAMES = {"a": ["a", "a-sse"], "all": ALL, "w": [f"w-{b}" for b in WORKER_BASES],
         **{k: [k] for k in GROUPS if k != "a"}}
#: --quick: the same shapes, smaller (a smoke run, not figures).
QUICK = {"a": dict(readers=20, messages=1000), "a-sse": dict(readers=20, messages=1000),
         "b": dict(messages=1000), "c": dict(messages=2000), "d": dict(readers=200,
                                                                     messages=100),
         "e": dict(readers=20, messages=1000), "f": dict(idle=500),
         "g-base": dict(messages=2000), "g": dict(messages=2000),
         "h": dict(readers=1000, messages=3)}
QUICK.update({f"{b}-w{n}": QUICK[b] for b in WORKER_BASES for n in (1, 2)})


def select(names: str, quick: bool, readers: int | None = None,
           sources: int | None = None) -> list[list[Spec]]:
    """
    The groups of scenarios named (comma-separated ids, or "all"); C{readers} and
    C{sources}, when given, replace those of (h) (and of (h) in (w)).
    """
    wanted = []
    for n in names.split(","):
        if n.strip() not in NAMES:
            raise SystemExit(f"unknown scenario {n!r}: one of {', '.join(NAMES)}")
        wanted += [g for g in NAMES[n.strip()] if g not in wanted]

    def spec(i: str) -> Spec:
        s = replace(BY_ID[i], **QUICK[i]) if quick else BY_ID[i]
        if s.burst and readers:
            s = replace(s, readers=readers)
        if s.burst and sources:
            s = replace(s, sources=sources)
        return s

    return [[spec(i) for i in GROUPS[g]] for g in wanted]


# --------------------------------------------------------------------------- medians


def median_of(runs: list[dict], get) -> float | None:
    values = []
    for r in runs:
        try:
            v = get(r)
        except (KeyError, TypeError):
            continue
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


#: The generator was the limit: it was on its CPU (nearly) all along.
BOUND_PCT = 90.0


def medians(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    out = {"runs": len(runs), "failed": len(runs) - len(ok),
           "errors": [r["error"] for r in runs if "error" in r]}
    if not ok:
        return out
    ups = [r["workers_up"] for r in ok if r.get("workers_up") is not None]
    out["workers_up"] = min(ups) if ups else None
    if "kib_per_idle_stream" in ok[0]:
        out["kib_per_idle_stream"] = median_of(ok, lambda r: r["kib_per_idle_stream"])
        out["opened"] = min(r["opened"] for r in ok)
        out["streams"] = ok[0]["streams"]
        return out
    for key in ("delivered_per_s", "publish_per_s", "server_cpu_pct", "gen_cpu_pct",
                "helper_cpu_pct", "server_core_busy_pct", "bench_core_busy_pct",
                "other_cpu_pct", "server_us_per_delivery"):
        out[key] = median_of(ok, lambda r, k=key: r[k])
    for key in ("p50", "p99", "max"):
        out[key] = median_of(ok, lambda r, k=key: r["latency_ms"][k])
    for key in ("lost", "duplicated", "publish_errors", "unparsed", "out_of_range",
                "other_lines"):
        out[key] = sum(r[key] for r in ok)
    out["gen_bound"] = sum(1 for r in ok if r["gen_cpu_pct"] >= BOUND_PCT)
    out["peak_rss_mib"] = median_of(ok, lambda r: r["rss_kib"]["peak"] / 1024)
    if "audience" in ok[0]:
        out.update(audience_medians(ok), workers_up=out["workers_up"])
    slow = [r["slow"] for r in ok if r.get("slow")]
    if slow:
        out["slow_during"] = median_of(slow, lambda s: s["got_during_run"])
        out["slow_in_all"] = median_of(slow, lambda s: s["got_in_all"])
        ends, controls = {}, {}
        for s in slow:
            for k, v in s["ended"].items():
                ends[k] = ends.get(k, 0) + v
            for k, v in s["controls"].items():
                controls[k] = controls.get(k, 0) + v
        out["slow_ended"], out["slow_controls"] = ends, controls
    return out


# --------------------------------------------------------------------------- tables


def table(group: list[Spec], results: dict) -> str:
    """One markdown table of medians for a group; C{results[(id, server)]} = runs."""
    spec = group[0]
    lines = []
    if spec.burst:
        return audience_table(group, {k: medians(v) for k, v in results.items()})
    if spec.idle:
        lines += [f"{spec.title}", "",
                  "| server | KiB per idle stream | streams opened | runs |",
                  "|---|---|---|---|"]
        for (sid, srv), runs in results.items():
            if sid == spec.id:
                m = medians(runs)
                lines.append(f"| {srv} | {num(m.get('kib_per_idle_stream'), '{:.1f}')} | "
                             f"{num(m.get('opened'))} | {m['runs']}{failed(m)} |")
        return "\n".join(lines)
    lines += [" / ".join(s.title for s in group), "",
              "| server | readers | deliveries/s | msgs/s published | p50 ms | p99 ms | max ms "
              "| lost | dup | server CPU | server µs per delivery | generator CPU "
              "| CPU0 / CPU1 busy | others | runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in group:
        for (sid, srv), runs in results.items():
            if sid != s.id:
                continue
            m = medians(runs)
            name = f"{srv}, {s.variant}" if s.variant else srv
            if "p99" not in m:
                lines.append(f"| {name} | {readers(s)} | failed: {m['errors'][:1]} |")
                continue
            least = "≥ " if m["gen_bound"] else ""
            lines.append(
                f"| {name} | {readers(s)} | {least}{num(m['delivered_per_s'])} | "
                f"{least}{num(m['publish_per_s'])} | {ms(m['p50'])} | {ms(m['p99'])} | "
                f"{ms(m['max'])} | {m['lost']} | {m['duplicated']} | "
                f"{pct(m['server_cpu_pct'])} | {num(m['server_us_per_delivery'], '{:.1f}')} | "
                f"{pct(m['gen_cpu_pct'])} | "
                f"{pct(m['server_core_busy_pct'])} / {pct(m['bench_core_busy_pct'])} | "
                f"{pct(m['other_cpu_pct'])} | {m['runs']}{failed(m)}{bound(m)} |")
    slow = [(srv, medians(runs)) for (sid, srv), runs in results.items()
            if BY_ID.get(sid, spec).slow]
    for srv, m in slow:
        if "slow_during" in m:
            lines.append(f"\n{srv}, slow reader: {num(m['slow_during'])} msgs while the "
                         f"others were served, {num(m['slow_in_all'])} in all once it read "
                         f"at full speed; ended {m['slow_ended']}; controls "
                         f"{m['slow_controls'] or '-'}; server peak RSS "
                         f"{num(m['peak_rss_mib'], '{:.0f}')} MiB")
    return "\n".join(lines)


def readers(s: Spec) -> str:
    return f"{s.readers} + {s.slow} slow" if s.slow else str(s.readers)


def failed(m: dict) -> str:
    return f" ({m['failed']} failed)" if m.get("failed") else ""


def bound(m: dict) -> str:
    return f", generator-bound in {m['gen_bound']}" if m.get("gen_bound") else ""


# --------------------------------------------------------------------------- targets


def offered_rate(spec: Spec, m: dict) -> bool:
    """Whether a paced run published (nearly) at the rate it asked for."""
    return m["publish_per_s"] >= 0.95 * spec.rate


def targets(group: list[Spec], results: dict) -> list[str]:
    """Issue 12's targets for streamd, against this run's medians: one line each."""
    med = {key: medians(runs) for key, runs in results.items()}
    sid = group[0].id
    sd, nc = med.get((sid, "streamd"), {}), med.get((sid, "nchan"), {})
    out = []

    def check(what: str, ok: bool | None, detail: str) -> None:
        verdict = "n/a" if ok is None else "met" if ok else "NOT met"
        out.append(f"target {what}: {detail}: {verdict}")

    def cmp(a, b, le=False):
        if a is None or b is None:
            return None
        return a <= b if le else a >= b

    if "p99" in sd:
        check("0 lost, 0 duplicated", sd["lost"] == 0 and sd["duplicated"] == 0,
              f"lost {sd['lost']}, duplicated {sd['duplicated']}")
    if sid in ("a", "a-sse") and "p99" in sd:
        check("deliveries/s >= Nchan's", cmp(sd["delivered_per_s"], nc.get("delivered_per_s")),
              f"{num(sd['delivered_per_s'])} vs {num(nc.get('delivered_per_s'))}")
        check("p99 <= Nchan's", cmp(sd["p99"], nc.get("p99"), le=True),
              f"{ms(sd['p99'])} vs {ms(nc.get('p99'))} ms")
    elif sid == "b" and "p99" in sd:
        check("p99 <= 5 ms", sd["p99"] <= 5, f"{ms(sd['p99'])} ms")
        offered = offered_rate(group[0], sd)
        check("server CPU <= 50%", sd["server_cpu_pct"] <= 50 if offered else None,
              pct(sd["server_cpu_pct"]) + ("" if offered else
                                           f" at {num(sd['publish_per_s'])} msgs/s, not "
                                           f"the {num(group[0].rate)} offered"))
    elif sid == "c" and "p99" in sd:
        check(">= 10,000 POSTs/s", sd["publish_per_s"] >= 10_000, num(sd["publish_per_s"]))
        check("POSTs/s >= Nchan's", cmp(sd["publish_per_s"], nc.get("publish_per_s")),
              f"{num(sd['publish_per_s'])} vs {num(nc.get('publish_per_s'))}")
    elif sid == "d" and "p99" in sd:
        check("p99 <= 50 ms", sd["p99"] <= 50, f"{ms(sd['p99'])} ms")
    if group[0].rate and "p99" in sd and not offered_rate(group[0], sd):
        out.append(f"note: streamd took {num(sd['publish_per_s'])} msgs/s, not the "
                   f"{num(group[0].rate)} offered: with 4 POSTs in flight the publisher sent "
                   "each message when a connection was free, and how long it waited for one "
                   "is not in the latency")
    elif sid == "f" and sd.get("kib_per_idle_stream") is not None:
        check("<= 11 KiB per idle stream", sd["kib_per_idle_stream"] <= 11,
              f"{sd['kib_per_idle_stream']:.1f} KiB")
    elif sid == "g-base":
        out = []
        base, slow = med.get(("g-base", "streamd"), {}), med.get(("g", "streamd"), {})
        if "p99" in base and "p99" in slow:
            check("publish rate within 10% of the run without the slow reader",
                  slow["publish_per_s"] >= 0.9 * base["publish_per_s"],
                  f"{num(slow['publish_per_s'])} vs {num(base['publish_per_s'])} msgs/s")
            check("fast readers' p99 within 10%", slow["p99"] <= 1.1 * base["p99"],
                  f"{ms(slow['p99'])} vs {ms(base['p99'])} ms")
            check("0 lost, 0 duplicated (fast readers)",
                  slow["lost"] + base["lost"] + slow["duplicated"] + base["duplicated"] == 0,
                  f"lost {base['lost']} / {slow['lost']}, duplicated "
                  f"{base['duplicated']} / {slow['duplicated']}")
    if group[0].burst:
        out += audience_targets(group, med)
    if any(s.variant for s in group):
        out += worker_targets(group, med)
    return out
