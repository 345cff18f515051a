"""
A private redis-server for the client's tests: a free loopback port, no persistence,
killed by PID afterwards. Never the shared Redis on 6379.

(If the Redis sources' C{tests/redis_server.py} is on main, this can become an import
of its C{redis} fixture.)
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # Wait (bounded) for the server's own "ready" line, not a fixed delay.
        deadline = time.monotonic() + START_TIMEOUT
        seen = b""
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {seen[-2000:]!r}")
            if select.select([self.proc.stdout], [], [], left)[0]:
                seen += os.read(self.proc.stdout.fileno(), 65536)
        # Keep reading its log so that it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            while self.proc.stdout.read(65536):
                pass
        except (OSError, ValueError):
            pass

    def cli(self, *args: str) -> str:
        """Run C{redis-cli} against this server, as another process would."""
        done = subprocess.run([REDIS_CLI, "-p", str(self.port), *args],
                              capture_output=True, timeout=START_TIMEOUT, check=True)
        return done.stdout.decode().strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(START_TIMEOUT)


@pytest.fixture(name="redis_server")
def redis_server_fixture():
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
