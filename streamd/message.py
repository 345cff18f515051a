"""The unit that flows from a source to a client: one message, encoded once."""

from __future__ import annotations

import json
from typing import Any

import attrs

from streamd.json_input import InvalidJSON, compact_json, parse

_UNPARSED = object()


# Slots, no weakref slot, identity equality: millions of these pass through.
@attrs.define(eq=False, repr=False, weakref_slot=False)
class Message:
    """
    One message from a source, on its way to one or more streams.

    @ivar id: the source's id for the message (a string clients resume from).
    @ivar stream: the name of the stream it belongs to.
    @ivar data: the message body as JSON text (bytes, one line, no newline):
        kept as the publisher's bytes so numbers and strings are not re-encoded.
    @ivar attributes: source metadata (SQS attributes, Redis entry fields), or None.
    @ivar handle: what the source needs to ack or give back this message (an SQS
        receipt handle, a Redis list value); opaque to everything else.
    @ivar frames: encoded forms of the message keyed by framing name, filled in by
        L{streamd.framing} so that a message sent to 100 clients is encoded once.
    """

    id: str
    stream: str
    data: bytes
    attributes: dict[str, Any] | None = None
    handle: Any = None
    frames: dict[str, bytes] = attrs.field(init=False, factory=dict)
    _value: Any = attrs.field(init=False, default=_UNPARSED)

    def value(self) -> Any:
        """The JSON value of C{data}, parsed once however many filters look at it."""
        if self._value is _UNPARSED:
            try:
                self._value = json.loads(self.data)
            except ValueError:
                self._value = None
        return self._value

    def __repr__(self) -> str:
        return f"<Message {self.stream}/{self.id} {len(self.data)}B>"


class SharedBatch(list):
    """
    A list of messages that a broadcast source hands, unchanged, to every consumer:
    C{encoded} keeps the batch's bytes per framing, so they are joined once.
    """

    __slots__ = ("encoded",)

    def __init__(self, messages) -> None:
        super().__init__(messages)
        self.encoded: dict = {}


class InvalidPayload(ValueError):
    """A published payload is not valid JSON; C{line} is 1-based."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def normalize_json(raw: bytes, line: int = 1, max_depth: int | None = None) -> bytes:
    """
    Check that C{raw} is one JSON value (see L{streamd.json_input.parse} for
    C{max_depth}) and return it as one line of JSON text.

    The publisher's bytes are kept when they already fit on one line (so "007" in a
    string or 1.50 stays as sent); a pretty-printed value is re-encoded compactly,
    since NDJSON and SSE framing need the value on one line.
    """
    try:
        value = parse(raw, max_depth)
    except InvalidJSON as e:
        raise InvalidPayload(line, str(e)) from None
    raw = raw.strip()
    if b"\n" in raw or b"\r" in raw:
        try:
            # allow_nan=False: 1e400 parses as inf, which would be written "Infinity".
            raw = compact_json(value, allow_nan=False)
        except ValueError:
            raise InvalidPayload(line, "a number too large for a double (it would be "
                                 "relayed as Infinity)") from None
    return raw


def body_json(body: str) -> bytes:
    """
    A message body written by another program, as one line of JSON: the body itself if
    it is JSON, else the body as a JSON string.
    """
    raw = body.encode()
    try:
        return normalize_json(raw)
    except InvalidPayload:
        return json.dumps(body, ensure_ascii=False).encode()


def decode_body(body: bytes, content_type: str, max_depth: int | None = None) -> list[bytes]:
    """
    Split a publish request body into JSON payloads.

    C{application/x-ndjson}: one value per non-blank line. Anything else
    (C{application/json}): the whole body is one value.
    """
    if content_type == "application/x-ndjson":
        out = []
        for n, line in enumerate(body.split(b"\n"), 1):
            if line.strip():
                out.append(normalize_json(line, n, max_depth))
        return out
    if not body.strip():
        raise InvalidPayload(1, "empty body")
    return [normalize_json(body, 1, max_depth)]
