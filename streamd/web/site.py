"""
The Site that serves a L{StreamdApp}: CORS for browsers on other origins, and an access
log that never records a credential.
"""

from __future__ import annotations

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from streamd.outbox import StreamingChannel
from streamd.web.access import open_access_log
from streamd.web.common import json_response

#: Request headers a browser may send cross-origin (answering a preflight).
ALLOW_HEADERS = b"Authorization, Content-Type, Last-Event-ID, Streamd-Identifier"
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
#: Response headers a page on another origin may read: beyond the session, why a
#: request was refused (401) and when to retry (429); a browser hides any other.
EXPOSE_HEADERS = b"Streamd-Session, WWW-Authenticate, Retry-After"


def _channel(factory):
    # Twisted's switch between HTTP/1.1 and HTTP/2 (by ALPN) wraps the HTTP/1.1 channel
    # it is given; its private class is the only way to give it ours.
    return http._GenericHTTPChannelProtocol(StreamingChannel())


class StreamdSite(Site):
    """
    The Site: Twisted's, less two costs that every request paid, and with streaming
    responses written through an outbox (L{streamd.outbox}). It does not parse form
    bodies (Twisted runs the stdlib's e-mail header parser on the Content-Type of every
    request with a body for that; the one route that takes a form parses it itself), and
    its access log is gathered and written once a second (L{streamd.web.access}).
    """

    protocol = _channel
    access = None

    def log(self, request) -> None:
        if self.access is not None:
            self.access.log(request)


class CORS(Resource):
    """
    Wraps the app: answers preflights, and marks responses (streams, publishes and
    errors alike) as readable by an allowed origin. An origin not listed gets no CORS
    headers at all; credentials (cookies) are allowed only for listed origins, not
    for C{*}.
    """

    isLeaf = True

    def __init__(self, inner, origins: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.any = "*" in origins
        self.origins = {o.encode() for o in origins if o != "*"}

    def render(self, request):
        origin = request.getHeader(b"origin")
        listed = origin is not None and origin in self.origins
        if origin is not None and (listed or self.any):
            if listed:
                request.setHeader(b"Access-Control-Allow-Origin", origin)
                request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            else:
                request.setHeader(b"Access-Control-Allow-Origin", b"*")
            request.setHeader(b"Vary", b"Origin")
            request.setHeader(b"Access-Control-Expose-Headers", EXPOSE_HEADERS)
            if request.method == b"OPTIONS" and request.getHeader(
                b"access-control-request-method"
            ):
                request.setResponseCode(204)
                request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
                request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS)
                request.setHeader(b"Access-Control-Max-Age", b"600")
                return b""
        return self.inner.render(request)


class UTF8URLs(Resource):
    """
    Answers a URL that is not UTF-8 (C{/streams/%FF}, or such a Host header) with a
    JSON 400. Klein would log a traceback for it and answer in plain text.
    """

    isLeaf = True

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request):
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return json_response(request, 400, {"error": {
                "status": 400, "message": "URL: not valid UTF-8"}})
        return self.inner.render(request)


def make_site(app, reactor=None) -> Site:
    """The Site for C{app} (a L{streamd.web.StreamdApp})."""
    resource = UTF8URLs(app.app.resource())
    if app.settings["cors_origins"]:
        resource = CORS(resource, app.settings["cors_origins"])
    kwargs = {"reactor": reactor} if reactor is not None else {}
    site = StreamdSite(resource, parsePOSTFormSubmission=False, **kwargs)
    site.displayTracebacks = False
    settings = app.settings
    site.access = open_access_log(settings["access_log"], settings["access_log_file"],
                                  site.reactor, settings["log_format"] == "json")
    return site
