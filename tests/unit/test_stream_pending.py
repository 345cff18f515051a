"""
L{Pending} alone: the order of what waits, what counts against a stream's bounds when
several streams queue one shared batch, dropping the oldest, and giving it all back.
"""

from streamd.framing import NDJSON
from streamd.message import Message, SharedBatch
from streamd.pending import Pending


def msgs(first: int, n: int, data: bytes = b'"xx"') -> list[Message]:
    return [Message(str(i), "s", data) for i in range(first, first + n)]


class Policy:
    """Counts the times the queue asks it to judge again."""

    judged = 0

    def judge_soon(self) -> None:
        self.judged += 1


def take_all(p: Pending, room: int = -1, limit: int = 1 << 30) -> tuple[list[str], list]:
    parts: list[bytes] = []
    batch, _ = p.take(parts, NDJSON, room, limit)
    return [m.id for m in batch], parts


def test_messages_and_notices_come_out_in_the_order_they_came():
    p = Pending()
    p.add(msgs(1, 2), None)
    p.notice(b'{"gap":1}\n')
    p.add(msgs(3, 1), None)
    ids, parts = take_all(p)
    assert ids == ["1", "2", "3"]
    assert parts[2] == b'{"gap":1}\n'  # between 2 and 3, where it came
    assert not p and p.queued == 0 and p.bytes == 0 and p.own == 0


def test_a_chunk_stops_at_the_byte_limit_and_at_the_room_left():
    p = Pending()
    ten = msgs(1, 10, b'"' + b"x" * 98 + b'"')
    frame = len(NDJSON.message(ten[0]))
    p.add(ten, None)
    # Under the limit after two frames, so a third goes too; then it stops.
    ids, parts = take_all(p, limit=2 * frame + 1)
    assert ids == ["1", "2", "3"] and sum(map(len, parts)) == 3 * frame
    assert take_all(p, room=2)[0] == ["4", "5"]
    assert p.queued == 5 and p.bytes == 5 * 100


def test_a_delivery_of_its_own_is_copied_the_source_may_reuse_its_list():
    p = Pending()
    delivery = msgs(1, 2)
    p.add(delivery, None)
    delivery.clear()
    assert take_all(p)[0] == ["1", "2"]


def test_a_batch_two_queues_hold_counts_against_neither_until_one_is_done():
    policy = Policy()
    a, b = Pending(), Pending(policy)
    batch = SharedBatch(msgs(1, 4))
    run_a, run_b = a.add(batch, batch), b.add(batch, batch)
    a.hold(run_a)
    assert a.own == 4  # nobody else holds it yet
    b.hold(run_b)
    assert (a.queued, a.own, b.queued, b.own) == (4, 0, 4, 0)
    assert a.holds_shared() and b.holds_shared()
    take_all(a)  # a is done with it: b is the one behind
    assert not a.holds_shared()
    assert (b.own, b.own_bytes) == (4, 4 * 4) and policy.judged == 1


def test_the_same_batch_twice_in_one_queue_counts_the_second_time():
    p = Pending()
    batch = SharedBatch(msgs(1, 3))
    p.hold(p.add(batch, batch))
    other = Pending()
    other.hold(other.add(batch, batch))
    p.hold(p.add(batch, batch))  # again: the second is its own
    assert p.queued == 6 and p.own == 3


def test_drop_oldest_keeps_notices_in_front_and_the_next_chunk_says_how_many():
    p = Pending()
    p.notice(b'{"gap":1}\n')
    p.add(msgs(1, 5), None)
    dropped = p.drop(2, 1 << 20, everything=False)
    assert [m.id for m in dropped] == ["1", "2", "3"]
    assert (p.queued, p.dropped, p.dropped_total) == (2, 3, 3)
    ids, parts = take_all(p)
    assert parts[:2] == [b'{"dropped":3}\n', b'{"gap":1}\n'] and ids == ["4", "5"]
    assert p.dropped == 0 and p.dropped_total == 3


def test_drop_counts_what_is_shared_only_when_asked_to_count_everything():
    a, b = Pending(), Pending()
    batch = SharedBatch(msgs(1, 4))
    a.hold(a.add(batch, batch))
    b.hold(b.add(batch, batch))
    assert a.drop(1, 1 << 20, everything=False) == []  # none of it is a's own
    assert [m.id for m in a.drop(1, 1 << 20, everything=True)] == ["1", "2", "3"]
    assert b.queued == 4  # the other queue keeps its place


def test_clear_gives_back_what_is_left_and_leaves_shared_batches():
    a, b = Pending(), Pending()
    batch = SharedBatch(msgs(1, 3))
    a.hold(a.add(batch, batch))
    b.hold(b.add(batch, batch))
    take_all(a, room=1)
    a.add(msgs(9, 1), None)
    assert [m.id for m in a.clear()] == ["2", "3", "9"]
    assert not a and a.queued == a.bytes == a.own == a.own_bytes == 0
    assert not a.holds_shared() and b.own == 3  # b holds it alone now
