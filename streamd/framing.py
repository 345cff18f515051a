"""
NDJSON and Server-Sent Events framing: message -> bytes, with no I/O.

A message's frame is computed once and cached on the message (C{Message.frames}),
so fanning one message out to many clients encodes it once.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface, implementer

from streamd.json_input import compact_json as _dumps
from streamd.message import Message


class IFraming(Interface):
    """How a stream's lines look on the wire."""

    name = Attribute("ndjson or sse")
    content_type = Attribute("the response's Content-Type (bytes)")

    def preamble(retry_ms):
        """Bytes to send when the stream opens (may be empty)."""

    def message(message):
        """One message."""

    def heartbeat(now):
        """The keep-alive sent after a quiet interval."""

    def control(kind, info):
        """A notice: gap, dropped, error, shutdown."""


@implementer(IFraming)
class NDJSON:
    """One JSON object per line: C{{"id", "stream", "data"[, "attributes"]}}."""

    name = "ndjson"
    content_type = b"application/x-ndjson"

    @staticmethod
    def preamble(retry_ms: int) -> bytes:
        return b""

    @staticmethod
    def message(message: Message) -> bytes:
        frame = message.frames.get("ndjson")
        if frame is None:
            head = b'{"id":%s,"stream":%s,"data":%s' % (
                _dumps(message.id), _dumps(message.stream), message.data)
            if message.attributes:
                head += b',"attributes":' + _dumps(message.attributes)
            frame = message.frames["ndjson"] = head + b"}\n"
        return frame

    @staticmethod
    def heartbeat(now: float) -> bytes:
        return b'{"heartbeat":%d}\n' % int(now)

    @staticmethod
    def control(kind: str, info: Any) -> bytes:
        return _dumps({kind: info}) + b"\n"


@implementer(IFraming)
class SSE:
    """
    Server-Sent Events: C{id:} is the message id (what EventSource sends back as
    C{Last-Event-ID}), C{data:} the published JSON; notices are named events.
    """

    name = "sse"
    content_type = b"text/event-stream; charset=utf-8"

    @staticmethod
    def preamble(retry_ms: int) -> bytes:
        return b": streamd\nretry: %d\n\n" % retry_ms

    @staticmethod
    def message(message: Message) -> bytes:
        frame = message.frames.get("sse")
        if frame is None:
            # An id must not contain a newline or NUL (the EventSource parser would
            # split or ignore it); ids from our sources never do, but be safe.
            mid = message.id.replace("\n", "").replace("\r", "").replace("\0", "")
            frame = message.frames["sse"] = b"id: %s\ndata: %s\n\n" % (
                mid.encode(), message.data)
        return frame

    @staticmethod
    def heartbeat(now: float) -> bytes:
        return b": heartbeat %d\n\n" % int(now)

    @staticmethod
    def control(kind: str, info: Any) -> bytes:
        # "error" is EventSource's own event name for connection failures; ours
        # is "stream-error" so the two cannot be confused by a listener.
        event = "stream-error" if kind == "error" else kind
        return b"event: %s\ndata: %s\n\n" % (event.encode(), _dumps(info))


class ValuesNDJSON(NDJSON):
    """Channel subscriptions: the value lines themselves, and C{{"Updates": false}} when idle."""

    @staticmethod
    def message(message: Message) -> bytes:
        return message.data + b"\n"

    @staticmethod
    def heartbeat(now: float) -> bytes:
        return b'{"Updates":false}\n'


class ValuesSSE(SSE):
    """Channel subscriptions over SSE: each value line is one event's data."""

    @staticmethod
    def message(message: Message) -> bytes:
        return b"data: %s\n\n" % message.data

    @staticmethod
    def heartbeat(now: float) -> bytes:
        return b'data: {"Updates":false}\n\n'


FRAMINGS = {"ndjson": NDJSON, "sse": SSE}
VALUE_FRAMINGS = {NDJSON: ValuesNDJSON, SSE: ValuesSSE}

