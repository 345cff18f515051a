"""The tests of test_fast_reader_bound.py that need other processes (moved from it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import urllib.request

import pytest

from streamd.testing import memory_kib
from tests.support.process import StreamdProcess
from tests.unit.test_fast_reader_bound import MB, MESSAGES, STUCK, Curl, get, open_streams, wait_for  # noqa: F401


@pytest.fixture
def streamd(tmp_path):
    server = StreamdProcess(tmp_path, 'access_log = "off"\n')
    try:
        server.wait_started(30)
        yield server
    finally:
        server.kill()
    if server.proc.returncode not in (0, -9):
        print("".join(server.log[-40:]))



@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
def test_a_6mb_publish_reaches_a_fast_reader_whole_while_20_stuck_readers_stay_bounded(
        streamd):
    stuck = []
    curl = None
    try:
        for _ in range(STUCK):
            s = socket.create_connection(("127.0.0.1", streamd.port))
            s.sendall(b"GET /streams/big HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(s)  # and never read
        curl = Curl(streamd.url + "/streams/big")
        wait_for(streamd, lambda: open_streams(streamd) == STUCK + 1, 20, "21 open streams")
        before = memory_kib(streamd.proc.pid)

        pad = "x" * 2000
        body = b"".join(json.dumps({"n": i, "pad": pad}).encode() + b"\n"
                        for i in range(MESSAGES))
        assert 6 * 10**6 <= len(body) < 8 * MB
        request = urllib.request.Request(streamd.url + "/streams/big/messages", data=body,
                                         headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 202
        assert curl.done.wait(60), f"the fast reader got {len(curl.lines)} lines"
        after = memory_kib(streamd.proc.pid)

        got = [json.loads(line) for line in curl.lines]
        assert not [line for line in got if "error" in line], got[-1]
        assert [m["data"]["n"] for m in got] == list(range(MESSAGES))
        assert [int(m["id"]) for m in got] == list(range(1, MESSAGES + 1))
        peak = after["VmHWM"] - before["VmRSS"]
        grown = after["VmRSS"] - before["VmRSS"]
        print(f"fast reader: {len(got)} messages; streamd RSS {before['VmRSS'] // 1024} MB "
              f"-> {after['VmRSS'] // 1024} MB (+{grown / 1024:.1f} MB; peak "
              f"+{peak / 1024:.1f} MB) with {STUCK} readers that read nothing")
        assert peak <= 50 * 1024, f"RSS peaked {peak / 1024:.0f} MB above where it was"

        # The readers that read nothing made no progress: cut off, the notice first.
        curl.stop()
        wait_for(streamd, lambda: open_streams(streamd) == 0, 30, "the stuck readers cut off")
        metrics = get(streamd, "/metrics").decode()
        disconnects = [line for line in metrics.splitlines()
                       if line.startswith("streamd_slow_policy_actions_total")
                       and 'action="disconnect"' in line]
        assert disconnects and float(disconnects[0].split()[-1]) == STUCK, disconnects
        final = memory_kib(streamd.proc.pid)
        print(f"after the cut-off: RSS {final['VmRSS'] // 1024} MB")
    finally:
        if curl is not None:
            curl.stop()
        for s in stuck:
            with contextlib.suppress(OSError):
                s.close()
