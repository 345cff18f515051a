"""
A stream's acks, notices and bounds when its bytes leave the process later than they
are written (L{FakeOutbox} plays the kernel): no sockets, no sleeps.
"""

import json

from twisted.internet.task import Clock

from streamd.framing import NDJSON
from streamd.message import SharedBatch
from streamd.slow import SLOW_CLOSE_GRACE
from streamd.stream import Stream
from streamd.testing import FakeOutbox, FakeRequest, FakeSource


class _Transport:
    def __init__(self) -> None:
        self.closing = False
        self.aborted = False
        self.disconnected = False

    def loseConnection(self) -> None:
        self.closing = True

    def abortConnection(self) -> None:
        self.aborted = self.disconnected = True


def make(open=True, **kw):
    clock = Clock()
    source = FakeSource()
    request = FakeRequest()
    request.transport = _Transport()
    outbox = FakeOutbox(request, open=open)
    kw.setdefault("heartbeat", 0)
    stream = Stream(request, source, NDJSON, clock, outbox=outbox, **kw)
    return stream, request, source, outbox, clock


def lines(request):
    return [json.loads(line) for line in request.lines()]


def test_a_message_is_acked_once_its_bytes_left_the_process_not_when_written():
    stream, request, source, outbox, _ = make(open=False)
    stream.start()
    sub = source.subscriptions[0]
    msgs = source.push(3)
    assert len(lines(request)) == 3  # handed to the transport
    assert sub.acked == []  # but still in this process: a crash now would lose them
    outbox.take(outbox.buffered() - 1)
    assert sub.acked == []  # one byte short of the end of the batch
    outbox.take()
    assert sub.acked == msgs
    assert stream.sent == 3


def test_what_never_left_the_process_is_given_back_when_the_connection_dies():
    stream, request, source, outbox, _ = make(open=False)
    stream.start()
    sub = source.subscriptions[0]
    msgs = source.push(2)
    queued = source.push(2)  # the first write has not left: these wait in the stream
    assert len(lines(request)) == 2
    outbox.lose()
    assert sorted(sub.nacked, key=lambda m: int(m.id)) == msgs + queued
    assert sub.acked == [] and sub.cancelled and stream.ended


def test_a_stream_writes_its_next_batch_only_once_the_last_one_left():
    stream, request, source, outbox, _ = make(open=False)
    stream.start()
    sub = source.subscriptions[0]
    source.push(1)
    assert sub.paused  # the client is behind: the source stops
    source.push(2)  # a broadcast source delivers anyway: queued, not copied out
    assert len(lines(request)) == 1 and stream.queued == 2
    outbox.open = True  # the client reads again
    outbox.take()
    assert [m["id"] for m in lines(request)] == ["1", "2", "3"]
    assert not sub.paused  # caught up: the source goes on


def test_a_limit_ends_the_stream_but_keeps_the_subscription_until_the_bytes_left():
    stream, request, source, outbox, _ = make(open=False, limit=2)
    done = stream.start()
    sub = source.subscriptions[0]
    msgs = source.push(2)
    assert done.called and stream.ended
    assert not sub.cancelled and sub.acked == []
    outbox.take()
    assert sub.acked == msgs and sub.cancelled


def test_slow_consumer_notice_goes_ahead_of_what_is_queued_and_queued_goes_back():
    stream, request, source, outbox, clock = make(open=False, max_pending=3)
    stream.start()
    sub = source.subscriptions[0]
    first = source.push(1)
    queued = source.push(4)  # over max_pending while the first write waits
    assert stream.ended
    got = lines(request)
    # Nothing queued was written before the notice: only the write already under way.
    assert [m.get("id") for m in got[:-1]] == ["1"]
    assert got[-1] == {"error": {"message": "slow consumer", "max_pending": 3}}
    assert sub.nacked == queued
    outbox.take()
    assert sub.acked == first


def test_a_slow_client_that_still_reads_is_not_cut_off_one_that_reads_nothing_is():
    stream, request, source, outbox, clock = make(open=False, max_pending=1)
    stream.start()
    source.push(1)
    source.push(2)
    transport = request.transport
    assert transport.closing
    outbox.take(5)  # the client reads a little during the grace period
    clock.advance(SLOW_CLOSE_GRACE)
    assert not transport.aborted
    clock.advance(SLOW_CLOSE_GRACE)  # then nothing at all
    assert transport.aborted


def test_queued_bytes_are_bounded_by_max_pending_bytes():
    stream, request, source, outbox, _ = make(open=False, max_pending_bytes=10_000)
    stream.start()
    sub = source.subscriptions[0]
    source.push(1)
    source.push(2, b'"' + b"x" * 4000 + b'"')
    assert not stream.ended and stream.pending_bytes == 8004
    more = source.push(1, b'"' + b"x" * 4000 + b'"')
    assert stream.ended  # 12 KB queued: past the bound
    assert lines(request)[-1] == {"error": {
        "message": "slow consumer", "max_pending": 1000, "max_pending_bytes": 10_000}}
    assert more[0] in sub.nacked


def test_a_big_broadcast_batch_is_written_only_as_far_as_the_kernel_takes_it():
    stream, request, source, outbox, _ = make(open=False, max_pending=100_000,
                                              max_pending_bytes=1 << 30)
    stream.start()
    batch = SharedBatch(source.make(20_000, b'"' + b"x" * 200 + b'"'))  # ~5 MB
    stream.deliver(batch)
    assert outbox.buffered() < 64 * 1024  # one write, not the whole batch copied out
    assert stream.queued > 19_000


def test_drop_oldest_by_bytes_tells_the_client_ahead_of_the_next_messages():
    stream, request, source, outbox, _ = make(
        open=False, slow_policy="drop-oldest", max_pending_bytes=5000)
    stream.start()
    sub = source.subscriptions[0]
    source.push(1)
    olds = source.push(3, b'"' + b"x" * 2000 + b'"')
    assert sub.nacked == olds[:1] and stream.dropped_total == 1
    outbox.take()
    got = lines(request)
    assert got[1] == {"dropped": 1}
    assert [m["id"] for m in got[2:]] == ["3", "4"]


def test_stall_warning_at_half_full_not_at_the_brink():
    stream, request, source, outbox, _ = make(open=False, max_pending=10,
                                              stall_warnings=True)
    stream.start()
    source.push(1)
    source.push(4)
    assert [m for m in lines(request) if "warning" in m] == []  # 40%
    source.push(1)
    warnings = [m for m in lines(request) if "warning" in m]
    assert len(warnings) == 1 and warnings[0]["warning"]["percent_full"] == 50
    assert not stream.ended
