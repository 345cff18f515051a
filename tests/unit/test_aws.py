"""
streamd.sqs.aws: signing checked against AWS's published SigV4 test suite and an
independent recomputation (moto accepts any signature, so it cannot prove this),
parameter validation before sending, error parsing, credentials off the reactor thread.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from botocore.awsrequest import AWSRequest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ParamValidationError
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed

from streamd.sqs.aws import (
    Credentials,
    FrozenCredentials,
    NoCredentials,
    SQSError,
    SQSProtocol,
    _Signer,
    region_of,
)
from streamd.testing.sqs import fired

# The AWS SigV4 test suite's fixed inputs (aws-sig-v4-test-suite, 2015-08-30).
SUITE_KEY = FrozenCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime.datetime(2015, 8, 30, 12, 36, 0)
SUITE_SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


def suite_sign(method, url, headers=None, body=b""):
    req = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    _Signer(SUITE_KEY, "service", "us-east-1").sign(req, SUITE_TIME)
    return req.headers["Authorization"]


@pytest.mark.parametrize(
    "name, method, url, headers, body, signed, signature",
    [
        ("get-vanilla", "GET", "https://example.amazonaws.com/", {}, b"", "host;x-amz-date",
         "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-vanilla-query-order-key-case", "GET",
         "https://example.amazonaws.com/?Param2=value2&Param1=value1", {}, b"",
         "host;x-amz-date",
         "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("post-vanilla", "POST", "https://example.amazonaws.com/", {}, b"",
         "host;x-amz-date",
         "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        ("post-x-www-form-urlencoded", "POST", "https://example.amazonaws.com/",
         {"Content-Type": "application/x-www-form-urlencoded"}, b"Param1=value1",
         "content-type;host;x-amz-date",
         "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ],
)
def test_aws_sigv4_test_suite(name, method, url, headers, body, signed, signature):
    headers = {"Host": "example.amazonaws.com", **headers}
    assert suite_sign(method, url, headers, body) == (
        f"AWS4-HMAC-SHA256 Credential={SUITE_SCOPE}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def recompute(req, secret: str, region: str, signed_names: list[str]) -> str:
    """SigV4 from the spec, by hand: what AWS itself computes on arrival."""
    amz_date = req.headers["X-Amz-Date"]
    lower = {k.lower(): v for k, v in req.headers.items()}
    lower.setdefault("host", urlsplit(req.url).netloc)
    canonical = "\n".join([
        req.method, urlsplit(req.url).path or "/", "",
        "".join(f"{n}:{' '.join(lower[n].split())}\n" for n in signed_names),
        ";".join(signed_names),
        hashlib.sha256(req.body).hexdigest(),
    ])
    scope = f"{amz_date[:8]}/{region}/sqs/aws4_request"
    to_sign = "\n".join([
        "AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()
    ])
    key = _hmac(("AWS4" + secret).encode(), amz_date[:8])
    for part in (region, "sqs", "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_sqs_request_signature_matches_an_independent_recomputation():
    now = datetime.datetime(2026, 11, 26, 3, 4, 5, tzinfo=datetime.timezone.utc)
    proto = SQSProtocol("eu-west-1", now=lambda: now)
    creds = FrozenCredentials("AKIDTEST", "c2VjcmV0/example+key", "session-token-value")
    req = proto.build("ReceiveMessage", {
        "QueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
        "MaxNumberOfMessages": 10, "WaitTimeSeconds": 20,
    }, creds)
    assert req.method == "POST"
    assert req.url == "https://sqs.eu-west-1.amazonaws.com/"
    assert req.headers["X-Amz-Target"] == "AmazonSQS.ReceiveMessage"
    assert req.headers["Content-Type"] == "application/x-amz-json-1.0"
    assert req.headers["X-Amz-Date"] == "20261126T030405Z"
    assert req.headers["X-Amz-Security-Token"] == "session-token-value"
    assert json.loads(req.body)["MaxNumberOfMessages"] == 10
    auth = req.headers["Authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    # The token, the target and the body's type are covered by the signature.
    assert {"host", "x-amz-date", "x-amz-security-token", "x-amz-target",
            "content-type"} <= set(signed)
    assert auth.startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDTEST/20261126/eu-west-1/sqs/aws4_request, "
    )
    assert auth.endswith("Signature=" + recompute(req, creds.secret_key, "eu-west-1", signed))


def test_credentials_never_shown():
    creds = FrozenCredentials("AKIDTEST", "topsecret", "tok")
    req = SQSProtocol("us-east-1").build(
        "DeleteMessage", {"QueueUrl": "https://q", "ReceiptHandle": "h"}, creds
    )
    for text in (repr(creds), str(creds), repr(req)):
        assert "topsecret" not in text and "tok" not in text and "AKIDTEST" not in text


@pytest.mark.parametrize("params", [
    {"QueueUrl": "https://q", "MaxNumberOfMessages": "ten"},
    {"MaxNumberOfMessages": 10},
    {"QueueUrl": "https://q", "NoSuchParameter": 1},
])
def test_bad_parameters_raise_before_sending(params):
    with pytest.raises(ParamValidationError):
        SQSProtocol("us-east-1").build("ReceiveMessage", params, SUITE_KEY)


def test_endpoint_override_and_region_from_queue_url():
    proto = SQSProtocol("us-east-1", "http://127.0.0.1:5000")
    req = proto.build("GetQueueUrl", {"QueueName": "x"}, SUITE_KEY)
    assert req.url == "http://127.0.0.1:5000/"
    assert region_of("https://sqs.ap-south-1.amazonaws.com/1/q") == "ap-south-1"
    assert region_of("http://localhost:4566/000000000000/q") is None


def test_parse_answer_and_errors():
    proto = SQSProtocol("us-east-1")
    ok = proto.parse("ReceiveMessage", 200, {}, json.dumps(
        {"Messages": [{"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}]}).encode())
    assert ok == {"Messages": [{"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}"}]}

    with pytest.raises(SQSError) as e:
        proto.parse("ReceiveMessage", 400, {
            "x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"
        }, b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "gone"}')
    assert e.value.code == "QueueDoesNotExist"
    assert e.value.unusable and not e.value.retryable

    with pytest.raises(SQSError) as e:
        proto.parse("ReceiveMessage", 400, {},
                    b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "slow"}')
    assert e.value.retryable and not e.value.unusable

    with pytest.raises(SQSError) as e:
        proto.parse("ReceiveMessage", 503, {}, b"<html>Service Unavailable</html>")
    assert e.value.retryable and e.value.status == 503


def _refreshable(expiry, now, refresh):
    return RefreshableCredentials(
        "AKID1", "secret1", "token1", expiry, refresh, "test", time_fetcher=lambda: now[0]
    )


def test_credentials_resolved_off_thread_once_and_refreshed_before_expiry():
    ran_blocking = []

    def run_blocking(f):
        ran_blocking.append(f)
        return succeed(f())

    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    now = [t0]
    refreshed = []

    def refresh():
        refreshed.append(now[0])
        return {"access_key": "AKID2", "secret_key": "secret2", "token": "token2",
                "expiry_time": (now[0] + datetime.timedelta(hours=1)).isoformat()}

    source = _refreshable(t0 + datetime.timedelta(hours=1), now, refresh)
    creds = Credentials(run_blocking, lambda: source)

    first = fired(ensureDeferred(creds.get()))
    assert (first.access_key, first.token) == ("AKID1", "token1")
    assert len(ran_blocking) == 1
    fired(ensureDeferred(creds.get()))
    assert len(ran_blocking) == 1  # still fresh: no thread, no resolution

    now[0] = t0 + datetime.timedelta(minutes=50)  # inside the 15-minute advisory window
    second = fired(ensureDeferred(creds.get()))
    assert second.access_key == "AKID2" and len(ran_blocking) == 2
    assert refreshed == [now[0]]


def test_concurrent_requests_share_one_resolution():
    pending: list[Deferred] = []
    resolved = []

    def run_blocking(f):
        d = Deferred()
        pending.append((d, f))
        return d

    creds = Credentials(run_blocking, lambda: resolved.append(1) or _static())
    a = ensureDeferred(creds.get())
    b = ensureDeferred(creds.get())
    a.cancel()  # one abandoned request must not fail the other
    assert a.result.check(CancelledError)
    a.addErrback(lambda _: None)  # seen: not left for the garbage collector to log
    assert len(pending) == 1
    d, f = pending[0]
    d.callback(f())
    assert b.result.access_key == "AKIDS"
    assert resolved == [1]


def _static():
    from botocore.credentials import Credentials as Static

    return Static("AKIDS", "secretS")


def test_missing_or_failing_credentials_say_so_without_values():
    creds = Credentials(lambda f: succeed(None).addCallback(lambda _: f()), lambda: None)
    d = ensureDeferred(creds.get())
    assert isinstance(d.result.value, NoCredentials)
    d.addErrback(lambda _: None)

    def broken():
        raise RuntimeError("parse error near aws_secret_access_key = hunter2")

    creds = Credentials(lambda f: succeed(None).addCallback(lambda _: f()), broken)
    d = ensureDeferred(creds.get())
    err = d.result.value
    d.addErrback(lambda _: None)
    assert isinstance(err, NoCredentials) and "hunter2" not in str(err)


@pytest_twisted.ensureDeferred
async def test_standard_chain_reads_shared_credentials_file_in_a_thread(
        tmp_path, monkeypatch):
    from twisted.internet import reactor

    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = AKIDFILE0\n"
                    "aws_secret_access_key = s0\n"
                    "[team]\naws_access_key_id = AKIDFILE1\naws_secret_access_key = s1\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    creds = await Credentials.from_chain(reactor, profile="team").get()
    assert (creds.access_key, creds.secret_key) == ("AKIDFILE1", "s1")
