"""
L{SlowReader} alone, on a L{Clock}: when a reader that falls behind is warned, cut off
or has its oldest messages dropped, judged on a L{Pending} it does not own, through a
stand-in for its stream. And L{close_when_read}: the cut-off of a reader that then
reads nothing at all.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from streamd.message import Message, SharedBatch
from streamd.pending import Pending
from streamd.slow import SLOW_CLOSE_GRACE, SlowReader, close_when_read
from streamd.stream import StreamOptions
from streamd.testing import FakeSource


class Owner:
    """What the policy may use of its stream, recorded."""

    def __init__(self) -> None:
        self.ended = False
        self.bytes_written = 0
        self.subscription = FakeSource().subscribe(self)
        self.notices: list[tuple[str, dict]] = []
        self.cut: dict | None = None

    def notify(self, kind: str, info: dict) -> None:
        self.notices.append((kind, info))

    def slow_consumer(self, info: dict) -> None:
        self.cut = info
        self.ended = True


def reader(pending: Pending | None = None, **options):
    clock, owner = Clock(), Owner()
    pending = pending if pending is not None else Pending()
    slow = SlowReader(owner, pending, clock, StreamOptions(**options))
    return slow, pending, owner, clock


def msgs(n: int, size: int = 10) -> list[Message]:
    return [Message(str(i), "s", b"x" * size) for i in range(n)]


def test_past_max_pending_of_its_own_the_stream_is_cut_with_the_bound_it_passed():
    slow, pending, owner, _ = reader(max_pending=3)
    pending.add(msgs(3), None)
    slow.behind()
    assert owner.cut is None  # at the bound, not past it
    pending.add(msgs(1), None)
    slow.behind()
    assert owner.cut == {"message": "slow consumer", "max_pending": 3}


def test_past_max_pending_bytes_the_notice_names_the_byte_bound():
    slow, pending, owner, _ = reader(max_pending_bytes=100)
    pending.add(msgs(2, 60), None)
    slow.behind()
    assert owner.cut == {"message": "slow consumer", "max_pending": 1000,
                         "max_pending_bytes": 100}


def test_drop_oldest_gives_back_the_oldest_down_to_the_bound_and_goes_on():
    slow, pending, owner, _ = reader(max_pending=2, slow_policy="drop-oldest")
    queued = msgs(5)
    pending.add(queued, None)
    slow.behind()
    assert owner.subscription.nacked == queued[:3] and pending.queued == 2
    assert owner.cut is None and pending.dropped_total == 3


def test_one_warning_at_half_full_and_another_only_after_it_caught_up():
    slow, pending, owner, _ = reader(max_pending=10, stall_warnings=True)
    pending.add(msgs(4), None)
    slow.behind()
    assert owner.notices == []  # 40%
    pending.add(msgs(1), None)
    slow.behind()
    slow.behind()
    assert [info["percent_full"] for _, info in owner.notices] == [50]
    pending.clear()
    slow.caught_up()
    pending.add(msgs(6), None)
    slow.behind()
    assert [info["percent_full"] for _, info in owner.notices] == [50, 60]


def test_a_shared_batch_is_judged_at_the_end_of_the_turn_against_the_one_left_with_it():
    a, pa, owner_a, clock = reader(max_pending=3, slow_policy="drop-oldest")
    pb = Pending()
    b = SlowReader(Owner(), pb, clock, StreamOptions(max_pending=3))
    batch = SharedBatch(msgs(5))
    pa.hold(pa.add(batch, batch))
    a.judge_soon()
    assert owner_a.subscription.nacked == []  # not before the turn ends
    pb.hold(pb.add(batch, batch))
    b.judge_soon()
    clock.advance(0)
    assert owner_a.subscription.nacked == []  # shared: over in all, but nobody's own
    pb.clear()  # b's reader went: a alone holds it, and is judged again
    clock.advance(0)
    assert owner_a.subscription.nacked == batch[:2] and pa.queued == 3


def test_over_the_bounds_in_all_it_must_make_progress_every_grace_period():
    a, pa, owner, clock = reader(max_pending=3)
    other = Pending()
    batch = SharedBatch(msgs(10))
    other.hold(other.add(batch, batch))
    pa.hold(pa.add(batch, batch))
    a.behind()
    clock.advance(SLOW_CLOSE_GRACE - 0.1)
    owner.bytes_written += 100  # it wrote: another grace period
    clock.advance(0.1)
    assert owner.cut is None
    clock.advance(SLOW_CLOSE_GRACE)  # then nothing
    assert owner.cut == {"message": "slow consumer", "max_pending": 3}


def test_the_publish_being_written_counts_no_more_than_the_bounds_unless_dropping():
    slow, pending, owner, _ = reader(max_pending=3)
    batch = SharedBatch(msgs(10))
    pending.hold(pending.add(batch, batch))  # its own: nobody else holds it
    slow.behind()
    assert owner.cut is None  # the head publish: counts as 3
    pending.add(msgs(1), None)
    slow.behind()
    assert owner.cut is not None  # what queued behind it puts it over
    dropping, pending, owner, _ = reader(max_pending=3, slow_policy="drop-oldest")
    batch = SharedBatch(msgs(10))
    pending.hold(pending.add(batch, batch))
    dropping.behind()
    assert len(owner.subscription.nacked) == 7 and pending.queued == 3


def test_stop_leaves_nothing_scheduled():
    slow, pending, owner, clock = reader(max_pending=2)
    other = Pending()
    batch = SharedBatch(msgs(4))
    other.hold(other.add(batch, batch))
    pending.hold(pending.add(batch, batch))
    slow.behind()  # watching its progress
    slow.judge_soon()
    assert clock.getDelayedCalls()
    slow.stop()
    assert clock.getDelayedCalls() == []


class Backlog:
    """An outbox of which only the backlog matters here."""

    def __init__(self, left: int) -> None:
        self.left = left

    def backlog(self) -> int:
        return self.left


def test_after_the_notice_a_reader_that_still_reads_is_not_cut_one_that_stops_is():
    clock, transport, outbox = Clock(), StringTransport(), Backlog(10_000)
    close_when_read(clock, transport, outbox)
    assert transport.disconnecting  # closed once its last bytes are out
    outbox.left = 6_000  # it reads
    clock.advance(SLOW_CLOSE_GRACE)
    assert not transport.disconnected
    clock.advance(SLOW_CLOSE_GRACE)  # it read nothing more
    assert transport.disconnected  # aborted: its bytes are freed
