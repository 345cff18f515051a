"""
The listening sockets of several workers: bound once by the parent, served by every
worker (L{bind} in the parent, L{adopt} in a worker).

A C{tcp:} or C{ssl:} endpoint gets L{QUEUES} sockets shared out among the workers (at
least one each; one process serves all of them), all bound to the same address with
C{SO_REUSEPORT}: the kernel spreads new connections evenly over them (a shared socket lets
whichever worker wakes first take a whole burst), each has a listen queue of its own (a
burst of readers waits in all of them), and since the parent keeps every socket open,
connections that arrive while a worker restarts wait in its queues instead of being
refused. A C{unix:} endpoint is one socket that every worker accepts on.

Twisted parses the endpoint string as for one process, so every option it documents
means the same; the parsed endpoint keeps them in private fields, read through
L{streamd.twisted_internals.endpoint_fields}. A listener's backlog is 4,096 unless the string
sets C{backlog=} (Twisted's default of 50 overflows in a reconnect storm, and so did 1,024
for 15,000 readers connecting at once: bench/RESULTS.md, "A reconnect storm"; the kernel
caps it at C{net.core.somaxconn}).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import endpoints
from twisted.internet.abstract import isIPv6Address
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from streamd.twisted_internals import accept_eagerly, endpoint_fields

log = Logger()

DEFAULT_BACKLOG = 4096

#: The endpoint kinds served from one C{SO_REUSEPORT} socket per worker (and, with one
#: worker, from L{QUEUES} sockets in the one process).
REUSE_PORT_KINDS = ("tcp", "tcp6", "ssl")

#: Listen queues of a TCP or TLS endpoint, in one process or spread over the workers: a
#: burst waits in up to 4 x 4,096 connections' worth of kernel queues while the first
#: are served.
QUEUES = 4


class CannotListen(Exception):
    """
    An endpoint cannot be listened on (a port in use, a socket path not writable).
    Raised from a service's C{privilegedStartService}: twistd then removes its pid file,
    reports the error to the shell that started a daemon, and exits 1.
    """


def cannot_listen(desc: str, why: str, stderr) -> CannotListen:
    """Say why C{desc} cannot be listened on, in the log and on stderr, in one line."""
    message = f"cannot listen on {desc}: {why}"
    log.critical("streamd {message}", message=message)
    # The log may be a file: say it on stderr too, in one line, as config errors do.
    stderr.write(f"streamd: {message}\n")
    stderr.flush()
    return CannotListen(message)


@dataclass
class Listener:
    """One C{listen} endpoint, bound: its kind, address family and sockets' descriptors."""

    desc: str
    kind: str  # "tcp", "ssl" or "unix"
    family: int
    fds: list[int] = field(default_factory=list)
    address: str = ""  # what the log says it listens on
    port: Any = None  # the parent's own Twisted port of a unix socket (it unlinks the path)

    def fds_for(self, worker: int, workers: int) -> list[int]:
        """The sockets worker C{worker} of C{workers} accepts on (its share of them)."""
        if len(self.fds) < workers:  # one socket they all accept on (unix:, or shared)
            return [self.fds[worker % len(self.fds)]]
        share = len(self.fds) // workers
        return self.fds[worker * share:(worker + 1) * share]


def per_worker(workers: int) -> int:
    """
    Sockets per worker for a TCP or TLS endpoint: L{QUEUES} listen queues in all, at
    least one each. Two workers with one queue of 4,096 each overflowed 13,614-14,428
    times when 15,000 readers connected at once on a quiet machine (bench/storm.py).
    """
    return max(1, -(-QUEUES // workers))


def backlog_of(desc: str, parsed: int) -> int:
    return parsed if "backlog=" in desc else DEFAULT_BACKLOG


def bind(reactor, desc: str, workers: int, shared: bool = False) -> Listener:
    """
    Bind C{desc} for C{workers} workers: one socket each for TCP and TLS (or, with
    C{shared}, one socket they all accept on, as bench/spread.py compares), one for UNIX.
    """
    endpoint = endpoints.serverFromString(reactor, desc)
    if isinstance(endpoint, endpoints.UNIXServerEndpoint):
        fields = endpoint_fields(endpoint)
        port = reactor.listenUNIX(
            fields.path, Factory(), backlog=backlog_of(desc, fields.backlog),
            mode=fields.mode, wantPID=fields.want_pid)
        port.stopReading()  # the workers accept; the parent only holds it
        return Listener(desc, "unix", socket.AF_UNIX, [port.fileno()],
                        f"unix:{fields.path}", port)
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        kind = "ssl"
    elif isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
        kind = "tcp"
    else:
        raise ValueError(f"{desc!r}: workers serve tcp:, ssl: and unix: endpoints")
    fields = endpoint_fields(endpoint)
    interface = fields.interface
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    if isinstance(endpoint, endpoints.TCP6ServerEndpoint) and not interface:
        interface, family = "::", socket.AF_INET6
    listener = Listener(desc, kind, family)
    port = claim(family, interface, fields.port)
    backlog = backlog_of(desc, fields.backlog)
    try:
        for _ in range(1 if shared else workers):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((interface, port))
            port = s.getsockname()[1]  # port 0: the others take the one the first got
            s.listen(backlog)
            s.setblocking(False)
            fd = s.detach()
            os.set_inheritable(fd, True)
            listener.fds.append(fd)
    except OSError:
        close(listener)
        raise
    host = f"[{interface}]" if family == socket.AF_INET6 else interface
    listener.address = f"{kind}:{host or '0.0.0.0'}:{port}"
    return listener


def claim(family: int, interface: str, port: int) -> int:
    """
    Fail (C{EADDRINUSE}) if anything listens on C{(interface, port)} already, even
    another streamd: C{SO_REUSEPORT} alone would let it share the port, and a second
    instance started by mistake would silently take half of the connections. Returns
    the port (the one the kernel picked, for port 0).
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not REUSEPORT
        probe.bind((interface, port))
        return probe.getsockname()[1]


def close(listener: Listener) -> None:
    if listener.port is not None:
        listener.port.stopListening()
        return
    for fd in listener.fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    listener.fds.clear()


def adopt(reactor, desc: str, kind: str, family: int, fd: int, site):
    """
    Serve C{site} on descriptor C{fd} that L{bind} bound, TLS as C{desc} says,
    accepting every waiting connection at each wake-up (L{accept_eagerly}).
    """
    fields = endpoint_fields(endpoints.serverFromString(reactor, desc))
    factory = site
    if kind == "ssl":
        factory = TLSMemoryBIOFactory(fields.context_factory, False, site)
    port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)  # adoptStreamPort took a duplicate
    accept_eagerly(port, backlog_of(desc, fields.backlog))
    return port
