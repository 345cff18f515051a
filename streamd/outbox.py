"""
L{Outbox}: whether what a connection's streams wrote has left streamd's process.

A durable source's message may be acknowledged only once its bytes have left streamd's
process: bytes in the kernel's send buffer survive a SIGKILL (the kernel goes on sending
them), bytes in Twisted's transport buffer die with the process. Twisted does not say when
its buffer has drained unless its producer was paused, so a write that leaves bytes behind
marks the producer paused (C{producerPaused}, a public attribute of the transport): the
transport then calls the channel's C{resumeProducing} when the last byte has gone, and the
channel tells the outbox, which tells the streams waiting on it (L{Stream.drained}).

It also writes eagerly: a write to a connection with nothing buffered goes to the socket at
once (C{sendmsg} of the parts, no join), and only what the kernel would not take is left to
Twisted. A stream that keeps up then costs one C{send} per batch and no epoll
register/unregister, and its acks need no further reactor turn.

Every other response is written the same way (L{send_now}), its head held back by the
HTTP channel (L{streamd.web.channel.StreamingChannel}) to go with its first bytes: a
POST's 202 leaves in one C{sendmsg} before its handler returns, not in Twisted's next
write turn, so the next POSTs of busy publishers meet in one reactor turn and their
messages in one batch.

Over TLS (an C{ssl:} listener) the same guarantee (L{TLSOutbox}): a stream's bytes have
left the process once the TLS layer holds none of them (neither plaintext it has not yet
encrypted nor ciphertext it has not yet handed on) and the TCP transport under it has
sent all it was given. A stream's write is encrypted at once, not aggregated until the
next reactor turn; the ciphertext then waits in the TCP transport's buffer like any
other bytes, and the drain is heard the same way, through the producer that the TLS
layer registers with the TCP transport on the channel's behalf.

The cost per connection is one attribute on the channel (L{OutboxOwner.outbox}), set
when a stream starts. What Twisted keeps private (the length of its buffers, the TLS
layer's state) is read through L{streamd.twisted_internals}, which says what each
reading relies on.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
from typing import Any, cast

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

from streamd.twisted_internals import (
    hear_drain,
    tcp_buffered,
    tcp_clear,
    tcp_takes_writes,
    tls_closing_held_open,
    tls_drops_writes,
    tls_hear_drain,
    tls_held,
    tls_holds_any,
    tls_shut_down,
    tls_write_now,
)

__all__ = ["WaitingStreams", "Outbox", "OutboxOwner", "TLSOutbox", "outbox_for", "send_now"]


class WaitingStreams:
    """The streams waiting on one connection's outbox (usually one), and telling them."""

    __slots__ = ()
    listeners: list

    def listen(self, stream) -> None:
        if stream not in self.listeners:
            self.listeners.append(stream)

    def forget(self, stream) -> None:
        if stream in self.listeners:
            self.listeners.remove(stream)

    def drained(self) -> None:
        """Everything written has left the process."""
        for stream in list(self.listeners):
            stream.drained()

    def lost(self) -> None:
        """The connection is gone."""
        # A slot of every subclass (this base has none, so that they stay slotted):
        # mypy sees no such slot here, hence the ignore.
        listeners, self.listeners = self.listeners, []  # type: ignore[misc]
        for stream in listeners:
            stream.transport_lost()


class Outbox(WaitingStreams):
    """
    The eager writer of one TCP connection, and the streams waiting for its buffer to
    drain (usually one: the response being streamed).

    @ivar transport: the channel's transport, which a stream writes to.
    @ivar tcp: the TCP transport that holds the socket (here the same).
    """

    __slots__ = ("transport", "tcp", "listeners")

    def __init__(self, transport: tcp.Server, send_buffer: int = 0) -> None:
        self.transport = transport
        self.tcp = transport
        self.listeners: list = []
        if send_buffer:
            # The kernel's share of a slow client's backlog: bytes there are beyond our
            # reach (a notice can't overtake them) and already acknowledged.
            with contextlib.suppress(OSError):
                self.tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                send_buffer)

    def buffered(self) -> int:
        """Bytes in Twisted's buffer for this connection: still in this process."""
        return tcp_buffered(self.tcp)

    def backlog(self) -> int:
        """Bytes the client has yet to take: here, and in the kernel's send queue."""
        queued = 0
        with contextlib.suppress(OSError):
            queued = struct.unpack("i", fcntl.ioctl(self.tcp.getHandle().fileno(),
                                                    termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return self.buffered() + queued

    def clear(self) -> bool:
        """Everything written so far has left the process."""
        return tcp_clear(self.tcp)

    def watch(self) -> None:
        """
        Have the drain reported: Twisted resumes a paused producer (the channel) once
        its buffer is empty. Also for what was not written through us (a response's
        headers, which Twisted writes to the transport itself).
        """
        if not self.clear():
            hear_drain(self.tcp)

    def write(self, parts: list[bytes]) -> None:
        if not send_now(self.tcp, parts):
            self.watch()  # bytes left behind

    def resumed(self) -> None:
        """
        The transport resumed the channel: its buffer drained. Tell the streams, before
        the channel resumes them (a stream's next write must not count as drained).
        """
        if not self.clear():
            self.watch()  # not ours to report yet (the TLS layer's own resume)
            return
        self.drained()
        t = self.tcp
        if t.disconnecting and self.clear():
            # A closing transport whose buffer drained resumes its paused producer
            # instead of closing: one more (empty) write turn lets it close.
            t.startWriting()


class TLSOutbox(Outbox):
    """
    An L{Outbox} for a connection over TLS (Twisted's L{TLSMemoryBIOProtocol}, over a
    TCP transport): what a stream wrote is still in this process while the TLS layer
    holds any of it (plaintext waiting for a handshake's read, or small writes it
    aggregates until the next reactor turn) or the TCP transport has not sent all the
    ciphertext. A stream's write goes past the aggregation, after flushing what it
    holds, so that the order of the bytes stays; OpenSSL's send BIO holds no
    ciphertext between writes (L{streamd.twisted_internals}, section 2).
    """

    __slots__ = ("dead",)

    transport: Any  # the TLS layer; C{tcp}, the TCP transport under it

    def __init__(self, transport: TLSMemoryBIOProtocol, send_buffer: int = 0) -> None:
        super().__init__(cast(tcp.Server, transport.transport), send_buffer)
        self.transport = transport
        self.dead = False  # the layer dropped a write (see write)

    def buffered(self) -> int:
        return tls_held(self.transport) + tcp_buffered(self.tcp)

    def clear(self) -> bool:
        return not self.dead and not tls_holds_any(self.transport) and tcp_clear(self.tcp)

    def watch(self) -> None:
        if not self.clear():
            # The TCP transport and the layer's producer membrane both marked paused:
            # the membrane passes the drain's resume on only then.
            tls_hear_drain(self.transport)

    def write(self, parts: list[bytes]) -> None:
        tls = self.transport
        if tls_drops_writes(tls):
            # The layer would drop these bytes: they will never leave. Nothing written
            # from now on counts as sent (what waits is given back when the connection
            # is lost).
            self.dead = True
            return
        tls_write_now(tls, b"".join(parts))
        if tls_shut_down(tls):
            self.dead = True  # OpenSSL failed on it: the layer shut down, the rest dropped
        self.watch()

    def resumed(self) -> None:
        super().resumed()
        tls = self.transport
        if tls_closing_held_open(tls) and self.clear():
            # Closed with the transport's loseConnection (a slow consumer's cut, whose
            # notice leaves after it) rather than the channel's: the TLS layer sends its
            # close_notify only once no producer is registered, and the channel
            # registered itself for the connection's life. Its last bytes have left:
            # let it close, as TCP does once its buffer drained.
            tls.unregisterProducer()


def send_now(t: tcp.Server, parts: list[bytes]) -> bool:
    """
    Write C{parts} to C{t}: straight to the socket (one C{sendmsg}) when nothing is
    buffered there, and what the kernel would not take through Twisted's buffer. True
    if every byte went at once.
    """
    if tcp_clear(t) and tcp_takes_writes(t):
        try:
            taken = t.getHandle().sendmsg(parts)
        except OSError:
            taken = 0  # EAGAIN; or an error Twisted's own write will meet and report
        if taken:
            for i, part in enumerate(parts):
                if taken < len(part):
                    parts = [part[taken:], *parts[i + 1:]]
                    break
                taken -= len(part)
            else:
                return True
    t.writeSequence(parts)
    return False


class OutboxOwner:
    """
    A connection whose streaming responses write through an L{Outbox} (the HTTP/1.1
    channel, L{streamd.web.channel.StreamingChannel}): it tells the outbox when its
    transport's buffer has drained (L{Outbox.resumed}) and when it is lost.
    """

    outbox: Outbox | None = None  # set when a stream starts on this connection
    transport: Any


def outbox_for(request, send_buffer: int = 0) -> Outbox | None:
    """
    The outbox of C{request}'s connection (made on first use): an L{Outbox} over TCP, a
    L{TLSOutbox} over TLS; or None where the bytes' way out is not followed here: HTTP/2
    (a stream's data waits in the connection's own flow-control buffers, see
    L{streamd.web.h2}), a test's transport.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, OutboxOwner):
        return None
    if channel.outbox is None:
        t = channel.transport
        if isinstance(t, tcp.Server):
            channel.outbox = Outbox(t, send_buffer)
        elif isinstance(t, TLSMemoryBIOProtocol) and isinstance(t.transport, tcp.Server):
            channel.outbox = TLSOutbox(t, send_buffer)
        else:
            return None
    return channel.outbox
