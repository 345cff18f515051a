"""
The client side of the fan-out benchmark: HTTP/1.1 over raw asyncio sockets.

The subscriber side has to stay cheap (on a two-core machine it shares the CPU with the
server), so a subscriber is a bare C{asyncio.Protocol} that decodes chunked encoding itself
and, while the benchmark runs, only keeps each decoded piece of body with the time it was
read. The pieces are parsed afterwards, outside the measured window, with one
regular-expression pass instead of a C{json.loads} per line.

A benchmark payload starts with C{{"seq":N,"t":T,...}} (T: the send time in integer
microseconds since the epoch), so C{SEQ_RE} finds both inside the NDJSON envelope
C{{"id":...,"stream":...,"data":{"seq":N,"t":T,...}}}.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from itertools import accumulate

SEQ_KEY = b'"seq":'
SEQ_RE = re.compile(rb'"seq":\s*(\d+),\s*"t":\s*(\d+)')

#: Control lines a stream may carry besides messages, by the prefix that identifies them.
CONTROLS = {
    "heartbeat": b'{"heartbeat"',
    "gap": b'{"gap"',
    "dropped": b'{"dropped"',
    "error": b'{"error"',
}

MAX_HEAD = 64 * 1024
#: Body bytes a process holds unparsed; past this, subscribers parse what they hold at once.
DEFER_LIMIT = 512 * 1024 * 1024


class ProtocolError(Exception):
    """The server sent something that is not HTTP/1.1 as we understand it."""


class ChunkedDecoder:
    """
    Incremental decoder of HTTP/1.1 chunked transfer coding.

    C{feed(data)} returns the pieces of body decoded from C{data} (a list, so that no
    piece is copied twice); C{done} turns true after the last chunk and its trailer section.
    """

    SIZE, DATA, DATA_END, TRAILER, DONE = range(5)

    def __init__(self) -> None:
        self.rest = b""  # never body: at most a partial size line, CRLF or trailer line
        self.state = self.SIZE
        self.remaining = 0

    @property
    def done(self) -> bool:
        return self.state == self.DONE

    def feed(self, data: bytes) -> list[bytes]:
        if self.state == self.DATA and len(data) <= self.remaining:
            # The common case for big chunks: the packet is all body.
            self.remaining -= len(data)
            if not self.remaining:
                self.state = self.DATA_END
            return [data] if data else []
        buf = self.rest + data if self.rest else data
        out = []
        pos = 0
        end = len(buf)
        while self.state != self.DONE:
            if self.state == self.DATA:
                n = min(self.remaining, end - pos)
                if n:
                    out.append(buf if n == end else buf[pos : pos + n])
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
                    size = int(buf[pos:i].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {buf[pos:i][:40]!r}") from None
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
        self.rest = buf[pos:] if pos < end else b""
        return out


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
    One C{GET /streams/NAME} response read to its end.

    While the benchmark runs, C{data_received} only decodes the chunks and keeps each piece
    of body with the time it was read (C{_blocks}). L{result} (or L{_digest}, once the
    process holds L{DEFER_LIMIT} bytes) parses them: a message's receive time is the read
    that brought the end of its line.

    @ivar received: body bytes read so far (progress, for the caller's quiet timeout).
    @ivar pairs: sequence number and send time (microseconds) of each message line parsed
        so far, in arrival order, interleaved.
    @ivar recv: each of those lines' receive time (C{time.time()} seconds).
    @ivar slow: this one stops reading once the stream is open (a stuck client), to see
        what the server does to it and whether the others notice.
    @ivar opened: resolves when the response head arrived (the stream is established).
    @ivar finished: resolves when the response ended, the connection closed or failed.
    """

    deferred_bytes = 0  # held in _blocks by all subscribers of this process

    def __init__(self, request: bytes, total: int, slow: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.slow = slow
        self.total = total
        self.received = 0
        self.pairs = array("q")
        self.recv = array("d")
        self.unparsed = 0
        self.other_lines = 0
        self.controls = dict.fromkeys(CONTROLS, 0)
        self.samples: dict[str, str] = {}
        self.status: int | None = None
        self.ended: str | None = None
        self.opened: asyncio.Future = loop.create_future()
        self.finished: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._decoder: ChunkedDecoder | None = None
        self._blocks: list[tuple[float, bytes]] = []
        self._error_body = b""

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
                self._error_body = (self._error_body + data)[:4096]
                return
            # Without chunked encoding the body is identity, ended by the connection.
            pieces = [data] if self._decoder is None else self._decoder.feed(data)
            for piece in pieces:
                self._blocks.append((now, piece))
                self.received += len(piece)
                Subscriber.deferred_bytes += len(piece)
            if Subscriber.deferred_bytes > DEFER_LIMIT:
                self._digest()
            if self._decoder is not None and self._decoder.done:
                self._end("complete")
        except ProtocolError as e:
            self._end(f"protocol error: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status is not None and self.status != 200:
            body = self._error_body[:200].decode("utf-8", "replace")
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
        self._digest()
        total = self.total
        counts = bytearray(total)  # deliveries per seq, saturating at 255
        latencies = array("d")
        unique = out_of_range = 0
        pairs = self.pairs
        for k, recv in enumerate(self.recv):
            seq = pairs[2 * k]
            if not 0 <= seq < total:
                out_of_range += 1
                continue
            c = counts[seq]
            if not c:
                unique += 1
                latencies.append(recv - pairs[2 * k + 1] / 1e6)
            if c < 255:
                counts[seq] = c + 1
        return {
            "total": total,
            "unique": unique,
            "duplicated": len(self.recv) - out_of_range - unique,
            "out_of_range": out_of_range,
            "unparsed": self.unparsed,
            "other_lines": self.other_lines,
            "controls": dict(self.controls),
            "samples": dict(self.samples),
            "first_recv": self.recv[0] if self.recv else 0.0,
            "last_recv": self.recv[-1] if self.recv else 0.0,
            "status": self.status,
            "ended": self.ended,
            "slow": self.slow,
            "latencies": latencies.tobytes(),
            "counts": bytes(counts),
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
        self.status, headers = parse_head(self._head[:i])
        rest = self._head[i + 4 :]
        self._head = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._decoder = ChunkedDecoder()
        if not self.opened.done():
            self.opened.set_result(self.status == 200)
        if self.slow and self.transport is not None:
            self.transport.pause_reading()
        return rest

    def _digest(self) -> None:
        """Parse the complete lines held in C{_blocks}; keep the partial last line."""
        blocks = self._blocks
        if not blocks:
            return
        data = b"".join(piece for _, piece in blocks)
        Subscriber.deferred_bytes -= len(data)
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        self._blocks = [(blocks[-1][0], tail)] if tail else []
        Subscriber.deferred_bytes += len(tail)
        if not cut:
            return
        ends = list(accumulate(len(piece) for _, piece in blocks))
        pairs, recv, find = self.pairs, self.recv, data.find
        k = 0
        n = 0
        for m in SEQ_RE.finditer(data, 0, cut):
            newline = find(b"\n", m.end())
            while ends[k] <= newline:
                k += 1
            pairs.append(int(m[1]))
            pairs.append(int(m[2]))
            recv.append(blocks[k][0])
            n += 1
        self.unparsed += data.count(SEQ_KEY, 0, cut) - n
        rest = data.count(b"\n", 0, cut) - data.count(SEQ_KEY, 0, cut)
        if not rest:
            return
        for name, prefix in CONTROLS.items():
            c = data.count(prefix, 0, cut)
            if c:
                self.controls[name] += c
                rest -= c
                if name not in self.samples:
                    j = data.find(prefix)
                    self.samples[name] = data[j : data.find(b"\n", j)][:200].decode(
                        "utf-8", "replace"
                    )
        if rest > 0:
            self.other_lines += rest
            if "other" not in self.samples:
                for line in data[:cut].split(b"\n"):
                    if line and SEQ_KEY not in line and not any(
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
                parts += decoder.feed(data)
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
