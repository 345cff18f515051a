"""
L{StreamClient}: reads an NDJSON or SSE stream over HTTP (treq) and hands its records
to a queue, with a limit, a switch, a counter, acknowledgements and reconnection.

Flow control runs end to end: when the queue is full the client pauses the response's
transport (it stops reading the socket; the server's stream is paused in turn once the
socket buffers fill), and resumes it when a consumer made room. Records already
received are kept, never dropped. Parsing a chunk may yield many records: the client
hands them over one at a time, checking the limit and the switch before each, so a
limit of N hands over exactly N.
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.web.client import Agent

from streamd.client.acks import Acks
from streamd.client.backoff import Backoff
from streamd.client.body import Body
from streamd.client.queues import MemoryQueue
from streamd.client.records import Notice, Record, SSEParser, parser_for, stream_of
from streamd.client.results import ClientError, GaveUp, Result, error_message
from streamd.client.state import MemoryState

log = Logger()

#: Statuses that are worth retrying although they are 4xx.
RETRY_4XX = frozenset({408, 425, 429})


class StreamClient:
    """
    A client of one stream URL (streamd's, or any NDJSON or SSE endpoint).

    C{start(limit=N)} hands records to C{queue} (a L{MemoryQueue} by default:
    C{record = await client.queue.get()}) and returns a Deferred of a L{Result}.

    @param url: the stream's URL; its query (e.g. C{?ack=client}) is kept, and a
        C{since} in it is where the first connection starts.
    @param reactor: the reactor (timers, and the default HTTP client's agent).
    @param http: a L{treq.client.HTTPClient}; by default one on an L{Agent} of C{reactor}.
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
        self.since: str | None = None
        kept = []
        for k, v in query:
            if k == "since":
                self.since = v  # ours to manage: it moves on as records arrive
            else:
                kept.append((k, v))
        if since is not None:
            self.since = since
        self.url = urlunsplit(parts._replace(query=urlencode(kept)))
        base = parts.path.rstrip("/")
        self.ack_url = urlunsplit(parts._replace(path=base + "/ack", query=""))
        self.reactor = reactor
        if http is None:
            http = HTTPClient(Agent(reactor))
        self.http = http
        self.headers = dict(headers or {})
        self.params = dict(params or {})
        self.auth_headers: dict[str, str] = {}
        self.auth_params: dict[str, str] = {}
        if token is not None:
            if token_param:
                self.auth_params["access_token"] = token
            else:
                self.auth_headers["Authorization"] = f"Bearer {token}"
        self.sse = sse
        self.state = state if state is not None else MemoryState()
        self.queue = queue if queue is not None else MemoryQueue()
        self.ack_mode = ack
        self.backoff = backoff if backoff is not None else Backoff()
        self.retry_policy: Callable[[int], float] = (
            self.backoff.policy(random) if isinstance(self.backoff, Backoff) else self.backoff)
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_notice = on_notice
        self.random = random
        self.last_id: str | None = None  # last record handed over
        self.running = False
        self.queue.watch_taken(self._taken)

        # per run
        self.limit: int | None = None
        self.count = 0
        self.reconnects = 0
        self.gaps = 0
        self._reason: str | None = None
        self._pending: deque[Record] = deque()
        self._transport = None
        self._paused = False
        self._waiting: Deferred | None = None  # a connect or backoff sleep to cancel
        self._outcome: Deferred | None = None  # fires when the connection ends or we halt
        self._room: Deferred | None = None
        self._drained: Deferred | None = None  # a clean end waits for pending to go
        self._counting: list[Deferred] = []
        self.acks = Acks(self.http, reactor, self.ack_url, self.auth_headers,
                         self.auth_params, connect_timeout)
        self._waiting_acks = False

    # -- public ------------------------------------------------------------------------

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
        self.limit = limit
        self.count = 0
        self.reconnects = 0
        self.gaps = 0
        self._reason = None
        self._pending.clear()
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
        attempt = 0  # what the next backoff delay is for
        failed = 0  # connection attempts that failed in a row
        last_error = ""
        try:
            await maybeDeferred(state.turn_on)
            await maybeDeferred(state.watch, self._switched)
            while self._reason is None:
                try:
                    outcome, connected = await self._connect_once()
                except ClientError as e:
                    e.result = self._result("error")
                    raise
                if self._reason is not None:
                    break
                if outcome == "ended":
                    if self._pending:
                        # The end came with records still waiting for queue room:
                        # hand them over first (unless the limit or switch stops us).
                        self._drained = Deferred()
                        await self._drained
                    self._halt("ended")
                    break
                attempt = 1 if connected else attempt + 1
                failed = 0 if connected else failed + 1
                last_error = outcome
                if self.max_retries is not None and failed >= self.max_retries:
                    raise GaveUp(failed, last_error, self._result("gave up"))
                delay = self.retry_policy(attempt)
                log.info("reconnecting in {delay:.2f} s", delay=delay)
                self._waiting = Deferred()
                call = self.reactor.callLater(delay, self._waiting.callback, None)
                try:
                    await self._waiting
                except CancelledError:
                    if call.active():
                        call.cancel()
                finally:
                    self._waiting = None
                self.reconnects += 1
            if self._reason == "limit" and self.acks.outstanding:
                # Keep the session open until the N records are acknowledged.
                self._waiting_acks = True
                await self.acks.when_idle()
                self._waiting_acks = False
            return self._result(self._reason or "stopped")
        finally:
            self._close_transport()
            state.unwatch(self._switched)
            if self._pending and self.last_id is not None:
                # Received but not handed over: a later start() resumes before them.
                self.since = self.last_id
            self._pending.clear()
            self.running = False
            if self._counting:
                counting, self._counting = self._counting, []
                await gatherResults(counting, consumeErrors=True)

    def _result(self, reason: str) -> Result:
        return Result(self.count, reason, self.last_id, self.reconnects, self.gaps)

    async def _connect_once(self) -> tuple[str, bool]:
        """One connection: C{(outcome, connected)}; outcome is "ended" or a reason to retry."""
        headers = {**self.headers, **self.auth_headers}
        params = {**self.params, **self.auth_params}
        if self.sse:
            headers.setdefault("Accept", "text/event-stream")
        if self.since is not None:
            if self.sse:
                headers["Last-Event-ID"] = self.since
            else:
                params["since"] = self.since
        d = self._waiting = self.http.get(
            self.url, headers=headers, params=params, unbuffered=True,
            timeout=self.connect_timeout, reactor=self.reactor)
        try:
            response = await d
        except CancelledError:
            if self._reason is not None:
                return "halted", False
            return "connect timeout", False
        except Exception as e:
            log.info("cannot connect to {url}: {e}", url=self.url, e=e)
            return f"cannot connect: {e}", False
        finally:
            self._waiting = None
        code = response.code
        if code == 200:
            return await self._read(response), True
        body = await treq.content(response)
        message = error_message(body)
        if code >= 500 or code in RETRY_4XX:
            log.info("{url}: {code} {message}; will retry", url=self.url, code=code,
                     message=message)
            return f"{code} {message}", False
        raise ClientError(code, message, self.url)

    async def _read(self, response) -> str:
        ctype = response.headers.getRawHeaders("content-type", [None])[0]
        session = response.headers.getRawHeaders("streamd-session", [None])[0]
        parser = parser_for(ctype, stream_of(self.url))
        self.sse = isinstance(parser, SSEParser)
        body = Body(parser, session, self.reactor, self._received, self._attach)
        self._outcome = outcome = Deferred()
        body.lost.addCallback(lambda o: outcome.called or outcome.callback(o))
        self._paused = False
        response.deliverBody(body)
        if self.idle_timeout:
            body.watchdog = self.reactor.callLater(self.idle_timeout, self._idle, body)
        try:
            return await outcome
        finally:
            self._outcome = None
            if body.watchdog is not None and body.watchdog.active():
                body.watchdog.cancel()

    # -- records -------------------------------------------------------------------------

    def _received(self, body: Body, items: list[Record | Notice]) -> None:
        for item in items:
            if type(item) is Notice:
                self._notice(body, item)
                continue
            item.session = body.session
            if item.id is not None:
                self.since = item.id
            self._pending.append(item)
        self._drain()

    def _attach(self, body: Body, attached: bool) -> None:
        if attached:
            self._transport = body.transport
        elif self._transport is body.transport:
            self._transport = None

    def _idle(self, body: Body) -> None:
        """The idle watchdog: one timer per connection, rescheduled, not reset per chunk."""
        now = self.reactor.seconds()
        if self._paused:  # quiet because we hold it paused is not dead
            body.last_data = now
        due = body.last_data + self.idle_timeout
        if now < due:
            body.watchdog = self.reactor.callLater(due - now, self._idle, body)
            return
        if self._outcome is not None and not self._outcome.called and \
                self._transport is body.transport:
            log.info("no data for {s} s: reconnecting", s=self.idle_timeout)
            self._outcome.callback(f"idle for {self.idle_timeout} s")
            self._close_transport()

    def _notice(self, body: Body, notice: Notice) -> None:
        kind = notice.kind
        if kind == "gap":
            self.gaps += 1
            log.warn("the server could not replay everything: {info}", info=notice.info)
        elif kind in ("shutdown", "error"):
            body.reconnect = True
            if kind == "error":
                log.warn("the server ended the stream: {info}", info=notice.info)
        elif kind == "end":
            body.ended = True
        if self.on_notice is not None and kind != "heartbeat":
            self.on_notice(notice)

    def _drain(self) -> None:
        """Hand pending records to the queue, one by one, while allowed."""
        handed = 0
        pending = self._pending
        queue = self.queue
        while pending and self._reason is None:
            if self.limit is not None and self.count >= self.limit:
                break
            if not self.state.on:
                self._halt("off")
                break
            if queue.full():
                self._pause()
                if self._room is None:
                    self._room = queue.wait_room()
                    self._room.addCallback(self._has_room)
                break
            record = pending.popleft()
            self.count += 1
            handed += 1
            if record.id is not None:
                self.last_id = record.id
            self.acks.handed(record)
            d = queue.put(record)
            if isinstance(d, Deferred):
                d.addErrback(self._queue_failed)
        if handed:
            d = maybeDeferred(self.state.add, handed)
            if not d.called:
                self._counting.append(d)
                d.addBoth(self._counted, d)
            else:
                d.addErrback(lambda f: log.failure("counter", f))
        if self.limit is not None and self.count >= self.limit:
            self._halt("limit")
        elif not pending:
            if self._room is None:
                self._resume()
            self._fire_drained()

    def _fire_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.called:
            drained.callback(None)

    def _counted(self, result, d: Deferred):
        if d in self._counting:
            self._counting.remove(d)
        if not isinstance(result, int) and result is not None:
            log.failure("cannot update the counter", result)
        return None

    def _queue_failed(self, failure) -> None:
        log.failure("cannot put a record in the queue", failure)
        self._halt("queue failed")

    def _has_room(self, _=None) -> None:
        self._room = None
        self._drain()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pauseProducing()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resumeProducing()

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
        self._fire_drained()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._outcome is not None and not self._outcome.called:
            self._outcome.callback(reason)
        if reason == "limit" and self.acks.outstanding:
            self._pause()  # held open for the acks; closed at the end of the run
        else:
            self._close_transport()

    def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:  # already gone (a lost connection not yet reported)
                log.failure("closing the stream connection")

    # -- acknowledgements ----------------------------------------------------------------

    def _taken(self, records: list[Record]) -> None:
        if self.ack_mode == "auto":
            self.acks.ack(records)
