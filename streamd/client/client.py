"""
L{StreamClient}: reads an NDJSON or SSE stream over HTTP (treq) and hands its records
to a queue, with a limit, a switch, a counter, acknowledgements and reconnection.

It composes three parts, each with its own state: the L{Connector} (the connection,
reconnection with backoff, the transport it pauses), the L{Handover} (records from the
connection to the queue, within the limit and the switch, counted) and the L{Acks}
(what an C{ack=client} stream is owed). The client holds the run: it starts it, ends it
once (L{StreamClient.stop}, the switch, the limit, the server's end) and says how it
ended.

Flow control runs end to end: when the queue is full the client pauses the response's
transport (it stops reading the socket; the server's stream is paused in turn once the
socket buffers fill), and resumes it when a consumer made room. Records already
received are kept, never dropped.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.web.client import Agent

from streamd.client.acks import Acks
from streamd.client.backoff import Backoff
from streamd.client.connect import Connector
from streamd.client.handover import Handover
from streamd.client.queues import MemoryQueue
from streamd.client.records import Notice, Record
from streamd.client.results import ClientError, GaveUp, Result
from streamd.client.state import MemoryState


class StreamClient:
    """
    A client of one stream URL (streamd's, or any NDJSON or SSE endpoint).

    C{start(limit=N)} hands records to C{queue} (a L{MemoryQueue} by default:
    C{record = await client.queue.get()}) and returns a Deferred of a L{Result}.

    @param url: the stream's URL; its query (e.g. C{?ack=client}) is kept, and a
        C{since} in it is where the first connection starts.
    @param reactor: the reactor (timers, and the default HTTP client's agent).
    @param http: a L{treq.client.HTTPClient}; by default one on an
        L{twisted.web.client.Agent} of C{reactor}.
    @param token: sent as C{Authorization: Bearer TOKEN}, or as the C{access_token}
        query parameter with C{token_param=True}.
    @param headers: extra request headers; C{params}: extra query parameters.
    @param sse: ask for Server-Sent Events (C{Accept: text/event-stream}); the body
        is parsed by its Content-Type either way.
    @param since: resume after this id (sent as C{?since=}, or C{Last-Event-ID} for
        SSE); it then follows the last id received, so a reconnection resumes there.
    @param state: an L{IClientState} (switch and counter), L{MemoryState} by default.
    @param queue: an L{IRecordQueue}, L{MemoryQueue} by default (unbounded).
    @param ack: for streams that answer with a C{Streamd-Session} header (C{ack=client}):
        C{"auto"} acknowledges a record once a consumer took it from the queue;
        C{"manual"} leaves it to the application (L{ack}).
    @param backoff: delays between reconnection attempts: a L{Backoff} (which draws its
        jitter from C{random}), or any retry policy C{attempt -> seconds}, such as
        Twisted's C{backoffPolicy(...)} (C{attempt} is 1 for the first retry).
    @param max_retries: give up once this many connection attempts in a row have failed
        (the first attempt counts: 2 means one retry); None: never. A connection that
        worked, then dropped, starts the count again.
    @param connect_timeout: seconds to wait for a response's status and headers.
    @param idle_timeout: seconds without a byte (while the client is not holding the
        transport paused itself) after which the connection is taken for dead and
        replaced, resuming from the last id. streamd sends a heartbeat after
        C{heartbeat} quiet seconds (15 by default), so 3 x that suits it. None: never
        (a connection that dies silently, with no FIN, is then noticed by TCP only).
    @param on_notice: called with each streamd L{Notice} (gap, dropped, ...), if given.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor,
        http=None,
        token: str | None = None,
        token_param: bool = False,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        sse: bool = False,
        since: str | None = None,
        state=None,
        queue=None,
        ack: str = "auto",
        backoff: Backoff | Callable[[int], float] | None = None,
        max_retries: int | None = None,
        connect_timeout: float = 30.0,
        idle_timeout: float | None = None,
        on_notice: Callable[[Notice], None] | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if ack not in ("auto", "manual"):
            raise ValueError(f"ack: expected auto or manual, got {ack!r}")
        if max_retries is not None and max_retries < 1:
            raise ValueError(f"max_retries: must be at least 1, got {max_retries}")
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        start_at = None
        kept = []
        for k, v in query:
            if k == "since":
                start_at = v  # ours to manage: it moves on as records arrive
            else:
                kept.append((k, v))
        if since is not None:
            start_at = since
        self.url = urlunsplit(parts._replace(query=urlencode(kept)))
        ack_url = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/ack", query=""))
        self.reactor = reactor
        if http is None:
            http = HTTPClient(Agent(reactor))
        auth_headers: dict[str, str] = {}
        auth_params: dict[str, str] = {}
        if token is not None:
            if token_param:
                auth_params["access_token"] = token
            else:
                auth_headers["Authorization"] = f"Bearer {token}"
        self.state = state if state is not None else MemoryState()
        self.queue = queue if queue is not None else MemoryQueue()
        self.ack_mode = ack
        backoff = backoff if backoff is not None else Backoff()
        retry_policy = backoff.policy(random) if isinstance(backoff, Backoff) else backoff
        self.acks = Acks(http, reactor, ack_url, auth_headers, auth_params, connect_timeout)
        self.connector = Connector(
            self.url, reactor=reactor, http=http,
            headers={**(headers or {}), **auth_headers},
            params={**(params or {}), **auth_params}, sse=sse, since=start_at,
            retry_policy=retry_policy, max_retries=max_retries,
            connect_timeout=connect_timeout, idle_timeout=idle_timeout,
            on_records=self._received, on_notice=on_notice)
        self.handover = Handover(self.queue, self.state, self.acks, self.connector,
                                 self._halt)
        self.running = False
        self._reason: str | None = None  # why the run is ending, once it is
        self._waiting_acks = False
        self.queue.watch_taken(self._taken)

    # -- public ------------------------------------------------------------------------

    @property
    def since(self) -> str | None:
        """Where the next connection resumes: after the last id received."""
        return self.connector.since

    @property
    def last_id(self) -> str | None:
        """The id of the last record handed over."""
        return self.handover.last_id

    @property
    def count(self) -> int:
        """Records handed over in this run (the last one, once it ended)."""
        return self.handover.count

    @property
    def reconnects(self) -> int:
        """Connections made after the first, in this run."""
        return self.connector.reconnects

    @property
    def gaps(self) -> int:
        """C{gap} notices received in this run."""
        return self.connector.gaps

    def start(self, limit: int | None = None) -> Deferred[Result]:
        """
        Connect and hand records to the queue until C{limit} records were handed over,
        the switch is turned off, L{stop} is called or the server ends the stream.
        Switches the state on first. Fires with a L{Result}; fails with L{ClientError}
        on a 4xx, L{GaveUp} after C{max_retries}. A later C{start()} resumes after the
        last record handed over. With C{ack=client}, a run that reached its limit ends once those
        records are acknowledged (so none of them goes back to the server's source).
        """
        if self.running:
            raise RuntimeError("this client is already running")
        if limit is not None and limit < 1:
            raise ValueError("limit: must be at least 1")
        self.running = True
        self._reason = None
        self.handover.begin(limit)
        self.connector.begin()
        # Cancelling the run stops it (like stop()) rather than leaving it half done.
        outer: Deferred[Result] = Deferred(lambda _: self._halt("stopped"))
        Deferred.fromCoroutine(self._run()).addBoth(
            lambda r: None if outer.called else outer.callback(r))
        return outer

    def stop(self) -> None:
        """Stop this client (not the others sharing its state): reason C{"stopped"}."""
        self._halt("stopped")

    def ack(self, records: list[Record]) -> None:
        """Acknowledge records (for C{ack="manual"}); records of no session are ignored."""
        self.acks.ack(records)

    # -- the run -----------------------------------------------------------------------

    async def _run(self) -> Result:
        state = self.state
        try:
            await maybeDeferred(state.turn_on)
            await maybeDeferred(state.watch, self._switched)
            try:
                ended = await self.connector.run()
            except ClientError as e:
                e.result = self._result("error")
                raise
            except GaveUp as e:
                e.result = self._result("gave up")
                raise
            if ended and self._reason is None:
                # The end came with records still waiting for queue room: hand them
                # over first (unless the limit or switch stops us).
                await self.handover.until_drained()
                self._halt("ended")
            if self._reason == "limit" and self.acks.outstanding:
                # Keep the session open until the N records are acknowledged.
                self._waiting_acks = True
                await self.acks.when_idle()
                self._waiting_acks = False
            return self._result(self._reason or "stopped")
        finally:
            self.connector.close()
            state.unwatch(self._switched)
            last_id = self.handover.last_id
            if self.handover.clear() and last_id is not None:
                # Received but not handed over: a later start() resumes before them.
                self.connector.since = last_id
            self.running = False
            await self.handover.counted()

    def _result(self, reason: str) -> Result:
        return Result(self.count, reason, self.last_id, self.reconnects, self.gaps)

    def _received(self, records: list[Record]) -> None:
        self.handover.add(records)

    # -- stopping ------------------------------------------------------------------------

    def _switched(self, on: bool) -> None:
        if not on:
            self._halt("off")

    def _halt(self, reason: str) -> None:
        if not self.running:
            return
        if self._reason is not None:
            # Already ending: the switch or stop() still cut short a wait for acks.
            if reason != "limit" and self._waiting_acks:
                self.acks.stop_waiting()
            return
        self._reason = reason
        self.handover.halt()
        self.connector.halt(reason, keep_open=reason == "limit" and bool(self.acks.outstanding))

    # -- acknowledgements ----------------------------------------------------------------

    def _taken(self, records: list[Record]) -> None:
        if self.ack_mode == "auto":
            self.acks.ack(records)
