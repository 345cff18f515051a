"""
L{Reader}: what the C{redis-list} and C{redis-stream} subscriptions share, the read loop
of one client on a Redis connection of its own; and L{share_out}, how those queue
sources pass on a message one client's filter rejected.

A blocking read (BLMOVE, XREAD BLOCK) holds its connection, so each client has one. One
loop runs at a time and none while the client is paused: a paused client issues no
reads. A read in flight when the client leaves is let finish (at most C{block} seconds)
and what it took is given back rather than stranded; a connection lost mid-read is
waited out (the next command waits for the reconnection).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

#: Seconds a message that no client's filter wants waits before it goes back to Redis
#: (given back at once, the same readers would take it again at once, for ever).
SKIP_DELAY = 5.0

#: Seconds before reading again after an error that is no Redis condition we know of
#: (by the number of such errors in a row): retry later rather than spin.
RETRY_DELAY = backoffPolicy(initialDelay=1.0, maxDelay=30.0, jitter=lambda: 0.0)


def share_out(skipper, subscribers, messages, refused: dict[str, set]):
    """
    Queue delivery of messages C{skipper}'s filter rejected: offer each to another
    reading client that has not refused it yet. Returns C{({client: [messages]},
    unwanted)}; C{refused} (message id -> clients) remembers who said no, and
    forgets a message that nobody wants.
    """
    others = [s for s in subscribers if s is not skipper and not s.cancelled and not s.paused]
    offers: dict[Any, list] = {}
    unwanted = []
    for m in messages:
        said_no = refused.setdefault(m.id, set())
        said_no.add(skipper)
        target = next((s for s in others if s not in said_no), None)
        if target is None:
            del refused[m.id]
            unwanted.append(m)
        else:
            offers.setdefault(target, []).append(m)
    return offers, unwanted


class Reader:
    """
    Base of a reading subscription. Subclasses provide C{read_once()} (a coroutine:
    entries, or an empty list when the block time passed), C{received(entries)},
    C{returned(entries)} (taken but not delivered) and may override C{recover(error)}.

    @ivar reading: a read loop is running.
    """

    def __init__(self, source, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.reader = source.conn.dedicated(source.block)
        self.paused = False
        self.cancelled = False
        self.reading = False
        #: errors in a row that were no Redis condition we know of (see L{RETRY_DELAY})
        self.failures = 0

    def start(self) -> None:
        if not (self.reading or self.paused or self.cancelled):
            self.reading = True
            Deferred.fromCoroutine(self._read())

    async def _read(self) -> None:
        try:
            await self._loop()
        except Exception:
            log.failure("{kind} {name}: reader failed", kind=self.source.kind,
                        name=self.source.name)
            if not self.cancelled:
                self.source.clock.callLater(RETRY_DELAY(self.failures), self.start)
                self.failures += 1
        finally:
            self.reading = False
            if self.cancelled:
                self.reader.close()

    async def _loop(self) -> None:
        while not (self.paused or self.cancelled):
            try:
                entries = await self.read_once()
            except txredisapi.ConnectionError:
                # Lost (Redis restarted, reply timeout): the next command waits for the
                # reconnection, and the read continues where it was.
                continue
            except txredisapi.ResponseError as e:
                if self.recover(e):
                    continue
                self.consumer.source_ended(f"redis: {e}")
                return
            self.failures = 0
            if not entries:
                continue
            if self.cancelled:
                self.returned(entries)
                return
            self.received(entries)

    async def read_once(self) -> list:
        raise NotImplementedError

    def received(self, entries: list) -> None:
        raise NotImplementedError

    def returned(self, entries: list) -> None:
        raise NotImplementedError

    def recover(self, error: txredisapi.ResponseError) -> bool:
        """True if the error was dealt with and reading may go on."""
        return False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.start()

    def cancel(self) -> None:
        """Stop reading; a read in flight finishes first (see the module doc)."""
        if self.cancelled:
            return
        self.leave()
        if not self.reading:
            self.reader.close()

    def close_now(self) -> None:
        """Shutdown: close at once (a read in flight is recovered at the next start)."""
        if not self.cancelled:
            self.leave()
        self.reader.close()

    def leave(self) -> None:
        self.cancelled = True
        self.source.subscribers.discard(self)
