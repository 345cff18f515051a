"""Helpers of tests that test_daemon.py shared."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


LISTENING = re.compile(rb"streamd listening on tcp:127\.0\.0\.1:(\d+)")


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    log = tmp_path / "streamd.log"
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "--logfile", str(log), "streamd",
         "--listen", "tcp:0:interface=127.0.0.1", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    port = wait_for_line(proc, log, LISTENING)
    return proc, int(port)


def wait_for_line(proc: subprocess.Popen, log: Path, pattern: re.Pattern, seconds=20.0):
    """Wait (bounded) for the daemon to log C{pattern}; return its first group."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists():
            m = pattern.search(log.read_bytes())
            if m:
                return m.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"streamd exited {proc.returncode}: {proc.stdout.read()!r}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)  # a bounded wait on the process, not a sleep
    proc.kill()
    raise AssertionError(f"no {pattern.pattern!r} in {log.read_bytes()[-2000:]!r}")
