"""
streamd-tail, streamd-pub and the blocking read(), run as a user runs them: separate
processes against streamd run by twistd in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import LISTENING, TWISTD, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
# The code of this checkout, whatever the virtualenv has installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
CLI = [sys.executable, "-m", "streamd.client.cli"]  # what the console scripts run


@pytest.fixture(scope="module")
def streamd(tmp_path_factory):
    """One daemon for this module (each test uses streams of its own)."""
    tmp_path = tmp_path_factory.mktemp("streamd")
    log = tmp_path / "streamd.log"
    proc = subprocess.Popen(
        [*TWISTD, "--pidfile=", "-n", "--logfile", str(log), "streamd",
         "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = wait_for_line(proc, log, LISTENING)
        yield f"http://127.0.0.1:{int(port)}"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def open_streams(base: str) -> int:
    return json.load(urllib.request.urlopen(base + "/", timeout=10))["open_streams"]


def wait_for_open_streams(base: str, n: int, proc: subprocess.Popen) -> None:
    for _ in range(400):  # bounded: 400 x 50 ms
        if open_streams(base) == n:
            return
        assert proc.poll() is None, proc.communicate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)  # a bounded wait on the process, not a sleep
    raise AssertionError(f"never {n} open streams")


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, env=ENV,
                          timeout=30)


def test_tail_prints_records_as_they_are_published_and_exits_after_the_limit(streamd):
    tail = subprocess.Popen([*CLI, "tail", streamd + "/streams/news", "--limit", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        wait_for_open_streams(streamd, 1, tail)
        pub = run("pub", streamd + "/streams/news", "-",
                  stdin=b'{"n": 1}\n{"n": 2}\n{"n": 3}\n{"n": 4}\n')
        assert pub.returncode == 0, pub.stderr
        assert json.loads(pub.stdout) == {"ids": ["1", "2", "3", "4"]}
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    assert out.decode().splitlines() == [
        '{"id":"1","stream":"news","data":{"n": 1}}',
        '{"id":"2","stream":"news","data":{"n": 2}}',
        '{"id":"3","stream":"news","data":{"n": 3}}',
    ]
    # Resume after an id, as SSE: the same lines as NDJSON, data as the server sent it.
    resumed = run("tail", streamd + "/streams/news", "--since", "2", "--sse", "--limit", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.decode().splitlines() == [
        '{"id":"3","stream":"news","data":{"n": 3}}',
        '{"id":"4","stream":"news","data":{"n": 4}}']


def test_pub_from_a_file_and_errors(streamd, tmp_path):
    one = tmp_path / "one.json"
    one.write_text('{\n  "title": "hello"\n}\n')  # one JSON value over several lines
    pub = run("pub", streamd + "/streams/notes/messages", str(one))
    assert pub.returncode == 0, pub.stderr
    assert json.loads(pub.stdout) == {"ids": ["1"]}
    got = run("tail", streamd + "/streams/notes", "--since", "0", "--limit", "1")
    assert json.loads(got.stdout)["data"] == {"title": "hello"}

    bad = run("pub", streamd + "/streams/notes", "-", stdin=b'{"ok": 1}\n{oops\n')
    assert bad.returncode == 1
    assert "400 line 2" in bad.stderr.decode()
    refused = run("tail", streamd + "/streams/no%20such", "--limit", "1")
    assert refused.returncode == 1
    assert "400 stream name" in refused.stderr.decode()


def test_blocking_read_can_be_called_again_in_one_process(streamd):
    pub = run("pub", streamd + "/streams/nums", "-", stdin=b"1\n2\n3\n")
    assert pub.returncode == 0, pub.stderr
    script = (
        "import sys\n"
        "from streamd.client import read\n"
        "url = sys.argv[1]\n"
        "print(read(url, since='0', limit=2))\n"
        "print(read(url, since='2', limit=1, sse=True))\n"
        "print(read(url + '?ack=client', since='1', limit=2))\n"  # taken, so acked
    )
    done = subprocess.run([sys.executable, "-c", script, streamd + "/streams/nums"],
                          capture_output=True, env=ENV, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ["[1, 2]", "[3]", "[2, 3]"]


class HangUpServer:
    """A real listening socket that accepts each connection and closes it at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(30)  # bounded: the thread ends with the test at the latest
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/streams/news"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("n", [1, 2])
def test_max_retries_n_gives_up_after_n_failed_attempts(n):
    server = HangUpServer()
    try:
        tail = run("tail", server.url, "--max-retries", str(n))
    finally:
        server.close()
    assert tail.returncode == 1
    assert f"gave up after {n} attempts" in tail.stderr.decode(), tail.stderr
    assert server.accepted == n


def test_max_retries_must_be_at_least_1():
    tail = run("tail", "http://127.0.0.1:9/streams/news", "--max-retries", "0")
    assert tail.returncode == 2
    assert "--max-retries: must be at least 1" in tail.stderr.decode()
