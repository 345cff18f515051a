"""
The listen queue (issue 20): every TCP and TLS listener of a real C{twistd -n streamd}
has a backlog of 4,096 unless its endpoint says C{backlog=N}, in one process and with
workers. A listening socket's backlog is what C{ss -ltn} shows as its Send-Q.

And what it is for: 15,000 readers connecting at once (a reconnect storm after a restart
or a network blip) are all accepted, none turned away by a full listen queue (the
machine's C{ListenOverflows}), and all get the message published next.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from streamd.testing.redis import free_port
from streamd.workers import listening
from tests.support.h2 import certificate
from tests.support.process import ROOT
from tests.support.storm import listen_overflows, storm

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def backlogs(port: int) -> list[int]:
    """The backlog of every socket listening on 127.0.0.1:PORT (ss's Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


@pytest.fixture
def twistd(tmp_path):
    """Call C{twistd(workers, *listen)}: streamd running on those endpoints; killed after."""
    started: list[subprocess.Popen] = []

    def start(workers: int, *listen: str) -> subprocess.Popen:
        args = [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
                "streamd", "--workers", str(workers)]
        for desc in listen:
            args += ["--listen", desc]
        proc = subprocess.Popen(args, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        # Each endpoint is logged once it listens (with workers, once all joined).
        out = b""
        deadline = time.monotonic() + 30
        while out.count(b"streamd listening on") < len(listen):
            left = deadline - time.monotonic()
            ready = select.select([proc.stdout], [], [], max(0.0, left))[0]
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:  # out of time, or streamd exited
                raise AssertionError("streamd did not start:\n" + out.decode()[-3000:])
            out += chunk
        # Keep draining its log, so that it never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers at once
        proc.wait(10)


@pytest.mark.parametrize("workers", [1, 2])
def test_default_4096_and_backlog_n_wins(twistd, workers):
    key, cert = certificate()
    tcp, tls, tuned = free_port(), free_port(), free_port()
    twistd(workers,
           f"tcp:{tcp}:interface=127.0.0.1",
           f"ssl:{tls}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
           f"tcp:{tuned}:interface=127.0.0.1:backlog=77")
    # listening.QUEUES SO_REUSEPORT sockets on each address, in one process or shared out
    # among the workers (at least one each).
    sockets = workers * listening.per_worker(workers)
    with open("/proc/sys/net/core/somaxconn") as f:
        default = min(4096, int(f.read()))  # the kernel caps what listen() asks
    assert backlogs(tcp) == [default] * sockets
    assert backlogs(tls) == [default] * sockets
    assert backlogs(tuned) == [77] * sockets


# -- a reconnect storm ------------------------------------------------------------------------

BURST = 15_000


@pytest.mark.parametrize("workers", [1, 2])
def test_15000_readers_connecting_at_once_are_all_accepted_with_no_overflow(twistd, workers):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < BURST + 1000:
        pytest.skip(f"needs {BURST + 1000} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        port = free_port()
        twistd(workers, f"tcp:{port}:interface=127.0.0.1")
        before = listen_overflows()
        answered, reached = storm(port, BURST)
        overflows = listen_overflows() - before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (answered, reached, overflows) == (BURST, BURST, 0)
