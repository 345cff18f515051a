"""
A private redis-server for the event store tests: started on a free port by the test
session (never the shared one on 6379), stopped at the end; each test uses its own
key prefix instead of flushing.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from redis_server import require


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; C{url} is its address."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, seconds: float = 10.0) -> None:
        exe = require("redis-server")  # skips the test where it is not installed
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + seconds
        # redis-server logs this line once it listens; readline returns b"" if it exits.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if b"Ready to accept connections" in line:
                return
            if not line:
                break
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
