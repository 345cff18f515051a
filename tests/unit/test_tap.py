"""
C{twistd streamd --help} and C{--version}: what a newcomer reads first; and
L{StreamdService}'s start and stop, in memory: listening before the reactor runs, and a
shutdown that waits on the connections' loss, not a poll.
"""

from __future__ import annotations

import errno
import gc
import io
import re
import socket

import pytest
from twisted.copyright import version as twisted_version
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from streamd import __version__, config
from streamd.tap import Options, StreamdService, freeze_now, freeze_start_up
from streamd.workers import listening
from streamd.workers.listening import CannotListen
from tests.support.web import settings, stub


def usage() -> str:
    return " ".join(Options().getUsage(width=1000).split())


def option_help(name: str) -> str:
    """The help text of C{--name}, up to the next option."""
    m = re.search(rf"--{name}=? (.*?)(?= -\w, --| --|$)", usage())
    assert m, name
    return m.group(1)


def test_help_points_to_the_config_tables_and_the_readme():
    text = usage()
    for table in ("--config FILE", "[streams.NAME]", "[redis]", "[auth]", "[store]",
                  "[channels]", "README"):
        assert table in text, table


@pytest.mark.parametrize("key", [k for k in config.TOP_KEYS.values()
                                 if k.type == "enum" and k.cli], ids=lambda k: k.name)
def test_every_enum_option_lists_its_values(key):
    shown = option_help(key.name.replace("_", "-"))
    assert f"one of: {', '.join(key.choices)}" in shown, shown


def test_each_option_shows_one_default():
    for key in config.TOP_KEYS.values():
        if key.cli and key.name != "listen":
            shown = option_help(key.name.replace("_", "-"))
            assert shown.count("default") == 1, (key.name, shown)
    assert "only when no [streams] are declared" in option_help("dynamic-streams")
    assert "None" not in option_help("dynamic-streams")


def test_listen_help_names_the_default():
    assert "default tcp:8080:interface=127.0.0.1" in option_help("listen")


def test_version_prints_streamds_and_twisteds(capsys):
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"streamd {__version__}", f"Twisted {twisted_version}"]


# -- Shutdown: by notification, within one timeout ----------------------------------------


class Connection:
    """One HTTP/1.1 connection to C{service}'s Site, in memory (a StringTransport)."""

    def __init__(self, service: StreamdService) -> None:
        self.protocol = service.site.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def get(self, path: bytes) -> None:
        self.protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def serving(**top) -> tuple[StreamdService, Clock]:
    app, _, clock = stub(settings(store={"backend": "memory"}, **top))
    return StreamdService(app, clock), clock


def test_stop_ends_each_stream_and_waits_for_its_connection_to_be_lost_not_a_poll():
    service, clock = serving()
    reader = Connection(service)
    reader.get(b"/streams/news")
    assert len(service.app.open_streams) == 1
    stopped = service.stopService()
    assert reader.transport.value().endswith(b'{"shutdown":true}\n\r\n0\r\n\r\n')
    assert reader.transport.disconnecting  # asked to close once its bytes are out
    assert not stopped.called  # they are not yet: the client has not read them
    calls = len(clock.getDelayedCalls())
    for _ in range(10):  # time passes: nothing polls
        clock.advance(0.02)
        assert len(clock.getDelayedCalls()) == calls and not stopped.called
    reader.lose()
    assert stopped.called  # the moment the connection is gone, not a poll later
    # The overall timeout cancelled (and the connection's idle timer): only the access
    # log's own flush is left.
    assert [c.func for c in clock.getDelayedCalls()] == [service.site.access.flush]


def test_stop_gives_up_on_a_connection_that_stays_open_at_the_shutdown_timeout():
    service, clock = serving(shutdown_timeout=5)
    reader = Connection(service)
    reader.get(b"/streams/news")
    stopped = service.stopService()
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.1)
    assert stopped.called and stopped.result is None  # logged, not an error


def test_stop_with_nothing_open_is_done_at_once():
    service, clock = serving()
    idle = Connection(service)  # a connection with no stream is the reactor's to drop
    stopped = service.stopService()
    assert stopped.called and not idle.transport.disconnecting


def test_an_endpoint_that_cannot_be_listened_on_fails_twistds_start_in_one_line():
    app, _, _ = stub(settings(store={"backend": "memory"}))
    err = io.StringIO()
    service = StreamdService(app, MemoryReactorClock(), stderr=err)
    with socket.socket() as busy:  # a port this test holds, without SO_REUSEPORT
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        desc = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        service.settings = settings(listen=[desc])
        with pytest.raises(CannotListen, match=f"cannot listen on {desc}"):
            service.privilegedStartService()  # twistd: removes its pid file, exits 1
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith(f"streamd: cannot listen on {desc}:")
    assert "already in use" in err.getvalue()


def test_twistd_listens_before_the_reactor_runs_and_start_does_not_listen_again():
    app, _, _ = stub(settings(store={"backend": "memory"}))
    reactor = MemoryReactorClock()
    service = StreamdService(app, reactor)
    service.settings = settings(listen=["tcp:0:interface=127.0.0.1"])
    service.privilegedStartService()
    # One listen queue per SO_REUSEPORT socket, all served by this process.
    assert len(reactor.adoptedPorts) == listening.QUEUES
    service.startService()
    assert len(reactor.adoptedPorts) == listening.QUEUES


def test_a_port_another_streamd_listens_on_is_in_use(tmp_path):
    # SO_REUSEPORT lets sockets of one user share a port: a second streamd started by
    # mistake on the port of a running one must fail, not take half of its connections.
    first = listening.bind(MemoryReactorClock(), "tcp:0:interface=127.0.0.1", listening.QUEUES)
    try:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(OSError) as e:
            listening.bind(MemoryReactorClock(), f"tcp:{port}:interface=127.0.0.1", 2)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        listening.close(first)


def test_what_start_up_made_is_frozen_once_the_reactor_runs(monkeypatch):
    # A full collection then walks what streams made, not every module and route: in
    # bench (a) and (b) it held the reactor for 18-34 ms (the max latency) without this.
    monkeypatch.delenv("STREAMD_NO_GC_FREEZE", raising=False)
    reactor = MemoryReactorClock()
    freeze_start_up(reactor)
    assert gc.get_freeze_count() == 0  # not before the reactor runs
    try:
        for call, args, kw in reactor.whenRunningHooks:
            call(*args, **kw)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_freeze_can_be_turned_off_for_a_comparison(monkeypatch):
    monkeypatch.setenv("STREAMD_NO_GC_FREEZE", "1")
    freeze_now()
    assert gc.get_freeze_count() == 0
