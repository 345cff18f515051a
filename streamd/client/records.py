"""
Records, and the incremental parsers that cut a response body into them: NDJSON (one
JSON value per line) and Server-Sent Events. Pure functions of the bytes received,
with no I/O: a chunk may hold many records or part of one.

Both parsers know streamd's notices (heartbeat, gap, dropped, error, shutdown, end) and
return them as L{Notice}s, so that the client can act on them; every other line or
event is a L{Record}, which makes the client usable with any NDJSON or SSE endpoint.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from streamd.json_input import compact_json

#: streamd's NDJSON notices: one-key objects with these keys.
NOTICES = frozenset({"heartbeat", "gap", "dropped", "error", "shutdown", "end", "status"})

#: streamd's SSE notice events; "stream-error" is streamd's name for its "error" notice.
SSE_NOTICES = {"gap": "gap", "dropped": "dropped", "stream-error": "error",
               "shutdown": "shutdown", "end": "end", "status": "status"}


_decode = json.JSONDecoder().decode


@attrs.define(eq=False)
class Record:
    """
    One record of a stream.

    @ivar id: the record's id (streamd's message id, an NDJSON line's C{"id"}, the SSE
        last event id), or None if the endpoint gives none.
    @ivar data: the payload: streamd's C{"data"}, otherwise the whole NDJSON value or
        the SSE event's data (parsed as JSON when it is JSON, else a string).
    @ivar line: the record as one line of JSON (no newline): the NDJSON line as the
        server sent it, or for an SSE event the same shape, C{{"id", "stream", "data"}}
        with the data's bytes as sent (C{"stream"} when the URL names one, see
        L{stream_of}). This is what a Redis queue stores and what C{streamd-tail}
        prints.
    @ivar event: the SSE event type ("message" unless the server names it).
    @ivar session: the C{Streamd-Session} of the response it came in, for acks.
    """

    id: str | None
    data: Any
    line: bytes
    event: str = "message"
    session: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_line(cls, line: bytes) -> Record:
        """A record from one NDJSON line (what L{line} holds)."""
        try:
            # The decoder itself: json.loads would sniff the bytes' encoding per line.
            value = _decode(line.decode())
        except ValueError:  # UnicodeDecodeError included
            return cls(None, line.decode("utf-8", "replace"), line)
        mid = None
        data = value
        event = "message"
        if isinstance(value, dict):
            raw_id = value.get("id")
            if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
                mid = str(raw_id)
            if mid is not None and "data" in value:
                data = value["data"]  # streamd's {"id", "stream", "data"} shape
            if isinstance(value.get("event"), str):
                event = value["event"]  # an SSE event stored as a line (see SSEParser)
        return cls(mid, data, line, event)


@attrs.frozen
class Notice:
    """A streamd notice: C{kind} is heartbeat, gap, dropped, error, shutdown or end."""

    kind: str
    info: Any


class _Lines:
    """Complete lines of a byte stream; a partial last line waits for the next chunk."""

    def __init__(self) -> None:
        self._buf = b""

    def _lines(self, data: bytes) -> list[bytes]:
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]


class NDJSONParser(_Lines):
    """Cuts NDJSON into records and notices."""

    def feed(self, data: bytes) -> list[Record | Notice]:
        out: list[Record | Notice] = []
        for line in self._lines(data):
            if not line.strip():
                continue
            if line.startswith(b'{"') and len(line) < 4096:
                # Cheap pre-check: a notice is a one-key object with a known key.
                key = line[2:line.find(b'"', 2)].decode("latin-1")
                if key in NOTICES:
                    try:
                        value = json.loads(line)
                    except ValueError:
                        value = None
                    if isinstance(value, dict) and len(value) == 1:
                        out.append(Notice(key, value[key]))
                        continue
            out.append(Record.from_line(line))
        return out


class SSEParser(_Lines):
    """
    Server-Sent Events as the HTML standard parses them: C{data:} lines joined with
    newlines, C{id:} sets the last event id (which persists across events), a blank
    line dispatches, comments are ignored. Lines end in LF or CRLF (a lone CR, which
    the standard also allows, is not supported).

    @ivar stream: the stream's name, for the records' L{Record.line} (SSE does not
        carry it), or None.
    @ivar last_id: the last event id, what a reconnection sends as C{Last-Event-ID}.
    @ivar retry: the server's reconnection hint (ms), if it sent one.
    """

    def __init__(self, stream: str | None = None) -> None:
        super().__init__()
        self.stream = stream
        self._data: list[str] = []
        self._event = ""
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[Record | Notice]:
        out: list[Record | Notice] = []
        for raw in self._lines(data):
            line = raw.decode("utf-8", "replace")
            if not line:
                item = self._dispatch()
                if item is not None:
                    out.append(item)
                continue
            if line.startswith(":"):
                continue
            field, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id":
                if "\0" not in value:
                    self.last_id = value or None
            elif field == "retry" and value.isdigit():
                self.retry = int(value)
        return out

    def _dispatch(self) -> Record | Notice | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        text = "\n".join(data)
        # streamd's NDJSON line holds the publisher's bytes (1.50 stays 1.50): so does
        # this one when the data is JSON on one line, as streamd sends it.
        raw: bytes | None = None
        try:
            value = json.loads(text)
            if len(data) == 1:
                raw = text.encode()
        except ValueError:
            value = text
        if event in SSE_NOTICES:
            return Notice(SSE_NOTICES[event], value)
        if raw is None:
            raw = compact_json(value)
        line = b'{"id":' + compact_json(self.last_id)
        if self.stream is not None:
            line += b',"stream":' + compact_json(self.stream)
        line += b',"data":' + raw
        if event != "message":
            line += b',"event":' + compact_json(event)
        return Record(self.last_id, value, line + b"}", event)


def parser_for(content_type: str | None, stream: str | None = None
               ) -> NDJSONParser | SSEParser:
    """
    The parser for a response's Content-Type: SSE for text/event-stream, else NDJSON.
    C{stream} is the stream's name, for SSE records (see L{SSEParser}).
    """
    if content_type and content_type.split(";")[0].strip().lower() == "text/event-stream":
        return SSEParser(stream)
    return NDJSONParser()


def stream_of(url: str) -> str | None:
    """
    The name of the stream a streamd URL reads (C{.../streams/NAME}, also with
    C{/sample} or C{/filter}; C{.../events/stream} is C{events}), or None.
    """
    segments = urlsplit(url).path.rstrip("/").split("/")
    for i in range(len(segments) - 2, -1, -1):
        if segments[i] == "streams" and segments[i + 1]:
            return unquote(segments[i + 1])
    if segments[-2:] == ["events", "stream"]:
        return "events"
    return None
