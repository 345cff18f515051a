"""
Acknowledgements to an C{ack=client} streamd stream: C{POST /streams/NAME/ack
{"session", "ids"}}, where the session is the C{Streamd-Session} header of the response
that carried the records.

Acks of one reactor turn go out in one request per session. A record counts as
outstanding from when it is handed over until its ack was answered (or failed: a 404
means the session ended, the stream having reconnected, and the server has already given
those records back to its source).
"""

from __future__ import annotations

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from streamd.client.records import Record
from streamd.client.results import error_message

log = Logger()


class Acks:
    """
    The acks one client owes.

    @ivar outstanding: C{(session, id)} of records handed over and not yet acknowledged.
    """

    def __init__(self, http, reactor, url: str, headers: dict, params: dict,
                 timeout: float) -> None:
        self.http = http
        self.reactor = reactor
        self.url = url
        self.headers = headers
        self.params = params
        self.timeout = timeout
        self.outstanding: set[tuple[str, str]] = set()
        self._batches: dict[str, list[str]] = {}
        self._call = None
        self._idle: list[Deferred] = []

    @staticmethod
    def _key(record: Record) -> tuple[str, str] | None:
        if record.session is None or record.id is None:
            return None  # not from an ack=client response: nothing to acknowledge
        return (record.session, record.id)

    def handed(self, record: Record) -> None:
        """A record went to the queue: it is owed an ack."""
        key = self._key(record)
        if key is not None:
            self.outstanding.add(key)

    def ack(self, records: list[Record]) -> None:
        """Acknowledge these records (soon: with the others of this reactor turn)."""
        for r in records:
            key = self._key(r)
            if key is not None:
                self._batches.setdefault(key[0], []).append(key[1])
        if self._batches and self._call is None:
            self._call = self.reactor.callLater(0, self._send)

    def when_idle(self) -> Deferred:
        """Fires once nothing is outstanding."""
        if not self.outstanding:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def stop_waiting(self) -> None:
        """Fire every L{when_idle} now (the run is stopping regardless)."""
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def _send(self) -> None:
        self._call = None
        batches, self._batches = self._batches, {}
        for session, ids in batches.items():
            d = self.http.post(self.url, json={"session": session, "ids": ids},
                               headers=self.headers, params=self.params,
                               timeout=self.timeout, reactor=self.reactor)
            d.addCallback(self._answered, len(ids))
            d.addErrback(lambda f: log.warn("ack failed: {e}", e=f.getErrorMessage()))
            d.addBoth(self._done, session, ids)

    def _answered(self, response, n: int) -> Deferred:
        def check(body: bytes) -> None:
            if response.code != 200:
                log.info("ack of {n} records: {code} {message}", n=n, code=response.code,
                         message=error_message(body))

        return treq.content(response).addCallback(check)

    def _done(self, _result, session: str, ids: list[str]) -> None:
        for mid in ids:
            self.outstanding.discard((session, mid))
        if not self.outstanding:
            self.stop_waiting()
