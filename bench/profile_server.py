"""
Profile the server under test with py-spy (streamd only: it is a Python process).

C{--profile FILE.svg} writes a flame graph; any other name gets py-spy's collapsed stacks
and a summary: the share of samples spent idle, and the functions with the most samples.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

LINENO_RE = re.compile(r":\d+\)$")


def start_profiler(args, server):
    """py-spy on a streamd server (a Python process), if C{args.profile} names a file."""
    if not args.profile or server.name != "streamd" or not server.pids():
        return None
    fmt = "flamegraph" if args.profile.endswith(".svg") else "raw"
    # Blocking mode (py-spy pauses the server for each sample): --nonblocking reads stacks
    # while they change, and then put most samples on the wrong line.
    cmd = [args.py_spy, "record", "--pid", str(server.pids()[0]), "--rate", "250", "--idle",
           "--format", fmt, "-o", args.profile]
    if server.workers > 1:  # streamd --workers: its worker processes too
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_profiler(args, prof) -> dict | None:
    if prof is None:
        return None
    prof.send_signal(signal.SIGINT)
    try:
        _, err = prof.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        prof.kill()
        return {"file": args.profile, "error": "py-spy did not stop"}
    out = {"file": args.profile}
    if prof.returncode not in (0, -signal.SIGINT):
        out["error"] = err.decode(errors="replace")[-300:]
    if not args.profile.endswith(".svg") and os.path.exists(args.profile):
        out.update(profile_summary(args.profile))
    return out


def profile_summary(path: str, n: int = 12) -> dict:
    """
    From py-spy's collapsed stacks (taken with C{--idle}): the share of samples the server
    spent idle, and the functions (line numbers folded) where it spent the busy ones, both
    in themselves (self) and with what they called (inclusive).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle_samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            frames = [LINENO_RE.sub(")", frame) for frame in stack.split(";")]
            total += c
            if frames[-1].startswith(("poll (", "EPollReactor.doPoll")):
                idle_samples += c
                continue
            own[frames[-1]] = own.get(frames[-1], 0) + c
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + c
    busy = max(1, total - idle_samples)

    def top(table):
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [(name, round(100.0 * c / busy, 1)) for name, c in ranked]

    return {"samples": total, "idle_pct": round(100.0 * idle_samples / max(1, total), 1),
            "self": top(own), "inclusive": top(
                {k: v for k, v in inclusive.items() if "streamd/" in k or "web/" in k})}
