"""
L{Outbox}: what one TCP connection has handed to the kernel.

A durable source's message may be acknowledged only once its bytes have left streamd's
process: bytes in the kernel's send buffer survive a SIGKILL (the kernel goes on sending
them), bytes in Twisted's transport buffer die with the process. Twisted does not say when
its buffer drains, so the outbox counts, per connection, the bytes given to the transport
(C{written}) and the bytes the socket took (C{sent}); a stream acknowledges a batch once
C{sent} has passed the mark its write left, and hears of progress through C{listen}.

It also writes eagerly: a write to a connection with nothing buffered goes to the socket at
once (C{sendmsg} of the parts, no join), and only what the kernel would not take is left to
Twisted. A stream that keeps up then costs one C{send} per batch and no epoll
register/unregister, and its acks need no further reactor turn.

Twisted's transport has no hook for any of this: the outbox replaces four methods on the
one C{tcp.Server} instance it serves (C{write}, C{writeSequence}, C{writeSomeData},
C{connectionLost}), and reads its buffer's length through two private attributes
(C{dataBuffer}/C{offset} and C{_tempDataLen}) in L{Outbox.buffered}. This class is the one
place that knows.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from twisted.internet import tcp
from twisted.web.http import HTTPChannel

__all__ = ["Outbox", "outbox_for"]


class Outbox:
    """
    The counters of one connection, and the streams waiting on them.

    @ivar written: bytes given to the transport since the outbox was installed.
    @ivar sent: bytes of those the kernel accepted (C{sent <= written}).
    @ivar listeners: streams to tell of progress (L{bytes_sent}) and of the connection's
        loss (L{transport_lost}): usually one, the response being streamed.
    """

    __slots__ = ("transport", "written", "sent", "listeners", "_write", "_writeSequence",
                 "_writeSomeData", "_connectionLost", "__weakref__")

    def __init__(self, transport: tcp.Server, send_buffer: int = 0) -> None:
        self.transport = transport
        self.written = 0
        self.sent = 0
        self.listeners: list = []
        self._write = transport.write
        self._writeSequence = transport.writeSequence
        self._writeSomeData = transport.writeSomeData
        self._connectionLost = transport.connectionLost
        transport.write = self.write
        transport.writeSequence = self.writeSequence
        transport.writeSomeData = self.writeSomeData
        transport.connectionLost = self.connectionLost
        if send_buffer:
            # The kernel's share of a slow client's backlog: bytes there are beyond our
            # reach (a notice can't overtake them) and already acknowledged.
            with contextlib.suppress(OSError):
                transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)

    @property
    def unsent(self) -> int:
        """Bytes still in this process, waiting for the socket."""
        return self.written - self.sent

    def listen(self, stream) -> None:
        if stream not in self.listeners:
            self.listeners.append(stream)

    def forget(self, stream) -> None:
        if stream in self.listeners:
            self.listeners.remove(stream)

    # -- what the transport's users call ---------------------------------------------

    def write(self, data: bytes) -> None:
        self.writeSequence((data,))

    def writeSequence(self, parts: Iterable[bytes]) -> None:
        t = self.transport
        parts = list(parts)
        size = sum(map(len, parts))
        if not size or not t.connected or t.disconnecting or t._writeDisconnected:
            self._writeSequence(parts)  # Twisted decides what a closing transport does
            return
        self.written += size
        if not self.buffered():
            try:
                taken = t.socket.sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                taken = 0
            except OSError:
                taken = 0  # Twisted's own doWrite will meet the error and close
            if taken:
                self.sent += taken
                if taken == size:
                    self._progress()
                    return
                parts = _rest(parts, taken)
                self._progress()
        self._writeSequence(parts)

    def buffered(self) -> int:
        """Bytes in Twisted's buffer for this connection (private attributes)."""
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    # -- what the reactor calls --------------------------------------------------------

    def writeSomeData(self, data):
        n = self._writeSomeData(data)
        if type(n) is int and n > 0:
            self.sent += n
            self._progress()
        return n

    def connectionLost(self, reason) -> None:
        try:
            self._connectionLost(reason)
        finally:
            listeners, self.listeners = self.listeners, []
            for stream in listeners:
                stream.transport_lost()

    def _progress(self) -> None:
        if self.listeners:
            sent = self.sent
            for stream in list(self.listeners):
                stream.bytes_sent(sent)


def _rest(parts: list[bytes], taken: int) -> list[bytes]:
    """What is left of C{parts} after the first C{taken} bytes."""
    for i, part in enumerate(parts):
        if taken < len(part):
            return [part[taken:], *parts[i + 1:]]
        taken -= len(part)
    return []


def outbox_for(request, send_buffer: int = 0) -> Outbox | None:
    """
    The outbox of C{request}'s connection (installed on first use), or None where the
    bytes' way out cannot be followed: HTTP/2 (a stream's data waits in the connection's
    own flow-control buffers), or a transport that is not a TCP socket (a test's
    StringTransport). Under TLS the count is of encrypted bytes on the TCP socket, which
    TLS produces as the response is written.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, HTTPChannel):
        return None
    transport = channel.transport
    for _ in range(3):  # TLS wraps the TCP transport in a protocol of its own
        if isinstance(transport, tcp.Server):
            break
        transport = getattr(transport, "transport", None)
    else:
        return None
    if not isinstance(transport, tcp.Server):
        return None
    outbox = transport.__dict__.get("write")
    outbox = getattr(outbox, "__self__", None)
    if isinstance(outbox, Outbox):
        return outbox
    return Outbox(transport, send_buffer)
