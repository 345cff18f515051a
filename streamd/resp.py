"""
A RESP2 reply reader for streamd's txredisapi connections, parsing a whole read of the
socket in one pass.

txredisapi's pure-Python parser pauses the transport and waits a reactor turn
(C{callLater(0)}) after every bulk string that is followed by more data: a read that
holds 100 pub/sub messages takes 300 turns of the reactor, which dominated the latency
of a busy pub/sub stream. hiredis avoids that, but installing it swaps the parser of
every txredisapi user in the process. This mixin changes only the connections that
L{streamd.redis} makes, all of which are bytes-exact (no decoding, no number
conversion): bulk strings stay C{bytes}, status replies are C{str} as txredisapi's are.
"""

from __future__ import annotations

import txredisapi

_INCOMPLETE = object()


def parse(buf: bytes, pos: int):
    """
    One reply starting at C{pos}: C{(reply, next_pos)}, or C{(_INCOMPLETE, pos)} when the
    buffer ends first. Errors are L{txredisapi.ResponseError} values (C{ERR } removed,
    as txredisapi does), not raised: the caller hands them to the command's Deferred.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    line = buf[pos + 1:end]
    nxt = end + 2
    if kind == 36:  # $ bulk string
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return _INCOMPLETE, pos
        return buf[nxt:nxt + n], nxt + n + 2
    if kind == 42:  # * array
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            item, nxt = parse(buf, nxt)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, nxt
    if kind == 58:  # : integer
        return int(line), nxt
    if kind == 43:  # + status
        return line.decode(), nxt
    if kind == 45:  # - error
        text = line.decode("utf-8", "replace")
        return txredisapi.ResponseError(text[4:] if text.startswith("ERR ") else text), nxt
    raise txredisapi.InvalidResponse(f"unexpected reply type {chr(kind)!r}")


class FastReplies:
    """Mixin for a txredisapi protocol: replies parsed by L{parse}, a read at a time."""

    _pending = b""

    def dataReceived(self, data, unpause=False):
        buf = self._pending + data if self._pending else data
        pos = 0
        size = len(buf)
        try:
            while pos < size:
                reply, nxt = parse(buf, pos)
                if reply is _INCOMPLETE:
                    break
                pos = nxt
                self.replyReceived(reply)
        except (ValueError, IndexError, txredisapi.InvalidResponse) as e:
            # A stream we cannot parse cannot be resynchronised: drop the connection
            # (the factory reconnects) rather than hand out wrong replies.
            self._pending = b""
            self.replyReceived(txredisapi.InvalidResponse(str(e)))
            self.transport.loseConnection()
            return
        self._pending = buf[pos:]


class Protocol(FastReplies, txredisapi.BaseRedisProtocol):
    """Ordinary and blocking commands."""


class SubscriberProtocol(FastReplies, txredisapi.SubscriberProtocol):
    """Pub/sub; subclass it to receive messages (see L{streamd.sources.redis_pubsub})."""
