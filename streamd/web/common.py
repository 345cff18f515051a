"""
What every HTTP module shares: JSON answers and the error body (every error is
C{{"error": {"status": ..., "message": ...}}}; L{streamd.web.errors} maps streamd's
errors to it), query-parameter parsing, and what a streaming route does when its source
is down (L{readable}).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http import RESPONSES
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from streamd import framing
from streamd.errors import (
    InvalidRequest,
    SourceDown,
    StreamdError,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from streamd.json_input import InvalidJSON, parse

log = Logger()

JSON_TYPES = ("application/json", "")
BODY_TYPES = JSON_TYPES + ("application/x-ndjson",)


#: Status -> reason phrase: Twisted's, and the standard one where Twisted has none
#: (it writes "429 Unknown Status").
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus} | RESPONSES


def json_response(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status, REASONS.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode() + b"\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    """What every error answers: C{{"error": {"status": ..., "message": ...}}}."""
    return {"error": {"status": status, "message": message}}


def json_body(body: bytes, max_depth: int) -> Any:
    """A request body's JSON value; 400 naming what is wrong with it."""
    try:
        return parse(body, max_depth)
    except InvalidJSON as e:
        raise InvalidRequest(f"body: {e}") from None


def query(request) -> dict[str, list[str]]:
    """The query parameters as text: name -> every value given, in order."""
    out: dict[str, list[str]] = {}
    for k, values in request.args.items():
        try:
            out[k.decode()] = [v.decode() for v in values]
        except UnicodeDecodeError:
            raise InvalidRequest(f"{k.decode('utf-8', 'replace')}: not valid UTF-8") from None
    return out


def arg(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _parsed_arg(params: dict[str, list[str]], name: str, parse, what: str):
    """The last value of C{name} as C{parse} reads it (None if absent), or a 400."""
    text = arg(params, name)
    if text is None:
        return None, None
    try:
        return parse(text), text
    except ValueError:
        raise InvalidRequest(f"{name}: expected {what}, got {text!r}") from None


def int_arg(params: dict[str, list[str]], name: str, minimum: int) -> int | None:
    value, _ = _parsed_arg(params, name, int, "an integer")
    if value is not None and value < minimum:
        raise InvalidRequest(f"{name}: must be at least {minimum}, got {value}")
    return value


def number_arg(params: dict[str, list[str]], name: str, minimum: float) -> float | None:
    value, text = _parsed_arg(params, name, float, "a number")
    if value is not None and (not value >= minimum or value == float("inf")):
        raise InvalidRequest(f"{name}: must be a number of at least {minimum:g}, got {text}")
    return value


def bool_arg(params: dict[str, list[str]], name: str) -> bool:
    text = arg(params, name)
    if text is None:
        return False
    low = text.lower()
    if low in ("1", "true", "yes", "on", ""):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {text!r}")


def content_type(request) -> str:
    raw = request.getHeader(b"content-type") or b""
    return raw.decode("latin-1").split(";")[0].strip().lower()


def accepted(request) -> MIMEAccept:
    """
    The request's C{Accept} header, parsed (q-values and wildcards, as HTTP means them).
    Media-type parameters other than q are dropped: C{text/event-stream; charset=utf-8}
    asks for SSE as much as C{text/event-stream} does.
    """
    raw = (request.getHeader(b"accept") or b"").decode("latin-1")
    return MIMEAccept([(value.split(";")[0].strip(), q)
                       for value, q in parse_accept_header(raw, MIMEAccept)])


def negotiate(request, fmt: str | None):
    """
    A stream's framing: C{?format=} (ndjson or sse) wins; else SSE if the C{Accept}
    header names C{text/event-stream} (as a browser's EventSource does) and ranks it at
    least as high as NDJSON (C{text/event-stream;q=0} refuses SSE); NDJSON otherwise.
    A wildcard (C{text/*}, C{*/*}) never selects SSE: it is what curl and scripts send.
    """
    if fmt is not None:
        chosen = framing.FRAMINGS.get(fmt)
        if chosen is None:
            raise InvalidRequest(f"format: expected ndjson or sse, got {fmt!r}")
        return chosen
    accept = accepted(request)
    if "text/event-stream" in accept.values():
        sse = accept["text/event-stream"]
        if sse and sse >= accept["application/x-ndjson"]:
            return framing.SSE
    return framing.NDJSON


def stream_options(request, params: dict[str, list[str]], default_heartbeat: float):
    """
    What every streaming route reads the same way: the framing (C{?format=}, else
    C{Accept}), C{limit}, C{heartbeat}, and the id to resume after (C{?since=}, else
    C{Last-Event-ID}). Returns C{(framing, limit, heartbeat, since)}.
    """
    chosen = negotiate(request, arg(params, "format"))
    limit = int_arg(params, "limit", 1)
    heartbeat = number_arg(params, "heartbeat", 0)
    if heartbeat is None:
        heartbeat = default_heartbeat
    elif 0 < heartbeat < 0.05:
        raise InvalidRequest("heartbeat: must be 0 (off) or at least 0.05 seconds")
    since = arg(params, "since")
    if since is None:
        last = request.getHeader(b"last-event-id")
        if last:
            since = last.decode("latin-1").strip() or None
    return chosen, limit, heartbeat, since


def read_body(request, types: tuple[str, ...], limit: int, what: str) -> bytes:
    """
    The request body, refused with 415 for a content type not in C{types} and 413 past
    C{limit} bytes (checked on Content-Length first, so nothing is read needlessly).
    C{what} says what one value is ("one value", "one object").
    """
    ctype = content_type(request)
    if ctype not in types:
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r}: send application/json ({what}) or "
            f"application/x-ndjson ({what} per line)"
        )
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(f"body over max_body_bytes ({limit} bytes)")
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"body over max_body_bytes ({limit} bytes)")
    return body


# -- a stream whose source is down -------------------------------------------------------

#: Seconds between two looks at a down source's status while readers wait for it: one
#: timer per source, however many readers wait.
SOURCE_CHECK = 0.25


def retry_after(settings) -> int:
    """A 503's C{Retry-After}: the stream's C{retry} hint, in whole seconds (at least 1)."""
    return max(1, -(-settings.retry // 1000))


def readable(source, settings, request, framing, clock, refusal: str):
    """
    What a streaming route opens: C{source} itself while it is up. While it is down,
    a 503 with C{Retry-After} (C{on_source_down = "refuse"}; the message is C{refusal}
    and the reason), or a L{WaitingSource}: the stream opens anyway (an EventSource
    never retries a refused connection), says so in a status notice, and takes the
    source's messages once it is back. Pass what the route opened to L{opened}.
    """
    state, reason = source.status()
    if state == "ok":
        return source
    if settings.on_source_down == "refuse":
        raise SourceDown(f"{refusal}: {reason}", retry_after(settings))
    return WaitingSource(source, reason, request, framing, clock)


def opened(result, source):
    """
    What the route returns for the stream it opened on C{source} (from L{readable}):
    C{result}, once a waiting stream's first status notice is written after its head.
    """
    if not isinstance(source, WaitingSource):
        return result
    if isinstance(result, Deferred):  # several workers count the identity's streams first
        return result.addCallback(source.opened)
    return source.opened(result)


class WaitingSource:
    """
    A down source as one stream sees it: C{subscribe} succeeds, with a
    L{WaitingSubscription} that subscribes to the source once its status is C{ok} again
    (or at once, should it be back by then). Its status notices,
    C{{"status": {"source": "down", "reason": ...}}} and C{{"status": {"source": "up"}}}
    (SSE: C{event: status}), go straight to the response, as a stall warning does.
    """

    def __init__(self, source, reason, request, framing, clock) -> None:
        self.source = source
        self.reason = reason or "down"
        self.request = request
        self.framing = framing
        self.clock = clock
        self.waiting: WaitingSubscription | None = None

    def subscribe(self, consumer, since=None):
        if self.source.status()[0] == "ok":
            try:
                return self.source.subscribe(consumer, since)
            except Unavailable:
                pass  # down again already: wait as if it had been all along
        sub = self.waiting = WaitingSubscription(self.source, consumer, since, self.notify)
        _SourceChecks.of(self.source, self.clock).add(sub)
        return sub

    def opened(self, result):
        sub = self.waiting
        if sub is not None and sub.real is None and not sub.ended:
            self.notify({"source": "down", "reason": self.reason})
        return result

    def notify(self, info) -> None:
        self.request.write(self.framing.control("status", info))


class WaitingSubscription:
    """
    A stream's subscription while its source is down. It keeps the stream's demand
    (pause, resume) until the source's own subscription exists, then hands every call
    straight to it; calls made while the source's C{subscribe} runs (a replay delivered
    at once may be acked, paused on, or end the stream) are held and passed on after.

    @ivar real: the source's subscription, once there is one.
    @ivar ended: the stream ended first (or the source refused it for good).
    """

    def __init__(self, source, consumer, since, notify) -> None:
        self.source = source
        self.consumer = consumer
        self.since = since
        self.notify = notify
        self.real = None
        self.paused = False
        self.ended = False
        self.held: list | None = None  # while the source's subscribe runs

    def _call(self, name: str, *args) -> None:
        if self.held is not None:
            self.held.append((name, args))
        elif name == "pause":
            self.paused = True
        elif name == "resume":
            self.paused = False
        elif name == "cancel" and not self.ended:
            self.ended = True
            _SourceChecks.forget(self.source, self)
        # ack, nack, skip: nothing was delivered yet

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def ack(self, messages) -> None:
        self._call("ack", messages)

    def nack(self, messages) -> None:
        self._call("nack", messages)

    def skip(self, messages) -> None:
        self._call("skip", messages)

    def cancel(self) -> None:
        self._call("cancel")

    def source_up(self) -> bool:
        """Subscribe now that the source says it is up; whether to stop waiting."""
        if self.ended or getattr(self.consumer, "ended", False):
            return True
        self.notify({"source": "up"})
        self.held = []
        try:
            real = self.source.subscribe(self.consumer, self.since)
        except Unavailable as e:
            self._release_held()
            self.notify({"source": "down", "reason": e.message})
            return False
        except Exception as e:
            # Refused for good (a C{since} this source cannot read, say): the stream
            # ends, saying why, as a source that ended would.
            if not isinstance(e, StreamdError):
                log.failure("subscribing a waiting reader of {name} failed",
                            name=getattr(self.source, "name", "?"))
            self._release_held()
            self.ended = True
            self.consumer.source_ended(e.message if isinstance(e, StreamdError)
                                       else "internal error")
            return True
        self.real = real
        # From now on the stream's calls go straight to the source's subscription: the
        # methods are rebound on the instance on purpose, which mypy refuses in general.
        self.pause, self.resume = real.pause, real.resume  # type: ignore[method-assign]
        self.ack, self.nack, self.cancel = (  # type: ignore[method-assign]
            real.ack, real.nack, real.cancel)
        self.skip = getattr(real, "skip", None) or real.nack  # type: ignore[method-assign]
        held, self.held = self.held, None
        if self.paused:
            real.pause()
        for name, args in held:
            getattr(self, name)(*args)
        return True

    def _release_held(self) -> None:
        held, self.held = self.held, None
        for name, args in held or ():
            self._call(name, *args)


class _SourceChecks:
    """The readers waiting for one down source, and the one timer that looks at it."""

    #: id(source) -> its checks, while any reader waits (the entry holds the source)
    active: dict[int, _SourceChecks] = {}

    def __init__(self, source, clock) -> None:
        self.source = source
        self.clock = clock
        self.waiting: dict[WaitingSubscription, None] = {}  # in arrival order
        self.call = None

    @classmethod
    def of(cls, source, clock) -> _SourceChecks:
        checks = cls.active.get(id(source))
        if checks is None:
            checks = cls.active[id(source)] = cls(source, clock)
        return checks

    @classmethod
    def forget(cls, source, sub: WaitingSubscription) -> None:
        checks = cls.active.get(id(source))
        if checks is not None:
            checks.waiting.pop(sub, None)
            checks._done_if_idle()

    def add(self, sub: WaitingSubscription) -> None:
        self.waiting[sub] = None
        if self.call is None:
            self.call = self.clock.callLater(SOURCE_CHECK, self.check)

    def check(self) -> None:
        self.call = None
        if self.source.status()[0] == "ok":
            for sub in list(self.waiting):
                if sub in self.waiting and sub.source_up():
                    self.waiting.pop(sub, None)
        if self.waiting:
            self.call = self.clock.callLater(SOURCE_CHECK, self.check)
        else:
            self._done_if_idle()

    def _done_if_idle(self) -> None:
        if self.waiting:
            return
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        if self.active.get(id(self.source)) is self:
            del self.active[id(self.source)]
