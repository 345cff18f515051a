"""
Checks of the benchmark's own HTTP client (run with C{pytest bench}): a benchmark that
miscounts is worse than none.
"""

import asyncio
import json

import pytest
from wire import ChunkedDecoder, ProtocolError, Subscriber, digest_held

BODY = b"".join(
    json.dumps({"id": str(i), "stream": "s", "data": {"seq": i, "t": 1_500_000, "pad": "x" * 30}},
               separators=(",", ":")).encode() + b"\n"
    for i in range(20)
)


def chunked(body: bytes, sizes=(7, 300, 1, 64), trailer=b"") -> bytes:
    """C{body} in chunked encoding, cut into chunks of the given sizes in turn."""
    out, pos, k = [], 0, 0
    while pos < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        out.append(b"%x;ext=1\r\n" % len(body[pos : pos + n]) + body[pos : pos + n] + b"\r\n")
        pos += n
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 17, 100, 10_000])
def test_chunked_any_split(step):
    """The decoder gives the body back whatever way the packets cut the chunks."""
    wire = chunked(BODY, trailer=b"X-Trailer: 1\r\n")
    d = ChunkedDecoder()
    out = b"".join(b"".join(d.feed(wire[i : i + step])) for i in range(0, len(wire), step))
    assert out == BODY
    assert d.done


def test_chunked_not_done_before_last_chunk():
    d = ChunkedDecoder()
    wire = chunked(BODY)
    assert b"".join(d.feed(wire[:-5])) == BODY
    assert not d.done
    d.feed(wire[-5:])
    assert d.done


def test_chunked_bad_size():
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"zz\r\nabc\r\n")


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = False
        self.paused = False

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True


def feed_subscriber(wire: bytes, total: int, step: int, sse: bool = False) -> Subscriber:
    async def go():
        sub = Subscriber(b"GET / HTTP/1.1\r\n\r\n", total, sse=sse)
        sub.connection_made(FakeTransport())
        for i in range(0, len(wire), step):
            sub.data_received(wire[i : i + step])
        return sub

    return asyncio.run(go())


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 13, 4096])
def test_subscriber_counts_lost_duplicates_controls(step):
    """Seq 3 is missing, seq 5 comes twice, and control lines are told apart."""
    lines = [line for line in BODY.split(b"\n") if line]
    body = b"\n".join(
        lines[:3] + [b'{"heartbeat": 1700000000}'] + lines[4:6] + [lines[5]]
        + [b'{"dropped": 2}', b'{"other": 1}'] + lines[6:]
    ) + b"\n"
    sub = feed_subscriber(HEAD + chunked(body), total=21, step=step)
    assert sub.ended is None  # nothing is decoded while the stream is read
    sub.close()
    r = sub.result()
    assert sub.ended == "complete"
    assert r["unique"] == 19  # 0..19 less 3
    assert r["total"] - r["unique"] == 2  # 3 and 20 never came
    assert r["duplicated"] == 1
    assert r["controls"] == {"heartbeat": 1, "gap": 0, "dropped": 1, "error": 0, "end": 0}
    assert r["other_lines"] == 1
    assert r["samples"]["other"] == '{"other": 1}'
    assert len(r["latencies"]) == 19 * 8  # one double per first delivery


def test_subscriber_error_status():
    sub = feed_subscriber(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{\"error\":1}", total=1, step=7
    )
    sub.connection_lost(None)
    assert sub.ended.startswith("HTTP 404")
    assert sub.opened.result() is False


@pytest.mark.parametrize("limit", [0, 100])
def test_subscriber_parses_early_past_the_deferral_limit(limit):
    """Parsing what is held when memory runs short gives the same answer as parsing at the end."""
    wire = HEAD + chunked(BODY)

    async def go():
        sub = Subscriber(b"GET / HTTP/1.1\r\n\r\n", 20)
        sub.connection_made(FakeTransport())
        for i in range(0, len(wire), 37):
            sub.data_received(wire[i : i + 37])
            digest_held([sub], limit)
        return sub

    sub = asyncio.run(go())
    assert sub.pairs  # parsed already
    r = sub.result()
    assert (r["unique"], r["duplicated"], r["other_lines"]) == (20, 0, 0)
    assert digest_held([sub]) == 0


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def sse_events(lines):
    return b"".join(b"id: %d\ndata: %s\n\n" % (i, line) for i, line in enumerate(lines))


@pytest.mark.parametrize("step", [1, 7, 4096])
@pytest.mark.parametrize("chunk", [True, False])
def test_sse_counts_messages_and_controls_not_framing(step, chunk):
    """streamd's SSE (chunked, with a preamble) and Nchan's (identity, ': hi')."""
    lines = [line for line in BODY.split(b"\n") if line]
    messages = [line[line.index(b'"data":') + 7 : -1] for line in lines]  # the payloads
    body = (b": streamd\nretry: 3000\n\n: hi\n\n" + sse_events(messages[:10])
            + b": heartbeat 1700000000\n\nevent: gap\ndata: {\"since\": \"1\"}\n\n"
            + sse_events(messages[10:] + [b'{"end":true}']))
    wire = (HEAD + chunked(body)) if chunk else SSE_HEAD + body
    sub = feed_subscriber(wire, total=20, step=step, sse=True)
    assert sub.saw_end()
    sub.close()
    r = sub.result()
    assert (r["unique"], r["duplicated"], r["other_lines"], r["unparsed"]) == (20, 0, 0, 0)
    assert r["controls"] == {"heartbeat": 1, "gap": 1, "dropped": 0, "error": 0, "end": 1}


@pytest.mark.parametrize("step", [1, 3, 50, 4096])
def test_saw_end_whatever_the_reads(step):
    """END is found across reads (servers write a message within one chunk)."""
    lines = BODY.splitlines(keepends=True) + [b'{"id":"21","stream":"s","data":{"end":true}}\n']
    wire = HEAD + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines) + b"0\r\n\r\n"
    sub = feed_subscriber(wire, total=20, step=step)
    assert sub.saw_end()
    assert not feed_subscriber(HEAD + chunked(BODY), total=20, step=step).saw_end()


def test_slow_reader_pauses_for_what_it_read():
    async def go():
        sub = Subscriber(b"GET / HTTP/1.1\r\n\r\n", 20, read_rate=10_000)
        t = FakeTransport()
        sub.connection_made(t)
        sub.data_received(HEAD)
        sub.data_received(b"x" * 1000)  # 0.1 s worth
        assert t.paused
        await asyncio.sleep(0.15)
        assert not t.paused
        sub.release()
        sub.data_received(b"x" * 1000)
        assert not t.paused

    asyncio.run(go())
