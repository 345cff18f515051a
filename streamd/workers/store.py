"""
The event store of several workers: a C{memory} or C{sqlite} store is one store, held by
the parent, whatever worker a request lands on (a C{redis} store is already shared, and
each worker keeps its own connection to it).

L{RemoteStore} is the worker's L{streamd.interfaces.IStore}: each call crosses to the
parent (L{wire.StoreCall}), which runs it on the real store. The worker that inserted
tells its own live tails the new events, as a store in one process does; the parent
tells every other worker a L{Notice} of the ids, and their tails read what they miss
with C{after}, as they do for another instance's inserts to a Redis store.

Queries and events cross pickled: the socket is the parent's own, in a directory only
its user may enter (mode 0700), to its own children.
"""

from __future__ import annotations

import pickle
from typing import Any

from streamd.store.base import Notice
from streamd.store.listeners import InsertListeners
from streamd.workers import wire

#: The store methods a worker may call.
METHODS = frozenset({"insert", "query", "after", "pruned", "count"})


class RemoteStore:
    """The parent's event store, from a worker."""

    def __init__(self, client, backend: str, keys) -> None:
        self.client = client
        self.backend = backend
        self.keys = tuple(keys)
        self.listeners = InsertListeners()
        self.listen = self.listeners.listen
        client.store = self

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self):
        return self.client.store_status

    async def _call(self, method: str, *args: Any) -> Any:
        answer = await self.client.callRemote(wire.StoreCall, method=method,
                                              args=pickle.dumps(args))
        ok, value = pickle.loads(answer["result"])
        if not ok:
            raise value
        return value

    async def insert(self, events):
        stored = await self._call("insert", events)
        if stored:
            self.listeners.notify(stored)
        return stored

    def query(self, query):
        return self._call("query", query)

    def after(self, filters, since: int, limit: int):
        return self._call("after", filters, since, limit)

    def pruned(self):
        return self._call("pruned")

    def count(self):
        return self._call("count")

    def inserted_elsewhere(self, first: int, last: int) -> None:
        self.listeners.notify(Notice(first, last))


async def serve_call(store, method: str, args: bytes) -> tuple[bool, Any]:
    """One L{RemoteStore} call, run on the parent's C{store}: C{(True, result)} or
    C{(False, error)}."""
    if method not in METHODS:
        return False, ValueError(f"no store method {method!r}")
    try:
        return True, await _maybe(getattr(store, method)(*pickle.loads(args)))
    except Exception as e:
        return False, e


async def _maybe(result):
    from twisted.internet.defer import Deferred

    if isinstance(result, Deferred) or hasattr(result, "__await__"):
        return await result
    return result
