"""Unit tests of the Stream producer: no sockets, no sleeps (FakeRequest and Clock)."""

import json

from twisted.internet.task import Clock

from streamd.framing import NDJSON, SSE
from streamd.sources.memory import MemorySource
from streamd.stream import Stream
from streamd.testing import FakeRequest, FakeSource


def make(source=None, framing=NDJSON, clock=None, **kw):
    clock = clock or Clock()
    source = source or FakeSource()
    request = FakeRequest()
    kw.setdefault("heartbeat", 0)
    stream = Stream(request, source, framing, clock, **kw)
    return stream, request, source, clock


def messages(request):
    return [json.loads(line) for line in request.lines()]


def test_headers_go_out_before_any_message():
    stream, request, source, _ = make()
    stream.start()
    assert request.headers[b"Content-Type"] == b"application/x-ndjson"
    assert request.writes == [b""]  # the empty write sends status line and headers
    assert request.producer is stream and request.streaming is True


def test_written_messages_are_acked_in_write_mode():
    stream, request, source, _ = make()
    stream.start()
    msgs = source.push(3, b'{"x":1}')
    assert [m["id"] for m in messages(request)] == ["1", "2", "3"]
    assert source.subscriptions[0].acked == msgs


def test_pause_stops_the_source_and_queues_then_resume_writes_in_order():
    stream, request, source, _ = make()
    stream.start()
    sub = source.subscriptions[0]
    stream.pauseProducing()
    assert sub.paused
    source.push(2)
    assert messages(request) == []
    assert sub.acked == []  # not written, so not acked
    stream.resumeProducing()
    assert not sub.paused
    assert [m["id"] for m in messages(request)] == ["1", "2"]
    assert len(sub.acked) == 2


def test_stop_producing_gives_back_unwritten_messages():
    stream, request, source, _ = make()
    stream.start()
    sub = source.subscriptions[0]
    stream.pauseProducing()
    queued = source.push(4)
    stream.stopProducing()
    assert sub.nacked == queued
    assert sub.cancelled
    assert stream.ended


def test_cancelling_done_releases_subscription():
    stream, request, source, _ = make()
    d = stream.start()
    d.addErrback(lambda f: None)
    d.cancel()
    assert source.subscriptions[0].cancelled


def test_limit_delivers_exactly_n_even_from_one_batch():
    stream, request, source, _ = make(limit=3)
    done = stream.start()
    sub = source.subscriptions[0]
    batch = source.push(5)
    assert [m["id"] for m in messages(request)] == ["1", "2", "3"]
    assert sub.nacked == batch[3:]  # the surplus goes back to the source at once
    assert sub.acked == batch[:3]
    assert done.called and request.producer is None
    assert sub.cancelled


def test_limit_pauses_source_once_reached_while_paused():
    stream, request, source, _ = make(limit=2)
    stream.start()
    sub = source.subscriptions[0]
    stream.pauseProducing()
    source.push(2)
    stream.resumeProducing()
    assert sub.paused  # no demand left: the source must not fetch more
    assert len(messages(request)) == 2


def test_heartbeat_after_quiet_interval_only():
    stream, request, source, clock = make(heartbeat=5)
    stream.start()
    clock.advance(3)
    source.push(1)
    clock.advance(3)  # 3 s since the message: no heartbeat yet
    assert len(request.lines()) == 1
    clock.advance(2.5)
    lines = messages(request)
    assert lines[-1] == {"heartbeat": 8}


def test_sse_framing_and_heartbeat_comment():
    stream, request, source, clock = make(framing=SSE, heartbeat=1, retry=2500)
    stream.start()
    source.push(1, b'{"a":1}')
    clock.advance(1)
    assert request.written == (
        b": streamd\nretry: 2500\n\nid: 1\ndata: {\"a\":1}\n\n: heartbeat 1\n\n"
    )


def test_slow_policy_disconnect_ends_with_error_line():
    stream, request, source, _ = make(max_pending=3)
    done = stream.start()
    sub = source.subscriptions[0]
    stream.pauseProducing()
    source.push(3)
    assert not stream.ended
    queued = source.push(1)
    assert stream.ended and done.called
    assert messages(request)[-1] == {"error": {"message": "slow consumer", "max_pending": 3}}
    assert len(sub.nacked) == 4 and sub.nacked[-1] == queued[0]
    assert request.channel.transport.disconnecting


def test_slow_policy_drop_oldest_bounds_queue_and_tells_client():
    stream, request, source, _ = make(max_pending=3, slow_policy="drop-oldest")
    stream.start()
    stream.pauseProducing()
    source.push(10)
    assert stream.queued == 3
    stream.resumeProducing()
    lines = messages(request)
    assert lines[0] == {"dropped": 7}
    assert [m["id"] for m in lines[1:]] == ["8", "9", "10"]


def test_client_ack_holds_messages_until_acked_and_bounds_outstanding():
    stream, request, source, _ = make(ack="client", max_unacked=2, session="s1")
    stream.start()
    sub = source.subscriptions[0]
    assert request.headers[b"Streamd-Session"] == b"s1"
    source.push(2)
    assert sub.acked == [] and sub.paused  # at the window: no more from the source
    assert stream.client_acked(["1", "nope"]) == (1, 1)
    assert [m.id for m in sub.acked] == ["1"]
    assert not sub.paused
    stream.stopProducing()
    assert [m.id for m in sub.nacked] == ["2"]  # unacked goes back when the stream ends


def test_client_ack_with_limit_ends_after_the_acks():
    stream, request, source, _ = make(ack="client", limit=2, session="s")
    done = stream.start()
    source.push(2)
    assert not done.called
    stream.client_acked(["1", "2"])
    assert done.called


def test_memory_resume_replays_after_id_without_gap():
    clock = Clock()
    mem = MemorySource("m", clock, buffer=10)
    mem.publish([b"1", b"2", b"3"])
    stream, request, _, _ = make(source=mem)
    stream.start(since="1")
    mem.publish([b"4"])
    clock.advance(0)  # the end of the reactor turn
    assert [m["id"] for m in messages(request)] == ["2", "3", "4"]


def test_memory_resume_reports_gap_when_id_no_longer_buffered():
    clock = Clock()
    mem = MemorySource("m", clock, buffer=2)
    mem.publish([b"1", b"2", b"3", b"4"])
    stream, request, _, _ = make(source=mem)
    stream.start(since="1")
    lines = messages(request)
    assert lines[0] == {"gap": {"since": "1", "missed": 1, "reason": "no longer buffered"}}
    assert [m["id"] for m in lines[1:]] == ["3", "4"]


def test_memory_buffer_expires_after_ttl():
    clock = Clock()
    mem = MemorySource("m", clock, buffer=10, buffer_ttl=60)
    mem.publish([b"1", b"2"])
    clock.advance(61)
    stream, request, _, _ = make(source=mem)
    stream.start(since="1")
    assert messages(request) == [{"gap": {"since": "1", "missed": 1,
                                          "reason": "no longer buffered"}}]


def test_memory_unknown_future_id_is_a_gap_not_silence():
    mem = MemorySource("m", Clock())
    mem.publish([b"1"])
    stream, request, _, _ = make(source=mem, framing=SSE)
    stream.start(since="99")
    assert b"event: gap\n" in request.written


def test_one_paused_reader_does_not_hold_back_others():
    clock = Clock()
    mem = MemorySource("m", clock)
    slow, slow_req, _, _ = make(source=mem, clock=clock, max_pending=5)
    fast, fast_req, _, _ = make(source=mem, clock=clock)
    slow.start()
    fast.start()
    slow.pauseProducing()
    for i in range(20):
        mem.publish([b"%d" % i])
        clock.advance(0)
    assert len(fast_req.lines()) == 20
    assert slow.ended  # the slow one was disconnected by its policy
    assert len(mem.subscribers) == 1


def test_message_encoded_once_for_many_streams():
    clock = Clock()
    mem = MemorySource("m", clock)
    reqs = []
    for _ in range(3):
        s, r, _, _ = make(source=mem)
        s.start()
        reqs.append(r)
    mem.publish([b'{"k":1}'])
    clock.advance(0)
    msg = mem.recent[-1][2]
    assert set(msg.frames) == {"ndjson"}


def test_client_ack_window_holds_a_whole_batch_beyond_max_unacked():
    # A durable source may deliver a batch bigger than the window (an SQS receive of
    # 10): only max_unacked are written; the rest wait for acks.
    stream, request, source, _ = make(ack="client", max_unacked=3, session="s")
    stream.start()
    source.push(10)
    assert [m["id"] for m in messages(request)] == ["1", "2", "3"]
    assert len(stream.acks) == 3 and stream.queued == 7
    stream.client_acked(["1", "2"])
    assert [m["id"] for m in messages(request)] == ["1", "2", "3", "4", "5"]
    assert len(stream.acks) == 3


def test_a_broadcast_batch_is_joined_once_for_all_streams_that_keep_up():
    clock = Clock()
    mem = MemorySource("m", clock)
    readers = [make(source=mem) for _ in range(3)]
    for stream, *_ in readers:
        stream.start()
    readers[2][0].pauseProducing()  # this one queues instead
    mem.publish([b'{"a":1}'])
    mem.publish([b'{"b":2}'])  # a second POST in the same reactor turn
    assert readers[0][1].writes == [b""]  # nothing yet: gathered until the turn ends
    clock.advance(0)
    first, second = readers[0][1].writes[-1], readers[1][1].writes[-1]
    assert first is second  # the same bytes object: joined once
    assert first == (b'{"id":"1","stream":"m","data":{"a":1}}\n'
                     b'{"id":"2","stream":"m","data":{"b":2}}\n')
    paused_stream, paused_request, _, _ = readers[2]
    assert paused_stream.queued == 2
    paused_stream.resumeProducing()
    assert paused_request.written.endswith(first)


def test_coalesce_ms_gathers_messages_that_far_apart():
    clock = Clock()
    mem = MemorySource("m", clock, coalesce=0.005)
    stream, request, _, _ = make(source=mem)
    stream.start()
    mem.publish([b"1"])
    clock.advance(0.004)
    mem.publish([b"2"])
    assert request.writes == [b""]
    clock.advance(0.001)
    assert len(request.writes) == 2 and len(request.lines()) == 2  # one write of both
    mem.publish([b"3"])
    clock.advance(0.005)
    assert len(request.writes) == 3
