"""
The smaller parts of a L{Stream} alone: L{Intake} (filter, limit), L{Heartbeat} (on a
L{Clock}), L{Writer} (chunks, the shared batch joined once, the client-ack window) and
L{StreamOptions} (what C{OpenStreams.open} builds once per request).
"""

from twisted.internet.task import Clock

from streamd.framing import NDJSON, SSE
from streamd.heartbeat import Heartbeat
from streamd.inflight import ClientAcks, Inflight
from streamd.intake import Intake
from streamd.message import Message, SharedBatch
from streamd.pending import Pending
from streamd.slow import SlowReader
from streamd.stream import Stream, StreamOptions
from streamd.testing import FakeRequest, FakeSource
from streamd.writer import WRITE_BATCH_BYTES, Writer


def msgs(first: int, n: int, data: bytes = b"{}") -> list[Message]:
    return [Message(str(i), "s", data) for i in range(first, first + n)]


class Even:
    def matches(self, m: Message) -> bool:
        return int(m.id) % 2 == 0


def test_intake_skips_what_the_filter_rejects_and_gives_back_what_is_over_the_limit():
    intake = Intake(Even(), limit=2)
    sub = FakeSource().subscribe(None)
    intake.subscribed(sub)
    assert [m.id for m in intake.take(msgs(1, 6))] == ["2", "4"]
    assert [m.id for m in sub.skipped] == ["1", "3", "5"]
    assert [m.id for m in sub.nacked] == ["6"]  # the limit's surplus
    assert intake.accepted == 2 and intake.full()


def test_intake_holds_what_it_turns_away_until_the_subscription_exists():
    intake = Intake(None, limit=1)
    assert [m.id for m in intake.take(msgs(1, 3))] == ["1"]  # within subscribe()
    sub = FakeSource().subscribe(None)
    intake.subscribed(sub)
    assert [m.id for m in sub.nacked] == ["2", "3"]


def test_without_filter_or_limit_intake_takes_all_as_it_is():
    intake = Intake()
    delivery = msgs(1, 3)
    assert not intake.selective and intake.take(delivery) is delivery
    assert not intake.full()


class Beats:
    """A stream as its heartbeat sees it: C{stop} on the first beat, if asked to."""

    def __init__(self, stop: Heartbeat | None = None) -> None:
        self.at: list[float] = []
        self.stop = stop

    def keep_alive(self, now: float) -> None:
        self.at.append(now)
        if self.stop is not None:
            self.stop.stop()

    def can_write(self) -> bool:
        return True


def test_a_heartbeat_only_after_every_seconds_without_a_write():
    clock = Clock()
    stream = Beats()
    beat = Heartbeat(clock, 10, stream)
    beats = stream.at
    beat.start()
    clock.advance(6)
    beat.last_write = clock.seconds()  # a write at 6 s
    clock.advance(4)
    assert beats == []  # 10 s, but only 4 since the write
    clock.advance(6)
    assert beats == [16.0]
    clock.advance(10)
    assert beats == [16.0, 26.0]
    beat.stop()
    assert clock.getDelayedCalls() == []


def test_a_beat_that_ends_the_stream_schedules_no_more():
    clock = Clock()
    stream = Beats()
    beat = stream.stop = Heartbeat(clock, 5, stream)
    beat.start()
    clock.advance(5)
    assert stream.at == [5.0] and clock.getDelayedCalls() == []


def test_no_heartbeat_at_zero():
    clock = Clock()
    Heartbeat(clock, 0, Beats()).start()
    assert clock.getDelayedCalls() == []


def writer(framing=NDJSON, acks=None, stream=None):
    clock, request, pending = Clock(), FakeRequest(), Pending()
    stream = stream or Beats()
    inflight = Inflight()
    inflight.subscription = FakeSource().subscribe(None)
    slow = SlowReader(None, pending, clock, StreamOptions())
    w = Writer(request, framing, clock, pending, slow, inflight, acks,
               Heartbeat(clock, 0, stream), None, stream)
    return w, pending, request, inflight


def test_the_writer_sends_a_queue_in_chunks_of_at_most_one_write():
    w, pending, request, inflight = writer()
    pending.add(msgs(1, 300, b'"' + b"x" * 100 + b'"'), None)
    w.flush()
    assert len(request.writes) > 1
    assert all(len(chunk) <= WRITE_BATCH_BYTES + 200 for chunk in request.writes)
    assert w.written == 300 and w.bytes_written == len(request.written)
    assert len(inflight.subscription.acked) == 300 and not w.flushing


def test_the_writer_stops_when_the_stream_cannot_write():
    class OneWrite(Beats):
        def can_write(self) -> bool:
            return not request.writes

    w, pending, request, _ = writer(stream=OneWrite())
    pending.add(msgs(1, 300, b'"' + b"x" * 100 + b'"'), None)
    w.flush()
    assert len(request.writes) == 1 and pending.queued > 0


def test_the_writer_keeps_to_the_client_ack_window():
    acks = ClientAcks(2)
    w, pending, request, inflight = writer(acks=acks)
    pending.add(msgs(1, 5), None)
    w.flush()
    assert len(request.lines()) == 2 and len(acks) == 2 and pending.queued == 3
    assert inflight.subscription.acked == []  # the client acknowledges, not the write


def test_a_shared_batch_is_joined_once_per_framing_and_a_big_one_not_at_all():
    batch = SharedBatch(msgs(1, 3))
    first, _, r1, _ = writer()
    second, _, r2, _ = writer()
    sse, _, r3, _ = writer(framing=SSE)
    assert first.shared(batch, batch.encoded) and second.shared(batch, batch.encoded)
    assert sse.shared(batch, batch.encoded)
    assert r1.writes[0] is r2.writes[0]  # one join, the same bytes for both
    assert set(batch.encoded) == {NDJSON, SSE}
    big = SharedBatch(msgs(1, 200, b'"' + b"x" * 100 + b'"'))
    w, _, request, _ = writer()
    assert not w.shared(big, big.encoded) and request.writes == []


def test_stream_options_a_falsy_filter_is_none_and_settings_override():
    assert StreamOptions(filter=()).filter is None
    options = StreamOptions(max_pending=5, name="news")
    stream = Stream(FakeRequest(), FakeSource(), NDJSON, Clock(), options, heartbeat=0)
    assert stream.options.max_pending == 5 and stream.options.heartbeat == 0
    assert stream.name == "news" and options.heartbeat == 15.0  # not changed in place
