"""
What C{GET /} says about each stream beyond its source's status: its readers (and how
many of them are paused), and the messages published to it and written to its readers,
as totals and per second. The live page charts these.

Counting costs the hot path nothing: a publish adds its count once, and what readers
were written is read from each open L{streamd.stream.Stream}'s own C{written} count
once a second (plus what streams that ended had written).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.task import LoopingCall

#: Seconds between samples: the rates are over the last such interval.
SAMPLE_INTERVAL = 1.0


class Activity:
    """
    Per stream name: published and delivered totals, and their rates per second.

    @ivar streams: a callable returning the open streams (objects with C{name},
        C{written} and C{source_paused}).
    @ivar names: a callable returning the stream names worth counting (the app's
        sources): counts for other names (event tails, channel subscriptions) and for
        streams that were forgotten are dropped at the next sample, so they stay bounded.
    """

    def __init__(self, clock, streams, names) -> None:
        self.clock = clock
        self.streams = streams
        self.names = names
        self.published: Counter[str] = Counter()
        self._ended_written: Counter[str] = Counter()
        self._last: dict[str, tuple[int, int]] = {}
        self._last_at = clock.seconds()
        self.rates: dict[str, tuple[float, float]] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(SAMPLE_INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def publish(self, name: str, count: int) -> None:
        self.published[name] += count

    def ended(self, stream) -> None:
        """A stream ended: keep what it had written, for its stream's total."""
        self._ended_written[stream.name] += stream.written

    def delivered(self) -> Counter[str]:
        """Messages written to readers so far, per stream name."""
        out = Counter(self._ended_written)
        for s in self.streams():
            out[s.name] += s.written
        return out

    def sample(self) -> None:
        now = self.clock.seconds()
        elapsed = now - self._last_at
        names = set(self.names())
        delivered = self.delivered()
        for table in (self.published, self._ended_written):
            for gone in set(table) - names:
                del table[gone]
        last, self._last, self.rates = self._last, {}, {}
        for name in names:
            totals = self._last[name] = (self.published[name], delivered[name])
            before = last.get(name, (0, 0))
            if elapsed > 0:
                self.rates[name] = ((totals[0] - before[0]) / elapsed,
                                    (totals[1] - before[1]) / elapsed)
        self._last_at = now

    def describe(self, statuses: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Add readers, paused readers, totals and rates to each stream's status entry."""
        readers: Counter[str] = Counter()
        paused: Counter[str] = Counter()
        for s in self.streams():
            readers[s.name] += 1
            paused[s.name] += bool(s.source_paused)
        delivered = self.delivered()
        for name, entry in statuses.items():
            per_second = self.rates.get(name, (0.0, 0.0))
            entry.update({
                "readers": readers[name],
                "paused_readers": paused[name],
                "published": self.published[name],
                "delivered": delivered[name],
                "published_per_second": round(per_second[0], 2),
                "delivered_per_second": round(per_second[1], 2),
            })
        return statuses
