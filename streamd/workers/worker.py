"""
One worker of several: C{python -m streamd.workers.worker}, started by
L{streamd.workers.supervisor} with its part in the C{STREAMD_WORKER} environment variable
(its index, the broker's socket, the command line's options, the listening descriptors).

It builds today's single-process service from the same settings, with the parent's broker
in place of the in-process one, serves the sockets the parent bound, writes its log as JSON
lines on stdout (the parent relays them), and stops on SIGTERM, or when the parent is gone.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver

from streamd.service import Service
from streamd.tap import StreamdService, freeze_now, settings_from_options
from streamd.web import StreamdApp
from streamd.workers import listening
from streamd.workers.remote import BrokerClient, status_report
from streamd.workers.supervisor import SPEC

log = Logger()


class WorkerService(StreamdService):
    """L{StreamdService} on the sockets the parent bound."""

    def __init__(self, app, reactor, listeners: list) -> None:
        super().__init__(app, reactor)
        self.listeners = listeners

    def listen(self) -> None:
        for desc, kind, family, fd in self.listeners:
            self.ports.append(listening.adopt(self.reactor, desc, kind, family, fd, self.site))


async def run(reactor, spec: dict) -> None:
    index = spec["index"]
    settings = settings_from_options(spec["options"])
    client = BrokerClient(index, reactor)
    factory = Factory.forProtocol(lambda: client)
    factory.noisy = False
    await UNIXClientEndpoint(reactor, spec["broker"]).connect(factory)
    client.lost.addCallback(lambda _: reactor.running and reactor.stop())
    await client.hello()
    app = StreamdApp(Service(settings, reactor, broker=client, worker=index))
    metrics = app.service.metrics

    def report(what: str) -> bytes:
        return metrics.render() if what == "metrics" else status_report(app)

    client.reporter = report
    server = WorkerService(app, reactor, spec["listen"])
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    freeze_now()


def main() -> None:
    spec = json.loads(os.environ.pop(SPEC))
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)],
                                     redirectStandardIO=False)
    from twisted.internet import reactor

    def failed(failure) -> None:
        log.failure("worker {index} could not start", failure, index=spec["index"])
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(run(reactor, spec)).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
