"""
L{Body}: the response body of one stream connection. It parses what arrives, hands the
records and notices to its client, and says how the connection ended: C{"ended"} (the
server closed the stream on purpose, or the body ended cleanly) or C{"dropped"}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

log = Logger()


class Body(Protocol):
    """
    @ivar reconnect: the server said it is going away (a C{shutdown} or C{error} notice):
        even a clean end of the body is then "dropped", to be reconnected.
    @ivar ended: the server ended the stream on purpose (an C{end} notice).
    @ivar lost: fires with the outcome when the connection is gone.
    @ivar last_data: when the last bytes arrived (the client's idle watchdog reads it).
    @ivar watchdog: the client's idle timer for this connection, if any.
    """

    def __init__(self, parser, session: str | None, clock,
                 on_items: Callable[[Body, list[Any]], None],
                 on_transport: Callable[[Body, bool], None]) -> None:
        """
        @param parser: an NDJSON or SSE parser (L{streamd.client.records.parser_for}).
        @param session: the response's C{Streamd-Session} header (C{ack=client}), or None.
        @param clock: an C{IReactorTime}.
        @param on_items: called with this body and each chunk's records and notices.
        @param on_transport: called with this body and True once its transport is
            there (to pause and resume it), False once it is gone.
        """
        self.parser = parser
        self.session = session
        self.clock = clock
        self.on_items = on_items
        self.on_transport = on_transport
        self.reconnect = False
        self.ended = False
        self.lost: Deferred[str] = Deferred()
        self.last_data = clock.seconds()
        self.watchdog = None

    @property
    def producer(self) -> IPushProducer | None:
        """
        The response's transport, to pause and resume: C{Protocol} types it as an
        C{ITransport}, but C{deliverBody} gives a producer (C{TransportProxyProducer}).
        """
        return cast("IPushProducer | None", self.transport)

    def connectionMade(self) -> None:
        self.on_transport(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.last_data = self.clock.seconds()
        self.on_items(self, self.parser.feed(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.on_transport(self, False)
        clean = reason.check(ResponseDone, PotentialDataLoss)
        outcome = "ended" if (clean and not self.reconnect) or self.ended else "dropped"
        if not clean:
            log.info("stream connection lost: {why}", why=reason.getErrorMessage())
        self.lost.callback(outcome)
