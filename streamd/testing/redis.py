"""
A private redis-server for tests of streamd and of code built on it: started on a free
loopback port, stopped and restarted by a test that wants an outage, killed by PID at
the end. Needs pytest and C{redis-server} on PATH (Debian: C{apt-get install
redis-server}); where it is missing, the tests that need it are skipped.

Never the shared Redis on 6379: every run gets its own empty server with no
persistence, so nothing here ever needs a FLUSHALL.

In a pytest module::

    from streamd.testing.redis import redis_fixture  # the "redis" fixture

    def test_something(redis):
        redis.command("RPUSH", "jobs", "1")           # as another program would
        settings = {"redis": {"url": redis.url}, ...}

L{RedisServer} may also be used directly (C{start}, C{stop}, C{restart}; C{tls_dir}
for a TLS-only server, C{persist_dir} for one whose data survives a restart), and
C{redis_session} is a server shared by a whole test session (C{session.url}).
A private Redis Cluster (six nodes, 3 primaries and 3 replicas) is
L{streamd.testing.redis_cluster}'s. L{RedisServer.command} is a tiny blocking RESP
client for setting up and checking Redis state from a test, the way another program
would talk to Redis; L{RedisServer.cli} runs C{redis-cli}.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import pytest

#: None where it is not on PATH: the tests that need it are then skipped (L{require})
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

#: A parsed RESP2 reply: bytes, an int, None, or a list of replies. Which one depends
#: on the command, which the caller knows and the type checker cannot: so C{Any}.
Reply = Any

#: Seconds a server may take to say it is ready before the test fails.
START_TIMEOUT = 10.0


def _not_installed(program: str) -> str:
    return f"{program} is not on PATH (on Debian: apt-get install redis-server)"


def require(program: str = "redis-server") -> str:
    """
    The path of C{program} (redis-server or redis-cli). Where it is not on PATH, the test
    that needs it is skipped with the reason; in CI, where C{.ci/run} installs it, failed.
    """
    path = REDIS_SERVER if program == "redis-server" else REDIS_CLI
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not on PATH: .ci/run installs it", pytrace=False)
        pytest.skip(_not_installed(program))
    return path


#: For a test that starts a L{RedisServer} of its own rather than using the fixture: the
#: same skip, reported at the test rather than inside L{RedisServer.start}.
needs_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"), reason=_not_installed("redis-server"))


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    One redis-server process on a fixed port, which survives L{stop}/L{start}.

    @ivar port: the port, kept across restarts so that clients reconnect to it.
    @ivar proc: the running process, or None while stopped.
    """

    def __init__(self, port: int | None = None, tls_dir: str | None = None,
                 persist_dir: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        #: more redis-server arguments (a cluster node's, see L{streamd.testing.redis_cluster})
        self.extra = tuple(extra)
        #: with an append-only file here (fsync'd at every write), data survives a restart
        self.persist_dir = persist_dir
        self.proc: subprocess.Popen | None = None
        #: with TLS only (the port speaks TLS): the CA that signed the server's
        #: certificate for "localhost" (see L{make_certificates})
        self.tls_dir = tls_dir
        self.ca = make_certificates(tls_dir) if tls_dir else None

    @property
    def url(self) -> str:
        if self.tls_dir:
            return f"rediss://localhost:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if not self.tls_dir:
            return ["--port", str(self.port)]
        d = self.tls_dir
        return ["--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", f"{d}/server.pem", "--tls-key-file", f"{d}/server.key",
                "--tls-ca-cert-file", f"{d}/ca.pem", "--tls-auth-clients", "no"]

    def start(self) -> None:
        """Start the server and return once it accepts connections (bounded wait)."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [require("redis-server"), *self._listen_args(), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always", "--dir", self.persist_dir]
               if self.persist_dir else ["--appendonly", "no"]),
             "--daemonize", "no", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        # Wait on the server's own "ready" log line, not on a fixed delay.
        deadline = time.monotonic() + START_TIMEOUT
        seen = b""
        out = self.proc.stdout
        assert out is not None
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{seen.decode(errors='replace')}")
            ready, _, _ = select.select([out], [], [], left)
            if ready:
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    continue
                seen += chunk
        # Keep draining the log so that the server never blocks on a full pipe.
        threading.Thread(target=_drain, args=(out,), daemon=True).start()
        assert self.command("PING") == b"PONG"

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, as a crash would cause) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=START_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args) -> Reply:
        """Send one command over a fresh connection and return the parsed reply."""
        return self.commands(args)[0]

    def commands(self, *commands) -> list[Reply]:
        """Several commands on one fresh connection (say RPUSH, then WAIT 1 1000)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=START_TIMEOUT) as s:
            if self.ca:
                s = ssl.create_default_context(cafile=self.ca).wrap_socket(
                    s, server_hostname="localhost")
            s.sendall(b"".join(encode_command(*c) for c in commands))
            reader = s.makefile("rb")
            return [read_reply(reader) for _ in commands]

    def command_asking(self, *args) -> Reply:
        """ASKING then one command, on one fresh connection (after an ASK redirection)."""
        return self.commands(("ASKING",), args)[1]

    def cli(self, *args: str) -> str:
        """Run C{redis-cli} against this server, as an operator or script would."""
        done = subprocess.run(
            [require("redis-cli"), "-p", str(self.port), *args],
            capture_output=True, timeout=START_TIMEOUT, check=True,
        )
        return done.stdout.decode()


def make_certificates(d: str) -> str:
    """A CA and a certificate it signed for localhost / 127.0.0.1, in C{d}; the CA's path."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True,
                       timeout=START_TIMEOUT)
    with open(os.path.join(d, "san.txt"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=streamd test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.txt")
    return os.path.join(d, "ca.pem")


def _drain(stream) -> None:
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass


def encode_command(*args) -> bytes:
    """One command in RESP (what every Redis client sends)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RedisReplyError(Exception):
    pass


def read_reply(reader) -> Reply:
    """Parse one RESP2 reply from a binary file object (bulk strings stay bytes)."""
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [read_reply(reader) for _ in range(n)]
    raise ValueError(f"bad reply line {line!r}")


def served():
    """A private, empty redis-server, stopped afterwards (the body of a fixture)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="redis_session")
def redis_session_fixture():
    """
    One private redis-server for the whole test session (each test keeps to its own
    keys); C{url} is its address.
    """
    yield from served()


@pytest.fixture(name="redis")
def redis_fixture():
    """
    A private, empty redis-server for one test; killed by PID afterwards. The test is
    skipped where redis-server is not installed (L{require}).
    """
    yield from served()
