"""
The publishing side of the benchmark: keep-alive connections that each carry one request
at a time, one message per request, at full speed or paced.

A L{Publisher} drives C{conns} L{Poster}s: a poster whose answer came sends the next
message from inside C{data_received} (no task, no future per request), so that a single
Python process can post tens of thousands of messages a second and still read its streams.
The same machinery speaks HTTP (a POST per message) and RESP (a PUBLISH per message).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from common import payload
from wire import END


def http_framer(host: str, port: int, path: str, content_type: str, suffix: bytes = b""):
    """C{frame(body)}: one POST of C{body + suffix} to C{path}, on a keep-alive connection."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: %d\r\n\r\n").encode()

    def frame(body: bytes) -> bytes:
        body += suffix
        return head % len(body) + body

    return frame


def resp_framer(channel: bytes):
    """C{frame(body)}: one PUBLISH of C{body} to C{channel}."""
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel)

    def frame(body: bytes) -> bytes:
        return head + b"$%d\r\n%s\r\n" % (len(body), body)

    return frame


def parse_http(buf: bytes) -> tuple[int, int, bool, bytes] | None:
    """
    One HTTP response from the start of C{buf}: (bytes it takes, status, whether the server
    closes the connection after it, body), or None while it is incomplete.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    status = int(buf[9:12])
    head = buf[: end + 2]
    if b"\r\nContent-Length: " not in head and b"\r\nTransfer-Encoding: " not in head:
        head = head.lower().replace(b"\r\ncontent-length:", b"\r\nContent-Length:").replace(
            b"\r\ntransfer-encoding:", b"\r\nTransfer-Encoding:")  # other spellings
    close = b"\r\nConnection: close\r\n" in head or b"\r\nconnection: close\r\n" in head
    body_at = end + 4
    i = head.find(b"\r\nContent-Length:")
    if i >= 0:
        length = int(head[i + 17 : head.find(b"\r\n", i + 2)])
        if len(buf) < body_at + length:
            return None
        return body_at + length, status, close, buf[body_at : body_at + length]
    if b"\r\nTransfer-Encoding: chunked" in head:
        # Small answers only (a publish acknowledgement): the body ends at the last chunk.
        last = buf.find(b"\r\n0\r\n\r\n", end + 2)
        if last < 0:
            return None
        return last + 7, status, close, buf[body_at : last + 2]
    return body_at, status, close, b""  # e.g. 204: no body


def parse_resp(buf: bytes) -> tuple[int, int, bool, bytes] | None:
    """One RESP reply to PUBLISH (C{:N} or C{-ERR ...}), in L{parse_http}'s terms."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    return end + 2, 200 if buf[:1] == b":" else 500, False, buf[:end]


class Poster(asyncio.Protocol):
    """One connection of a L{Publisher}: sends a request, waits for its answer, tells."""

    def __init__(self, owner: Publisher) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.seq: int | None = None  # the message in flight, if any
        self.closing = False  # the server said it closes: no more requests on this one
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected.set_result(True)

    def send(self, seq: int, data: bytes) -> None:
        self.seq = seq
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        parse = self.owner.parse
        while self.seq is not None:
            answer = parse(buf)
            if answer is None:
                break
            used, status, close, body = answer
            buf = buf[used:]
            seq, self.seq = self.seq, None
            if close:
                self.closing = True
                self.transport.close()
            self.owner.answered(self, seq, status, body)
        self.buf = buf

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self.connected.done():
            self.connected.set_result(False)
        self.owner.lost(self, exc)


class Publisher:
    """
    Publish C{total} messages (seq 0 to total - 1), one per request, over C{conns}
    connections with one request in flight on each; at full speed (C{rate} None) or paced
    at C{rate} messages per second. Then L{END}, alone, once every answer came.

    C{frame(body)} makes a request of a message's bytes (L{http_framer}, L{resp_framer});
    C{parse} reads one answer (L{parse_http}, L{parse_resp}); C{ok} tells which statuses
    mean accepted.
    """

    def __init__(self, host: str, port: int, frame: Callable[[bytes], bytes],
                 parse, ok: tuple[int, ...], total: int, size: int, conns: int,
                 rate: float | None) -> None:
        self.host, self.port = host, port
        self.frame, self.parse, self.ok = frame, parse, ok
        self.total, self.size, self.conns, self.rate = total, size, conns, rate
        self.accepted = bytearray(total)  # 1 for each seq the server accepted
        self.posters: list[Poster] = []
        self.idle: list[Poster] = []
        self.next_seq = 0
        self.answers = 0
        self.errors = 0
        self.error_sample: str | None = None
        self.done: asyncio.Future | None = None
        self.first_send = self.last_answer = 0.0
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._end_answer: asyncio.Future | None = None
        self.closed = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.conns):
            _, p = await loop.create_connection(lambda: Poster(self), self.host, self.port)
            self.posters.append(p)

    async def run(self, deadline: float) -> dict:
        """Publish everything (bounded by C{deadline}, monotonic); then the END message."""
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.idle = list(self.posters)
        self.first_send = time.time()
        self._t0 = loop.time()
        self._pump()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self.next_seq = self.total  # stop sending
            self._note(f"publisher timed out with {self.total - self.answers} unanswered")
        if self._timer is not None:
            self._timer.cancel()
        self.last_answer = time.time()
        await self._send_end(deadline)
        return {"sent": self.next_seq, "accepted": sum(self.accepted), "errors": self.errors,
                "error_sample": self.error_sample, "first_send": self.first_send,
                "last_answer": self.last_answer, "accepted_seqs": self.accepted}

    def close(self) -> None:
        self.closed = True
        for p in self.posters:
            if p.transport is not None:
                p.transport.close()

    # called by the posters

    def answered(self, poster: Poster, seq: int, status: int, body: bytes) -> None:
        if seq >= 0:
            self.answers += 1
            if status in self.ok:
                self.accepted[seq] = 1
            else:
                self._note(f"status {status}: {body[:200]!r}")
            if self.rate is None and self.next_seq < self.total and not poster.closing:
                seq = self.next_seq  # full speed: the next one, on this connection
                self.next_seq = seq + 1
                poster.send(seq, self.frame(payload(seq, self.size)))
                return
        else:  # the END message
            if status not in self.ok:
                self._note(f"END refused, status {status}: {body[:200]!r}")
            if self._end_answer is not None and not self._end_answer.done():
                self._end_answer.set_result(status)
        if not poster.closing:
            self.idle.append(poster)
        self._pump()

    def lost(self, poster: Poster, exc) -> None:
        """A connection closed: count the request in flight as failed, reconnect."""
        if poster in self.idle:
            self.idle.remove(poster)
        if poster.seq is not None and poster.seq >= 0:
            self.answers += 1
            self._note(f"connection lost with a request in flight ({exc})")
        elif poster.seq is not None and self._end_answer and not self._end_answer.done():
            self._end_answer.set_result(None)
        if not self.closed:
            asyncio.ensure_future(self._reconnect(poster))

    # internals

    async def _reconnect(self, old: Poster) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, p = await loop.create_connection(lambda: Poster(self), self.host, self.port)
        except OSError as e:
            self._note(f"reconnect failed: {e}")
            self._check_done()
            return
        if self.closed:
            p.transport.close()
            return
        self.posters[self.posters.index(old)] = p
        self.idle.append(p)
        self._pump()

    def _note(self, what: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or what

    def _pump(self) -> None:
        """Send what is due on the idle connections; schedule the next paced send."""
        total = self.total
        if self.rate:
            loop = asyncio.get_running_loop()
            due = min(total, int((loop.time() - self._t0) * self.rate) + 1)
        else:
            due = total
        while self.idle and self.next_seq < due:
            seq = self.next_seq
            self.next_seq += 1
            self.idle.pop().send(seq, self.frame(payload(seq, self.size)))
        if self.next_seq < total:
            if self.rate and self._timer is None and self.idle:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_at(self._t0 + self.next_seq / self.rate, self._tick)
        else:
            self._check_done()

    def _tick(self) -> None:
        self._timer = None
        self._pump()

    def _check_done(self) -> None:
        if self.answers >= self.next_seq >= self.total and not self.done.done():
            self.done.set_result(None)

    async def _send_end(self, deadline: float) -> None:
        """L{END}, on its own, after every other message was answered."""
        while not self.idle:  # all reconnecting
            if time.monotonic() > deadline:
                self._note("no connection left for the END message")
                return
            await asyncio.sleep(0.001)
        self._end_answer = asyncio.get_running_loop().create_future()
        self.idle.pop().send(-1, self.frame(END))
        try:
            await asyncio.wait_for(self._end_answer, max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self._note("no answer to the END message")
