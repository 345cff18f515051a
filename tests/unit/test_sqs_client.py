"""
streamd.sqs.client: unit tests over treq's StubTreq with a scripted SQS and a Clock
(no sleeps), then the real thing against moto's server.
"""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ParamValidationError
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from streamd.sqs.aws import Credentials, SQSError, SQSProtocol
from streamd.sqs.client import MARGIN, SQSClient
from streamd.testing.sqs import fired
from tests.support.sqs_server import moto, queue  # noqa: F401  (fixtures)

QURL = "https://sqs.us-east-1.amazonaws.com/123456789012/orders"


class ScriptedSQS(Resource):
    """Answers each operation with the next scripted (status, body), else 200 {}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list] = {}
        self.seen: list[tuple[str, dict, dict]] = []
        self.hanging: list = []

    def render_POST(self, request):
        op = request.getHeader("x-amz-target").split(".")[1]
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((op, json.loads(request.content.read()), headers))
        status, body = (self.script.get(op) or [(200, {})]).pop(0) \
            if self.script.get(op) else (200, {})
        if status is None:  # never answer
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        request.setHeader("content-type", "application/x-amz-json-1.0")
        return json.dumps(body).encode()

    def ops(self) -> list[str]:
        return [op for op, _, _ in self.seen]


def error(code: str) -> dict:
    return {"__type": f"com.amazonaws.sqs#{code}", "message": f"{code} happened"}


@pytest.fixture
def fake():
    sqs = ScriptedSQS()
    clock = Clock()
    client = SQSClient(StubTreq(sqs), SQSProtocol("us-east-1"),
                       Credentials.static("AKIDTEST", "secret"), clock,
                       random=lambda: 1.0, base_delay=0.1, max_attempts=4)
    return sqs, clock, client


def run(coro):
    return ensureDeferred(coro)


def test_receive_sends_a_signed_long_poll_and_returns_messages(fake):
    sqs, clock, client = fake
    sqs.script["ReceiveMessage"] = [(200, {"Messages": [
        {"MessageId": "m1", "ReceiptHandle": "r1", "Body": '{"n": 1}'}]})]
    msgs = fired(run(client.receive(QURL, max_messages=7, wait=20, visibility=45,
                                     system_attributes=["SentTimestamp"])))
    assert [m["MessageId"] for m in msgs] == ["m1"]
    op, params, headers = sqs.seen[0]
    assert params == {"QueueUrl": QURL, "MaxNumberOfMessages": 7, "WaitTimeSeconds": 20,
                      "VisibilityTimeout": 45, "MessageAttributeNames": ["All"],
                      "MessageSystemAttributeNames": ["SentTimestamp"]}
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")


def test_throttling_and_5xx_are_retried_with_growing_delays(fake):
    sqs, clock, client = fake
    sqs.script["ReceiveMessage"] = [(500, {}), (400, error("ThrottlingException")),
                                    (200, {"Messages": []})]
    d = run(client.receive(QURL, wait=0))
    assert sqs.ops() == ["ReceiveMessage"]
    clock.advance(0.099)
    assert len(sqs.seen) == 1  # still backing off: 0.1 s after the first failure
    clock.advance(0.001)
    assert len(sqs.seen) == 2
    clock.advance(0.199)
    assert len(sqs.seen) == 2  # the second delay doubles
    clock.advance(0.001)
    assert fired(d) == [] and len(sqs.seen) == 3


def test_jitter_scales_the_delay():
    client = SQSClient(None, None, None, Clock(), base_delay=1.0, max_delay=4.0,
                       random=lambda: 0.25)
    assert [client.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_missing_queue_is_not_retried(fake):
    sqs, clock, client = fake
    sqs.script["ReceiveMessage"] = [(400, error("QueueDoesNotExist"))]
    with pytest.raises(SQSError) as e:
        fired(run(client.receive(QURL)))
    assert e.value.code == "QueueDoesNotExist" and e.value.unusable
    assert len(sqs.seen) == 1


def test_gives_up_after_max_attempts(fake):
    sqs, clock, client = fake
    sqs.script["DeleteMessageBatch"] = [(503, {})] * 10
    d = run(client.delete_batch(QURL, ["h"]))
    clock.pump([1.0] * 10)
    with pytest.raises(SQSError) as e:
        fired(d)
    assert e.value.status == 503 and len(sqs.seen) == 4


def test_a_poll_that_never_answers_times_out_after_the_wait_and_is_retried(fake):
    sqs, clock, client = fake
    sqs.script["ReceiveMessage"] = [(None, None), (200, {"Messages": []})]
    d = run(client.receive(QURL, wait=20))
    clock.advance(20 + MARGIN - 0.1)
    assert len(sqs.seen) == 1 and not d.called  # a long poll is not a timeout
    clock.advance(0.1)  # the timeout: now the first backoff
    assert len(sqs.seen) == 1
    clock.advance(0.1001)
    assert len(sqs.seen) == 2
    assert fired(d) == []


def test_bad_parameters_send_nothing(fake):
    sqs, clock, client = fake
    with pytest.raises(ParamValidationError):
        fired(run(client.receive(QURL, max_messages="ten")))
    assert sqs.seen == []


def test_cancel_stops_without_retrying(fake):
    sqs, clock, client = fake
    sqs.script["ReceiveMessage"] = [(None, None)]
    d = run(client.receive(QURL))
    d.cancel()
    with pytest.raises(CancelledError):
        fired(d)
    clock.advance(100)
    assert len(sqs.seen) == 1


def test_batches_go_ten_at_a_time_and_report_failures(fake):
    sqs, clock, client = fake
    sqs.script["DeleteMessageBatch"] = [
        (200, {"Successful": [], "Failed": [{"Id": "3", "Code": "ReceiptHandleIsInvalid",
                                             "SenderFault": True}]}),
        (200, {}), (200, {"Failed": [{"Id": "22", "Code": "X", "SenderFault": True}]}),
    ]
    handles = [f"h{i}" for i in range(23)]
    assert fired(run(client.delete_batch(QURL, handles))) == ["h3", "h22"]
    sizes = [len(p["Entries"]) for _, p, _ in sqs.seen]
    assert sizes == [10, 10, 3]
    assert sqs.seen[2][1]["Entries"][2] == {"Id": "22", "ReceiptHandle": "h22"}


def test_send_batch_returns_ids_in_order_and_failures(fake):
    sqs, clock, client = fake
    sqs.script["SendMessageBatch"] = [(200, {
        "Successful": [{"Id": "1", "MessageId": "b", "MD5OfMessageBody": "x"},
                       {"Id": "0", "MessageId": "a", "MD5OfMessageBody": "x"}],
        "Failed": [{"Id": "2", "Code": "InvalidMessageContents", "SenderFault": True,
                    "Message": "bad"}],
    })]
    out = fired(run(client.send_batch(QURL, [{"MessageBody": "1"}, {"MessageBody": "2"},
                                              {"MessageBody": "3"}])))
    assert out[:2] == ["a", "b"]
    assert isinstance(out[2], SQSError) and out[2].code == "InvalidMessageContents"


# -- against moto's server -------------------------------------------------------------












def test_send_batch_respects_the_size_limit_too(fake):
    sqs, clock, client = fake
    sqs.script["SendMessageBatch"] = [
        (200, {"Successful": [{"Id": "0", "MessageId": "a", "MD5OfMessageBody": "x"},
                              {"Id": "1", "MessageId": "b", "MD5OfMessageBody": "x"}]}),
        (200, {"Successful": [{"Id": "2", "MessageId": "c", "MD5OfMessageBody": "x"}]}),
    ]
    big = json.dumps("x" * 100_000)
    out = fired(run(client.send_batch(QURL, [{"MessageBody": big}] * 3)))
    assert out == ["a", "b", "c"]
    assert [[e["Id"] for e in p["Entries"]] for _, p, _ in sqs.seen] == [["0", "1"], ["2"]]


def test_errors_never_carry_credential_values():
    sqs = ScriptedSQS()
    client = SQSClient(StubTreq(sqs), SQSProtocol("us-east-1"),
                       Credentials.static("AKIDTEST", "s3cr3t-key", "s3ss10n-tok"), Clock())
    sqs.script["ReceiveMessage"] = [
        (403, {"__type": "com.amazonaws.sqs#SignatureDoesNotMatch",
               "message": "canonical request: x-amz-security-token:s3ss10n-tok"}),
    ]
    sqs.script["GetQueueAttributes"] = [
        (400, {"__type": "com.amazonaws.sqs#InvalidParameterValue",
               "message": "odd value s3cr3t-key"}),
    ]
    for d in (run(client.receive(QURL)), run(client.queue_attributes(QURL))):
        with pytest.raises(SQSError) as e:
            fired(d)
        text = str(e.value) + e.value.message
        assert "s3ss10n-tok" not in text and "s3cr3t-key" not in text


def test_error_messages_never_carry_credentials_but_stay_readable():
    from types import SimpleNamespace

    from streamd.sqs.aws import SQSError
    from streamd.sqs.client import scrub

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    e = SQSError("AccessDenied", f"no access for key {secret} here", 403)
    scrub(e, SimpleNamespace(secret_key=secret, token=None))
    assert secret not in str(e) and "(hidden)" in str(e)
    # A demo secret of one letter is not searched for: the message stays readable.
    e = SQSError("QueueDoesNotExist", "The specified queue does not exist.", 400)
    scrub(e, SimpleNamespace(secret_key="x", token=None))
    assert str(e) == "QueueDoesNotExist: The specified queue does not exist."




def test_the_documented_example_runs():
    import doctest

    import streamd.testing.sqs

    assert doctest.testmod(streamd.testing.sqs).failed == 0
