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

The cost per connection is one attribute on the channel, set when a stream starts; the
channel class (L{StreamingChannel}) carries the rest. The length of Twisted's buffer is
read from two private attributes in L{Outbox.buffered} (and L{send_now}, which also reads
C{_aborting}: after C{abortConnection} nothing more may go out): this module is the one
place that knows.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios

from twisted.internet import tcp
from twisted.web.http import HTTPChannel

__all__ = ["Listeners", "Outbox", "StreamingChannel", "outbox_for"]


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
    """

    __slots__ = ("transport", "listeners")

    def __init__(self, transport: tcp.Server, send_buffer: int = 0) -> None:
        self.transport = transport
        self.listeners: list = []
        if send_buffer:
            # The kernel's share of a slow client's backlog: bytes there are beyond our
            # reach (a notice can't overtake them) and already acknowledged.
            with contextlib.suppress(OSError):
                transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                 send_buffer)

    def buffered(self) -> int:
        """Bytes in Twisted's buffer for this connection: still in this process."""
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    def backlog(self) -> int:
        """Bytes the client has yet to take: here, and in the kernel's send queue."""
        queued = 0
        with contextlib.suppress(OSError):
            queued = struct.unpack("i", fcntl.ioctl(self.transport.getHandle().fileno(),
                                                    termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return self.buffered() + queued

    def clear(self) -> bool:
        """Everything written so far has left the process."""
        return _clear(self.transport)

    def watch(self) -> None:
        """
        Have the drain reported: Twisted resumes a paused producer (the channel) once
        its buffer is empty. Also for what was not written through us (a response's
        headers, which Twisted writes to the transport itself).
        """
        if not self.clear():
            self.transport.producerPaused = True

    def write(self, parts: list[bytes]) -> None:
        if not send_now(self.transport, parts):
            self.watch()  # bytes left behind


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
        super().resumeProducing()
        outbox = self.outbox
        if outbox is not None:
            outbox.drained()
            t = self.transport
            if t.disconnecting and outbox.clear():
                # A closing transport whose buffer drained resumes its paused producer
                # instead of closing: one more (empty) write turn lets it close.
                t.startWriting()

    def connectionLost(self, reason) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if self.outbox is not None:
                self.outbox.lost()


def outbox_for(request, send_buffer: int = 0) -> Outbox | None:
    """
    The outbox of C{request}'s connection (made on first use), or None where the bytes'
    way out is not followed: HTTP/2 (a stream's data waits in the connection's own
    flow-control buffers), TLS (the TLS layer buffers too), a test's transport.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, StreamingChannel):
        return None
    if channel.outbox is None:
        if not isinstance(channel.transport, tcp.Server):
            return None
        channel.outbox = Outbox(channel.transport, send_buffer)
    return channel.outbox
