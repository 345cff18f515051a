"""
The twistd wiring: C{twistd -n streamd [options]}. Options, then L{makeService}.

This is the one place that touches the global reactor; everything below gets it
passed in.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from typing import Any

from twisted.application import service
from twisted.copyright import version as twisted_version
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from streamd import __version__, config, logs, sources
from streamd.service import Service
from streamd.twisted_internals import accept_eagerly
from streamd.web import StreamdApp
from streamd.web.channel import close_connection
from streamd.web.site import make_site
from streamd.workers import listening
from streamd.workers.listening import DEFAULT_BACKLOG, CannotListen

log = Logger()


def option_help(key: config.Key) -> str:
    """A config key's help as an option's: its values if it has a few, and its default."""
    shown = []
    if key.type == "enum":
        shown.append(f"one of: {', '.join(key.choices)}")
    if "default" not in key.help:  # a help that explains its default says it better
        shown.append(f"default: {key.default}")
    return f"{key.help} ({'; '.join(shown)})" if shown else key.help


class Options(usage.Options):
    """Every top-level config key is also an option (C{max_pending} is C{--max-pending})."""

    synopsis = "[--listen ENDPOINT]... [--config FILE] [options]"
    # getUsage wraps this into one paragraph.
    longdesc = (
        "Serves message sources as live HTTP streams (NDJSON and Server-Sent Events). "
        "Each option is also a top-level key of the TOML file given with --config FILE "
        "(--max-pending is max_pending; the command line wins), whose tables declare the "
        "rest: [streams.NAME] a stream and its source (memory, sqs, redis-pubsub, "
        "redis-list, redis-stream), [redis] the Redis connections, [auth] identity and "
        "access, [store] the event store, [channels] channel values. The README describes "
        "every key, with commands that run."
    )
    optParameters = [["config", "c", None, "TOML configuration file"]] + [
        [k.name.replace("_", "-"), None, None, option_help(k)]
        for k in config.TOP_KEYS.values()
        if k.name != "listen" and k.cli
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        self["listen"].append(endpoint)

    # A docstring's indentation would show in --help.
    opt_listen.__doc__ = (
        "Twisted endpoint to serve on, e.g. tcp:8080 (every interface) or "
        "unix:/run/streamd.sock (repeatable; default tcp:8080:interface=127.0.0.1)")

    def opt_version(self) -> None:
        """Display streamd's and Twisted's versions and exit."""
        print(f"streamd {__version__}")
        print(f"Twisted {twisted_version}")
        sys.exit(0)

    def postOptions(self) -> None:
        try:
            self["settings"] = settings_from_options(self)
        except config.ConfigError as e:
            # One line naming the key, not twistd's whole usage text.
            sys.stderr.write(f"streamd: config error: {e}\n")
            raise SystemExit(2) from None
        parent = getattr(self, "parent", None)
        json_logs = self["settings"].log_format == "json"
        if json_logs and parent is not None and parent.get("logger") is None:
            parent["logger"] = logs.use_json(parent.get("logfile"))


def settings_from_options(options: dict[str, Any]) -> config.Settings:
    file_values = config.load_toml(options["config"]) if options.get("config") else {}
    cli: dict[str, Any] = {}
    for key in config.TOP_KEYS.values():
        if key.name == "listen":
            cli["listen"] = options["listen"] or None
            continue
        if not key.cli:
            continue
        text = options.get(key.name.replace("_", "-"))
        if text is not None:
            cli[key.name] = key.parse_cli(text)
    settings = config.load_settings(file_values, cli)
    # Reading settings imports no source kind: each kind checks its stream tables now,
    # so that a bad one stops start-up here, in one line.
    sources.check_streams(settings)
    from twisted.internet import reactor

    for desc in settings.listen:
        try:
            serverFromString(reactor, desc)
        except (ValueError, TypeError, KeyError) as e:
            raise config.ConfigError("listen", f"bad endpoint {desc!r}: {e}") from None
    return settings


class StreamdService(service.Service):
    """
    Starts the app (and its L{Service}), listens on every endpoint, and ends streams
    on stop.

    @ivar listened: the endpoints were listened on before the reactor ran
        (L{privilegedStartService}, as twistd calls it).
    """

    def __init__(self, app: StreamdApp, reactor, stderr=None) -> None:
        self.settings = app.settings
        self.reactor = reactor
        self.app = app
        self.site = make_site(self.app, reactor)
        self.ports: list[Any] = []
        self.stderr = stderr if stderr is not None else sys.stderr
        self.listened = False

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint before twistd sheds privileges (C{--uid}: a port below
        1024) and before the reactor runs: an endpoint that cannot be listened on
        raises L{CannotListen}, on which twistd removes its pid file and exits 1.
        """
        super().privilegedStartService()
        self.listen()
        self.listened = True

    def startService(self) -> None:
        super().startService()
        defer.ensureDeferred(self.app.start())
        if not self.listened:  # started by other means than twistd (a worker, a test)
            self.listen()

    def listen(self) -> None:
        """
        Listen on every endpoint. The first that fails at once (all of Twisted's do:
        a port in use, a socket path not writable) raises L{CannotListen}: streamd
        stops rather than serving fewer endpoints, or none.
        """
        for desc in self.settings.listen:
            if desc.split(":", 1)[0] in listening.REUSE_PORT_KINDS:
                self._listen_queues(desc)
                continue
            d = serverFromString(self.reactor, with_backlog(desc)).listen(self.site)
            failed: list = []
            d.addCallbacks(self._listening, failed.append, callbackArgs=(desc,))
            if failed:
                raise self._cannot_listen(desc, failed[0])
            d.addErrback(self._listen_failed_later, desc)

    def _listen_queues(self, desc: str) -> None:
        """
        A TCP or TLS endpoint: L{listening.QUEUES} sockets on its address (C{SO_REUSEPORT}),
        each with its own listen queue, all served here. A burst of connections then waits
        in the kernel in up to four queues of 4,096 (C{net.core.somaxconn} caps one) while
        this process serves the ones it accepted: 15,000 readers connecting at once
        overflowed one queue thousands of times (tests/integration/test_backlog.py).
        """
        try:
            listener = listening.bind(self.reactor, desc, listening.QUEUES)
        except (OSError, ValueError) as e:
            raise self._cannot_listen(desc, Failure(e)) from None
        for fd in listener.fds:
            self.ports.append(listening.adopt(self.reactor, desc, listener.kind,
                                              listener.family, fd, self.site))
        listener.fds.clear()  # adopted: each port owns its socket now
        log.info("streamd listening on {address}", address=listener.address)

    def _listening(self, port, desc: str) -> None:
        accept_eagerly(port, getattr(port, "backlog", 0))
        self.ports.append(port)
        host = port.getHost()
        kind = desc.split(":", 1)[0]
        where = getattr(host, "name", None)
        if where is None:
            where = f"{host.host}:{host.port}"
        elif isinstance(where, bytes):
            where = where.decode()
        log.info("streamd listening on {address}", address=f"{kind}:{where}")

    def _cannot_listen(self, desc: str, failure) -> CannotListen:
        return listening.cannot_listen(desc, failure.getErrorMessage(), self.stderr)

    def _listen_failed_later(self, failure, desc: str) -> None:
        """
        An endpoint whose listen failed once the reactor ran (none of Twisted's own):
        stop. twistd then exits 0, having no exit status of its own; the log and
        stderr say why.
        """
        self._cannot_listen(desc, failure)
        with contextlib.suppress(error.ReactorNotRunning):  # already stopping (SIGTERM)
            self.reactor.stop()

    def stopService(self) -> defer.Deferred:
        """
        Stop accepting; tell every open stream (a C{shutdown} line, then the terminating
        chunk), which gives its unwritten durable messages back; stop the sources (they
        return what they hold); then close the streams' connections and wait until they
        are lost, which is once their last bytes reached the clients (the reactor would
        drop them unflushed). All within C{shutdown_timeout}, one deadline for it all.
        """
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        deadline = self.reactor.seconds() + self.settings.shutdown_timeout

        def left() -> float:
            return max(0.0, deadline - self.reactor.seconds())

        await defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])
        if self.site.access is not None:
            self.site.access.flush()
        # The streams' channels now: a request forgets its channel once it ended.
        channels = [s.request.channel for s in self.app.open_streams]
        await self.app.stop(left())
        lost = defer.DeferredList([close_connection(c) for c in channels],
                                  consumeErrors=True)
        try:
            await lost.addTimeout(left(), self.reactor)
        except defer.TimeoutError:
            log.warn("{count} connection(s) still open after shutdown_timeout: dropped",
                     count=sum(1 for c in channels if not getattr(c, "gone", True)))


def with_backlog(desc: str) -> str:
    """
    C{desc} with a listen queue of 4,096 (Twisted's default is 50, which overflows when
    thousands of readers reconnect at once; the kernel caps it at somaxconn), unless
    it says otherwise or is not a UNIX endpoint (TCP and TLS ones are bound by
    L{streamd.workers.listening}, with the same default).
    """
    if not desc.startswith("unix:") or "backlog=" in desc:
        return desc
    return f"{desc}:backlog={DEFAULT_BACKLOG}"


def stop_on_sigterm(reactor) -> None:
    """
    Make SIGTERM a normal stop: the reactor stops (the services stop gracefully) and
    the process exits 0, as a service manager expects of a clean shutdown. The
    reactor's own handler would have twistd re-raise the signal on exit (status -15).
    Installed once the reactor has installed its handlers, so that this one wins.
    """

    def stop(signum, frame) -> None:
        log.info("Received SIGTERM, shutting down.")
        reactor.callFromThread(reactor.stop)

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)

    reactor.addSystemEventTrigger("after", "startup", install)


def worker_options(options) -> dict[str, Any]:
    """The command line's options as the workers read them again (JSON, paths absolute)."""
    out = {k: v for k, v in options.items()
           if k != "settings" and isinstance(v, (str, int, float, bool, list, type(None)))}
    if out.get("config"):
        out["config"] = os.path.abspath(str(out["config"]))
    return out


def freeze_start_up(reactor) -> None:
    """
    Once the reactor runs, move everything start-up made (modules, settings, routes, the
    sources) out of the collector's sight (C{gc.freeze}): a full collection then walks only
    what came after, not the whole heap. Without it, the full collections of a busy
    second held the reactor for 18-34 ms (bench/RESULTS.md, Issue 19: the p99).
    """

    reactor.callWhenRunning(freeze_now)


def freeze_now() -> None:
    """L{freeze_start_up} at once (a worker, once it serves)."""
    if os.environ.get("STREAMD_NO_GC_FREEZE"):
        return
    gc.collect()
    gc.freeze()


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    stop_on_sigterm(reactor)
    freeze_start_up(reactor)
    settings = options["settings"]
    if settings.workers > 1:
        from streamd.workers.supervisor import Supervisor

        return Supervisor(settings, worker_options(options), reactor)
    app = StreamdApp(Service(settings, reactor))
    return StreamdService(app, reactor)
