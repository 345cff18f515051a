"""Checks of the benchmark's publisher (run with C{pytest bench})."""

import asyncio
import time

import pytest
from common import payload
from load import Publisher, http_framer, parse_http, parse_resp, resp_framer
from wire import END, SEQ_RE

STREAMD = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\ne\r\n{\"ids\": [\"1\"]}\r\n0\r\n\r\n")
NCHAN = (b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
         b"Connection: keep-alive\r\n\r\nhello")


@pytest.mark.parametrize("answer,status,body", [(STREAMD, 202, b'e\r\n{"ids": ["1"]}\r\n'),
                                                (NCHAN, 201, b"hello")])
def test_parse_http_whole_split_and_pipelined(answer, status, body):
    for cut in range(len(answer)):
        assert parse_http(answer[:cut]) is None
    assert parse_http(answer) == (len(answer), status, False, body)
    assert parse_http(answer + answer)[0] == len(answer)


def test_parse_http_close():
    answer = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert parse_http(answer) == (len(answer), 503, True, b"")


def test_parse_resp():
    assert parse_resp(b":3\r\n:4\r\n") == (4, 200, False, b":3")
    assert parse_resp(b"-ERR wrong\r\n")[1] == 500
    assert parse_resp(b":3\r") is None


def test_payload_and_frames():
    p = payload(7, 200)
    assert len(p) == 200
    m = SEQ_RE.search(p)
    assert int(m[1]) == 7 and abs(int(m[2]) / 1e6 - time.time()) < 5
    req = http_framer("127.0.0.1", 80, "/pub/x", "application/json", b"\n")(b"{}")
    assert req.endswith(b"Content-Length: 3\r\n\r\n{}\n")
    assert resp_framer(b"ch")(b"ab") == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nab\r\n"


async def fake_server(bodies: list, per_connection: int):
    """Answers POSTs like Nchan, closing a connection after C{per_connection} requests."""

    async def handle(reader, writer):
        for n in range(1, per_connection + 1):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
            last = n == per_connection
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n%s\r\nok"
                         % (b"Connection: close\r\n" if last else b""))
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("rate", [None, 400.0])
def test_publisher_sends_all_then_end_and_survives_closes(rate):
    async def go():
        bodies = []
        server = await fake_server(bodies, per_connection=7)
        port = server.sockets[0].getsockname()[1]
        frame = http_framer("127.0.0.1", port, "/pub/x", "application/json", b"\n")
        pub = Publisher("127.0.0.1", port, frame, parse_http, (202,), 60, 100, 3, rate)
        await pub.connect()
        t0 = time.monotonic()
        stats = await pub.run(time.monotonic() + 10)
        took = time.monotonic() - t0
        pub.close()
        server.close()
        return bodies, stats, took

    bodies, stats, took = asyncio.run(go())
    seqs = sorted(int(SEQ_RE.search(b)[1]) for b in bodies if SEQ_RE.search(b))
    assert seqs == list(range(60))
    assert bodies[-1] == END + b"\n"
    # A close after an answer is not an error; the request in flight is never lost here.
    assert (stats["accepted"], stats["errors"]) == (60, 0), stats["error_sample"]
    if rate:
        assert 59 / rate <= took < 59 / rate + 1.0
