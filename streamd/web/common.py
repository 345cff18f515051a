"""
What every HTTP module shares: JSON answers, query-parameter parsing, and the one error
renderer (every error is C{{"error": {"status": ..., "message": ...}}}, never a page or a
traceback).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.logger import Logger
from twisted.web.http import RESPONSES
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_accept_header

from streamd import framing
from streamd.errors import BadRequest, HTTPError, PayloadTooLarge, UnsupportedMediaType
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
        raise BadRequest(f"body: {e}") from None


def query(request) -> dict[str, list[str]]:
    """The query parameters as text: name -> every value given, in order."""
    out: dict[str, list[str]] = {}
    for k, values in request.args.items():
        try:
            out[k.decode()] = [v.decode() for v in values]
        except UnicodeDecodeError:
            raise BadRequest(f"{k.decode('utf-8', 'replace')}: not valid UTF-8") from None
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
        raise BadRequest(f"{name}: expected {what}, got {text!r}") from None


def int_arg(params: dict[str, list[str]], name: str, minimum: int) -> int | None:
    value, _ = _parsed_arg(params, name, int, "an integer")
    if value is not None and value < minimum:
        raise BadRequest(f"{name}: must be at least {minimum}, got {value}")
    return value


def number_arg(params: dict[str, list[str]], name: str, minimum: float) -> float | None:
    value, text = _parsed_arg(params, name, float, "a number")
    if value is not None and (not value >= minimum or value == float("inf")):
        raise BadRequest(f"{name}: must be a number of at least {minimum:g}, got {text}")
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
    raise BadRequest(f"{name}: expected true or false, got {text!r}")


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
            raise BadRequest(f"format: expected ndjson or sse, got {fmt!r}")
        return chosen
    accept = accepted(request)
    if "text/event-stream" in accept.values():
        sse = accept["text/event-stream"]
        if sse and sse >= accept["application/x-ndjson"]:
            return framing.SSE
    return framing.NDJSON


def install_error_handler(app) -> None:
    """Render every failure of C{app}'s routes as a JSON error."""

    @app.handle_errors
    def errors(instance, request, failure):
        return render_error(request, failure)


def render_error(request, failure) -> bytes:
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
            allowed = sorted(err.valid_methods or [])  # werkzeug's order follows a set's
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            message = f"method not allowed (allowed: {', '.join(allowed)})"
    else:
        log.failure("Unhandled error for {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        status, message = 500, "internal error"
    return json_response(request, status, error_body(status, message))


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
        raise BadRequest("heartbeat: must be 0 (off) or at least 0.05 seconds")
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
        raise PayloadTooLarge(f"body over max_body_bytes ({limit} bytes)")
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"body over max_body_bytes ({limit} bytes)")
    return body
