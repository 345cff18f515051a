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


class _Framing:
    """What every framing shares: the fixed lines are data (C{%d} takes the number)."""

    name: str
    content_type: bytes
    PREAMBLE = b""  # %d: the SSE reconnection hint, milliseconds
    HEARTBEAT = b""  # %d: the time, seconds

    @classmethod
    def preamble(cls, retry_ms: int) -> bytes:
        return cls.PREAMBLE % retry_ms if b"%d" in cls.PREAMBLE else cls.PREAMBLE

    @classmethod
    def heartbeat(cls, now: float) -> bytes:
        return cls.HEARTBEAT % int(now) if b"%d" in cls.HEARTBEAT else cls.HEARTBEAT

    @classmethod
    def message(cls, message: Message) -> bytes:
        """The message's frame, encoded once and cached on the message under our name."""
        frame = message.frames.get(cls.name)
        if frame is None:
            frame = message.frames[cls.name] = cls.encode(message)
        return frame

    @staticmethod
    def encode(message: Message) -> bytes:
        raise NotImplementedError


@implementer(IFraming)
class NDJSON(_Framing):
    """One JSON object per line: C{{"id", "stream", "data"[, "attributes"]}}."""

    name = "ndjson"
    content_type = b"application/x-ndjson"
    HEARTBEAT = b'{"heartbeat":%d}\n'

    @staticmethod
    def encode(message: Message) -> bytes:
        head = b'{"id":%s,"stream":%s,"data":%s' % (
            _dumps(message.id), _dumps(message.stream), message.data)
        if message.attributes:
            head += b',"attributes":' + _dumps(message.attributes)
        return head + b"}\n"

    @staticmethod
    def control(kind: str, info: Any) -> bytes:
        return _dumps({kind: info}) + b"\n"


@implementer(IFraming)
class SSE(_Framing):
    """
    Server-Sent Events: C{id:} is the message id (what EventSource sends back as
    C{Last-Event-ID}), C{data:} the published JSON; notices are named events.
    """

    name = "sse"
    content_type = b"text/event-stream; charset=utf-8"
    PREAMBLE = b": streamd\nretry: %d\n\n"
    HEARTBEAT = b": heartbeat %d\n\n"

    @staticmethod
    def encode(message: Message) -> bytes:
        # An id must not contain a newline or NUL (the EventSource parser would
        # split or ignore it); ids from our sources never do, but be safe.
        mid = message.id.replace("\n", "").replace("\r", "").replace("\0", "")
        return b"id: %s\ndata: %s\n\n" % (mid.encode(), message.data)

    @staticmethod
    def control(kind: str, info: Any) -> bytes:
        # "error" is EventSource's own event name for connection failures; ours
        # is "stream-error" so the two cannot be confused by a listener.
        event = "stream-error" if kind == "error" else kind
        return b"event: %s\ndata: %s\n\n" % (event.encode(), _dumps(info))


class ValuesNDJSON(NDJSON):
    """Channel subscriptions: the value lines themselves, and C{{"Updates": false}} when idle."""

    HEARTBEAT = b'{"Updates":false}\n'

    @staticmethod
    def message(message: Message) -> bytes:
        return message.data + b"\n"


class ValuesSSE(SSE):
    """Channel subscriptions over SSE: each value line is one event's data."""

    HEARTBEAT = b'data: {"Updates":false}\n\n'

    @staticmethod
    def message(message: Message) -> bytes:
        return b"data: %s\n\n" % message.data


FRAMINGS = {"ndjson": NDJSON, "sse": SSE}
VALUE_FRAMINGS = {NDJSON: ValuesNDJSON, SSE: ValuesSSE}

