"""The insert listeners of a store: how live tails hear of new events."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from streamd.store.base import Event, Notice

log = Logger()

#: Called with the events inserted through this store, or a L{Notice} of inserts
#: made elsewhere.
Listener = Callable[[list[Event] | Notice], None]


class InsertListeners:
    """
    The insert listeners of a store (the live tails): each is called with the list of
    L{Event}s inserted through this store, or with a L{Notice} of inserts made
    elsewhere.
    """

    def __init__(self) -> None:
        self._callbacks: list[Listener] = []

    def listen(self, callback: Listener) -> Callable[[], None]:
        self._callbacks.append(callback)

        def stop() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return stop

    def notify(self, events: list[Event] | Notice) -> None:
        for callback in list(self._callbacks):
            try:
                callback(events)
            except Exception:
                # A bug in one tail must not fail the insert or starve the other tails.
                log.failure("event listener failed; detaching it")
                self._callbacks.remove(callback)
