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

Every other response is written the same way (L{send_now}), its head held back by
L{StreamingChannel.writeHeaders} to go with its first bytes: a POST's 202 leaves in one
C{sendmsg} before its handler returns, not in Twisted's next write turn, so the next POSTs
of busy publishers meet in one reactor turn and their messages in one batch.

Over TLS (an C{ssl:} listener) the same guarantee (L{TLSOutbox}): a stream's bytes have
left the process once the TLS layer holds none of them (neither plaintext it has not yet
encrypted nor ciphertext it has not yet handed on) and the TCP transport under it has
sent all it was given. A stream's write is encrypted at once, not aggregated until the
next reactor turn; the ciphertext then waits in the TCP transport's buffer like any
other bytes, and the drain is heard the same way, through the producer that the TLS
layer registers with the TCP transport on the channel's behalf.

The cost per connection is one attribute on the channel, set when a stream starts; the
channel class (L{StreamingChannel}) carries the rest. The length of Twisted's buffer is
read from two private attributes in L{_buffered} (and L{send_now}, which also reads
C{_aborting}: after C{abortConnection} nothing more may go out), and the TLS layer's
state from the private names that L{TLSOutbox} lists: this module is the one place
that knows.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.http import HTTPChannel

__all__ = ["Listeners", "Outbox", "StreamingChannel", "TLSOutbox", "outbox_for"]


class Listeners:
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
        listeners, self.listeners = self.listeners, []
        for stream in listeners:
            stream.transport_lost()


class Outbox(Listeners):
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
        return _buffered(self.tcp)

    def backlog(self) -> int:
        """Bytes the client has yet to take: here, and in the kernel's send queue."""
        queued = 0
        with contextlib.suppress(OSError):
            queued = struct.unpack("i", fcntl.ioctl(self.tcp.getHandle().fileno(),
                                                    termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return self.buffered() + queued

    def clear(self) -> bool:
        """Everything written so far has left the process."""
        return _clear(self.tcp)

    def watch(self) -> None:
        """
        Have the drain reported: Twisted resumes a paused producer (the channel) once
        its buffer is empty. Also for what was not written through us (a response's
        headers, which Twisted writes to the transport itself).
        """
        if not self.clear():
            self.tcp.producerPaused = True

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
    holds any of it or the TCP transport has not sent all the ciphertext.

    What it reads of the TLS layer, all private to Twisted (twisted/protocols/tls.py):

      - C{_appSendBuffer}: plaintext that waits because OpenSSL wants to read first (a
        handshake, a renegotiation); written on a later read.
      - C{_aggregator} and its C{_buffer}: L{BufferingTLSTransport}'s aggregation of
        small writes, plaintext kept until the next reactor turn. A stream's write
        goes past it (L{TLSMemoryBIOProtocol.write}, the layer's unaggregated write),
        after flushing what it holds, so that the order of the bytes stays.
      - C{_producer}, the layer's C{_ProducerMembrane} that stands for the channel as the
        TCP transport's producer, and the membrane's C{_producerPaused}: the membrane
        passes a resume on only when it thinks the channel paused, so a drain to be
        heard marks both it and the TCP transport paused.
      - C{_lostTLSConnection}: the layer drops every write once TLS is shut down.

    OpenSSL's send BIO holds no ciphertext between writes: the layer encrypts at most
    16 KiB at a time and reads up to 32 KiB of the BIO after each (C{_flushSendBIO}),
    so every record is handed to the TCP transport in the write that made it.
    """

    __slots__ = ("dead",)

    def __init__(self, transport: TLSMemoryBIOProtocol, send_buffer: int = 0) -> None:
        super().__init__(transport.transport, send_buffer)
        self.transport = transport
        self.dead = False  # the layer dropped a write (see write)

    def _aggregated(self) -> list[bytes]:
        """The plaintext of small writes the layer keeps until the next reactor turn."""
        # Private: BufferingTLSTransport._aggregator (_AggregateSmallWrites; after the
        # connection is lost a _NullAggregator, without _buffer) and its _buffer.
        return getattr(getattr(self.transport, "_aggregator", None), "_buffer", None) or []

    def buffered(self) -> int:
        # Private: TLSMemoryBIOProtocol._appSendBuffer (plaintext waiting for a read).
        held = sum(map(len, self.transport._appSendBuffer))
        return held + sum(map(len, self._aggregated())) + _buffered(self.tcp)

    def clear(self) -> bool:
        return (not self.dead and not self.transport._appSendBuffer  # private, as above
                and not self._aggregated() and _clear(self.tcp))

    def watch(self) -> None:
        if not self.clear():
            self.tcp.producerPaused = True
            # Private: TLSMemoryBIOProtocol._producer (the _ProducerMembrane registered
            # with the TCP transport for the channel) and the membrane's
            # _producerPaused, without which it would not pass the resume on.
            membrane = self.transport._producer
            if membrane is not None:
                membrane._producerPaused = True

    def write(self, parts: list[bytes]) -> None:
        tls = self.transport
        # Private: _lostTLSConnection (TLS shut down: the layer drops writes) and
        # _producer (None: after loseConnection, TLSMemoryBIOProtocol.write drops too).
        if tls._lostTLSConnection or (tls.disconnecting and tls._producer is None):
            # The layer would drop these bytes: they will never leave. Nothing written
            # from now on counts as sent (what waits is given back when the connection
            # is lost).
            self.dead = True
            return
        aggregator = getattr(tls, "_aggregator", None)
        if aggregator is not None:
            aggregator.flush()  # what others wrote before goes first
        TLSMemoryBIOProtocol.write(tls, b"".join(parts))
        if tls._lostTLSConnection:
            self.dead = True  # OpenSSL failed on it: the layer shut down, the rest dropped
        self.watch()

    def resumed(self) -> None:
        super().resumed()
        tls = self.transport
        if tls.disconnecting and tls._producer is not None and self.clear():  # private
            # Closed with the transport's loseConnection (a slow consumer's cut, whose
            # notice leaves after it) rather than the channel's: the TLS layer sends its
            # close_notify only once no producer is registered, and the channel
            # registered itself for the connection's life. Its last bytes have left:
            # let it close, as TCP does once its buffer drained.
            tls.unregisterProducer()


def _buffered(t: tcp.Server) -> int:
    """Bytes in Twisted's buffer of C{t} (private: its two buffers and the offset)."""
    return len(t.dataBuffer) - t.offset + t._tempDataLen


def _clear(t: tcp.Server) -> bool:
    """Nothing waits in Twisted's buffer of C{t}."""
    return not t._tempDataLen and t.offset == len(t.dataBuffer)


def send_now(t: tcp.Server, parts: list[bytes]) -> bool:
    """
    Write C{parts} to C{t}: straight to the socket (one C{sendmsg}) when nothing is
    buffered there, and what the kernel would not take through Twisted's buffer. True
    if every byte went at once.
    """
    if _clear(t) and t.connected and not t.disconnecting and not t._aborting:
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


class StreamingChannel(HTTPChannel):
    """
    An HTTPChannel whose streaming responses write through an L{Outbox}, which it tells
    when its transport's buffer has drained and when the connection is lost.
    """

    outbox: Outbox | None = None  # set when a stream starts on this connection
    _host = None  # the local address: one getsockname per connection, not per request
    _head = None  # a response's status line and headers, until its first bytes go

    def getHost(self):
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

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
        self._head = head

    def send_head(self) -> None:
        """Send a response head that no write took with it."""
        if self._head is not None:
            self.writeSequence(())

    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, iovec) -> None:
        parts = list(iovec)
        head = self._head
        if head is not None:
            parts[:0], self._head = head, None
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
                self._head = head
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

    def connectionLost(self, reason) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if self.outbox is not None:
                self.outbox.lost()


def outbox_for(request, send_buffer: int = 0) -> Outbox | None:
    """
    The outbox of C{request}'s connection (made on first use): an L{Outbox} over TCP, a
    L{TLSOutbox} over TLS; or None where the bytes' way out is not followed here: HTTP/2
    (a stream's data waits in the connection's own flow-control buffers, see
    L{streamd.web.h2}), a test's transport.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, StreamingChannel):
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
