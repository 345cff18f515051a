"""
The HTTP surface (klein routes): parse the request, call the domain, render errors as
JSON. Routes are methods of L{StreamdApp}, which holds its dependencies (the reactor,
the settings, the sources), so nothing here reaches for a global.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from klein import Klein
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from streamd import __version__, config, framing
from streamd.errors import (
    BadRequest,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from streamd.message import InvalidPayload, decode_body
from streamd.sources import Services, make_source
from streamd.stream import Stream

log = Logger()

STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
JSON_TYPES = ("application/json", "")
BODY_TYPES = JSON_TYPES + ("application/x-ndjson",)


def _json(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode() + b"\n"


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode()
    except UnicodeDecodeError:
        raise BadRequest(f"{name}: not valid UTF-8") from None


def _int_arg(request, name: str, minimum: int) -> int | None:
    text = _arg(request, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise BadRequest(f"{name}: must be at least {minimum}, got {value}")
    return value


def _number_arg(request, name: str, minimum: float) -> float | None:
    text = _arg(request, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name}: expected a number, got {text!r}") from None
    if not value >= minimum or value == float("inf"):
        raise BadRequest(f"{name}: must be a number of at least {minimum:g}, got {text}")
    return value


def _content_type(request) -> str:
    raw = request.getHeader(b"content-type") or b""
    return raw.decode("latin-1").split(";")[0].strip().lower()


class StreamdApp:
    """
    The streamd HTTP API.

    @ivar sources: stream name -> source, for declared streams and (when
        C{dynamic_streams}) memory streams created on first use.
    @ivar open_streams: every L{Stream} whose response is still open.
    @ivar sessions: C{Streamd-Session} -> the client-ack L{Stream} it names.
    """

    app = Klein()

    def __init__(self, settings: dict[str, Any], reactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.started_at = reactor.seconds()
        self.services = Services(reactor=reactor, settings=settings)
        self.stream_settings: dict[str, dict[str, Any]] = dict(settings["streams"])
        self.sources: dict[str, Any] = {
            name: make_source(s, self.services) for name, s in self.stream_settings.items()
        }
        self.open_streams: set[Stream] = set()
        self.sessions: dict[str, Stream] = {}

    def resource(self):
        return self.app.resource()

    # -- sources ----------------------------------------------------------------

    def _source(self, name: str):
        source = self.sources.get(name)
        if source is not None:
            return source, self.stream_settings[name]
        if not STREAM_NAME.match(name):
            raise BadRequest(
                "stream name: use 1-200 letters, digits and . _ : - (starting with a "
                "letter or digit)"
            )
        if not self.settings["dynamic_streams"]:
            raise NotFound(f"no stream named {name!r}")
        settings = self.stream_settings[name] = config.stream_defaults(name, self.settings)
        source = self.sources[name] = make_source(settings, self.services)
        source.start()
        return source, settings

    def source_statuses(self) -> dict[str, Any]:
        out = {}
        for name, source in self.sources.items():
            state, reason = source.status()
            out[name] = {"source": source.kind, "status": state, "reason": reason}
        return out

    # -- service info --------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "service": "streamd",
            "version": __version__,
            "uptime": round(self.reactor.seconds() - self.started_at, 3),
            "open_streams": len(self.open_streams),
            "sources": self.source_statuses(),
        }

    @app.route("/", methods=["GET"])
    def index(self, request):
        return _json(request, 200, self._info())

    @app.route("/health", methods=["GET"])
    def health(self, request):
        info = self._info()
        up = all(s["status"] == "ok" for s in info["sources"].values())
        return _json(request, 200 if up else 503, info)

    # -- publish ----------------------------------------------------------------------

    @app.route("/streams/<name>/messages", methods=["POST"])
    async def publish(self, request, name):
        source, settings = self._source(name)
        ctype = _content_type(request)
        if ctype not in BODY_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type {ctype!r}: send application/json (one value) or "
                "application/x-ndjson (one value per line)"
            )
        limit = self.settings["max_body_bytes"]
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"body over max_body_bytes ({limit} bytes)")
        body = request.content.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"body over max_body_bytes ({limit} bytes)")
        try:
            payloads = decode_body(body, ctype)
        except InvalidPayload as e:
            raise BadRequest(f"line {e.line}: {e.reason}") from None
        max_message = settings["max_message_bytes"]
        for n, payload in enumerate(payloads, 1):
            if len(payload) > max_message:
                raise PayloadTooLarge(
                    f"line {n}: message over max_message_bytes ({max_message} bytes)"
                )
        if not payloads:
            raise BadRequest("no message in the body")
        state, reason = source.status()
        if state != "ok":
            raise Unavailable(f"stream {name!r} is down: {reason}")
        params = {k.decode(): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}
        ids = await maybeDeferred(source.publish, payloads, params)
        return _json(request, 202, {"ids": ids})

    # -- stream -------------------------------------------------------------------------

    @app.route("/streams/<name>", methods=["GET"])
    def stream(self, request, name):
        source, settings = self._source(name)
        fmt = _arg(request, "format")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        chosen = framing.choose(fmt, accept)
        if chosen is None:
            raise BadRequest(f"format: expected ndjson or sse, got {fmt!r}")
        limit = _int_arg(request, "limit", 1)
        heartbeat = _number_arg(request, "heartbeat", 0)
        if heartbeat is None:
            heartbeat = settings["heartbeat"]
        elif 0 < heartbeat < 0.05:
            raise BadRequest("heartbeat: must be 0 (off) or at least 0.05 seconds")
        since = _arg(request, "since")
        if since is None:
            last = request.getHeader(b"last-event-id")
            if last:
                since = last.decode("latin-1").strip() or None
        ack = _arg(request, "ack") or settings.get("ack", "write")
        if ack not in ("write", "client"):
            raise BadRequest(f"ack: expected write or client, got {ack!r}")
        state, reason = source.status()
        if state != "ok":
            raise Unavailable(f"stream {name!r} is down: {reason}")
        session = secrets.token_urlsafe(18) if ack == "client" else None
        stream = Stream(
            request,
            source,
            chosen,
            self.reactor,
            limit=limit,
            heartbeat=heartbeat,
            max_pending=settings["max_pending"],
            slow_policy=settings["slow_policy"],
            ack=ack,
            max_unacked=settings.get("max_unacked", 100),
            retry=settings["retry"],
            session=session,
            on_end=self._stream_ended,
        )
        stream.name = name
        done = stream.start(since)
        if not stream.ended:
            self.open_streams.add(stream)
            if session is not None:
                self.sessions[session] = stream
        return done

    def _stream_ended(self, stream: Stream) -> None:
        self.open_streams.discard(stream)
        if stream.session is not None:
            self.sessions.pop(stream.session, None)

    @app.route("/streams/<name>/ack", methods=["POST"])
    def ack(self, request, name):
        self._source(name)
        if _content_type(request) not in JSON_TYPES:
            raise UnsupportedMediaType("send application/json")
        try:
            body = json.loads(request.content.read(self.settings["max_body_bytes"]))
        except ValueError:
            raise BadRequest("body: not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('body: expected {"session": ..., "ids": [...]}')
        session, ids = body.get("session"), body.get("ids")
        if not isinstance(session, str):
            raise BadRequest("session: expected the Streamd-Session header's value")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadRequest("ids: expected a list of message ids (strings)")
        stream = self.sessions.get(session)
        if stream is None or stream.name != name:
            raise NotFound(f"no open client-ack session {session!r} on stream {name!r}")
        acked, unknown = stream.client_acked(ids)
        return _json(request, 200, {"acked": acked, "unknown": unknown})

    # -- errors ------------------------------------------------------------------------

    @app.handle_errors
    def errors(self, request, failure):
        err = failure.value
        if isinstance(err, HTTPError):
            status, message = err.status, err.message
            for k, v in err.headers.items():
                request.setHeader(k, v)
        elif isinstance(err, HTTPException):
            status = err.code or 500
            message = err.description or err.name
            if status == 404:
                message = "no such resource"
            elif status == 405:
                allowed = err.valid_methods or []
                request.setHeader(b"Allow", ", ".join(allowed).encode())
                message = f"method not allowed (allowed: {', '.join(allowed)})"
        else:
            log.failure("Unhandled error for {method} {uri}", failure,
                        method=request.method, uri=request.uri)
            status, message = 500, "internal error"
        return _json(request, status, {"error": {"status": status, "message": message}})
