"""
Every use streamd makes of a Twisted name that Twisted keeps private, in one module.

Twisted's compatibility policy covers public names only: an attribute, method or module
whose name starts with an underscore may change in any release, without a deprecation.
streamd needs a few all the same, each for a reason the section below gives, and reads
or overrides them here only, under names of its own; the rest of streamd calls these.
(C{.ci/layers.py} fails if any other module of streamd names one.)

Each section says what it relies on, since when, and what breaks if it changes. Every
name here is present, and behaves as described, in Twisted 24.7.0, 25.5.0, 26.4.0 (the
oldest C{pyproject.toml} accepts, for reasons of public API: see there) and 26.10.0:
checked by reading their sources and by running C{tests/unit/test_twisted_internals.py} on
each. That test module pins exactly the behaviour relied on against the installed
Twisted, so a release that changes one fails there, naming what changed, rather than as
a lost acknowledgement in production; CI runs it on the oldest and the newest Twisted.

 1. A TCP transport's write buffer (C{twisted.internet.abstract.FileDescriptor}):
    whether the bytes a stream wrote have left the process (L{streamd.outbox}).
 2. The TLS layer's buffers and producer (C{twisted.protocols.tls}): the same over TLS.
 3. The HTTP/1.1 channel's refusal hook and header counters (C{twisted.web.http}):
    a JSON body for a malformed request (L{streamd.web.site}).
 4. The wrapper that switches a connection to HTTP/2 (C{http._GenericHTTPChannelProtocol}).
 5. The HTTP/2 connection (C{twisted.web._http2}, a private module): flow control
    (L{streamd.web.h2}).
 6. A parsed server endpoint's fields (C{twisted.internet.endpoints}): the sockets of
    several workers (L{streamd.workers.listening}).
 7. How many connections a listening port accepts per wake-up (C{tcp.Port.doRead}):
    a reconnect storm taken in without listen-queue overflows (L{accept_eagerly}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import http

H2Connection: Any
_END_STREAM_SENTINEL: object
try:  # the http2 extra (twisted[http2]: h2, priority)
    from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection
except ImportError:  # pragma: no cover - without it ALPN never offers h2
    H2Connection = None
    _END_STREAM_SENTINEL = object()

__all__ = [
    "END_STREAM", "HTTP2_AVAILABLE", "BadRequestHook", "ChannelSwitch", "EndpointFields",
    "H2ConnectionHooks", "endpoint_fields", "header_bytes_received", "headers_received",
    "hear_drain", "tcp_buffered", "tcp_clear", "tcp_takes_writes", "tls_closing_held_open",
    "tls_drops_writes", "tls_hear_drain", "tls_held", "tls_holds_any", "tls_shut_down",
    "tls_write_now", "accept_eagerly",
]

# -- 1. A TCP transport's write buffer --------------------------------------------------
# FileDescriptor keeps what the socket has not taken in two buffers: dataBuffer (bytes,
# of which offset have been sent) and _tempDataBuffer, a list whose total length is
# _tempDataLen. doWrite joins the second onto the first; once both are empty it resumes
# a streaming producer only if producerPaused is set. So streamd sets producerPaused after
# a write that left bytes behind, and hears the drain as the channel's resumeProducing.
# tcp.Connection._aborting is set by abortConnection, after which nothing may go out.
# If these change: Outbox.buffered/clear read wrong numbers (acks too early or never),
# and a write after abortConnection could reach the socket. _aborting since Twisted 11.1
# (abortConnection's @since); the two buffers are older still.


def tcp_buffered(t) -> int:
    """Bytes in Twisted's buffer of TCP transport C{t}: written, not yet in the kernel."""
    return len(t.dataBuffer) - t.offset + t._tempDataLen


def tcp_clear(t) -> bool:
    """Nothing waits in Twisted's buffer of C{t}."""
    return not t._tempDataLen and t.offset == len(t.dataBuffer)


def tcp_takes_writes(t) -> bool:
    """C{t} is connected, not closing and not aborted: bytes sent now may still go."""
    return t.connected and not t.disconnecting and not t._aborting


def hear_drain(t) -> None:
    """
    Have C{t} call its producer's C{resumeProducing} once its buffer is empty (doWrite
    resumes a streaming producer only when C{producerPaused}, a documented ivar).
    """
    t.producerPaused = True


# -- 2. The TLS layer ---------------------------------------------------------------------
# TLSMemoryBIOProtocol (twisted/protocols/tls.py) holds plaintext in _appSendBuffer while
# OpenSSL wants to read first (a handshake), and BufferingTLSTransport holds small writes
# in _aggregator._buffer until the next reactor turn (_AggregateSmallWrites; after the
# connection is lost a _NullAggregator, without _buffer). Its _producer is the
# _ProducerMembrane standing for the channel as the TCP transport's producer, which passes
# a resume on only if its _producerPaused is set. _lostTLSConnection: TLS is shut down and
# every write is dropped; so is a write while disconnecting with no producer. Unaggregated,
# TLSMemoryBIOProtocol.write encrypts at once (at most 16 KiB a record, the BIO read up to
# 32 KiB after each), so no ciphertext stays in OpenSSL between writes.
# If these change: TLSOutbox acks bytes still in the process, misses the drain (a stream
# stalls), or counts dropped bytes as sent. The aggregator is recent (in 24.7.0, and
# reworked nowhere since); the rest as old as TLSMemoryBIOProtocol (Twisted 11).


def _aggregated(tls) -> list[bytes]:
    return getattr(getattr(tls, "_aggregator", None), "_buffer", None) or []


def tls_held(tls) -> int:
    """Bytes of plaintext the TLS layer C{tls} holds (waiting for a read, or aggregated)."""
    return sum(map(len, tls._appSendBuffer)) + sum(map(len, _aggregated(tls)))


def tls_holds_any(tls) -> bool:
    """The TLS layer holds some plaintext not yet encrypted."""
    return bool(tls._appSendBuffer) or bool(_aggregated(tls))


def tls_write_now(tls, data: bytes) -> None:
    """
    Encrypt C{data} and hand it to the TCP transport now, after what the layer's
    aggregator holds (so the order of the bytes stays), rather than next reactor turn.
    """
    aggregator = getattr(tls, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()
    TLSMemoryBIOProtocol.write(tls, data)


def tls_drops_writes(tls) -> bool:
    """A write to C{tls} now would be dropped: TLS shut down, or closing with no producer."""
    return tls._lostTLSConnection or (tls.disconnecting and tls._producer is None)


def tls_shut_down(tls) -> bool:
    """TLS on C{tls} is shut down (after an OpenSSL error, or the close): writes drop."""
    return tls._lostTLSConnection


def tls_hear_drain(tls) -> None:
    """
    Have the drain of C{tls}'s TCP transport reach the channel: mark the transport and
    the layer's producer membrane paused (the membrane passes a resume on only then).
    """
    hear_drain(tls.transport)
    membrane = tls._producer
    if membrane is not None:
        membrane._producerPaused = True


def tls_closing_held_open(tls) -> bool:
    """
    C{tls} was asked to close, but its close_notify waits for the registered producer to
    unregister (the layer shuts TLS down only with no producer).
    """
    return tls.disconnecting and tls._producer is not None


# -- 3. The HTTP/1.1 channel's refusals ---------------------------------------------------
# HTTPChannel sends every refusal of a request line, header or chunked body through
# _respondToBadRequestAndDisconnect (an empty-bodied 400), and counts the request's header
# bytes and lines in _receivedHeaderSize and _receivedHeaderCount (documented ivars).
# If the hook is renamed, streamd's refusals fall back to Twisted's empty 400 (no crash);
# if the counters are, a refusal cannot say 431. Both unchanged from 24.7.0 to 26.10.0.


class BadRequestHook:
    """
    A mixin for an L{http.HTTPChannel} subclass (before it in the bases): each request
    Twisted's parser refuses reaches C{self.refuse_malformed()}, which the subclass
    defines, instead of Twisted's empty 400.
    """

    refuse_malformed: Callable[[], None]  # the subclass's method

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse_malformed()


def header_bytes_received(channel: http.HTTPChannel) -> int:
    """Bytes of the current request's request line and headers received so far."""
    return channel._receivedHeaderSize


def headers_received(channel: http.HTTPChannel) -> int:
    """Header lines of the current request received so far."""
    return channel._receivedHeaderCount


# -- 4. The switch to HTTP/2 --------------------------------------------------------------
# Site's default protocol wraps the HTTP/1.1 channel in _GenericHTTPChannelProtocol, which
# swaps in H2Connection when ALPN chose h2. It names H2Connection inside dataReceived, so
# the switch is copied here with the class as an attribute; it reads the wrapper's
# _negotiatedProtocol, _channel, _site, _requestFactory, _factory, _timeOut, _callLater and
# the channel's _networkProducer. Twisted registers the new connection as a producer through
# the channel's IPushProducer(transport), which a TLS transport does not provide (a no-op):
# here it is registered with the transport itself. If these change, h2 connections get the
# HTTP/1.1 parser (tests/unit/test_h2_flow.py, test_twisted_internals.py). Since Twisted 16.3
# (HTTP/2); the class is the same, line for line, in 24.7.0 and 26.10.0.

HTTP2_AVAILABLE = H2Connection is not None


class ChannelSwitch(http._GenericHTTPChannelProtocol):
    """
    Twisted's wrapper that serves a connection with HTTP/1.1 or, when ALPN chose C{h2},
    with C{h2Connection} (set by a subclass), which it registers as its TLS transport's
    producer.
    """

    h2Connection: Any = H2Connection

    @property
    def inner(self):
        """The protocol serving the connection: the HTTP/1.1 channel or the HTTP/2 one."""
        return self._channel

    def dataReceived(self, data: bytes) -> None:
        if self._negotiatedProtocol is None and HTTP2_AVAILABLE:
            channel: Any = self._channel
            if getattr(channel.transport, "negotiatedProtocol", None) == b"h2":
                # The HTTP/1.1 channel gives the transport up (its producer, its
                # timeout) to the HTTP/2 connection.
                channel._networkProducer.unregisterProducer()
                channel.setTimeout(None)
                transport = channel.transport
                h2c = self.h2Connection(getattr(self._site, "reactor", None))
                h2c.requestFactory = self._requestFactory
                h2c.site = self._site
                h2c.factory = self._factory
                h2c.timeOut = self._timeOut
                h2c.callLater = self._callLater
                self._channel = h2c
                h2c.makeConnection(transport)
                transport.registerProducer(h2c, True)
                self._negotiatedProtocol = b"h2"  # type: ignore[assignment]  # None in Twisted's
        super().dataReceived(data)


# -- 5. The HTTP/2 connection -------------------------------------------------------------
# twisted.web._http2.H2Connection, a private module. streamd replaces its data path
# (L{streamd.web.h2}): it overrides the send loop _sendPrioritisedData (one DATA frame per
# reactor turn) and _handleWindowUpdate, hooks _requestDone (a stream's end, which it also
# calls), reads the per-stream queues _outboundStreamQueues (a deque per stream, ended by
# _END_STREAM_SENTINEL), _consumerBlocked (a Deferred while the transport paused it, else
# None), _stillProducing, _bufferedControlFrames (control frames held while the transport
# is paused, the fix for the control-frame flood), _reactor, and calls
# _tryToWriteControlData (True unless it aborted the connection). All in 24.7.0 and
# 26.10.0 (26.x added the rapid-reset token bucket, which streamd leaves alone; the
# test of names shadowed fails if a release adds one streamd also defines). If these change,
# HTTP/2 streams stall or hold a whole window each (tests/unit/test_h2_flow.py).

END_STREAM = _END_STREAM_SENTINEL


# A base chosen at import (h2 is an optional extra), which mypy cannot follow: the ignore.
class H2ConnectionHooks(H2Connection if HTTP2_AVAILABLE else object):  # type: ignore[misc]
    """
    Twisted's C{H2Connection} with its private hooks routed to public methods
    (L{send_loop}, L{window_update}, L{stream_done}) a subclass overrides, and its
    private state readable under public names.
    """

    # The hooks Twisted calls, routed.
    def _sendPrioritisedData(self, *args) -> None:
        self.send_loop(*args)

    def send_loop(self, *args) -> None:
        """Twisted's send loop (a DATA frame per reactor turn): override to replace it."""
        H2Connection._sendPrioritisedData(self, *args)

    def _handleWindowUpdate(self, event) -> None:
        self.window_update(event)

    def window_update(self, event) -> None:
        """A C{WindowUpdated} event: Twisted's handling unless overridden."""
        H2Connection._handleWindowUpdate(self, event)

    def _requestDone(self, streamID: int) -> None:
        H2Connection._requestDone(self, streamID)
        self.stream_done(streamID)

    def stream_done(self, streamID: int) -> None:
        """Called once Twisted forgot stream C{streamID} (ended, reset or lost)."""

    # Twisted's state and actions, under public names.
    def forget_stream(self, streamID: int) -> None:
        """Forget stream C{streamID} as Twisted does when it ends (then L{stream_done})."""
        self._requestDone(streamID)

    def outbound_queue(self, streamID: int):
        """The deque of C{streamID}'s bytes not yet framed (L{END_STREAM} ends it), or None."""
        return self._outboundStreamQueues.get(streamID)

    @property
    def socket_blocked(self) -> bool:
        """The transport paused the connection: its buffer is full."""
        return self._consumerBlocked is not None

    @property
    def still_producing(self) -> bool:
        """False once the connection is lost or stopped."""
        return self._stillProducing

    @property
    def control_frames_held(self) -> bool:
        """Control frames wait for the socket: DATA must not overtake them."""
        return bool(self._bufferedControlFrames)

    def write_control_frames(self) -> bool:
        """Write held control frames; False if the connection was aborted for it."""
        return self._tryToWriteControlData()

    @property
    def reactor(self):
        """The reactor (the clock) the connection was built with."""
        return self._reactor


# -- 6. A parsed server endpoint ----------------------------------------------------------
# serverFromString parses a listen string into an endpoint whose options (interface, port,
# backlog, TLS context factory, UNIX path, mode, wantPID) are kept in private fields only.
# The workers' supervisor binds the sockets itself, so it reads them. If these change,
# C{workers > 1} cannot bind (an AttributeError at start-up, not a wrong socket). As old
# as the endpoints (Twisted 10).


@dataclass(frozen=True)
class EndpointFields:
    """A server endpoint's options, as C{serverFromString} parsed them."""

    backlog: int
    interface: str = ""  # TCP and TLS
    port: int = 0  # TCP and TLS
    context_factory: Any = None  # TLS
    path: str = ""  # UNIX
    mode: int = 0o666  # UNIX
    want_pid: bool = False  # UNIX


def endpoint_fields(endpoint) -> EndpointFields:
    """The options of a TCP, TLS or UNIX server endpoint (ValueError for another kind)."""
    if isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return EndpointFields(endpoint._backlog, path=endpoint._address,
                              mode=endpoint._mode, want_pid=endpoint._wantPID)
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        return EndpointFields(endpoint._backlog, endpoint._interface, endpoint._port,
                              endpoint._sslContextFactory)
    if isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
        return EndpointFields(endpoint._backlog, endpoint._interface, endpoint._port)
    raise ValueError(f"{type(endpoint).__name__}: not a TCP, TLS or UNIX endpoint")


# -- 7. How many connections a port accepts per wake-up ----------------------------------
# tcp.Port.doRead accepts at most numberAccepts connections, then sets numberAccepts to
# the count it accepted (at least 1), or that count + 20 if it reached the limit. After
# an idle spell a port therefore accepts one connection per reactor turn, then 21, 41, ...:
# while it ramps up, each turn also serves every connection accepted so far, and a burst
# of 15,000 readers (a restart, a network blip) overflowed a 4,096-connection listen queue
# 1,882-3,212 times in one process (tests/integration/test_backlog.py). The reset is Twisted's
# implementation, not a documented contract (numberAccepts itself is a public attribute,
# as old as tcp.Port): if it changes, accept_eagerly still raises the limit before each
# read, which is harmless. doRead stops at EAGAIN, so a high limit only means "until the
# queue is empty" (and at most the listen queue's length per turn).


def accept_eagerly(port, queue: int) -> None:
    """
    Let C{port} (a TCP, TLS or UNIX listening port) accept up to C{queue} (its listen
    queue's length: an adopted port does not know it) waiting connections on every
    wake-up, instead of ramping up from one.
    """
    if not hasattr(port, "numberAccepts"):  # another kind of port
        return
    at_least = max(queue, 100)
    read = port.doRead

    def doRead():
        if port.numberAccepts < at_least:
            port.numberAccepts = at_least
        return read()

    port.doRead = doRead  # the reactor looks doRead up on the port at each wake-up
