"""
The one place where streamd's errors become HTTP: L{STATUS} gives each of
L{streamd.errors}' classes its status code, L{answer} adds the headers an error carries
(C{Retry-After}, C{WWW-Authenticate}), and L{render_error} writes every failure of a
route as C{{"error": {"status": ..., "message": ...}}}, never a page or a traceback.
"""

from __future__ import annotations

from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from streamd import errors
from streamd.web.common import error_body, json_response

log = Logger()

#: Each error class's status code. The most specific class listed wins (L{answer} walks
#: an error's classes from its own upwards), so a plugin's subclass of
#: L{errors.InvalidRequest} answers 400 too.
STATUS: dict[type[errors.StreamdError], int] = {
    errors.InvalidRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.Unknown: 404,
    errors.TooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.TooManyStreams: 429,
    errors.StreamdError: 500,
    errors.Refused: 502,
    errors.Unavailable: 503,
}


def answer(err: errors.StreamdError) -> tuple[int, dict[bytes, bytes]]:
    """The status code and headers that answer C{err}."""
    status = next(STATUS[cls] for cls in type(err).__mro__ if cls in STATUS)
    headers = {}
    retry = getattr(err, "retry_after", None)
    if retry is not None:
        headers[b"Retry-After"] = b"%d" % retry
    if isinstance(err, errors.Unauthorized):
        headers[b"WWW-Authenticate"] = err.challenge.encode()
    return status, headers


def install_error_handler(app) -> None:
    """Render every failure of C{app}'s routes as a JSON error."""

    @app.handle_errors
    def handle(instance, request, failure):
        return render_error(request, failure)


def render_error(request, failure) -> bytes:
    err = failure.value
    if isinstance(err, errors.StreamdError):
        status, headers = answer(err)
        message = err.message
        for k, v in headers.items():
            request.setHeader(k, v)
    elif isinstance(err, HTTPException):  # klein's: no such route, method not allowed
        status = err.code or 500
        message = err.description or err.name
        if status == 404:
            message = "no such resource"
        elif status == 405:
            # MethodNotAllowed's; werkzeug's order follows a set's.
            allowed = sorted(getattr(err, "valid_methods", None) or [])
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            message = f"method not allowed (allowed: {', '.join(allowed)})"
    else:
        log.failure("Unhandled error for {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        status, message = 500, "internal error"
    return json_response(request, status, error_body(status, message))
