"""
The twistd wiring: C{twistd -n streamd [options]}. Options, then L{makeService}.

This is the one place that touches the global reactor; everything below gets it
passed in.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.copyright import version as twisted_version
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from streamd import __version__, config, logs
from streamd.service import Service
from streamd.web import StreamdApp
from streamd.web.site import make_site
from streamd.workers.listening import DEFAULT_BACKLOG

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

    @ivar on_fatal: called with an exit status when streamd cannot run as configured
        (an endpoint it cannot listen on); the reactor is stopped as well.
    """

    def __init__(self, app: StreamdApp, reactor,
                 on_fatal: Callable[[int], None] = lambda status: None,
                 stderr=None) -> None:
        self.settings = app.settings
        self.reactor = reactor
        self.app = app
        self.site = make_site(self.app, reactor)
        self.ports: list[Any] = []
        self.on_fatal = on_fatal
        self.stderr = stderr if stderr is not None else sys.stderr
        self.failed = False

    def startService(self) -> None:
        super().startService()
        defer.ensureDeferred(self.app.start())
        self.listen()

    def listen(self) -> None:
        for desc in self.settings.listen:
            d = serverFromString(self.reactor, with_backlog(desc)).listen(self.site)
            d.addCallbacks(self._listening, self._listen_failed,
                           callbackArgs=(desc,), errbackArgs=(desc,))

    def _listening(self, port, desc: str) -> None:
        self.ports.append(port)
        host = port.getHost()
        kind = desc.split(":", 1)[0]
        where = getattr(host, "name", None)
        if where is None:
            where = f"{host.host}:{host.port}"
        elif isinstance(where, bytes):
            where = where.decode()
        log.info("streamd listening on {address}", address=f"{kind}:{where}")

    def _listen_failed(self, failure, desc: str) -> None:
        """
        One endpoint is unusable (a port in use, a socket path not writable): stop,
        exit non-zero, so that a service manager restarts us and a person at a
        terminal sees why, rather than a streamd that serves fewer endpoints, or none.
        """
        why = failure.getErrorMessage()
        log.critical("streamd cannot listen on {desc}: {error}", desc=desc, error=why)
        # The log may be a file: say it on stderr too, in one line, as config errors do.
        self.stderr.write(f"streamd: cannot listen on {desc}: {why}\n")
        self.stderr.flush()
        if self.failed:
            return
        self.failed = True
        self.on_fatal(1)
        # This runs before the reactor does when listen() fails at once (TCP).
        self.reactor.callWhenRunning(self._stop_reactor)

    def _stop_reactor(self) -> None:
        with contextlib.suppress(error.ReactorNotRunning):  # already stopping (SIGTERM)
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop accepting; tell every open stream (a C{shutdown} line, then the terminating
        chunk), which gives its unwritten durable messages back; stop the sources (they
        return what they hold); then wait until the last bytes reached the clients, as
        the reactor drops connections unflushed. All within C{shutdown_timeout}.
        """
        super().stopService()
        deadline = self.reactor.seconds() + self.settings.shutdown_timeout
        yield defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])
        if self.site.access is not None:
            self.site.access.flush()
        transports = [s.request.transport for s in self.app.open_streams]
        yield defer.ensureDeferred(
            self.app.stop(max(0.0, deadline - self.reactor.seconds())))
        for t in transports:
            if t is not None:
                t.loseConnection()
        while self.reactor.seconds() < deadline and any(
            t is not None and not t.disconnected for t in transports
        ):
            yield deferLater(self.reactor, 0.02, lambda: None)


def with_backlog(desc: str) -> str:
    """
    C{desc} with a listen queue of 4,096 (Twisted's default is 50, which overflows when
    thousands of readers reconnect at once; the kernel caps it at somaxconn), unless
    it says otherwise or is not a TCP, TLS or UNIX endpoint.
    """
    kind = desc.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix") or "backlog=" in desc:
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


def exit_status_at_exit(status: int) -> None:
    """
    Make the process exit with C{status} once twistd is done. twistd has no exit
    status of its own (it exits 0 whenever its reactor stops), so this replaces that 0
    at interpreter exit: after the services stopped, twistd logged its last line and
    removed its pid file.
    """

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)


def worker_options(options) -> dict[str, Any]:
    """The command line's options as the workers read them again (JSON, paths absolute)."""
    out = {k: v for k, v in options.items()
           if k != "settings" and isinstance(v, (str, int, float, bool, list, type(None)))}
    if out.get("config"):
        out["config"] = os.path.abspath(out["config"])
    return out


def makeService(options) -> service.IService:
    from twisted.internet import reactor

    stop_on_sigterm(reactor)
    settings = options["settings"]
    if settings.workers > 1:
        from streamd.workers.supervisor import Supervisor

        return Supervisor(settings, worker_options(options), reactor,
                          on_fatal=exit_status_at_exit)
    app = StreamdApp(Service(settings, reactor))
    return StreamdService(app, reactor, on_fatal=exit_status_at_exit)
