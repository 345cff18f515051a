"""The tests of test_filters.py that need other processes (moved from it)."""

import pytest_twisted

from tests.support.sqs_server import moto, queue  # noqa: F401  (fixtures)
from tests.support.web import open_stream, publish, settings, wait_until

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_filters_on_an_sqs_queue_stream_lose_nothing(serve, moto, queue,  # noqa: F811
                                                           monkeypatch):
    """
    Queue delivery: each client's filter decides which messages it may take; a message
    one client rejects goes to another, and every message is delivered and deleted once.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = await serve(settings({"jobs": {
        "source": "sqs", "queue_url": queue, "endpoint_url": moto.endpoint,
        "region": "us-east-1", "wait_time_seconds": 1, "fields": ["kind"]}}))
    url = server.url + "/streams/jobs"
    a = await open_stream(url + "?where.kind=a")
    b = await open_stream(url + "?where.kind=b&track=urgent")
    await server.wait_open_streams(2)
    sent = [{"kind": "a", "n": i} for i in range(6)] + [{"kind": "b", "n": i, "t": "urgent"}
                                                        for i in range(6)]
    await publish(url + "/messages", *sent)
    await a.wait_for(6)
    await b.wait_for(6)
    assert sorted(m["data"]["n"] for m in a.messages()) == list(range(6))
    assert {m["data"]["kind"] for m in a.messages()} == {"a"}
    assert {m["data"]["kind"] for m in b.messages()} == {"b"}
    # All twelve were deleted: nothing visible, nothing in flight.
    await wait_until(lambda: moto.counts(queue) == (0, 0), 15, interval=0.1)
    a.close()
    b.close()
