"""
The event store as an operator meets it: C{twistd -n streamd} on its embedded defaults
(SQLite in ./streamd-data), stopped and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
ROOT = Path(__file__).resolve().parents[2]
# This checkout's streamd, whatever an editable install elsewhere points at.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
LISTENING = re.compile(rb"streamd listening on tcp:127\.0\.0\.1:(\d+)")


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    log = tmp_path / "streamd.log"
    if log.exists():
        log.unlink()
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "--logfile", str(log), "streamd",
         "--listen", "tcp:0:interface=127.0.0.1", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = LISTENING.search(log.read_bytes()) if log.exists() else None
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"streamd exited {proc.returncode}: {proc.stdout.read()!r}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)  # a bounded wait on the process, not a sleep
    proc.kill()
    raise AssertionError("streamd did not start")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def post(url: str, body: bytes, ctype: str = "application/json"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.load(r)


def test_events_survive_a_restart_of_the_daemon(tmp_path):
    proc, port = start(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = post(base + "/events",
                            b'{"kind": "friend", "user": 291, "friend": 23}\n'
                            b'{"kind": "friend", "user": 23, "friend": 291}\n',
                            "application/x-ndjson")
        assert status == 201 and len(body["ids"]) == 2
        ids = body["ids"]
        tail = urllib.request.urlopen(base + f"/events/stream?since={ids[0]}", timeout=10)
        assert json.loads(tail.readline())["id"] == ids[1]
        assert stop(proc) == 0
        assert json.loads(tail.readline()) == {"shutdown": True}
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "streamd-data" / "events.sqlite3").exists()
    proc, port = start(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/events?user=23", timeout=10) as r:
            found = json.load(r)
        assert [(e["id"], e["data"]) for e in found] == [
            (ids[1], {"kind": "friend", "user": 23, "friend": 291})]
        status, body = post(base + "/jsonrpc", json.dumps(
            {"id": 1, "method": "items", "args": [], "kwargs": {"kind": "friend"}}).encode())
        assert body["result"] == [{"kind": "friend", "user": 23, "friend": 291},
                                  {"kind": "friend", "user": 291, "friend": 23}]
    finally:
        assert stop(proc) == 0
