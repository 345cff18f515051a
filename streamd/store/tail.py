"""
The live tail of the event store as a source, so that a L{streamd.stream.Stream} (limit,
heartbeat, flow control, NDJSON/SSE) serves it like any other stream.

The hand-over from stored to live events, with no gap and no duplicate:
  1. start listening to inserts (they are buffered, not delivered);
  2. query the store for matching events after the client's id, oldest first, page
     by page, delivering each page;
  3. when a page comes back short, deliver the buffered inserts newer than the last
     delivered id, and from then on deliver inserts as they come.
Every insert is either in a query's answer (stored before the query ran) or
announced after it (the store runs calls and announces inserts in order), so nothing
falls between; ids only grow, so "newer than the last delivered" removes the
duplicates.

Inserts made by another instance (a shared Redis store) arrive as a L{Notice}: the
tail then catches up from the store (the same hand-over), and queries once more if
another notice came while a query ran.

A client whose id is older than what retention removed is told first, with a
C{gap} notice (C{"reason": "removed by retention"}), instead of silently skipping.

Flow control: the store is the buffer. While the stream is paused the subscription
delivers nothing and forgets inserts; on resume it catches up from the store from
its last delivered id, then goes live again (the same hand-over).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from streamd.interfaces import ISource, ISubscription
from streamd.message import Message
from streamd.store.base import Event, Filters, Notice, matches

log = Logger()

#: Events per catch-up query.
PAGE = 500

#: Inserts buffered during a catch-up before the buffer is dropped (the store still
#: has them: the catch-up then simply queries once more).
MAX_BUFFER = 10_000


def to_message(event: Event, stream: str = "events") -> Message:
    return Message(str(event.id), stream, event.data, {"ts": event.ts})


@implementer(ISubscription)
class TailSubscription:
    """
    @ivar last: the id of the last event delivered (or the client's C{since}); None
        when the tail started live and nothing has been delivered yet.
    @ivar live: True once caught up: inserts are delivered as they come.
    @ivar buffer: matching inserts seen during a catch-up, or None when not buffering.
    """

    def __init__(self, store, filters: Filters, consumer, since: int | None,
                 page: int | None = None) -> None:
        self.store = store
        self.page = page or PAGE
        self.filters = filters
        self.consumer = consumer
        self.last = since
        self.live = since is None
        self.buffer: list[Event] | None = None if self.live else []
        self.paused = False
        self.cancelled = False
        self._again = False  # a notice came during a catch-up query: query once more
        self._looping = False
        self._more = False
        self._fetch: Deferred | None = None
        self._unlisten = store.listen(self._inserted)
        if not self.live:
            # First: did retention remove events after the client's id?
            self._fetch = ensureDeferred(store.pruned())
            self._fetch.addCallbacks(self._checked_retention, self._failed)

    def _checked_retention(self, pruned: int) -> None:
        self._fetch = None
        if self.cancelled:
            return
        assert self.last is not None, "only a tail given a since checks retention"
        if pruned > self.last:
            self.consumer.gap({"since": str(self.last), "missed": None,
                               "reason": "removed by retention"})
            self.last = pruned
        self._catch_up()

    # -- inserts -------------------------------------------------------------------

    def _inserted(self, events: list[Event] | Notice) -> None:
        if isinstance(events, Notice):
            self._noticed(events)
            return
        new = [e for e in events if matches(e.pairs, self.filters)]
        if not new:
            return
        if self.live and not self.paused:
            self._deliver(new)
        elif self.buffer is not None:
            self.buffer.extend(new)
            if len(self.buffer) > MAX_BUFFER:
                self.buffer = None  # the catch-up will query again instead
        elif self.live:
            # Paused while live: drop, and catch up from the store on resume.
            self.live = False
            if self.last is None:
                self.last = new[0].id - 1

    def _noticed(self, notice: Notice) -> None:
        if self.cancelled or (self.last is not None and notice.last <= self.last):
            return  # nothing we have not delivered (our own inserts, announced again)
        if self.last is None:
            if not notice.first:
                # "Check the store" after a notice outage, but this tail delivered
                # nothing yet, so it has no position to check from: only new notices.
                return
            self.last = notice.first - 1
        if self.live:
            self.live = False
            self._catch_up()  # waits for resume() when paused
        elif self._fetch is not None:
            self._again = True

    def _deliver(self, events: list[Event]) -> None:
        if self.last is not None:
            events = [e for e in events if e.id > self.last]
        # A page at a time, so that a stream never holds more than a page (an insert of
        # 10,000 events must not overflow a paused stream's max_pending): if the stream
        # pauses, the rest waits in the store and the catch-up brings it on resume.
        while events and not self.cancelled:
            chunk, events = events[: self.page], events[self.page :]
            self.last = chunk[-1].id
            self.consumer.deliver([to_message(e) for e in chunk])
            if events and self.paused:
                self.live = False
                return

    # -- catch-up ------------------------------------------------------------------

    def _catch_up(self) -> None:
        if self._fetch is not None or self.cancelled or self.paused or self.live:
            return
        if self._looping:
            # Called back from a query that answered at once (the memory store): let
            # the loop below send the next one, instead of recursing once per page.
            self._more = True
            return
        self._looping = True
        try:
            self._more = True
            while self._more and self._fetch is None and not self.cancelled:
                self._more = False
                if self.paused or self.live:
                    break
                if self.buffer is None:
                    self.buffer = []
                self._fetch = ensureDeferred(self.store.after(self.filters, self.last, self.page))
                self._fetch.addCallbacks(self._page, self._failed)
        finally:
            self._looping = False

    def _page(self, events: list[Event]) -> None:
        self._fetch = None
        if self.cancelled:
            return
        self._deliver(events)
        if self.cancelled:
            return
        if len(events) >= self.page or self.buffer is None or self._again:
            self._again = False
            if self.paused:
                return  # resume() continues the catch-up
            self._catch_up()
            return
        buffered, self.buffer = self.buffer, None
        self.live = True
        if self.paused:
            # Inserts from now on are dropped while paused; what was buffered is
            # still owed: resume catches up from the store from self.last.
            self.live = False
            return
        self._deliver(buffered)

    def _failed(self, failure) -> None:
        self._fetch = None
        if self.cancelled:
            return
        log.failure("event tail: catch-up query failed", failure)
        self.consumer.source_ended(f"store error: {failure.getErrorMessage()}")

    # -- ISubscription -------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if not self.live:
            self._catch_up()

    def ack(self, messages) -> None:
        pass  # the store keeps events by retention, not by delivery

    def nack(self, messages) -> None:
        pass

    def skip(self, messages) -> None:
        pass  # filtered out: nothing to give back, as for nack

    def cancel(self) -> None:
        self.cancelled = True
        self._unlisten()
        if self._fetch is not None:
            self._fetch.addErrback(lambda _: None)


@implementer(ISource)
class EventTail:
    """The source of one C{GET /events/stream} request: the store, filtered."""

    name = "events"
    kind = "events"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    durable = False

    def __init__(self, store, filters: Filters, page: int | None = None) -> None:
        self.store = store
        self.filters = filters
        self.page = page

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self):
        return self.store.status()

    def subscribe(self, consumer, since: int | None = None) -> TailSubscription:
        return TailSubscription(self.store, self.filters, consumer, since,
                                min(PAGE, self.page or PAGE))

    def publish(self, payloads, params):
        raise NotImplementedError("insert through POST /events")
