"""
StreamClient without a network or a clock of its own: treq's StubTreq (a real Agent on a
real Site, in memory) and a Clock, so backoff delays are checked exactly, with no sleep.
"""

from treq.testing import StubTreq
from twisted.application.internet import backoffPolicy
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from streamd.client import Backoff, StreamClient


class Flaky(Resource):
    """503 for the first C{failures} requests, then one NDJSON record per request."""

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.requests: list[dict] = []

    def render_GET(self, request):
        self.requests.append({k.decode(): v[0].decode() for k, v in request.args.items()})
        if len(self.requests) <= self.failures:
            request.setResponseCode(503)
            return b'{"error": {"status": 503, "message": "stream down"}}'
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        n = len(self.requests)
        return b'{"id":"%d","data":%d}\n{"heartbeat":1}\n' % (n, n)


def test_5xx_backs_off_exponentially_then_resumes_after_the_last_id():
    clock = Clock()
    server = Flaky(failures=2)
    client = StreamClient("http://example.test/streams/x?since=41", reactor=clock,
                          http=StubTreq(server), random=lambda: 0.0,
                          backoff=Backoff(initial=0.5, factor=2.0, maximum=30, jitter=0.5))
    done = client.start(limit=2)
    assert len(server.requests) == 1
    clock.advance(0.49)
    assert len(server.requests) == 1
    clock.advance(0.01)  # 0.5 s after the first 503
    assert len(server.requests) == 2
    clock.advance(0.99)
    assert len(server.requests) == 2
    clock.advance(0.01)  # 1.0 s after the second
    assert len(server.requests) == 3
    # That response ended after one record (a clean end of the body): "ended".
    result = done.result
    assert (result.count, result.reason, result.reconnects) == (1, "ended", 2)
    assert [r["since"] for r in server.requests] == ["41", "41", "41"]

    # The next run resumes after the last record handed over.
    done = client.start(limit=1)
    assert server.requests[-1]["since"] == "3"
    assert done.result.count == 1


def test_backoff_may_be_twisteds_backoff_policy():
    clock = Clock()
    server = Flaky(failures=2)
    policy = backoffPolicy(initialDelay=0.5, factor=2.0, jitter=lambda: 0.0)
    client = StreamClient("http://example.test/streams/x", reactor=clock,
                          http=StubTreq(server), backoff=policy)
    done = client.start(limit=1)
    clock.advance(0.99)
    assert len(server.requests) == 1
    clock.advance(0.01)  # policy(1): 1.0 s after the first 503
    assert len(server.requests) == 2
    clock.advance(1.99)
    assert len(server.requests) == 2
    clock.advance(0.01)  # policy(2): 2.0 s after the second
    assert len(server.requests) == 3 and done.result.count == 1


class Burst(Resource):
    """C{n} NDJSON records written in one chunk."""

    isLeaf = True

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        return b"".join(b'{"id":"%d","data":%d}\n' % (i, i) for i in range(1, self.n + 1))


def test_limit_is_exact_when_every_record_comes_in_one_chunk():
    for limit in (1, 7, 49):
        client = StreamClient("http://example.test/s", reactor=Clock(),
                              http=StubTreq(Burst(50)))
        result = client.start(limit=limit).result
        assert (result.count, result.reason, result.last_id) == (limit, "limit", str(limit))
        assert [r.data for r in client.queue.get_nowait()] == list(range(1, limit + 1))
        assert client.state.counter == limit


def test_a_full_queue_holds_the_rest_of_a_chunk_and_drops_nothing():
    from streamd.client import MemoryQueue

    # The body's end comes in the same chunk: without a limit the run still hands
    # over everything before it ends.
    for limit, reason in ((10, "limit"), (None, "ended")):
        client = StreamClient("http://example.test/s", reactor=Clock(),
                              http=StubTreq(Burst(10)), queue=MemoryQueue(maxsize=3))
        done = client.start(limit=limit)
        assert len(client.queue) == 3 and client.connector.paused  # transport paused, 7 held
        got = []
        while not done.called:
            got.append(client.queue.get().result.data)
        got.extend(r.data for r in client.queue.get_nowait())
        assert got == list(range(1, 11))
        assert (done.result.count, done.result.reason) == (10, reason)
