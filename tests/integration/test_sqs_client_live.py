"""The tests of test_sqs_client.py that need other processes (moved from it)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from streamd.sqs.aws import SQSError
from streamd.sqs.client import SQSClient
from tests.support.sqs_server import moto, queue  # noqa: F401  (fixtures)


def real_client(moto, queue_url):  # noqa: F811
    from twisted.internet import reactor

    return SQSClient.connect(reactor, queue_url, "us-east-1", moto.endpoint), reactor
@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")



@pytest_twisted.ensureDeferred
async def test_round_trip_against_moto(moto, queue, aws_env):  # noqa: F811
    client, reactor = real_client(moto, queue)
    ids = await client.send_batch(queue, [{"MessageBody": json.dumps({"n": i})}
                                          for i in range(12)])
    assert len(ids) == 12 and all(isinstance(i, str) for i in ids)

    got = []
    while len(got) < 12:
        batch = await client.receive(queue, max_messages=10, wait=1, visibility=30,
                                     system_attributes=["ApproximateReceiveCount"])
        assert batch, "moto lost messages"
        got.extend(batch)
    assert sorted(m["MessageId"] for m in got) == sorted(ids)
    assert moto.counts(queue) == (0, 12)

    handles = [m["ReceiptHandle"] for m in got]
    assert await client.change_visibility_batch(queue, handles[:2], 0) == []
    assert await client.delete_batch(queue, handles[2:]) == []
    assert moto.counts(queue) == (2, 0)

    again = await client.receive(queue, wait=1)
    assert {m["MessageId"] for m in again} == {got[0]["MessageId"], got[1]["MessageId"]}


@pytest_twisted.ensureDeferred
async def test_long_poll_on_an_empty_queue_waits_instead_of_spinning(moto, queue, aws_env):  # noqa: F811
    # One long poll answered empty, not a loop of short ones (that the request carries
    # WaitTimeSeconds is tests/unit/test_sqs_client.py's, on a Clock).
    client, reactor = real_client(moto, queue)
    assert await client.receive(queue, wait=1) == []
    assert client.calls["ReceiveMessage"] == 1


@pytest_twisted.ensureDeferred
async def test_missing_queue_against_moto(moto, aws_env):  # noqa: F811
    client, reactor = real_client(moto, moto.endpoint + "/123456789012/nope")
    with pytest.raises(SQSError) as e:
        await client.queue_attributes(moto.endpoint + "/123456789012/nope")
    assert e.value.unusable


@pytest_twisted.ensureDeferred
async def test_pooled_connections_log_nothing(moto, queue, aws_env):  # noqa: F811
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client, reactor = real_client(moto, queue)
        await client.queue_attributes(queue)
        await client.send_batch(queue, [{"MessageBody": "1"}])
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert client.calls["SendMessageBatch"] == 1
    assert not [e for e in events if "factory" in (e.get("log_format") or "")]
