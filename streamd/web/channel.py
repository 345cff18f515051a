"""
L{StreamingChannel}: the HTTP/1.1 channel of every connection (under the switch to HTTP/2,
L{streamd.web.h2}): a response's head goes out with its first bytes, a streaming
response writes through the connection's L{streamd.outbox.Outbox}, and shutdown waits
on the connection's loss (L{StreamingChannel.close}).

Names streamd adds to this subclass of Twisted's C{HTTPChannel} are in snake_case, so
that they cannot collide with Twisted's own (camelCase, public or private).
"""

from __future__ import annotations

import contextlib
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, tcp
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from streamd.outbox import OutboxOwner, send_now

__all__ = ["StreamingChannel", "close_connection"]


class StreamingChannel(OutboxOwner, HTTPChannel):
    """
    An HTTPChannel whose streaming responses write through an L{streamd.outbox.Outbox},
    which it tells when its transport's buffer has drained and when the connection is
    lost; and which tells whoever waits (L{when_lost}) that the connection is gone.

    @ivar local_address: the local address, asked of the transport once per connection
        rather than once per request.
    @ivar held_head: a response's status line and headers, until its first bytes go.
    @ivar lost_waiters: the Deferreds of L{when_lost}, fired on C{connectionLost}.
    @ivar gone: C{connectionLost} has run.
    """

    transport: Any  # a TCP or TLS transport (a test's), set by makeConnection
    local_address = None
    held_head: list[bytes] | None = None
    lost_waiters: list[defer.Deferred] | None = None
    gone = False

    def getHost(self):
        if self.local_address is None:
            self.local_address = self.transport.getHost()
        return self.local_address

    def connectionMade(self) -> None:
        super().connectionMade()
        # No Nagle: a stream's small writes (and a response sent at once) must not wait
        # for the ACK of the previous one (nginx's tcp_nodelay, on by default).
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)

    def writeHeaders(self, version, code, reason, headers) -> None:
        # Held, and sent with the response's first bytes in one sendmsg (Request.write
        # calls this, then write(); L{HeadFirstRequest} sends a head no bytes follow,
        # and so does requestDone, for a Request that wrote past HeadFirstRequest).
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.held_head = head

    def send_head(self) -> None:
        """Send a response head that no write took with it."""
        if self.held_head is not None:
            self.writeSequence(())

    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, iovec) -> None:
        parts = list(iovec)
        head = self.held_head
        if head is not None:
            parts[:0], self.held_head = head, None
        try:
            if self.outbox is not None:
                self.outbox.write(parts)
            elif isinstance(self.transport, tcp.Server):
                send_now(self.transport, parts)
            else:  # TLS (its layer buffers and encrypts), a test's transport
                self.transport.writeSequence(parts)
        except BaseException:
            # Nothing went (a handler wrote a str, say): the head goes with the next
            # write, the error page Twisted writes next.
            if head is not None:
                self.held_head = head
            raise

    def requestDone(self, request) -> None:
        self.send_head()
        super().requestDone(request)

    def resumeProducing(self) -> None:
        # The outbox first: what was written before this drain has left, but a stream
        # resumed by Twisted (super) may write again at once, and those bytes have not.
        if self.outbox is not None:
            self.outbox.resumed()
        super().resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.gone = True
            if self.outbox is not None:
                self.outbox.lost()
            waiters, self.lost_waiters = self.lost_waiters or [], None
            for d in waiters:
                d.callback(None)

    def when_lost(self) -> defer.Deferred:
        """A Deferred that fires (with None) once the connection is lost."""
        if self.gone:
            return defer.succeed(None)
        if self.lost_waiters is None:
            self.lost_waiters = []
        d: defer.Deferred = defer.Deferred()
        self.lost_waiters.append(d)
        return d

    def close(self) -> defer.Deferred:
        """
        Close the connection once what was written has gone (the transport's
        C{loseConnection}); a Deferred that fires once it is lost.
        """
        lost = self.when_lost()
        if not self.gone and self.transport is not None:
            # HTTPChannel's own: it unregisters the channel as the transport's producer
            # first, without which a TLS layer does not even send its close_notify.
            self.loseConnection()
            if close_notify_sent(self.transport):
                # Over TLS, Twisted keeps the TCP connection until the peer answers our
                # close_notify, and a reader that never does (one that reads to the end
                # and keeps its socket) held a SIGTERM for the whole shutdown_timeout.
                # The side that closes need not wait for the answer (RFC 8446, 6.1): the
                # TCP connection closes once the alert and all before it have gone.
                self.transport.transport.loseConnection()
        return lost


def close_notify_sent(transport) -> bool:
    """C{transport} is a TLS layer that has sent its close_notify (public pyOpenSSL)."""
    if not isinstance(transport, TLSMemoryBIOProtocol):
        return False
    return bool(transport.getHandle().get_shutdown() & SSL.SENT_SHUTDOWN)


def close_connection(channel) -> defer.Deferred:
    """
    Close C{channel}'s connection (a request's C{channel}, taken before the request
    ended: Twisted forgets it then) once its last bytes have gone; a Deferred that fires
    once it is lost. At once for the channel of an HTTP/2 stream (its connection carries
    other streams, and is the reactor's to drop) or one that is not ours.
    """
    if isinstance(channel, StreamingChannel):
        return channel.close()
    return defer.succeed(None)
