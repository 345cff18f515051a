"""
The Site that serves a L{StreamdApp}: CORS for browsers on other origins, and an access
log that never records a credential.
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from streamd.twisted_internals import BadRequestHook, header_bytes_received, headers_received
from streamd.web.access import AccessLog, open_access_log
from streamd.web.channel import StreamingChannel
from streamd.web.common import REASONS, error_body, json_response
from streamd.web.h2 import HTTPChannelSwitch

#: Request headers a browser may send cross-origin (answering a preflight).
ALLOW_HEADERS = b"Authorization, Content-Type, Last-Event-ID, Streamd-Identifier"
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
#: Response headers a page on another origin may read: beyond the session, why a
#: request was refused (401) and when to retry (429); a browser hides any other.
EXPOSE_HEADERS = b"Streamd-Session, WWW-Authenticate, Retry-After"
#: Every response's Server header: Twisted's would name its exact version.
SERVER = b"streamd"


class HeadFirstRequest(Request):
    """
    A Request whose head goes out with its first bytes (L{StreamingChannel.writeHeaders}
    holds it), or at the end of the write that started the response when no bytes came
    with it (HEAD, 204, an empty body). Its Server header is L{SERVER}, whatever set
    it before (C{Request.process} sets Twisted's name and version).
    """

    def write(self, data: bytes) -> None:
        if self.startedWriting:  # a stream's every batch: nothing more to do
            super().write(data)
            return
        self.responseHeaders.setRawHeaders(b"Server", [SERVER])
        super().write(data)
        send_head = getattr(self.channel, "send_head", None)  # not on HTTP/2's streams
        if send_head is not None:
            send_head()


class StreamdSite(Site):
    """
    The Site: Twisted's, less two costs that every request paid, and with streaming
    responses written through an outbox (L{streamd.outbox}, by its channel
    L{streamd.web.channel.StreamingChannel}). It does not parse form
    bodies (Twisted runs the stdlib's e-mail header parser on the Content-Type of every
    request with a body for that; the one route that takes a form parses it itself), and
    its access log is gathered and written once a second (L{streamd.web.access}).
    """

    access: AccessLog | None = None
    requestFactory = HeadFirstRequest

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


class JSONErrorChannel(BadRequestHook, StreamingChannel):
    """
    Twisted's HTTP/1.1 parser, answering what it refuses the way streamd answers every
    error: a JSON body. Twisted itself sends an empty-bodied 400 for a malformed
    request (a NUL in a header, a header line without a colon, two Content-Lengths, a
    raw 0xFF in the request line, an HTTP/0.9 request), and drops the
    connection without a word when the request line or a header line is over
    C{MAX_LENGTH}. Only those error paths are overridden: a well-formed request costs
    nothing more. Twisted's refusals reach L{refuse_malformed} through its private
    hook, and the header counters are read, in L{streamd.twisted_internals}.
    """

    @classmethod
    def for_site(cls):
        """
        A new channel for C{Site.protocol}, inside the switch Twisted's own default
        protocol uses, so that a connection on which TLS negotiated C{h2} is still
        handed to HTTP/2: to streamd's flow-controlled HTTP/2 connection
        (L{streamd.web.h2}).
        """
        return HTTPChannelSwitch(cls())

    def lineLengthExceeded(self, line):
        # Nothing of this request counted yet: the over-long line is the request line.
        if header_bytes_received(self) == 0:
            self.send_refusal(414, f"request line (URI) over {self.MAX_LENGTH} bytes")
        else:
            self.send_refusal(431, f"a header line over {self.MAX_LENGTH} bytes")

    def refuse_malformed(self) -> None:
        """Every refusal of a request line, header or chunked body by Twisted's parser."""
        if header_bytes_received(self) > self.totalHeadersSize:
            self.send_refusal(431, f"headers over {self.totalHeadersSize} bytes")
        elif headers_received(self) > self.maxHeaders:
            self.send_refusal(431, f"more than {self.maxHeaders} headers")
        else:
            self.send_refusal(400, "malformed HTTP request: request line, header or chunked "
                              "body not valid HTTP/1.1")

    def send_refusal(self, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nServer: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, REASONS[status], SERVER, len(body), body))
        self.loseConnection()


def make_site(app, reactor=None) -> StreamdSite:
    """The Site for C{app} (a L{streamd.web.StreamdApp})."""
    resource: Resource = UTF8URLs(app.app.resource())
    if app.settings.cors_origins:
        resource = CORS(resource, app.settings.cors_origins)
    kwargs = {"reactor": reactor} if reactor is not None else {}
    site = StreamdSite(resource, parsePOSTFormSubmission=False, **kwargs)
    site.displayTracebacks = False
    # Twisted's HTTPFactory.protocol is a function in its class body, which mypy takes
    # for a method: the ignore.
    site.protocol = JSONErrorChannel.for_site  # type: ignore[method-assign]
    settings = app.settings
    site.access = open_access_log(settings.access_log, settings.access_log_file,
                                  site.reactor, settings.log_format == "json")
    return site
