"""
The one adapter of pika's private names, so that nothing else in streamd touches them
(as L{streamd.redis.connection} is for txredisapi's). Each use below says why pika's
public API does not do; C{tests/unit/test_amqp_adapter.py} pins the behaviour each relies
on, against pika's own frames in memory, so that a pika release that changes one
fails there, by name, and not as a vague "the stream is down" in production.

  - L{AMQPConnection} overrides C{TwistedProtocolConnection._on_connection_failed},
    the method pika hands its connection as C{on_open_error_callback}: pika's Twisted
    protocol fails C{ready} with C{AMQPConnectionError(1)} ("1 attempt"), and that
    hook is the only place the real reason of a failed handshake is seen.
  - It reads C{_impl._error} (C{_impl}: the pika C{Connection} under the Twisted
    protocol; C{_error}: the exception that connection is closing with) as the socket
    closes: the reason the broker gave in its C{Connection.Close} (C{CONNECTION_FORCED},
    C{ACCESS_REFUSED}) is there, while pika fires C{closed} with the C{ConnectionDone}
    of the socket that followed.
  - L{core_channel} reads C{TwistedChannel._channel}, pika's own channel under the
    Twisted wrapper (see L{core_channel} for why).

Importing this module imports pika's Twisted adapter, which imports the global reactor:
import it once a reactor is installed (L{streamd.sources.amqp} does, when a source
starts).
"""

from __future__ import annotations

import pika.channel
from pika import exceptions as amqp_errors
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection

__all__ = ["AMQPConnection", "core_channel"]


class AMQPConnection(TwistedProtocolConnection):
    """
    pika's Twisted protocol, keeping why the connection failed or ended (see the module
    doc), for the source's status and logs.

    @ivar failure: the first reason seen: the broker's C{Connection.Close} (a
        L{pika.exceptions.ConnectionClosedByBroker}, or pika's
        C{ProbableAuthenticationError} and the like), else what the handshake failed
        with (the socket's C{ConnectionDone} when the broker just hung up); None while
        nothing failed.
    """

    failure: Exception | None = None

    def _on_connection_failed(self, connection, error=None):
        # pika's private hook (on_open_error_callback): see the module doc.
        if self.failure is None and isinstance(error, Exception):
            self.failure = error
        return super()._on_connection_failed(connection, error)

    def connectionLost(self, reason=None):
        # Read before super() runs: pika's connection_lost() reports the socket's
        # reason from here on.
        pending = getattr(self._impl, "_error", None)
        if self.failure is None and isinstance(pending, amqp_errors.AMQPError):
            self.failure = pending
        return super().connectionLost(reason) if reason else super().connectionLost()


def core_channel(channel: TwistedChannel) -> pika.channel.Channel:
    """
    pika's own channel under the Twisted wrapper C{channel}. Consuming goes through it,
    with a plain callback: the wrapper's C{basic_consume} queues deliveries in a
    C{DeferredQueue} that it empties, and forgets, when the consumer is cancelled,
    and a paused client's consumer is cancelled. Acks, nacks and the broker's
    C{basic.cancel} callback go through it as well, on the channel they belong to.
    """
    return channel._channel
