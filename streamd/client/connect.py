"""
L{Connector}: a client's connections to its stream, one at a time. It connects, reads
the response body (L{Body}) and, when the connection drops, fails or goes quiet,
connects again after a backoff delay, resuming after the last id it received.

It owns the transport of the body being read: the client pauses it when its queue is
full (L{Connector.pause}) and resumes it once there is room, and L{Connector.halt} ends
the connection (or, for a run waiting for its acks, only pauses it).
"""

from __future__ import annotations

from collections.abc import Callable

import treq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from streamd.client.body import Body
from streamd.client.records import Notice, Record, SSEParser, parser_for, stream_of
from streamd.client.results import ClientError, GaveUp, error_message

log = Logger()

#: Statuses that are worth retrying although they are 4xx.
RETRY_4XX = frozenset({408, 425, 429})


class Connector:
    """
    The connections of one client (see L{streamd.client.client.StreamClient} for what
    each parameter means to a user).

    @ivar since: where the next connection resumes: the last id received, sent as
        C{?since=} (or C{Last-Event-ID} for SSE).
    @ivar sse: the last response was Server-Sent Events (the next connection asks for
        them, and resumes with C{Last-Event-ID}).
    @ivar reconnects: connections made after the first, in this run.
    @ivar gaps: C{gap} notices received in this run (records the server could not replay).
    @ivar paused: the client holds the body's transport paused (its queue is full): a
        quiet connection is then not taken for dead.
    """

    def __init__(self, url: str, *, reactor, http, headers: dict[str, str],
                 params: dict[str, str], sse: bool, since: str | None,
                 retry_policy: Callable[[int], float], max_retries: int | None,
                 connect_timeout: float, idle_timeout: float | None,
                 on_records: Callable[[list[Record]], None],
                 on_notice: Callable[[Notice], None] | None) -> None:
        """
        @param headers: every request's headers, credentials included.
        @param params: every request's query parameters, credentials included.
        @param on_records: called with the records of each chunk received (an empty list
            for a chunk of notices only: the client checks its switch then too).
        @param on_notice: the user's callback for streamd's notices (not heartbeats).
        """
        self.url = url
        self.reactor = reactor
        self.http = http
        self.headers = headers
        self.params = params
        self.sse = sse
        self.since = since
        self.retry_policy = retry_policy
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_records = on_records
        self.on_notice = on_notice
        self.reconnects = 0
        self.gaps = 0
        self.paused = False
        self._halted = False
        # The response body's transport: Twisted's TransportProxyProducer (a producer).
        self._transport: IPushProducer | None = None
        self._waiting: Deferred | None = None  # a connect or backoff sleep to cancel
        self._outcome: Deferred | None = None  # fires when the connection ends or we halt

    def begin(self) -> None:
        """A new run: nothing halted, nothing counted yet."""
        self._halted = False
        self.reconnects = 0
        self.gaps = 0

    async def run(self) -> bool:
        """
        Connect, and reconnect after each drop, until the server ends the stream (True)
        or L{halt} is called (False). Fails with L{ClientError} on a status not worth
        retrying, L{GaveUp} once C{max_retries} attempts in a row failed.
        """
        attempt = 0  # what the next backoff delay is for
        failed = 0  # connection attempts that failed in a row
        while not self._halted:
            outcome, connected = await self._connect_once()
            if self._halted:
                break
            if outcome == "ended":
                return True
            attempt = 1 if connected else attempt + 1
            failed = 0 if connected else failed + 1
            if self.max_retries is not None and failed >= self.max_retries:
                raise GaveUp(failed, outcome)
            delay = self.retry_policy(attempt)
            log.info("reconnecting in {delay:.2f} s", delay=delay)
            await self._sleep(delay)
            self.reconnects += 1
        return False

    def halt(self, reason: str, keep_open: bool = False) -> None:
        """
        End the run: cut a connect or backoff wait short, end the connection being read
        with C{reason}, and close it, or with C{keep_open} only pause it (a run that
        waits for its acks keeps the session that the server acks against).
        """
        self._halted = True
        if self._waiting is not None:
            self._waiting.cancel()
        if self._outcome is not None and not self._outcome.called:
            self._outcome.callback(reason)
        if keep_open:
            self.pause()
        else:
            self.close()

    def pause(self) -> None:
        """Stop reading the socket (the server's stream is paused in turn)."""
        if not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pauseProducing()

    def resume(self) -> None:
        """Read the socket again."""
        if self.paused and self._transport is not None:
            self.paused = False
            self._transport.resumeProducing()

    def close(self) -> None:
        """Close the connection being read, if any."""
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:  # already gone (a lost connection not yet reported)
                log.failure("closing the stream connection")

    async def _sleep(self, delay: float) -> None:
        """The backoff wait; L{halt} cuts it short."""
        self._waiting = Deferred()
        call = self.reactor.callLater(delay, self._waiting.callback, None)
        try:
            await self._waiting
        except CancelledError:
            if call.active():
                call.cancel()
        finally:
            self._waiting = None

    async def _connect_once(self) -> tuple[str, bool]:
        """One connection: C{(outcome, connected)}; outcome is "ended" or a reason to retry."""
        headers = dict(self.headers)
        params = dict(self.params)
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
            if self._halted:
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
        outcome: Deferred[str] = Deferred()
        self._outcome = outcome

        def relay(how: str) -> None:  # unless we halted first
            if not outcome.called:
                outcome.callback(how)

        body.lost.addCallback(relay)
        self.paused = False
        response.deliverBody(body)
        if self.idle_timeout:
            body.watchdog = self.reactor.callLater(self.idle_timeout, self._idle, body)
        try:
            return await outcome
        finally:
            self._outcome = None
            if body.watchdog is not None and body.watchdog.active():
                body.watchdog.cancel()

    def _received(self, body: Body, items: list[Record | Notice]) -> None:
        records = []
        for item in items:
            if isinstance(item, Notice):
                self._notice(body, item)
                continue
            item.session = body.session
            if item.id is not None:
                self.since = item.id
            records.append(item)
        self.on_records(records)

    def _attach(self, body: Body, attached: bool) -> None:
        if attached:
            self._transport = body.producer
        elif self._transport is body.producer:
            self._transport = None

    def _idle(self, body: Body) -> None:
        """The idle watchdog: one timer per connection, rescheduled, not reset per chunk."""
        assert self.idle_timeout is not None  # only ever scheduled with one
        now = self.reactor.seconds()
        if self.paused:  # quiet because we hold it paused is not dead
            body.last_data = now
        due = body.last_data + self.idle_timeout
        if now < due:
            body.watchdog = self.reactor.callLater(due - now, self._idle, body)
            return
        if self._outcome is not None and not self._outcome.called and \
                self._transport is body.producer:
            log.info("no data for {s} s: reconnecting", s=self.idle_timeout)
            self._outcome.callback(f"idle for {self.idle_timeout} s")
            self.close()

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
