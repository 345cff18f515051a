"""
The live tail's hand-over and flow control, deterministically: a memory store on a
Clock, a scripted store whose query answers arrive when the test says, and a core
Stream writing to a FakeRequest. No sockets, no sleeps.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from streamd.framing import NDJSON
from streamd.store.base import Event, make_filters, new_event
from streamd.store.listeners import InsertListeners
from streamd.store.memory import MemoryStore
from streamd.store.tail import EventTail
from streamd.stream import Stream
from streamd.testing import FakeRequest

KEYS = ("kind",)


def open_tail(store, since=None, **filters):
    request = FakeRequest()
    stream = Stream(request, EventTail(store, make_filters(filters, KEYS)), NDJSON, Clock(),
                    heartbeat=0)
    stream.start(since)
    return stream, request


def ids_written(request) -> list[int]:
    return [int(json.loads(line)["id"]) for line in request.lines()]


def insert(store, *kinds):
    d = store.insert([new_event(json.dumps({"kind": k}).encode(), KEYS) for k in kinds])
    return [e.id for e in d.result]


def test_paused_tail_leaves_events_in_the_store_and_catches_up_on_resume():
    store = MemoryStore(KEYS, Clock())
    stream, request = open_tail(store, kind="a")
    first = insert(store, "a", "b", "a")
    assert ids_written(request) == [first[0], first[2]]
    stream.pauseProducing()
    later = insert(store, "a", "a", "b", "a")
    # Nothing queued in the stream while paused: the store is the buffer.
    assert ids_written(request) == [first[0], first[2]] and not stream.pending
    stream.resumeProducing()
    assert ids_written(request) == [first[0], first[2], later[0], later[1], later[3]]
    live = insert(store, "a")
    assert ids_written(request)[-1] == live[0]
    assert len(ids_written(request)) == 6  # each once


class ScriptedStore:
    """A store whose catch-up answers the test gives, at the moment it chooses."""

    keys = KEYS
    backend = "scripted"

    def __init__(self) -> None:
        self.listeners = InsertListeners()
        self.listen = self.listeners.listen
        self.queries: list[tuple[int, Deferred]] = []

    def status(self):
        return ("ok", None)

    def pruned(self):
        return succeed(0)

    def after(self, filters, since, limit):
        d = Deferred()
        self.queries.append((since, d))
        return d


def event(eid: int) -> Event:
    return Event(eid, 0.0, b'{"kind":"a"}', frozenset({("kind", "a")}))


def test_handover_delivers_each_event_once_whatever_the_timing():
    store = ScriptedStore()
    stream, request = open_tail(store, since=10)
    [(since, answer)] = store.queries
    assert since == 10
    # Announced while the query runs: 12 is also in the answer; 13 is not (an
    # announcement that overtook the query, as one from another instance could).
    store.listeners.notify([event(12)])
    store.listeners.notify([event(13)])
    answer.callback([event(11), event(12)])
    store.listeners.notify([event(12), event(14)])  # live: 12 again is dropped
    assert ids_written(request) == [11, 12, 13, 14]
    assert not store.queries[1:]  # a short page: no second query


def test_full_pages_query_again_before_going_live(monkeypatch):
    from streamd.store import tail

    monkeypatch.setattr(tail, "PAGE", 2)
    store = ScriptedStore()
    stream, request = open_tail(store, since=0)
    store.queries[0][1].callback([event(1), event(2)])
    store.listeners.notify([event(3)])  # during the second query
    assert [q[0] for q in store.queries] == [0, 2]
    store.queries[1][1].callback([event(3)])
    assert ids_written(request) == [1, 2, 3]


def test_limit_ends_the_tail_and_stops_listening():
    store = MemoryStore(KEYS, Clock())
    request = FakeRequest()
    stream = Stream(request, EventTail(store, ()), NDJSON, Clock(), heartbeat=0, limit=2)
    stream.start(None)
    insert(store, "a", "b", "c")
    assert len(ids_written(request)) == 2 and stream.ended
    assert not store.listeners._callbacks


def test_pause_during_catch_up_waits_for_resume(monkeypatch):
    from streamd.store import tail

    monkeypatch.setattr(tail, "PAGE", 2)
    store = ScriptedStore()
    stream, request = open_tail(store, since=0)
    stream.pauseProducing()
    store.queries[0][1].callback([event(1), event(2)])  # a full page: more to come
    store.listeners.notify([event(3)])
    assert len(store.queries) == 1  # no query while paused
    stream.resumeProducing()
    assert [q[0] for q in store.queries] == [0, 2]
    store.queries[1][1].callback([event(3)])
    store.listeners.notify([event(4)])
    assert ids_written(request) == [1, 2, 3, 4]


def test_long_catch_up_from_a_store_that_answers_at_once(monkeypatch):
    # Thousands of pages from the memory store: a loop, not one stack frame per page.
    from streamd.store import tail

    monkeypatch.setattr(tail, "PAGE", 5)
    store = MemoryStore(KEYS, Clock())
    for _ in range(30):
        insert(store, *"a" * 1000)
    stream, request = open_tail(store, since=0)
    written = ids_written(request)
    assert len(written) == 30_000 and written == sorted(written)
