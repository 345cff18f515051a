"""
Every response says C{Server: streamd}, with no version (issue 20): routes' answers,
streams, Twisted's own answers (C{OPTIONS *}), the HTTP parser's refusals, HTTP/2.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import pytest_twisted
import treq
from twisted.internet import utils
from twisted.internet.threads import deferToThread

from tests.support.web import open_stream, publish, settings, within

ensure = pytest_twisted.ensureDeferred


def _exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:PORT and read until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def raw(server, request: bytes) -> tuple[int, list[bytes]]:
    """The status and the Server headers of the answer to C{request}."""
    answer = await within(deferToThread(_exchange, server.port.getHost().port, request))
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    status = int(head[0].split()[1])
    servers = [line.split(b":", 1)[1].strip() for line in head[1:]
               if line.lower().startswith(b"server:")]
    return status, servers


def get(path: str, method: bytes = b"GET", extra: bytes = b"") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra
            + b"\r\n")


@ensure
async def test_routes_and_twisteds_own_answers(serve):
    server = await serve()
    for request, status in [
        (get(b"/health"), 200),
        (get(b"/nope"), 404),
        (get(b"/streams/a?limit=0"), 400),
        (get(b"/streams/a", b"DELETE"), 405),
        (get(b"/streams/a", b"HEAD"), 200),
        (get(b"*", b"OPTIONS"), 200),  # Twisted answers this one itself
        (get(b"/streams/a/messages", b"POST",
             b"Content-Type: application/json\r\nContent-Length: 1\r\n") + b"1", 202),
        (get(b"/streams/a/messages", b"POST",
             b"Content-Type: application/json\r\nContent-Length: 1\r\n") + b"{", 400),
    ]:
        assert await raw(server, request) == (status, [b"streamd"]), request


@ensure
async def test_the_parsers_refusals(serve):
    server = await serve()
    for request, status in [
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ]:
        assert await raw(server, request) == (status, [b"streamd"]), request[:40]


@ensure
async def test_a_stream_says_it_too(serve):
    server = await serve()
    reader = await open_stream(server.url + "/streams/news?limit=1")
    assert reader.response.headers.getRawHeaders("server") == ["streamd"]
    await server.wait_open_streams(1)
    await publish(server.url + "/streams/news/messages", {"n": 1})
    await within(reader.done)
    r = await within(treq.get(server.url + "/streams/news/messages"))  # 405
    assert r.headers.getRawHeaders("server") == ["streamd"]


async def curl_head(*args: str) -> str:
    out, err, code = await within(utils.getProcessOutputAndValue(
        shutil.which("curl"), ["-sI", "--max-time", "10", *args]))
    assert code == 0, err
    return out.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
@ensure
async def test_curl_sees_it_on_200_404_and_a_parser_400(serve):
    server = await serve()
    for path, status in [("/health", "200"), ("/nope", "404")]:
        head = await curl_head(server.url + path)
        assert head.startswith(f"HTTP/1.1 {status} "), head
        assert "\r\nServer: streamd\r\n" in head, head
    # A space in the request target: Twisted's parser refuses the request line.
    head = await curl_head("--request-target", "/a b", server.url + "/health")
    assert head.startswith("HTTP/1.1 400 "), head
    assert "\r\nServer: streamd\r\n" in head, head


def _curl_speaks_h2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    return "HTTP2" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not _curl_speaks_h2(), reason="needs curl with HTTP/2 (nghttp2)")
@ensure
async def test_http2_too(serve):
    server = await serve(settings(), tls=True)
    for path, status in [("/health", "200"), ("/nope", "404")]:
        head = await curl_head("--http2", "-k", server.tls_url + path)
        assert head.startswith(f"HTTP/2 {status}"), head
        assert "\r\nserver: streamd\r\n" in head, head
