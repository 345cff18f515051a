"""
L{Inflight} and L{ClientAcks} alone: a written batch is acknowledged to the source only
once its bytes left the process (or the client said so), given back if the connection
goes first, and the subscription is cancelled only once nothing written is unsettled.
"""

from streamd.inflight import ClientAcks, Inflight
from streamd.message import Message
from streamd.testing import FakeOutbox, FakeRequest, FakeSource


class Listener:
    """A stream as the outbox sees it."""

    def __init__(self) -> None:
        self.drains = 0
        self.lost = 0

    def drained(self) -> None:
        self.drains += 1

    def transport_lost(self) -> None:
        self.lost += 1


def following(open: bool = False):
    request = FakeRequest()
    outbox = FakeOutbox(request, open=open)
    inflight = Inflight(outbox)
    inflight.subscription = FakeSource().subscribe(None)
    listener = Listener()
    assert inflight.follow(request, 0, listener) is outbox
    return inflight, outbox, request, listener


def batch(*ids: str) -> list[Message]:
    return [Message(i, "s", b"{}") for i in ids]


def test_a_batch_whose_bytes_left_at_once_is_acknowledged_at_once():
    inflight, _, request, _ = following(open=True)
    request.write(b"x")
    inflight.written(batch("1"))
    assert [m.id for m in inflight.subscription.acked] == ["1"]
    assert inflight.sent == 1 and not inflight


def test_a_batch_still_in_the_process_is_acknowledged_when_the_outbox_drains():
    inflight, outbox, request, listener = following()
    request.write(b"xx")
    inflight.written(batch("1", "2"))
    request.write(b"y")
    inflight.written(batch("3"))
    assert inflight.subscription.acked == [] and inflight
    outbox.take()
    assert listener.drains == 1  # the outbox tells the stream, which tells us
    inflight.drained()
    assert [m.id for m in inflight.subscription.acked] == ["1", "2", "3"]
    assert inflight.sent == 3


def test_what_is_still_here_when_the_connection_goes_is_given_back():
    inflight, _, request, _ = following()
    request.write(b"xx")
    inflight.written(batch("1", "2"))
    inflight.lost()
    assert [m.id for m in inflight.subscription.nacked] == ["1", "2"]
    assert inflight.subscription.acked == [] and inflight.sent == 0


def test_closing_with_nothing_held_cancels_and_stops_following_at_once():
    inflight, outbox, _, listener = following()
    assert inflight.close()
    assert inflight.subscription.cancelled and outbox.listeners == []


def test_closing_while_bytes_are_still_here_cancels_once_they_settle():
    inflight, outbox, request, listener = following()
    request.write(b"xx")
    inflight.written(batch("1"))
    assert not inflight.close()
    assert not inflight.subscription.cancelled  # its ack is still to come
    assert outbox.listeners == [listener]
    outbox.take()
    inflight.drained()
    assert [m.id for m in inflight.subscription.acked] == ["1"]
    assert inflight.subscription.cancelled and outbox.listeners == []


def test_without_an_outbox_a_write_counts_as_sent():
    inflight = Inflight()
    inflight.subscription = FakeSource().subscribe(None)
    assert inflight.follow(FakeRequest(), 0, Listener()) is None  # no channel outbox
    inflight.written(batch("1"))
    assert [m.id for m in inflight.subscription.acked] == ["1"]


def test_client_acks_hold_a_window_and_know_only_what_they_hold():
    acks = ClientAcks(3)
    acks.written(batch("1", "2"))
    assert acks.room() == 1 and len(acks) == 2
    assert [m.id for m in acks.acked(["2", "nope"])] == ["2"]
    assert acks.room() == 2
    assert [m.id for m in acks.clear()] == ["1"] and not acks
