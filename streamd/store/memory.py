"""
The memory event store: for tests and throwaway servers (nothing survives a restart).

Each C{(key, value)} has an ascending list of ids (ids only grow, so appending keeps
it sorted); retention drops the oldest ids from the front, tracked by a head offset
so that no list is shifted on every prune.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right

from twisted.internet.defer import succeed
from zope.interface import implementer

from streamd.interfaces import IStore
from streamd.store.base import (
    Event,
    Filters,
    IdClock,
    NewEvent,
    Query,
    horizon,
    matches,
)
from streamd.store.listeners import InsertListeners


class _Postings:
    """Ascending ids of one (key, value); C{head} ids at the front are pruned."""

    __slots__ = ("ids", "head")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.ids) - self.head

    def drop_through(self, last: int) -> None:
        self.head = bisect_right(self.ids, last, self.head)
        if self.head > 1024 and self.head * 2 > len(self.ids):
            del self.ids[: self.head]
            self.head = 0

    def newest_first(self, below: int | None, above: int):
        ids = self.ids
        hi = len(ids) if below is None else bisect_left(ids, below, self.head)
        lo = max(self.head, bisect_right(ids, above, self.head))
        for i in range(hi - 1, lo - 1, -1):
            yield ids[i]

    def oldest_first(self, after: int):
        ids = self.ids
        for i in range(max(self.head, bisect_right(ids, after, self.head)), len(ids)):
            yield ids[i]


@implementer(IStore)
class MemoryStore:
    """Events in a dict, one posting list per (key, value)."""

    backend = "memory"

    def __init__(self, keys, clock, max_events: int = 0, max_age: float = 0.0) -> None:
        self.keys = tuple(keys)
        self.clock = clock
        self.max_events = max_events
        self.max_age = max_age
        self.events: dict[int, Event] = {}  # insertion order is id order
        self.postings: dict[tuple[str, str], _Postings] = {}
        self.all = _Postings()
        self.ids = IdClock(clock)
        self.pruned_through = 0
        self.listeners = InsertListeners()
        self.listen = self.listeners.listen

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self):
        return ("ok", None)

    def insert(self, events: list[NewEvent]):
        ids, now = self.ids.take(len(events))
        stored = []
        for new, eid in zip(events, ids, strict=True):
            ev = Event(eid, now, new.data, new.pairs)
            self.events[eid] = ev
            self.all.ids.append(eid)
            for pair in new.pairs:
                postings = self.postings.get(pair)
                if postings is None:
                    postings = self.postings[pair] = _Postings()
                postings.ids.append(eid)
            stored.append(ev)
        self.prune()
        self.listeners.notify(stored)
        return succeed(stored)

    def prune(self) -> None:
        """Apply retention: drop the oldest events beyond C{max_events} or C{max_age}."""
        cut = horizon(self.clock.seconds(), self.max_age)
        excess = len(self.events) - self.max_events if self.max_events else 0
        dropped = []
        for eid in self.events:
            if excess <= 0 and eid >= cut:
                break
            dropped.append(eid)
            excess -= 1
        if not dropped:
            return
        last = self.pruned_through = dropped[-1]
        touched: set[tuple[str, str]] = set()
        for eid in dropped:
            touched.update(self.events.pop(eid).pairs)
        self.all.drop_through(last)
        for pair in touched:
            postings = self.postings[pair]
            postings.drop_through(last)
            if not postings:
                del self.postings[pair]

    def _streams(self, filters: Filters):
        """The posting lists to walk (the smallest key's values) and the rest to check."""
        if not filters:
            return [self.all], ()
        sized = []
        for key, values in filters:
            lists = [self.postings[(key, v)] for v in values if (key, v) in self.postings]
            sized.append((sum(map(len, lists)), key, lists))
        sized.sort(key=lambda s: s[0])
        _, key, lists = sized[0]
        rest = tuple(f for f in filters if f[0] != key)
        return lists, rest

    def query(self, query: Query):
        above = horizon(self.clock.seconds(), self.max_age) - 1
        lists, rest = self._streams(query.filters)
        merged = heapq.merge(
            *(p.newest_first(query.before, above) for p in lists), reverse=True
        )
        out = []
        last = None
        for eid in merged:
            if eid == last:  # a list value indexed under two of the asked values
                continue
            last = eid
            ev = self.events[eid]
            if not rest or matches(ev.pairs, rest):
                out.append(ev)
                if len(out) >= query.end:
                    break
        return succeed(out[query.start : query.end])

    def after(self, filters: Filters, since: int, limit: int):
        since = max(since, horizon(self.clock.seconds(), self.max_age) - 1)
        lists, rest = self._streams(filters)
        merged = heapq.merge(*(p.oldest_first(since) for p in lists))
        out = []
        last = None
        for eid in merged:
            if eid == last:
                continue
            last = eid
            ev = self.events[eid]
            if not rest or matches(ev.pairs, rest):
                out.append(ev)
                if len(out) >= limit:
                    break
        return succeed(out)

    def pruned(self):
        return succeed(self.pruned_through)

    def count(self):
        return succeed(len(self.events))

