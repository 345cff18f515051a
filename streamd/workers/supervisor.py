"""
The parent of several workers (C{workers = N}, N > 1): it binds every C{listen} endpoint
once (L{streamd.workers.listening}), holds the broker the workers share
(L{streamd.workers.broker}) on a UNIX socket, and runs N worker processes
(C{python -m streamd.workers.worker}), each serving the same endpoints with today's
single-process service.

A worker that dies is started again at once, then after a delay that doubles up to 5 s
while it keeps dying, and the log says why. SIGTERM stops every worker gracefully (each
gives its readers the shutdown notice), then the parent. Each worker's log events come
to the parent as JSON lines on the worker's stdout and go on through the parent's log
(one stream, in the parent's format, with the worker's index); other output of a worker
(the C{access_log = "stdout"} lines) passes through as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from streamd.workers import listening
from streamd.workers.broker import Broker, BrokerFactory

log = Logger()

#: Environment variable that hands a worker its part (see L{streamd.workers.worker}).
SPEC = "STREAMD_WORKER"
#: Set, TCP and TLS workers share one socket (how bench/spread.py measures the choice).
SHARED_SOCKET = "STREAMD_SHARED_LISTEN_SOCKET"
FIRST_DELAY = 0.1
MAX_DELAY = 5.0
#: A worker that ran this long before it died is restarted at once again.
STABLE_AFTER = 30.0
RECORD = b"\x1e"


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: its output relayed to the parent's log, its end reported."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.partial = {1: b"", 2: b""}
        self.ended: defer.Deferred[None] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self.partial.get(fd, b"") + data).split(b"\n")
        self.partial[fd] = lines.pop()
        for line in lines:
            self.relay(fd, line)

    def relay(self, fd: int, line: bytes) -> None:
        if fd == 1 and line.startswith(RECORD):
            try:
                event = eventFromJSON(line[1:].decode("utf-8", "replace"))
            except ValueError:
                event = None
            if event is not None:
                event["worker"] = self.index
                system = event.get("log_system")
                if system is None:
                    level = event.get("log_level")
                    system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
                event["log_system"] = f"worker {self.index} {system}"
                globalLogPublisher(event)
                return
        out = sys.stdout if fd == 1 else sys.stderr
        out.write(line.decode("utf-8", "replace") + "\n")
        out.flush()

    def processEnded(self, reason) -> None:
        for fd, rest in self.partial.items():
            if rest:
                self.relay(fd, rest)
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class Supervisor(service.Service):
    """
    @ivar processes: worker index -> its L{WorkerProcess} while it runs.
    @ivar options: the command line's options, for the workers to read the same settings.
    """

    def __init__(self, settings, options: dict[str, Any], reactor, stderr=None) -> None:
        self.settings = settings
        self.options = options
        self.reactor = reactor
        self.stderr = stderr if stderr is not None else sys.stderr
        self.count = settings.workers
        self.broker = Broker(settings, reactor)
        self.broker.on_joined = self.joined
        self.listeners: list[listening.Listener] = []
        self.processes: dict[int, WorkerProcess] = {}
        self.started_at: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.pending: dict[int, Any] = {}  # index -> the delayed call that restarts it
        self.announced = False
        self.stopping = False
        self.dir = ""

    def privilegedStartService(self) -> None:
        """
        Bind every endpoint before twistd sheds privileges and before the reactor runs;
        one that cannot be bound raises L{listening.CannotListen}: twistd then removes
        its pid file and exits 1.
        """
        super().privilegedStartService()
        for desc in self.settings.listen:
            try:
                self.listeners.append(listening.bind(
                    self.reactor, desc, self.count * listening.per_worker(self.count),
                    shared=SHARED_SOCKET in os.environ))
            except Exception as e:
                for bound in self.listeners:
                    listening.close(bound)
                raise listening.cannot_listen(desc, str(e), self.stderr) from None

    def startService(self) -> None:
        super().startService()
        self.dir = tempfile.mkdtemp(prefix="streamd-workers-")
        self.broker_path = os.path.join(self.dir, "broker.sock")
        defer.ensureDeferred(self.broker.start())
        self.broker_port = self.reactor.listenUNIX(self.broker_path, BrokerFactory(self.broker),
                                                   mode=0o600)
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        self.pending.pop(index, None)
        if self.stopping:
            return
        spec = {
            "index": index,
            "broker": self.broker_path,
            "options": self.options,
            "listen": [[lst.desc, lst.kind, lst.family, fd] for lst in self.listeners
                       for fd in lst.fds_for(index, self.count)],
        }
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for lst in self.listeners:
            for fd in lst.fds_for(index, self.count):
                fds[fd] = fd
        env = dict(os.environ, **{SPEC: json.dumps(spec)})
        worker = WorkerProcess(self, index)
        self.processes[index] = worker
        self.started_at[index] = self.reactor.seconds()
        self.reactor.spawnProcess(worker, sys.executable,
                                  [sys.executable, "-m", "streamd.workers.worker"],
                                  env=env, childFDs=fds)

    def joined(self, index: int) -> None:
        if self.announced or len(self.broker.workers) < self.count:
            return
        self.announced = True
        for lst in self.listeners:
            log.info("streamd listening on {address}", address=lst.address)
        log.info("streamd serving with {count} workers", count=self.count)

    def ended(self, worker: WorkerProcess, reason) -> None:
        index = worker.index
        if self.processes.get(index) is worker:
            del self.processes[index]
        if self.stopping:
            return
        ran = self.reactor.seconds() - self.started_at.get(index, 0.0)
        delay = 0.0 if ran >= STABLE_AFTER else self.delays.get(index, 0.0)
        self.delays[index] = min(MAX_DELAY, max(FIRST_DELAY, delay * 2))
        log.warn("worker {index} ended ({why}) after {ran:.1f}s; starting it again in "
                 "{delay:.1f}s", index=index, why=reason.getErrorMessage(), ran=ran,
                 delay=delay)
        self.pending[index] = self.reactor.callLater(delay, self.spawn, index)

    @defer.inlineCallbacks
    def stopService(self):
        """SIGTERM to every worker; wait for them (KILL past the timeout); then close."""
        super().stopService()
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        running = list(self.processes.values())
        for worker in running:
            self._signal(worker, "TERM")
        if running:
            all_ended = defer.DeferredList([w.ended for w in running])
            timeout = self.settings.shutdown_timeout + 5.0
            try:
                yield all_ended.addTimeout(timeout, self.reactor)
            except defer.TimeoutError:
                log.warn("workers still running after {timeout}s: killing them",
                         timeout=timeout)
                for worker in list(self.processes.values()):
                    self._signal(worker, "KILL")
        yield defer.ensureDeferred(self.broker.stop())
        yield defer.maybeDeferred(self.broker_port.stopListening)
        for lst in self.listeners:
            listening.close(lst)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _signal(worker: WorkerProcess, name: str) -> None:
        if worker.transport is None:  # not started
            return
        with contextlib.suppress(error.ProcessExitedAlready):
            worker.transport.signalProcess(name)
