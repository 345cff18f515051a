"""
What every event store backend shares: event records, ids, index values, queries and
retention horizons. No I/O, no Twisted (the config imports this module).

An event id is an integer: the insertion time in milliseconds times 1000, plus a
sequence number, so ids sort in insertion order, tell roughly when an event arrived,
and stay exact in a double (Redis scores) until the year 2255. More than 1000
inserts in one millisecond borrow from the next millisecond rather than collide.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamd.json_input import InvalidJSON, parse

#: Query parameters of C{GET /events} (and JSON-RPC C{items} arguments) that are not
#: filters; an indexed key may not use these names.
RESERVED = frozenset({"start", "end", "before", "since", "limit", "format", "heartbeat",
                      "retry", "with_ids", "access_token", "identifier"})

#: C{end - start} at most (the original's page size is 20 by default).
MAX_PAGE = 1000

SEQ = 1000  # ids per millisecond before borrowing from the next one


class QueryError(ValueError):
    """A query the store cannot answer (an unindexed key, a bad slice or id)."""


class StoreUnavailable(Exception):
    """
    The store cannot be reached or opened right now: the same call may succeed later
    (the web layer answers it as L{streamd.errors.Unavailable}).
    """


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event on its way in: its JSON text and the index pairs it will be found by."""

    data: bytes
    pairs: frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Event:
    """
    A stored event.

    @ivar id: orders events (see the module docstring).
    @ivar ts: insertion time, seconds since the epoch.
    @ivar data: the event as inserted (JSON text, one line).
    @ivar pairs: C{(key, value)} index pairs, values as L{index_value} strings.
    """

    id: int
    ts: float
    data: bytes
    pairs: frozenset[tuple[str, str]] = frozenset()

    def envelope(self) -> dict[str, Any]:
        """The event as C{GET /events} shows it."""
        return {"id": str(self.id), "ts": self.ts, "data": json.loads(self.data)}


def index_value(value: Any) -> str | None:
    """
    The string a field value is indexed (and matched) as, or None for values that are
    not indexed (null, objects). C{23}, C{23.0} and C{"23"} are all C{"23"}, so a
    filter from a query string matches a number in the event.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def index_pairs(obj: dict[str, Any], keys: Iterable[str]) -> frozenset[tuple[str, str]]:
    """An event's index pairs: one per indexed key, or per element of a list value."""
    pairs = set()
    for key in keys:
        if key not in obj:
            continue
        value = obj[key]
        for v in value if isinstance(value, list) else (value,):
            text = index_value(v)
            if text is not None:
                pairs.add((key, text))
    return frozenset(pairs)


def new_event(raw: bytes, keys: Iterable[str]) -> NewEvent:
    """Check one inserted JSON text (an object) and work out its index pairs."""
    try:
        obj = parse(raw)
    except InvalidJSON as e:
        raise QueryError(str(e)) from None
    if not isinstance(obj, dict):
        raise QueryError("an event must be a JSON object")
    return NewEvent(raw, index_pairs(obj, keys))


Filters = tuple[tuple[str, tuple[str, ...]], ...]


def make_filters(raw: dict[str, Any], keys: Iterable[str]) -> Filters:
    """
    Normalise C{{key: value or [values]}} into sorted C{((key, (values...)), ...)};
    a key that is not indexed raises L{QueryError} naming the indexed keys.
    """
    keys = tuple(keys)
    out = []
    for key, value in sorted(raw.items()):
        if key not in keys:
            known = ", ".join(keys) or "none"
            raise QueryError(f"{key}: not an indexed key (indexed keys: {known})")
        values = value if isinstance(value, (list, tuple)) else [value]
        texts = []
        for v in values:
            text = index_value(v)
            if text is None:
                raise QueryError(f"{key}: cannot match {v!r} (use strings, numbers, booleans)")
            texts.append(text)
        if not texts:
            raise QueryError(f"{key}: give at least one value")
        out.append((key, tuple(sorted(set(texts)))))
    return tuple(out)


def matches(pairs: frozenset[tuple[str, str]], filters: Filters) -> bool:
    """AND across keys, OR within a key."""
    return all(any((key, v) in pairs for v in values) for key, values in filters)


def parse_id(text: Any, name: str) -> int:
    """An event id from a client (a string or an integer)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if isinstance(text, str) and text.isdigit() and len(text) <= 19:
        return int(text)
    raise QueryError(f"{name}: {text!r} is not an event id")


@dataclass(frozen=True)
class Query:
    """
    A newest-first query: the events matching C{filters} with ids below C{before}
    (when given), sliced C{[start:end]}.
    """

    filters: Filters = ()
    start: int = 0
    end: int = 20
    before: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < 0:
            raise QueryError("start, end: must be at least 0")
        if self.end < self.start:
            raise QueryError("end: must be at least start")
        if self.end - self.start > MAX_PAGE:
            raise QueryError(f"end - start: at most {MAX_PAGE}")


class IdClock:
    """Hands out increasing ids from a clock (for the backends that number events
    themselves; Redis numbers them in its insert script)."""

    def __init__(self, clock, last: int = 0) -> None:
        self.clock = clock
        self.last = last

    def take(self, n: int) -> tuple[list[int], float]:
        """C{n} new ids and the insertion time."""
        now = self.clock.seconds()
        first = max(int(now * 1000) * SEQ, self.last + 1)
        self.last = first + n - 1
        return list(range(first, first + n)), now


def horizon(now: float, max_age: float) -> int:
    """The smallest id younger than C{max_age} seconds (0 when ages are unlimited)."""
    if not max_age:
        return 0
    return int((now - max_age) * 1000) * SEQ


@dataclass(frozen=True, slots=True)
class Notice:
    """
    Events C{first} to C{last} (ids) were inserted elsewhere (another instance sharing
    a Redis store): a listener that wants them queries the store.
    """

    first: int
    last: int
