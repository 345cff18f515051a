"""
What every test may ask for: the C{serve} fixture (a streamd app served in-process on a
real TCP port) and the report header naming the programs that are missing. The helpers
are in L{tests.support}.
"""

from __future__ import annotations

import shutil

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from streamd import config
from streamd.service import Service
from streamd.web import StreamdApp
from streamd.web.site import make_site
from tests.support.web import TIMEOUT, Server, settings

#: Programs some tests drive; where one is not on PATH its tests are skipped, with the reason.
PROGRAMS = ("redis-server", "redis-cli", "chromium")


def pytest_report_header(config) -> str | None:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"not on PATH: {', '.join(missing)}: the tests that need them are skipped "
                "(README.md, Development)")
    return None


@pytest_twisted.async_yield_fixture
async def serve():
    """
    Call C{await serve(settings)} (C{tls=True}: with a TLS port too) to get a running
    L{Server}; stopped after the test.
    """
    servers = []

    async def start(s: config.Settings | None = None, tls: bool = False) -> Server:
        s = s or settings()
        app = StreamdApp(Service(s, reactor))
        await app.start()
        site = make_site(app)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        tls_port = None
        if tls:
            from tests.support.h2 import certificate

            key, cert = certificate()
            tls_port = await serverFromString(
                reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            ).listen(site)
        server = Server(app, port, tls_port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.app.stop(TIMEOUT)
        await server.port.stopListening()
        if server.tls_port is not None:
            await server.tls_port.stopListening()
