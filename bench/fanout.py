#!/usr/bin/env python3
"""
Fan-out benchmark: streamd beside nginx + Nchan, in the same run, with the same generator
and the same pinning (the server on CPU 0, this process on CPU 1).

Each run starts a fresh server (and a redis-server for (e)) on a free loopback port, opens
the readers, publishes one message per request, waits for every reader to get the END
message, and prints deliveries/s, p50/p99/max latency (from the publisher's timestamp in the
payload), lost and duplicated, the server's CPU and the generator's. With --repeat N each
scenario runs N times per server (interleaved) and one table of medians follows.

    python bench/fanout.py --scenario all --server both --repeat 3
    python bench/fanout.py --quick --scenario a,c          # a smoke run
    python bench/fanout.py --scenario h,w --repeat 3       # the large audience, 2 workers

Scenarios: a, a-sse, b, c, d, e, f, g (all), and by name h, w (w-a, w-b, w-c, w-h); see
bench/README.md; --scenario a,g, all, or h,w.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Redis, Streamd, cpu_busy  # noqa: E402
from harness import Options, run_fanout, run_idle  # noqa: E402
from nchan import Nchan, nchan_missing  # noqa: E402
from scenarios import select, table, targets  # noqa: E402


def event_loop_runner(name: str):
    """C{asyncio.run}, on uvloop when it is installed (a cheaper generator)."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            return "asyncio", asyncio.run
        return "uvloop", uvloop.run
    return "asyncio", asyncio.run


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = hard if hard != resource.RLIM_INFINITY else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), target), hard))


def pin_self(cpu: int | None) -> str:
    if cpu is None:
        return "not pinned"
    if not shutil.which("taskset"):
        raise SystemExit("taskset is missing (util-linux); or run with --no-pin")
    if cpu >= (os.cpu_count() or 1):
        raise SystemExit(f"no CPU {cpu} here ({os.cpu_count()} CPUs): use --no-pin")
    os.sched_setaffinity(0, {cpu})
    return f"CPU {cpu}"


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    nginx = "-"
    if shutil.which("nginx"):
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        nginx = out.stderr.strip().removeprefix("nginx version: ")
    nchan = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"],
                           capture_output=True, text=True).stdout or "?"
    return (f"machine: {os.cpu_count()} CPUs, {model}, Linux {platform.release()}; "
            f"load average {load}; Python {platform.python_version()}; {nginx}, "
            f"libnginx-mod-nchan {nchan}")


def wait_quiet(limit: float, cores: float = 0.25) -> float:
    """
    Wait up to C{limit} seconds for the machine to be quiet (all processes using under
    C{cores} CPUs over one second); return how busy it was when we stopped waiting.
    """
    deadline = time.monotonic() + limit
    while True:
        b0 = cpu_busy()["all"]
        time.sleep(1.0)
        busy = cpu_busy()["all"] - b0
        if busy < cores or time.monotonic() >= deadline:
            return busy


def run_once(spec, server_name: str, args, opts: Options, runner) -> dict:
    """
    One run: fresh server(s), the scenario, the servers stopped; never raises. A spec
    with C{pin} false ((w)) runs with nothing pinned, this process included.
    """
    redis = Redis(args.bench_cpu, args.keep_logs) if spec.source == "redis" else None
    server = (Streamd if server_name == "streamd" else Nchan)(
        args.server_cpu if spec.pin else None, args.keep_logs)
    report: dict = {"scenario": spec.id, "server": server_name}
    affinity = os.sched_getaffinity(0)
    if not spec.pin:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        if args.server_cpu is not None and (os.cpu_count() or 1) > 1:
            opts = replace(opts, server_cpu=0, bench_cpu=1)  # still show each CPU's busy time
    try:
        if redis is not None:
            redis.start()
        if server_name == "streamd":
            env = dict(kv.split("=", 1) for kv in args.server_env)
            server.start(redis_port=redis.port if redis else None, args=args.server_arg,
                         env=env, workers=spec.workers, backlog=args.listen_backlog)
        else:
            server.start(workers=spec.workers)
        up = server.workers_up(server.info()) if spec.workers > 1 else None
        coro = run_idle(spec, server, opts) if spec.idle else run_fanout(spec, server, opts,
                                                                         redis)
        report = runner(asyncio.wait_for(coro, opts.timeout + 60))
        report["workers_up"] = up
    except Exception as e:  # reported in the table, the other runs go on
        report["error"] = f"{type(e).__name__}: {e}"
    finally:
        report["server_exit"] = server.stop()
        report["command"] = " ".join(server.command)
        report["pinned"] = spec.pin and args.server_cpu is not None
        if redis is not None:
            redis.stop()
        os.sched_setaffinity(0, affinity)
    return report


def one_line(r: dict) -> str:
    head = f"  {r['scenario']:<6} {r['server']:<7}"
    if "error" in r:
        return f"{head} FAILED: {r['error']}"
    if "kib_per_idle_stream" in r:
        per = r["kib_per_idle_stream"]
        return (f"{head} {r['opened']}/{r['streams']} idle streams, "
                f"{per:.1f} KiB each" if per is not None else f"{head} no stream opened")
    lat = r["latency_ms"]
    line = (f"{head} {r['delivered_per_s']:>11,.0f} deliveries/s, {r['publish_per_s']:>7,.0f}"
            f" msgs/s published, p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} max "
            f"{lat['max']:.1f} ms, lost {r['lost']} dup {r['duplicated']}, CPU server "
            f"{r['server_cpu_pct']:.0f}% ({r['server_us_per_delivery'] or 0:.1f} us per "
            f"delivery) generator {r['gen_cpu_pct']:.0f}% (CPU0 "
            f"{r['server_core_busy_pct'] or 0:.0f}% CPU1 {r['bench_core_busy_pct'] or 0:.0f}%"
            f" busy), others {r['other_cpu_s']:.1f} s in {r['window_s']:.1f} s")
    extra = []
    if r["opened"] != r["readers"] + (r["slow"] or {}).get("readers", 0):
        extra.append(f"opened {r['opened']}, server counted {r['subscribers_seen']}")
    if r["publish_errors"]:
        extra.append(f"{r['publish_errors']} publish errors: {r['publish_error_sample']}")
    odd = {k: v for k, v in r["ended"].items() if k != "closed by client"}
    if odd:
        extra.append(f"ended {odd}")
    controls = {k: v for k, v in r["controls"].items() if v and k != "end"}
    if controls or r["other_lines"] or r["unparsed"] or r["out_of_range"]:
        extra.append(f"controls {controls}, other lines {r['other_lines']}, unparsed "
                     f"{r['unparsed']}, out of range {r['out_of_range']} {r['samples']}")
    if r.get("slow"):
        s = r["slow"]
        extra.append(f"slow reader: {s['got_during_run']:,} msgs during the run, "
                     f"{s['got_in_all']:,} in all; ended {s['ended']}; controls {s['controls']}"
                     + "".join(f"; first {k} line: {v}" for k, v in s["samples"].items()
                               if k != "end"))
    if r.get("audience"):
        a = r["audience"]
        extra.append(
            f"connected {a['connected']:,} of {r['readers']:,} in {a['connect_s']:.1f} s, listen"
            f" overflows {a['listen_overflows']} (SYN drops {a['listen_drops']}), "
            f"{fmt(a['kib_per_reader'], '{:.1f}')} KiB per reader, to the last reader "
            f"{fmt(a['last_reader_ms'], '{:.0f}')} ms (median of {a['messages_reached']}; max "
            f"{fmt(a['last_reader_max_ms'], '{:.0f}')}), to the first "
            f"{fmt(a['first_reader_ms'], '{:.1f}')} ms; server fd limit {a['server_nofile']}, "
            f"{a['server_pids']} processes, workers up {a['workers_up']}")
    elif r.get("workers_up") is not None:
        extra.append(f"workers up (GET /): {r['workers_up']}")
    if r["timed_out"]:
        extra.append("TIMED OUT (--timeout)")
    if r.get("profile"):
        extra += profile_lines(r["profile"])
    if r["server_exit"].get("log_problems"):
        extra.append(f"server log problems: {r['server_exit']}")
    return line + "".join(f"\n{' ' * 16}{e}" for e in extra)


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else spec.format(v)


def profile_lines(p: dict) -> list[str]:
    lines = [f"profile {p['file']} {p.get('error', '')}"]
    if "samples" in p:
        lines.append(f"  {p['samples']} samples, {p['idle_pct']}% idle; of the busy ones, "
                     "where (self):")
        lines += [f"   {pct:5.1f}%  {name}" for name, pct in p["self"]]
        lines.append("  inclusive (streamd and twisted.web):")
        lines += [f"   {pct:5.1f}%  {name}" for name, pct in p["inclusive"]]
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   help="a, a-sse, b, c, d, e, f, g (comma-separated), or all (those); "
                   "h (the large audience), w (2 workers against 1: w-a, w-b, w-c, w-h)")
    p.add_argument("--readers", type=int, help="(h)'s readers (default 15,000; 1,000 with "
                   "--quick), also in (w)")
    p.add_argument("--sources", type=int, help="(h): the loopback addresses the readers "
                   "connect from, 127.0.0.2 on (default 8)")
    p.add_argument("--listen-backlog", type=int, metavar="N", help="streamd's listen "
                   "backlog (backlog=N on its --listen endpoint; default: streamd's own)")
    p.add_argument("--server", choices=["streamd", "nchan", "both"], default="both")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario and server; "
                   "the tables show medians")
    p.add_argument("--quick", action="store_true",
                   help="smaller scenarios (a smoke run of the harness, not figures)")
    p.add_argument("--server-cpu", type=int, default=0, help="the CPU the server is pinned to")
    p.add_argument("--bench-cpu", type=int, default=1, help="the CPU this process (and "
                   "redis-server) is pinned to")
    p.add_argument("--no-pin", action="store_true", help="pin nothing")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for other processes to leave "
                   "the CPUs (a shared machine)")
    p.add_argument("--quiet", type=float, default=5.0,
                   help="stop waiting after this many seconds without a byte for any reader")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for streamd (repeatable), e.g. --server-arg=--max-"
                   "pending=5000")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for streamd (repeatable)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' temp dirs")
    p.add_argument("--profile", help="py-spy streamd during delivery: FILE.svg for a flame "
                   "graph, any other name for collapsed stacks and a top list (last run)")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or os.path.join(
        os.path.dirname(sys.executable), "py-spy"))
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="the generator's event loop (uvloop when installed)")
    p.add_argument("--json", metavar="FILE", help="write every run's figures to FILE")
    p.add_argument("--tables", metavar="FILE", help="print the tables and targets of the "
                   "runs a --json FILE holds (of the --scenario selected), and run nothing")
    args = p.parse_args(argv)
    if args.no_pin:
        args.server_cpu = args.bench_cpu = None
    return args


def print_tables(group, results: dict) -> None:
    print("\n" + table(group, results), flush=True)
    for line in targets(group, results):
        print(line, flush=True)
    print(flush=True)


def reprint(path: str, groups) -> int:
    """The tables of the runs saved by --json."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    for group in groups:
        ids = [s.id for s in group]
        results: dict = {}
        for r in runs:
            if r["scenario"] in ids:
                results.setdefault((r["scenario"], r["server"]), []).append(r)
        results = dict(sorted(results.items(), key=lambda kv: ids.index(kv[0][0])))
        if results:
            print_tables(group, results)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    groups = select(args.scenario, args.quick, args.readers, args.sources)
    if args.tables:
        return reprint(args.tables, groups)
    servers = ["streamd", "nchan"] if args.server == "both" else [args.server]
    missing = nchan_missing()
    if "nchan" in servers and missing:
        print(f"nchan skipped: {missing}", flush=True)
        servers.remove("nchan")
    raise_fd_limit(max(s.idle + s.readers + s.slow for g in groups for s in g) + 1024)
    loop_name, runner = event_loop_runner(args.loop)
    opts = Options(timeout=args.timeout, quiet=args.quiet, server_cpu=args.server_cpu,
                   bench_cpu=args.bench_cpu, profile=args.profile, py_spy=args.py_spy)
    print(machine(), flush=True)
    where = f"CPU {args.server_cpu}" if args.server_cpu is not None else "not pinned"
    if any(not s.pin for g in groups for s in g):
        where += " ((w): nothing pinned, the generator included)"
    print(f"generator: {pin_self(args.bench_cpu)}, {loop_name}; servers: {where}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {' '.join(sys.argv)}\n", flush=True)
    everything = []
    for group in groups:
        results: dict = {}
        for rep in range(max(1, args.repeat)):
            for spec in group:
                for srv in servers:
                    if srv not in spec.servers:
                        continue
                    busy = wait_quiet(args.wait_quiet) if args.wait_quiet else None
                    r = run_once(spec, srv, args, opts, runner)
                    r["busy_cpus_before"] = busy
                    r["repeat"] = rep + 1
                    results.setdefault((spec.id, srv), []).append(r)
                    everything.append(r)
                    print(one_line(r), flush=True)
        print_tables(group, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": everything}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
