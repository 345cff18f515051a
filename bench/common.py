"""
What every script of bench/ shares, written once: a free loopback port, the streamd
launcher (L{Streamd}: C{twistd -n streamd} on a free port, with the bench's config or a
script's own) and a private redis-server (L{Redis}), each in a temp directory of its own
and optionally pinned to a CPU; what the scripts read from /proc (CPU seconds, RSS,
per-CPU busy time); a message's L{payload}; and L{percentile}. nginx with Nchan, which
only fanout.py runs against, is in nchan.py.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")
#: The checkout bench/ belongs to: the streamd a script starts is this one.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def cpu_busy() -> dict[str, float]:
    """Busy CPU seconds so far, all CPUs ("all") and each ("cpu0", "cpu1", ...)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            out["all" if name == "cpu" else name] = (
                user + nice + system + irq + softirq + steal) / TICK
    return out


def children(pid: int) -> list[int]:
    """The direct children of a process (of any of its threads)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split() if int(x) not in out]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (nginx's workers, streamd's --workers)."""
    tree, i = [pid], 0
    while i < len(tree):
        tree += [c for c in children(tree[i]) if c not in tree]
        i += 1
    return tree


def nofile_limit(pid: int) -> int | None:
    """A process's soft limit of open files (C{/proc/PID/limits}), None if unknown."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    value = line.split()[3]
                    return -1 if value == "unlimited" else int(value)
    except (OSError, IndexError, ValueError):
        pass
    return None


#: TcpExt counters of C{/proc/net/netstat} read around a burst of connections: how often
#: a listen queue overflowed (C{netstat -s}: "times the listen queue of a socket
#: overflowed") and the SYNs to listening sockets dropped. System-wide counters.
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops")


def tcp_ext(names=LISTEN_COUNTERS) -> dict[str, int]:
    """Some TcpExt counters of C{/proc/net/netstat} (missing ones are left out)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=False))
            return {n: table[n] for n in names if n in table}
    return {}


def raise_nofile() -> None:
    """In a server about to start: its soft limit of open files up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


class Process:
    """A server process started for one run, in a temp directory of its own."""

    name = "?"

    def __init__(self, cpu: int | None = None, keep_logs: bool = False) -> None:
        self.cpu = cpu
        self.keep_logs = keep_logs
        self.dir = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.workers = 1
        self.command: list[str] = []

    def spawn(self, cmd: list[str], env: dict | None = None) -> None:
        """Start it (pinned); its soft limit of open files raised to the hard one."""
        self.command = pinned(self.cpu, cmd)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                                         preexec_fn=raise_nofile)

    def pids(self) -> list[int]:
        """The process and its descendants (nginx's workers, streamd's --workers)."""
        if self.proc is None:
            return []
        return process_tree(self.proc.pid)

    def nofile(self) -> int | None:
        """The least soft limit of open files among its processes."""
        limits = [n for n in map(nofile_limit, self.pids()) if n is not None]
        return min(limits, key=lambda n: n if n >= 0 else 1 << 62) if limits else None

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss(self) -> dict[str, int]:
        """RSS and peak RSS (KiB), added up over the processes."""
        out = {"VmRSS": 0, "VmHWM": 0}
        for pid in self.pids():
            for k, v in rss_kib(pid).items():
                out[k] += v
        return out

    def info(self, name: str = "-") -> dict:
        """The server's status page (C{info_path}) as JSON; {} if it gives none."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", self.info_path(name), headers=self.info_headers)
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def log_problems(self) -> int:
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> dict:
        """Stop it; report its exit code and the problems its log shows."""
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        report = {"exit_code": self.proc.returncode, "log_problems": self.log_problems()}
        if report["log_problems"] or self.keep_logs:
            report["log"] = self.dir
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.proc = None
        return report


# --------------------------------------------------------------------------- streamd


def twistd_command() -> list[str]:
    """The twistd beside this interpreter, or the same entry point through C{-c}."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()"]


class Streamd(Process):
    """
    C{twistd -n streamd} of this checkout on a free port, its log in its directory: with
    fanout.py's config (memory streams, no heartbeats) or a script's own.
    """

    name = "streamd"
    ndjson_suffix = b""

    def start(self, redis_port: int | None = None, args: list[str] = (),
              env: dict | None = None, workers: int = 1, backlog: int | None = None,
              config: str | None = None, twistd: list[str] | None = None) -> None:
        """
        Start it, and return once it listens. C{workers} > 1 adds C{--workers N} (1 adds
        nothing: streamd as it always ran); C{backlog}, the listen backlog of its endpoint
        (None: streamd's default); C{config}, the whole config file (None: memory
        streams, no heartbeats, and with C{redis_port} the Redis scenario's stream);
        C{args}, more of twistd's streamd options (another C{--listen}); C{twistd}, the
        command instead of L{twistd_command}.
        """
        if config is None:
            config = "heartbeat = 0\ndynamic_streams = true\n"
            if redis_port:
                config += (f'[redis]\nurl = "redis://{HOST}:{redis_port}/0"\n'
                           '[streams.redis]\nsource = "redis-pubsub"\nchannels = ["bench"]\n')
        conf = os.path.join(self.dir, "streamd.toml")
        with open(conf, "w") as f:
            f.write(config)
        self.port = free_port()
        self.workers = workers
        listen = f"tcp:{self.port}:interface={HOST}" + (f":backlog={backlog}" if backlog
                                                          else "")
        extra = ["--workers", str(workers)] if workers != 1 else []
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        self.spawn([*(twistd or twistd_command()), "-n", "--pidfile=", "streamd",
                    "--config", conf, "--listen", listen, *extra, *args],
                   env=dict(os.environ, PYTHONPATH=path, **(env or {})))
        marker = f"streamd listening on tcp:{HOST}:{self.port}"

        def listening() -> bool:
            with open(self.log_path, errors="replace") as f:
                return marker in f.read()

        try:
            wait_for(listening, 30, "streamd to listen", self.proc)
        except RuntimeError as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{e} ({' '.join(self.command)}):\n{tail}") from None

    def wait_healthy(self, seconds: float = 30) -> None:
        """Until C{GET /health} answers 200: every source connected."""
        def healthy() -> bool:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                return False
            finally:
                conn.close()

        wait_for(healthy, seconds, "streamd's sources to connect", self.proc)

    def sub_request(self, name: str, sse: bool) -> bytes:
        accept = "text/event-stream" if sse else "application/x-ndjson"
        return (f"GET /streams/{quote(name)} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Accept: {accept}\r\n\r\n").encode()

    def pub_path(self, name: str) -> str:
        return f"/streams/{quote(name)}/messages"

    pub_ok = (202,)
    info_headers = {"Accept": "application/json"}

    def info_path(self, name: str) -> str:
        return "/"

    def subscribers(self, info: dict) -> int:
        """
        Open streams, from C{GET /} (a fresh server holds only this run's); with
        C{--workers}, the parent's sum over its workers.
        """
        return info.get("open_streams", -1)

    @staticmethod
    def workers_up(info: dict) -> int | None:
        """How many workers C{GET /} says are up (None: no C{workers} list, one process)."""
        workers = info.get("workers")
        if not isinstance(workers, list):
            return None
        return sum(1 for w in workers if isinstance(w, dict) and w.get("up"))

    def log_problems(self) -> int:
        try:
            with open(self.log_path, errors="replace") as f:
                log = f.read()
        except OSError:
            return 0
        return log.count("Traceback") + log.count("Unhandled")


# --------------------------------------------------------------------------- redis


class Redis(Process):
    """A private redis-server on a free port: no persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.port = free_port()
        self.spawn([shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                    "--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no"])

        def answers() -> bool:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(answers, 10, "redis-server", self.proc)

    def numsub(self, channel: bytes) -> int:
        with socket.create_connection((HOST, self.port), timeout=5) as s:
            s.sendall(b"*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$%d\r\n%s\r\n"
                      % (len(channel), channel))
            return int(s.recv(4096).split(b"\r\n")[-2][1:])


# --------------------------------------------------------------------------- figures


def percentile(sorted_values, q: float) -> float:
    """The C{q} quantile (0.99: p99) of values sorted already; NaN if there are none."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


PAD = b"x" * (1 << 20)


def payload(seq: int, size: int) -> bytes:
    """
    One message of C{size} bytes: C{seq} and the send time first (found by a bytes search),
    then padding. The send time is C{time.time()} in integer microseconds.
    """
    head = b'{"seq":%d,"t":%d,"pad":"' % (seq, time.time_ns() // 1000)
    return head + PAD[: max(0, size - len(head) - 2)] + b'"}'
