"""
L{BrokerConnection}: an C{amqp} stream's one connection to its broker (see
L{streamd.sources.amqp}), kept up by Twisted's C{ClientService}: it connects, runs the
stream's set-up on each new connection, says when the broker is down and why, and
connects again after C{reconnect_initial} seconds, doubling up to C{reconnect_max}
(C{backoffPolicy}), whether the TCP connection, the login or the set-up failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pika
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from streamd.net import client_endpoint
from streamd.sources.amqp_subscription import describe

log = Logger()

#: What L{BrokerConnection.down} says before the first connection.
NOT_YET = "not connected yet"


@implementer(IStreamClientEndpoint)
class _Attempts:
    """
    The broker's endpoint, telling the source why an attempt to connect failed
    (C{ClientService} would only log it), and named by its address in
    C{ClientService}'s "Scheduling retry" log line.
    """

    def __init__(self, endpoint, address: str, failed) -> None:
        self.endpoint = endpoint
        self.address = address
        self.failed = failed

    def connect(self, factory) -> Deferred:
        return self.endpoint.connect(factory).addErrback(self._failed)

    def _failed(self, failure):
        self.failed(failure.value)
        return failure

    def __repr__(self) -> str:
        return self.address


class BrokerConnection:
    """
    The connection of one stream, and whether the broker can be used.

    @ivar conn: the open connection (pika's C{TwistedProtocolConnection}, handshake and
        set-up done), or None.
    @ivar service: Twisted's C{ClientService}, which connects and reconnects.
    @ivar failures: attempts in a row that did not end connected, a lost connection
        counting as one: the count C{backoffPolicy} is given. C{ClientService} keeps a
        count of its own, but resets it once the TCP connection is made, and a refused
        login would then be retried every C{reconnect_initial} for ever.
    @ivar down: why the broker cannot be used, or None.
    @ivar running: between L{start} and L{halt}.
    """

    def __init__(self, name: str, params: pika.URLParameters, reactor, *, tls: bool,
                 tls_ca: str, connect_timeout: float, reconnect_initial: float,
                 reconnect_max: float, setup: Callable[[Any], Awaitable[None]],
                 on_up: Callable[[], None], on_lost: Callable[[], None],
                 count: Callable[[str], None]) -> None:
        """
        @param params: the broker's address and credentials (from the stream's C{url}).
        @param setup: run on each new connection before it counts as up (the stream's
            declarations); a failure counts as a failed attempt.
        @param on_up: called once a connection is up (the clients open their channels).
        @param on_lost: called when a connection that was up is lost (not when stopping).
        @param count: called with a metrics series' name (C{source_errors},
            C{source_reconnects}) to count one.
        """
        self.name = name
        self.params = params
        self.reactor = reactor
        self.tls = tls
        self.tls_ca = tls_ca
        self.connect_timeout = connect_timeout
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.setup = setup
        self.on_up = on_up
        self.on_lost = on_lost
        self.count = count
        self.conn: Any = None
        self.down: str | None = NOT_YET
        self.running = False
        self.service: ClientService | None = None
        self.failures = 0
        self._first: Deferred | None = None

    def start(self) -> Deferred:
        """Connect (and keep reconnecting); fires once the first attempt ended."""
        # Imported here, once a reactor is installed: pika's Twisted module imports the
        # global reactor.
        from streamd.sources.pika_adapter import AMQPConnection

        def build() -> AMQPConnection:
            conn = AMQPConnection(self.params, custom_reactor=self.reactor)
            d = ensureDeferred(self._serve(conn))
            d.addErrback(lambda f: log.failure("amqp {name}: a connection failed", f,
                                               name=self.name))
            return conn

        self.running = True
        self._first = Deferred()
        endpoint = client_endpoint(self.reactor, self.params.host, self.params.port,
                                   self.connect_timeout, self.tls, self.tls_ca)
        scheme = "amqps" if self.tls else "amqp"
        backoff = backoffPolicy(self.reconnect_initial, self.reconnect_max, factor=2,
                                jitter=lambda: 0.0)
        connections = Factory.forProtocol(build)  # Factory calls build() per connection
        connections.noisy = False  # no "Starting factory" log line per attempt
        self.service = ClientService(
            _Attempts(endpoint, f"{scheme}://{self.params.host}:{self.params.port} "
                      f"(stream {self.name})", self._attempt_failed),
            connections,
            retryPolicy=lambda _attempt: backoff(max(0, self.failures - 1)),
            clock=self.reactor)
        self.service.startService()
        return self._first

    def halt(self) -> None:
        """Stopping: a connection that ends from now on is not reported as down."""
        self.running = False

    async def close(self) -> None:
        """Close the connection, and make no more attempts (call L{halt} first)."""
        conn = self.conn
        if conn is not None and not conn.is_closed:
            closed = conn.closed
            conn.close()
            await closed
        if self.service is not None:
            # No more attempts; an attempt under way is cancelled or its socket closed.
            await self.service.stopService()
        self._first_done()

    def reconnect(self, why: str) -> None:
        """Something only a new connection mends (the queue was deleted): start over."""
        log.warn("amqp {name}: {why}; reconnecting", name=self.name, why=why)
        self.count("source_errors")
        if self.conn is not None and not self.conn.is_closed:
            self.conn.close(320, why[:200])

    async def _serve(self, conn) -> None:
        """One connection, from the TCP connection made to its end."""
        try:
            await conn.ready.addTimeout(self.connect_timeout, self.reactor)
        except Exception as e:
            conn.transport.abortConnection()  # ClientService tries again once it is lost
            self._attempt_failed(_handshake_failure(conn.failure or e))
            return
        try:
            await self.setup(conn)
        except Exception as e:
            self._attempt_failed(e)
            if not conn.is_closed:
                conn.close()
            return
        if not self.running:
            conn.close()  # stop() came during the set-up
            return
        self.failures = 0
        closed = conn.closed  # fires (with the reason) when the connection ends
        self.conn = conn
        self._set_up()
        self.on_up()
        reason = await closed
        reason = conn.failure or reason
        self.conn = None
        if not self.running:
            return
        self.failures = 1  # the next attempt waits reconnect_initial
        self._set_down(describe(reason))
        self.on_lost()

    def _attempt_failed(self, error) -> None:
        if not self.running:
            return  # stopping: the attempt was cancelled
        self.failures += 1
        self._set_down(describe(error))
        self._first_done()

    def _first_done(self) -> None:
        d, self._first = self._first, None
        if d is not None:
            d.callback(None)

    def _set_up(self) -> None:
        if self.down is not None and self.down != NOT_YET:
            self.count("source_reconnects")
            log.info("amqp {name} is up again", name=self.name)
        self.down = None
        self._first_done()

    def _set_down(self, reason: str) -> None:
        if self.down != reason:
            log.warn("amqp {name} is down: {reason}", name=self.name, reason=reason)
        if self.down is None:
            self.count("source_errors")
        self.down = reason


def _handshake_failure(error: BaseException) -> BaseException:
    if isinstance(error, ConnectionDone):
        # RabbitMQ just hangs up on a refused login (pika sees no reason).
        return RuntimeError("the broker closed the connection during the handshake "
                            "(user or password refused?)")
    return error
