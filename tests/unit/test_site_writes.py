"""
How a response leaves streamd (L{streamd.web.channel.StreamingChannel}, L{HeadFirstRequest}):
its status line, headers and body go to the socket within the request's handling, in one
C{sendmsg}, rather than waiting in Twisted's buffer for the next reactor turn, and a
response without a body still gets its head out. Real sockets: the client is a plain
socket whose receive queue shows what the kernel already has.
"""

import socket

import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import NOT_DONE_YET, GzipEncoderFactory

from streamd.web.site import JSONErrorChannel, StreamdSite
from tests.support.web import within

ensure = pytest_twisted.ensureDeferred


class _Answer(Resource):
    """Answers, then (still inside render) looks at what the client can already read."""

    isLeaf = True

    def __init__(self, client: socket.socket) -> None:
        super().__init__()
        self.client = client
        self.seen = defer.Deferred()

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"12")
        request.write(b'{"ok": true}')
        request.finish()
        try:
            already = self.client.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            already = b""
        self.seen.callback(already)
        return 1  # NOT_DONE_YET: finished above


async def _serve_one(request_bytes: bytes) -> bytes:
    client = socket.socket()
    resource = _Answer(client)
    site = StreamdSite(resource, parsePOSTFormSubmission=False)
    site.protocol = JSONErrorChannel.for_site
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        client.connect(("127.0.0.1", port.getHost().port))  # the kernel's backlog accepts
        client.sendall(request_bytes)
        return await within(resource.seen)
    finally:
        client.close()
        await port.stopListening()


@ensure
async def test_a_response_has_left_the_process_before_its_handler_returns():
    seen = await _serve_one(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = seen.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 12" in head
    assert body == b'{"ok": true}'


@ensure
async def test_a_head_request_gets_its_head_and_no_body():
    seen = await _serve_one(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert seen.startswith(b"HTTP/1.1 200 OK\r\n") and seen.endswith(b"\r\n\r\n")


class _Later(Resource):
    """Finishes a moment later; C{/str} writes a str (a handler's bug)."""

    isLeaf = True

    def render(self, request):
        if request.path == b"/str":
            request.write("a str")
            return NOT_DONE_YET
        reactor.callLater(0.01, request.finish)
        return NOT_DONE_YET


def _talk(port: int, data: bytes) -> bytes:
    """Send C{data}, read until the server closes (in a thread: the reactor goes on)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(5)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def _exchange(resource, data: bytes) -> bytes:
    site = StreamdSite(resource, parsePOSTFormSubmission=False)
    site.protocol = JSONErrorChannel.for_site
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        return await within(threads.deferToThread(_talk, port.getHost().port, data))
    finally:
        await port.stopListening()


@ensure
async def test_a_bodiless_head_written_past_head_first_request_is_not_lost():
    # With an encoder, Twisted's Request.finish writes through the base class's write:
    # the held head must still go out, before the next pipelined response.
    gzip = EncodingResourceWrapper(_Later(), [GzipEncoderFactory()])
    out = await _exchange(gzip, b"HEAD /x HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n"
                                b"GET /y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2, out
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Encoding: gzip" in out


@ensure
async def test_a_write_that_fails_still_leaves_a_well_formed_response():
    out = await _exchange(_Later(), b"GET /str HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out  # the status line, then the error
    assert b"Processing Failed" in out and out.endswith(b"0\r\n\r\n")
