"""
The client side of the fan-out benchmark: HTTP/1.1 over raw asyncio sockets.

The subscriber side has to stay cheap (on a two-core machine it shares the CPU with the
server), so a subscriber is a bare C{asyncio.Protocol} that decodes chunked encoding itself
and finds each message's sequence number and send time with one regular-expression pass over
every block of complete lines, instead of a C{json.loads} per line.

A benchmark payload starts with C{{"seq":N,"t":T,...}}, so C{SEQ_RE} finds it inside the
NDJSON envelope C{{"id":...,"stream":...,"data":{"seq":N,"t":T,...}}}.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array

SEQ_RE = re.compile(rb'"seq":\s*(\d+),\s*"t":\s*([0-9.eE+-]+)')

#: Control lines a stream may carry besides messages, by the prefix that identifies them.
CONTROLS = {
    "heartbeat": b'{"heartbeat"',
    "gap": b'{"gap"',
    "dropped": b'{"dropped"',
    "error": b'{"error"',
}

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server sent something that is not HTTP/1.1 as we understand it."""


class ChunkedDecoder:
    """
    Incremental decoder of HTTP/1.1 chunked transfer coding.

    C{feed(data)} returns the body bytes decoded so far; C{done} turns true after the last
    chunk and its (ignored) trailer section.
    """

    SIZE, DATA, DATA_END, TRAILER, DONE = range(5)

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = self.SIZE
        self.remaining = 0

    @property
    def done(self) -> bool:
        return self.state == self.DONE

    def feed(self, data: bytes) -> bytes:
        # Fast path: the whole packet is the middle of one chunk.
        if self.state == self.DATA and not self.buf and len(data) < self.remaining:
            self.remaining -= len(data)
            return bytes(data)
        buf = self.buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while self.state != self.DONE:
            if self.state == self.DATA:
                n = min(self.remaining, end - pos)
                if n:
                    out.append(buf[pos : pos + n])
                    pos += n
                    self.remaining -= n
                if self.remaining:
                    break
                self.state = self.DATA_END
            if self.state == self.DATA_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self.state = self.SIZE
            if self.state == self.SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    if end - pos > 1024:
                        raise ProtocolError("chunk size line too long")
                    break
                try:
                    size = int(bytes(buf[pos:i]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {bytes(buf[pos:i])[:40]!r}") from None
                pos = i + 2
                if size:
                    self.state = self.DATA
                    self.remaining = size
                else:
                    self.state = self.TRAILER
                continue
            if self.state == self.TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                # Trailer fields are skipped; the empty line ends the body.
                empty = i == pos
                pos = i + 2
                if empty:
                    self.state = self.DONE
        del buf[:pos]
        return b"".join(out)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers


class Subscriber(asyncio.Protocol):
    """
    One C{GET /streams/NAME} response read to its end, tallying what it carries.

    @ivar counts: deliveries per sequence number (saturating at 255), to find lost and
        duplicated messages.
    @ivar latencies: receive time minus send time of each first delivery, in seconds. The
        receive time is taken once per socket read: the moment Python saw the bytes.
    @ivar opened: resolves when the response head arrived (the stream is established).
    @ivar finished: resolves when the response ended, the connection closed or failed.
    """

    def __init__(self, request: bytes, total: int) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.counts = bytearray(total)
        self.latencies = array("d")
        self.unique = 0
        self.matched = 0
        self.out_of_range = 0
        self.other_lines = 0
        self.controls = dict.fromkeys(CONTROLS, 0)
        self.samples: dict[str, str] = {}
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.status: int | None = None
        self.ended: str | None = None
        self.opened: asyncio.Future = loop.create_future()
        self.finished: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._decoder: ChunkedDecoder | None = None
        self._partial = b""
        self._error_body = bytearray()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.ended is not None:
            return
        try:
            if self.status is None:
                data = self._read_head(data)
                if data is None:
                    return
            if self.status != 200:
                self._error_body += data
                return
            if self._decoder is None:
                payload = data  # identity body, ends when the connection does
            else:
                payload = self._decoder.feed(data)
            if payload:
                self._lines(payload, now)
            if self._decoder is not None and self._decoder.done:
                self._end("complete")
        except ProtocolError as e:
            self._end(f"protocol error: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status is not None and self.status != 200:
            body = bytes(self._error_body[:200]).decode("utf-8", "replace")
            self._end(f"HTTP {self.status}: {body}")
        elif self.status is None:
            self._end(f"closed before the response head ({exc or 'EOF'})")
        else:
            self._end(f"closed by server ({exc})" if exc else "closed by server")

    # API

    def fail(self, reason: str) -> None:
        """Record a failure that happened outside the protocol (connect error, timeout)."""
        self._end(reason)

    def close(self) -> None:
        """Hang up (the client going away), recording why if nothing ended it before."""
        self._end("closed by client")

    def result(self) -> dict:
        """What this subscriber saw, as plain data that pickles cheaply."""
        total = len(self.counts)
        return {
            "total": total,
            "unique": self.unique,
            "duplicated": self.matched - self.out_of_range - self.unique,
            "out_of_range": self.out_of_range,
            "other_lines": self.other_lines,
            "controls": dict(self.controls),
            "samples": dict(self.samples),
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "status": self.status,
            "ended": self.ended,
            "latencies": self.latencies.tobytes(),
        }

    # internals

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.finished.done():
            self.finished.set_result(self.ended)
        if self.transport is not None:
            self.transport.close()

    def _read_head(self, data: bytes) -> bytes | None:
        self._head += data
        i = self._head.find(b"\r\n\r\n")
        if i < 0:
            if len(self._head) > MAX_HEAD:
                raise ProtocolError("response head too long")
            return None
        self.status, headers = parse_head(bytes(self._head[:i]))
        rest = bytes(self._head[i + 4 :])
        self._head = bytearray()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._decoder = ChunkedDecoder()
        if not self.opened.done():
            self.opened.set_result(self.status == 200)
        return rest

    def _lines(self, payload: bytes, now: float) -> None:
        if self._partial:
            payload = self._partial + payload
        cut = payload.rfind(b"\n") + 1
        if cut == 0:
            self._partial = payload
            return
        if cut < len(payload):
            self._partial = payload[cut:]
            payload = payload[:cut]
        else:
            self._partial = b""
        if not self.first_recv:
            self.first_recv = now
        matches = SEQ_RE.findall(payload)
        counts = self.counts
        size = len(counts)
        lat = self.latencies.append
        unique = 0
        for seq, sent in matches:
            i = int(seq)
            if i >= size:
                self.out_of_range += 1
                continue
            c = counts[i]
            if c == 0:
                unique += 1
                lat(now - float(sent))
            if c < 255:
                counts[i] = c + 1
        if matches:
            self.unique += unique
            self.matched += len(matches)
            self.last_recv = now
        lines = payload.count(b"\n")
        if lines != len(matches):
            rest = lines - len(matches)
            for name, prefix in CONTROLS.items():
                n = payload.count(prefix)
                if n:
                    self.controls[name] += n
                    rest -= n
                    if name not in self.samples:
                        j = payload.find(prefix)
                        self.samples[name] = payload[j : payload.find(b"\n", j)][:200].decode(
                            "utf-8", "replace"
                        )
            if rest > 0:
                self.other_lines += rest
                if "other" not in self.samples:
                    for line in payload.split(b"\n"):
                        if line and not SEQ_RE.search(line) and not any(
                            line.startswith(p) for p in CONTROLS.values()
                        ):
                            self.samples["other"] = line[:200].decode("utf-8", "replace")
                            break


class HTTPConnection:
    """A persistent HTTP/1.1 client connection for requests with small answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict | None = None
    ) -> tuple[int, bytes]:
        """Send one request, return (status, body); reconnects when the server closed."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.close()
            raise ProtocolError("connection closed before the response") from None
        status, rheaders = parse_head(head[:-4])
        if "chunked" in rheaders.get("transfer-encoding", "").lower():
            decoder = ChunkedDecoder()
            parts = []
            while not decoder.done:
                data = await self.reader.read(65536)
                if not data:
                    raise ProtocolError("connection closed inside a chunked body")
                parts.append(decoder.feed(data))
            data = b"".join(parts)
        elif "content-length" in rheaders:
            data = await self.reader.readexactly(int(rheaders["content-length"]))
        else:
            data = await self.reader.read()
            self.close()
        if rheaders.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
