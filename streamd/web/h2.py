"""
HTTP/2 with flow control: L{FlowControlledH2Connection}, Twisted's C{H2Connection} with
its data path replaced, and L{HTTPChannelSwitch}, which hands a TLS connection on which
ALPN chose C{h2} to it.

Why a subclass. Twisted's C{H2Connection} (C{twisted.web._http2}, private) cannot be made
to bound what it holds from outside:

 - A stream's writes go into a per-stream queue, and its producer is paused only once
   that queue holds as much as the client's flow-control window. The window is the
   client's choice (Chromium asks for 6 MiB a stream, the protocol allows 2 GiB), so up
   to a window of every stream waits in this process, and the stream's own bounds
   (C{max_pending_bytes}, the slow policy) see nothing queued.
 - A full socket does not pause the streams. Over TLS it does not even reach the
   connection: Twisted registers it as the transport's producer through the HTTP/1.1
   channel's C{IPushProducer(transport)}, which a TLS transport does not provide (a
   no-op); and where it does, only the connection's send loop stops, while the streams'
   producers go on writing into their queues.
 - The send loop writes one DATA frame per reactor turn (C{callLater(0)} between frames),
   whatever the windows allow: 6 MB to 21 streams is about 8,000 turns, and a message
   written meanwhile waits behind them. While a stream has bytes queued and its window
   shut, the loop turns (with nothing to send) on every reactor turn.

Here a stream's write goes out at once, in as few frames as the windows allow (one per
C{max_outbound_frame_size}; many small writes that waited, joined), and what the window
or the socket will not take waits in the stream's queue and pauses the stream's
producer: the queue holds about one write (L{streamd.writer.WRITE_BATCH_BYTES}) and a
notice or two, the rest waits in the L{streamd.stream.Stream}, whose bounds then apply
as over HTTP/1.1. A closed window pauses its own stream only; a full socket, each stream
that writes meanwhile. When the client opens a window (C{WINDOW_UPDATE}, or C{SETTINGS}
with a larger initial window) or the socket drains, the waiting streams' queues are
sent, round robin, then their producers resumed. HTTP/2 priorities are not followed (RFC
9113 deprecates them): streams are served in turn. The connection registers itself as
its TLS transport's producer (L{HTTPChannelSwitch}).

A response that has ended (a slow-consumer notice, C{limit}, the source's end) but whose
last bytes the client does not take, because it opens no window for them, is reset
(C{RST_STREAM}, CANCEL) once C{cutOffGrace} seconds pass with none of its bytes sent:
HTTP/1.1's cut-off of a reader that reads nothing, for one stream of the connection.

What it needs of Twisted's private HTTP/2 connection (the per-stream queues, whether the
socket paused it, the hooks it overrides) it reads through
L{streamd.twisted_internals.H2ConnectionHooks}, and the switch to HTTP/2 is
L{streamd.twisted_internals.ChannelSwitch}. tests/unit/test_h2_flow.py shows what the
subclass changes (its tests fail on Twisted's own class), and
tests/unit/test_twisted_internals.py pins what it relies on.
"""

from __future__ import annotations

import contextlib

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from streamd.slow import SLOW_CLOSE_GRACE
from streamd.twisted_internals import END_STREAM, ChannelSwitch, H2ConnectionHooks

try:  # the http2 extra (twisted[http2]: h2, priority)
    import h2.errors
    import h2.exceptions
except ImportError:  # pragma: no cover - without it ALPN never offers h2
    pass

__all__ = ["FlowControlledH2Connection", "HTTPChannelSwitch"]

#: Bytes of DATA gathered in the connection before they are written to the transport
#: at once: one TLS write for many small frames, and a bound on what one write adds.
WRITE_BYTES = 64 * 1024


class FlowControlledH2Connection(H2ConnectionHooks):
    """
    An HTTP/2 connection whose streams are paused when their window or the socket is
    full, and whose data goes out in as few frames and writes as the windows allow.

    @ivar _waiting: the streams that have bytes queued or a producer we paused, in the
        order they are served (a dict used as an ordered set).
    @ivar _sent: DATA bytes sent per stream, so a cut-off sees progress.
    @ivar _cutoffs: per stream that ended with bytes still queued, the delayed call
        that resets it if the client takes none of them for C{cutOffGrace} seconds.
    """

    cutOffGrace = SLOW_CLOSE_GRACE

    def __init__(self, reactor=None) -> None:
        super().__init__(reactor)
        self._waiting: dict[int, None] = {}
        self._sent: dict[int, int] = {}
        self._offsets: dict[int, int] = {}  # bytes of the first queued chunk already sent
        self._cutoffs: dict = {}
        self._unwritten = 0  # DATA bytes in h2's buffer, not yet given to the transport

    # -- the hooks Twisted's streams and transport call --------------------------------

    def send_loop(self, *args) -> None:
        """Twisted's one-frame-per-turn send loop: not used, data goes out as written."""

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        queue = self.outbound_queue(streamID)
        if queue is None or not data:
            return  # the stream is gone (reset): its request is told separately
        queue.append(data)
        self._send(streamID)
        if queue and streamID in self.streams:
            self._block(streamID)
        self._write()

    def endRequest(self, streamID: int) -> None:
        queue = self.outbound_queue(streamID)
        if queue is None:
            return
        queue.append(END_STREAM)
        self._send(streamID)
        self._write()
        if streamID in self.streams:  # its last bytes wait for a window
            self._waiting[streamID] = None
            self._arm_cutoff(streamID)

    def remainingOutboundWindow(self, streamID: int) -> int:
        """
        What C{streamID} may write now without anything waiting here: nothing while its
        queue holds bytes or the socket is full. Twisted's streams resume their producer
        only when this is above 0 (C{H2Stream.windowUpdated}).
        """
        if self.socket_blocked or self.outbound_queue(streamID):
            return 0
        try:
            return self.conn.local_flow_control_window(streamID)
        except h2.exceptions.ProtocolError:
            return 0

    def window_update(self, event) -> None:
        # Handled once all of a read's frames are in (L{dataReceived}): a SETTINGS
        # frame that raises the initial window opens windows too, with no event here.
        pass

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._waiting and self.still_producing:
            self._wake()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # control frames held meanwhile go first
        if not self.socket_blocked and self.still_producing:
            self._wake()

    def stream_done(self, streamID: int) -> None:
        self._waiting.pop(streamID, None)
        self._sent.pop(streamID, None)
        self._offsets.pop(streamID, None)
        call = self._cutoffs.pop(streamID, None)
        if call is not None and call.active():
            call.cancel()

    # -- internals ---------------------------------------------------------------------

    def _block(self, streamID: int) -> None:
        self._waiting[streamID] = None
        self.streams[streamID].flowControlBlocked()  # pauses its producer, if producing

    def _wake(self) -> None:
        """
        Send what waits, stream by stream in turn, while the socket takes it; resume the
        producers of streams with nothing queued and room in their window.
        """
        for streamID in list(self._waiting):
            if self.socket_blocked or not self.still_producing:
                break
            if streamID not in self._waiting:
                continue  # done meanwhile
            self._send(streamID)
            stream = self.streams.get(streamID)
            if stream is None:
                continue
            del self._waiting[streamID]
            if self.outbound_queue(streamID) or self.socket_blocked:
                self._waiting[streamID] = None  # still waiting: behind the others now
            elif self.remainingOutboundWindow(streamID) > 0:
                stream.windowUpdated()  # resumes its producer, which may write at once
            else:
                self._waiting[streamID] = None  # an empty window: wait for it to open
        self._write()

    def _send(self, streamID: int) -> None:
        """Frame as much of C{streamID}'s queue as its window (and the socket) allows."""
        if self.socket_blocked or self.control_frames_held:
            return  # frames must not overtake control frames held for the socket
        queue = self.outbound_queue(streamID)
        conn = self.conn
        try:
            while queue:
                if queue[0] is END_STREAM:
                    conn.end_stream(streamID)
                    self._write()
                    self.forget_stream(streamID)
                    return
                room = min(conn.local_flow_control_window(streamID),
                           conn.max_outbound_frame_size)
                if room <= 0:
                    return
                frame = self._take(streamID, queue, room)
                end = len(queue) == 1 and queue[0] is END_STREAM
                conn.send_data(streamID, frame, end_stream=end)
                self._sent[streamID] = self._sent.get(streamID, 0) + len(frame)
                self._unwritten += len(frame)
                if end:
                    self._write()
                    self.forget_stream(streamID)
                    return
                if self._unwritten >= WRITE_BYTES:
                    self._write()
                    if self.socket_blocked:
                        return
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            # Closed under us (by the client): nothing more can go on it.
            queue.clear()
            stream = self.streams.get(streamID)
            if stream is not None:
                stream.connectionLost(Failure(ConnectionLost("stream closed")))
                self.forget_stream(streamID)

    def _take(self, streamID: int, queue, room: int) -> bytes:
        """Up to C{room} bytes from the front of C{queue}: small chunks joined, a large one cut."""
        parts = []
        size = 0
        offset = self._offsets.get(streamID, 0)
        while queue and size < room and queue[0] is not END_STREAM:
            chunk = queue[0]
            left = len(chunk) - offset
            if left <= room - size:
                parts.append(chunk[offset:] if offset else chunk)
                size += left
                queue.popleft()
                offset = 0
            else:
                n = room - size
                parts.append(memoryview(chunk)[offset:offset + n])
                size += n
                offset += n
        self._offsets[streamID] = offset
        return parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)

    def _write(self) -> None:
        """Hand what h2 has framed to the transport, in one write."""
        self._unwritten = 0
        if self.socket_blocked or self.control_frames_held:
            # No DATA is framed meanwhile (L{_send}): control frames only, in order
            # behind those already waiting for the socket.
            self.write_control_frames()
            return
        data = self.conn.data_to_send()
        if data:
            self.resetTimeout()  # as Twisted's send loop did: sending is activity
            self.transport.write(data)

    def _arm_cutoff(self, streamID: int) -> None:
        if streamID not in self._cutoffs:
            self._cutoffs[streamID] = self.reactor.callLater(
                self.cutOffGrace, self._cut_off_if_stuck, streamID,
                self._sent.get(streamID, 0))

    def _cut_off_if_stuck(self, streamID: int, sent_before: int) -> None:
        del self._cutoffs[streamID]
        if streamID not in self.streams:
            return
        sent = self._sent.get(streamID, 0)
        if sent > sent_before:  # still reading: look again after another grace period
            self._arm_cutoff(streamID)
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed meanwhile
            self.conn.reset_stream(streamID, h2.errors.ErrorCodes.CANCEL)
        if self.write_control_frames():  # False: the connection was aborted
            self.forget_stream(streamID)


class HTTPChannelSwitch(ChannelSwitch):
    """
    Twisted's switch between HTTP/1.1 and, when ALPN chose C{h2}, HTTP/2: here served by
    L{FlowControlledH2Connection}, registered as its TLS transport's producer.
    """

    h2Connection = FlowControlledH2Connection
