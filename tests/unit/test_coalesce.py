"""
Unit tests of L{streamd.coalesce.Coalescer}: when a batch goes out, relative to the
reactor's polls for I/O. No sleeps: a Clock driven the way Twisted's reactors drive their
timed calls, and Twisted's own poll-based reactors iterated by hand over a socketpair.
"""

import socket

import pytest
from twisted.internet.task import Clock

from streamd.coalesce import Coalescer


def run_timed_calls(clock: Clock) -> None:
    """
    What C{ReactorBase.runUntilCurrent} does once per reactor turn: run the calls due now,
    but not the calls those make (they wait for the next turn). C{Clock.advance(0)} would
    run those as well, with no poll for I/O in between.
    """
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def sleep_allowed(clock: Clock) -> float | None:
    """C{ReactorBase.timeout()}: how long the next poll may wait (None: for ever)."""
    calls = clock.getDelayedCalls()
    if not calls:
        return None
    return max(0.0, min(c.getTime() for c in calls) - clock.seconds())


def make(delay=0.0):
    clock = Clock()
    out = []
    return Coalescer(clock, lambda batch: out.append(list(batch)), delay), clock, out


def test_a_batch_takes_in_what_the_next_zero_timeout_poll_brings():
    """
    Twisted's own reactors run due timed calls before they poll: a batch goes out after
    one more poll (a zero-timeout one) and takes in the messages that poll brought, as on
    the asyncio reactor. It used to go out with what the one poll had brought.
    """
    c, clock, out = make()
    c.add(["1"])  # I/O of this turn: a POST
    c.add(["2"])  # another connection's, the same poll
    run_timed_calls(clock)  # the end of the turn
    assert out == []  # held for one more poll...
    assert sleep_allowed(clock) == 0  # ...that does not wait
    c.add(["3"])  # what that poll brought
    run_timed_calls(clock)
    assert out == [["1", "2", "3"]]
    assert sleep_allowed(clock) is None  # nothing left: the reactor may wait for I/O
    # An idle reactor: a lone message goes out after one zero-timeout poll.
    c.add(["4"])
    run_timed_calls(clock)
    assert out == [["1", "2", "3"]] and sleep_allowed(clock) == 0
    run_timed_calls(clock)
    assert out == [["1", "2", "3"], ["4"]] and sleep_allowed(clock) is None


def test_the_reactor_never_waits_with_a_batch_held():
    c, clock, out = make()
    for turn in range(6):
        if turn % 3 != 2:
            c.add([str(turn)])
        if c.batch is not None:
            assert sleep_allowed(clock) == 0
        run_timed_calls(clock)
    run_timed_calls(clock)
    assert c.batch is None and sleep_allowed(clock) is None
    assert [m for batch in out for m in batch] == ["0", "1", "3", "4"]  # order kept


@pytest.mark.parametrize("rearmed", [False, True])
def test_flush_at_any_time_sends_what_is_held_and_cancels_the_call(rearmed):
    c, clock, out = make()
    c.add(["1"])
    if rearmed:
        run_timed_calls(clock)  # past the first turn's end
    c.add(["2"])
    c.flush()  # a new subscriber, a stop
    assert out == [["1", "2"]]
    assert clock.getDelayedCalls() == []
    c.flush()
    assert out == [["1", "2"]]  # nothing held: no empty delivery
    c.add(["3"])
    clock.advance(0)
    assert out == [["1", "2"], ["3"]]


def test_coalesce_ms_is_one_call_that_far_ahead():
    c, clock, out = make(delay=0.005)
    c.add(["1"])
    assert [dc.getTime() for dc in clock.getDelayedCalls()] == [0.005]
    clock.advance(0.004)
    c.add(["2"])
    assert out == []
    clock.advance(0.001)
    run_timed_calls(clock)  # no second turn needed
    assert out == [["1", "2"]] and clock.getDelayedCalls() == []


class SocketReader:
    """A readable for a reactor's addReader: each read's bytes, one message each."""

    def __init__(self, sock, coalescer):
        self.sock, self.coalescer = sock, coalescer

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "SocketReader"

    def doRead(self):
        self.coalescer.add([self.sock.recv(100)])

    def connectionLost(self, reason):
        pass


def posix_reactors():
    from twisted.internet import pollreactor, selectreactor

    kinds = [selectreactor.SelectReactor, pollreactor.PollReactor]
    try:
        from twisted.internet import epollreactor
    except ImportError:  # not Linux
        pass
    else:
        kinds.append(epollreactor.EPollReactor)
    return kinds


@pytest.mark.parametrize("kind", posix_reactors(), ids=lambda k: k.__name__)
def test_a_real_reactor_polls_once_more_before_the_batch_goes_out(kind):
    """
    The same, with Twisted's reactors (epoll is the default on Linux) turned by hand as
    C{mainLoop} does: C{runUntilCurrent()}, then C{doIteration(timeout())}.
    """
    reactor = kind()  # not installed, not running: only turned here
    out = []
    c = Coalescer(reactor, lambda batch: out.append(list(batch)))
    near, far = socket.socketpair()
    reader = SocketReader(near, c)
    reactor.addReader(reader)

    try:
        far.sendall(b"a")
        reactor.runUntilCurrent()
        assert reactor.timeout() is None  # idle: it would wait for I/O
        reactor.doIteration(5)  # "a" is there: no wait
        assert out == []
        far.sendall(b"b")  # arrives while the reactor handles "a"
        reactor.runUntilCurrent()  # the end of that turn
        assert out == []
        assert reactor.timeout() == 0  # never waits with a batch held
        reactor.doIteration(0)  # reads "b"
        assert out == []
        reactor.runUntilCurrent()
        assert out == [[b"a", b"b"]]
        assert reactor.timeout() is None  # nothing held: free to wait for I/O
    finally:
        reactor.removeAll()
        reactor.removeReader(reactor.waker)
        reactor.waker.connectionLost(None)
        if hasattr(reactor, "_poller") and hasattr(reactor._poller, "close"):
            reactor._poller.close()
        near.close()
        far.close()
