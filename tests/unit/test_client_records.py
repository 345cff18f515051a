"""The client's parsers: NDJSON and SSE bytes, in any chunking, to records and notices."""

import pytest

from streamd.client.records import (
    NDJSONParser,
    Notice,
    Record,
    SSEParser,
    parser_for,
    stream_of,
)


def feed_bytewise(parser, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
    return out


def summary(items) -> list:
    return [(x.kind, x.info) if isinstance(x, Notice) else (x.id, x.data) for x in items]


def test_ndjson_records_and_notices_in_any_chunking():
    body = (b'{"id":"1","stream":"news","data":{"n": 1}}\n'
            b'{"heartbeat":1700000000}\r\n'
            b'{"gap":{"since":"0","missed":3}}\n'
            b'\n'
            b'{"id": 7, "name": "plain"}\n'
            b'[1, 2]\n'
            b'{"shutdown":true}\n')
    whole = NDJSONParser().feed(body)
    assert summary(feed_bytewise(NDJSONParser(), body)) == summary(whole)
    assert summary(whole) == [
        ("1", {"n": 1}),  # streamd's shape: data is the payload
        ("heartbeat", 1700000000),
        ("gap", {"since": "0", "missed": 3}),
        ("7", {"id": 7, "name": "plain"}),  # any other endpoint: the whole value
        (None, [1, 2]),
        ("shutdown", True),
    ]
    assert whole[0].line == b'{"id":"1","stream":"news","data":{"n": 1}}'


def test_ndjson_keeps_a_partial_line_for_the_next_chunk():
    p = NDJSONParser()
    assert p.feed(b'{"id":"1","data":') == []
    (record,) = p.feed(b'2}\n{"id"')
    assert (record.id, record.data) == ("1", 2)


def test_a_one_key_object_that_is_not_a_notice_is_a_record():
    (record,) = NDJSONParser().feed(b'{"title":"hello"}\n')
    assert isinstance(record, Record) and record.data == {"title": "hello"}


def test_sse_events_ids_and_notices_in_any_chunking():
    body = (b": streamd\nretry: 3000\n\n"
            b"id: 1\ndata: {\"n\": 1}\n\n"
            b": heartbeat 1\n\n"
            b"data: line one\r\ndata: line two\r\n\r\n"
            b"event: gap\ndata: {\"since\": \"0\"}\n\n"
            b"event: stream-error\ndata: {\"message\": \"slow consumer\"}\n\n"
            b"id: 9\nevent: update\ndata: 5\n\n")
    for items in (SSEParser().feed(body), feed_bytewise(SSEParser(), body)):
        summary = [x.kind if isinstance(x, Notice) else (x.id, x.event, x.data)
                   for x in items]
        assert summary == [
            ("1", "message", {"n": 1}),
            ("1", "message", "line one\nline two"),  # the last event id persists
            "gap",
            "error",
            ("9", "update", 5),
        ]
    records = [x for x in SSEParser().feed(body) if isinstance(x, Record)]
    assert records[0].line == b'{"id":"1","data":{"n": 1}}'  # no stream name known
    assert Record.from_line(records[2].line).event == "update"  # a round trip via a queue


def test_an_sse_record_line_is_streamds_ndjson_line():
    """What streamd-tail prints is the same for --sse as for NDJSON."""
    body = (b'id: 7\ndata: {"price": 1.50, "code": "007"}\n\n'
            b"id: 8\ndata: plain text\n\n"
            b"id: 9\ndata: [1,\ndata:  2]\n\n"
            b'id: 10\nevent: update\ndata: "x"\n\n')
    lines = [r.line for r in SSEParser(stream="news").feed(body)]
    assert lines == [
        b'{"id":"7","stream":"news","data":{"price": 1.50, "code": "007"}}',
        b'{"id":"8","stream":"news","data":"plain text"}',
        b'{"id":"9","stream":"news","data":[1,2]}',  # one line, whatever it spanned
        b'{"id":"10","stream":"news","data":"x","event":"update"}',
    ]
    ndjson = NDJSONParser().feed(lines[0] + b"\n")[0]
    assert (ndjson.id, ndjson.data) == ("7", {"price": 1.5, "code": "007"})


@pytest.mark.parametrize(("url", "stream"), [
    ("http://h:8080/streams/news", "news"),
    ("http://h:8080/streams/news?since=3", "news"),
    ("http://h/api/streams/a%3Ab/sample", "a:b"),
    ("http://h/streams/tweets/filter", "tweets"),
    ("http://h/events/stream", "events"),
    ("http://h/subscription", None),
])
def test_the_stream_name_of_a_url(url, stream):
    assert stream_of(url) == stream


def test_sse_parser_remembers_last_id_and_retry():
    p = SSEParser()
    p.feed(b"retry: 1500\nid: 42\ndata: x\n\n")
    assert (p.last_id, p.retry) == ("42", 1500)


def test_parser_chosen_by_content_type():
    assert isinstance(parser_for("text/event-stream; charset=utf-8"), SSEParser)
    assert isinstance(parser_for("application/x-ndjson"), NDJSONParser)
    assert isinstance(parser_for(None), NDJSONParser)
