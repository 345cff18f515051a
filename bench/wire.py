"""
The client side of the fan-out benchmark: HTTP/1.1 over raw asyncio sockets.

The generator has to stay cheap (it has one core, the server another), so a subscriber is
a bare C{asyncio.Protocol} that, while the benchmark runs, only keeps each read with the
time it was read. Chunked decoding and parsing happen afterwards, outside the measured
window, with one regular-expression pass instead of a C{json.loads} per line.

A benchmark payload starts with C{{"seq":N,"t":T,...}} (T: the send time in integer
microseconds since the epoch), so C{SEQ_RE} finds both inside streamd's NDJSON envelope
C{{"id":...,"stream":...,"data":{"seq":N,"t":T,...}}}, in an SSE C{data:} line, or as
the whole of an Nchan message.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from array import array
from itertools import accumulate

SEQ_KEY = b'"seq":'
SEQ_RE = re.compile(rb'"seq":\s*(\d+),\s*"t":\s*(\d+)')
#: The message a publisher sends after all the others: a reader that got it has everything
#: the server is going to send it (servers keep a stream's order).
END = b'{"end":true}'

#: Control lines an NDJSON stream may carry besides messages, by a marker found in them.
CONTROLS = {
    "heartbeat": b'{"heartbeat"',
    "gap": b'{"gap"',
    "dropped": b'{"dropped"',
    "error": b'{"error"',
    "end": END,
}
#: The same for SSE (streamd's event names; a heartbeat is a comment, with no data line).
SSE_CONTROLS = {
    "heartbeat": b": heartbeat",
    "gap": b"event: gap\n",
    "dropped": b"event: dropped\n",
    "error": b"event: stream-error\n",
    "end": END,
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
    One stream response (NDJSON or SSE, chunked or not) read to its end.

    While the benchmark runs, C{data_received} only keeps each read with its time
    (C{_raw}, C{_times}): no decoding at all, so that one generator process can read many
    streams. L{result} (or L{digest_held}, when the process holds L{DEFER_LIMIT} bytes)
    decodes the chunks and parses the lines: a message's receive time is the read that
    brought the end of its line.

    @ivar received: bytes read so far, framing included (progress, for the quiet timeout).
    @ivar pairs: sequence number and send time (microseconds) of each message line parsed
        so far, in arrival order, interleaved.
    @ivar recv: each of those lines' receive time (C{time.time()} seconds).
    @ivar read_rate: None for a reader that reads as fast as it can; 0 for one that stops
        reading once the stream is open (a stuck client); else the bytes per second it
        reads at (a slow client). L{release} lets it read at full speed again.
    @ivar opened: resolves when the response head arrived (the stream is established).
    @ivar finished: resolves when the response ended, the connection closed or failed.
    """

    def __init__(self, request: bytes, total: int, read_rate: float | None = None,
                 sse: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.read_rate = read_rate
        self.slow = read_rate is not None
        self.sse = sse
        self.total = total
        self.received = 0
        self.pairs = array("q")
        self.recv = array("d")
        self.unparsed = 0
        self.other_lines = 0
        self.controls = dict.fromkeys(SSE_CONTROLS if sse else CONTROLS, 0)
        self.samples: dict[str, str] = {}
        self.status: int | None = None
        self.ended: str | None = None
        self.opened: asyncio.Future = loop.create_future()
        self.finished: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._decoder: ChunkedDecoder | None = None
        self._raw: list[bytes] = []
        self._times = array("d")
        self._blocks: list[tuple[float, bytes]] = []  # decoded, not yet parsed
        self._error_body = b""
        self._live = False  # reading a 200 response at full speed: the fast path
        self._parsed = 0  # bytes of `received` handed to _decode

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._live:  # nearly every read: keep it with its time, nothing else
            self._times.append(time.time())
            self._raw.append(data)
            self.received += len(data)
            return
        now = time.time()
        if self.ended is not None:
            return
        if self.status is None:
            try:
                data = self._read_head(data)
            except ProtocolError as e:
                self._end(f"protocol error: {e}")
                return
            if not data:
                return
        if self.status != 200:
            self._error_body = (self._error_body + data)[:4096]
            return
        self._raw.append(data)
        self._times.append(now)
        self.received += len(data)
        if self.read_rate and self.transport is not None:
            # A slow reader: no more reads until this one's bytes are paid for.
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(len(data) / self.read_rate, self._resume)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status is not None and self.status != 200:
            body = self._error_body[:200].decode("utf-8", "replace")
            self._end(f"HTTP {self.status}: {body}")
        elif self.status is None:
            self._end(f"closed before the response head ({exc or 'EOF'})")
        else:
            self._end(f"closed by server ({exc})" if exc else "closed by server")

    # API

    def saw_end(self) -> bool:
        """Whether the L{END} message arrived (what a publisher sends after all the rest)."""
        if self.controls["end"]:
            return True
        window = b""
        for data in reversed(self._raw):  # the last 128 bytes or more, contiguous
            window = data[-128:] + window
            if len(data) >= 128:
                break
        return END in window

    def count_until(self, when: float) -> int:
        """Message lines received up to C{when} (a C{time.time()})."""
        self._digest()
        return bisect.bisect_right(self.recv, when)

    def release(self) -> None:
        """Let a slow or stopped reader read at full speed from now on."""
        self.read_rate = None
        if self.transport is not None and self.ended is None:
            self._live = self.status == 200
            self.transport.resume_reading()

    def fail(self, reason: str) -> None:
        """Record a failure that happened outside the protocol (connect error, timeout)."""
        self._end(reason)

    def close(self) -> None:
        """Hang up (the client going away), recording why if nothing ended it before."""
        self._digest()
        if self._decoder is not None and self._decoder.done:
            self._end("complete")
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

    def _resume(self) -> None:
        if self.transport is not None and self.ended is None:
            self.transport.resume_reading()

    def _end(self, why: str) -> None:
        self._live = False
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
        self._live = self.status == 200 and self.read_rate is None
        if self.read_rate == 0 and self.transport is not None:
            self.transport.pause_reading()
        return rest

    def _decode(self) -> None:
        """Decode the reads held in C{_raw} into pieces of body, each with its read time."""
        raw, times = self._raw, self._times
        if not raw:
            return
        self._raw, self._times = [], array("d")
        self._parsed += sum(len(data) for data in raw)
        blocks, decoder = self._blocks, self._decoder
        try:
            for now, data in zip(times, raw, strict=True):
                pieces = [data] if decoder is None else decoder.feed(data)
                for piece in pieces:
                    blocks.append((now, piece))
        except ProtocolError as e:
            self._end(f"protocol error: {e}")

    def _digest(self) -> None:
        """Parse the complete lines held; keep the partial last line."""
        self._decode()
        blocks = self._blocks
        if not blocks:
            return
        data = b"".join(piece for _, piece in blocks)
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        self._blocks = [(blocks[-1][0], tail)] if tail else []
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
        seqs = data.count(SEQ_KEY, 0, cut)
        self.unparsed += seqs - n
        self._count_others(data, cut, seqs)

    def _count_others(self, data: bytes, cut: int, seqs: int) -> None:
        """Count the control lines, and the lines that are neither message nor control."""
        if self.sse:
            # Only data lines count: ids, comments, retry hints and blank lines are framing.
            lines = data.count(b"\ndata:", 0, cut) + data.startswith(b"data:")
            controls = SSE_CONTROLS
        else:
            lines = data.count(b"\n", 0, cut)
            controls = CONTROLS
        rest = lines - seqs
        for name, marker in controls.items():
            c = data.count(marker, 0, cut)
            if c:
                self.controls[name] += c
                if marker != SSE_CONTROLS["heartbeat"]:  # an SSE comment has no data line
                    rest -= c
                if name not in self.samples:
                    j = data.find(marker)
                    self.samples[name] = data[j : data.find(b"\n", j)][:200].decode(
                        "utf-8", "replace"
                    )
        if rest > 0:
            self.other_lines += rest
            if "other" not in self.samples:
                for line in data[:cut].split(b"\n"):
                    if self.sse and not line.startswith(b"data:"):
                        continue
                    if line and SEQ_KEY not in line and not any(
                        marker in line for marker in controls.values()
                    ):
                        self.samples["other"] = line[:200].decode("utf-8", "replace")
                        break


def digest_held(subs: list[Subscriber], limit: int | None = None) -> int:
    """
    Parse what the readers hold once it adds up to more than C{limit} bytes (so that a long
    run keeps its memory bounded); return the bytes held before.
    """
    held = sum(s.received - s._parsed for s in subs)
    if held > (DEFER_LIMIT if limit is None else limit):
        for s in subs:
            s._digest()
    return held


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
