"""
Fakes for code that uses streamd's SQS client, as C{treq.testing} is for treq's users:
L{FakeSQS}, a queue in memory with the calls of L{streamd.sqs.client.SQSClient}, for
unit tests on a C{Clock} (no network, no sleeps); L{MotoServer}, moto's SQS server in a
subprocess on a free port, for integration tests (it needs C{moto[server]} and
C{boto3}); and L{fired}, the result of a Deferred that has already fired.

A unit test of code that receives, hands a L{FakeSQS} where it would take the client::

    >>> from streamd.testing.sqs import FakeSQS, fired
    >>> sqs = FakeSQS()
    >>> sqs.put('{"order": 1}')
    ['m1']
    >>> [m] = fired(sqs.receive("https://sqs.us-east-1.amazonaws.com/1/orders"))
    >>> m["Body"], sqs.counts()  # counts: (visible, in flight)
    ('{"order": 1}', (0, 1))
    >>> fired(sqs.delete_batch("https://sqs.us-east-1.amazonaws.com/1/orders",
    ...                        [m["ReceiptHandle"]]))  # the handles not deleted
    []
    >>> sqs.deleted, sqs.counts()
    (['m1'], (0, 0))

The SQS source takes it the same way: C{SQSSource(name, settings, FakeSQS(), Clock())}.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from streamd.sqs.aws import SQSError


def fired(d: Deferred):
    """The result of a Deferred that must already have fired (raises its failure)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FakeSQS:
    """
    One SQS queue in memory behind the methods of L{streamd.sqs.client.SQSClient}
    (each returns a Deferred; the queue URL is ignored).

    Long polls on an empty queue stay pending until L{put} (like SQS answering a long
    poll early); visibility timeouts do not expire by themselves: call L{expire} where
    SQS would offer the messages again. Message ids are C{m1}, C{m2}, ... in order.

    @ivar calls: requests by operation name (C{ReceiveMessage}, ...).
    @ivar waits: the C{wait} (WaitTimeSeconds) of every receive.
    @ivar deleted: ids of the messages deleted; C{released}: made visible again
        (visibility 0); C{extended}: C{(id, seconds)} of every other visibility change.
    @ivar sent: the entries of every send_batch.
    @ivar error: an L{SQSError} that receive and queue_attributes fail with, if set.
    """

    def __init__(self) -> None:
        self.visible: deque[dict[str, Any]] = deque()
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.polls: list[tuple[Deferred, int]] = []
        self.waits: list[int] = []  # WaitTimeSeconds of every receive
        self.deleted: list[str] = []
        self.released: list[str] = []
        self.extended: list[tuple[str, int]] = []
        self.sent: list[dict[str, Any]] = []
        self.error: SQSError | None = None
        self._seq = 0
        self._receipts = 0

    # -- test side -------------------------------------------------------------------

    def put(self, *bodies: str, **extra: Any) -> list[str]:
        """Queue messages (C{extra}: e.g. C{MessageAttributes}); returns their ids."""
        ids = []
        for body in bodies:
            self._seq += 1
            mid = f"m{self._seq}"
            self.visible.append({"MessageId": mid, "Body": body, "count": 0, **extra})
            ids.append(mid)
        self._serve()
        return ids

    def expire(self) -> None:
        """Every in-flight message becomes visible again (its timeout ran out)."""
        for raw in self.in_flight.values():
            self.visible.append(raw)
        self.in_flight.clear()
        self._serve()

    def _serve(self) -> None:
        while self.polls and self.visible:
            d, n = self.polls.pop(0)
            d.callback(self._take(n))

    def _take(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while self.visible and len(out) < n:
            raw = self.visible.popleft()
            raw["count"] += 1
            self._receipts += 1
            handle = f"{raw['MessageId']}#{self._receipts}"
            self.in_flight[handle] = raw
            attrs = {"ApproximateReceiveCount": str(raw["count"]), "SentTimestamp": "1000"}
            out.append({"MessageId": raw["MessageId"], "ReceiptHandle": handle,
                        "Body": raw["Body"], "Attributes": attrs,
                        "MessageAttributes": raw.get("MessageAttributes", {})})
        return out

    # -- the client's API ----------------------------------------------------------

    def receive(self, queue_url, *, max_messages=10, wait=20, visibility=None,
                message_attributes=("All",), system_attributes=()):
        self.calls["ReceiveMessage"] += 1
        self.waits.append(wait)
        if self.error is not None:
            return fail(self.error)
        if self.visible or wait == 0:
            return succeed(self._take(max_messages))
        d: Deferred = Deferred(lambda d: self.polls.remove((d, max_messages)))
        self.polls.append((d, max_messages))
        return d

    def delete_batch(self, queue_url, handles):
        self.calls["DeleteMessageBatch"] += 1
        failed = []
        for h in handles:
            raw = self.in_flight.pop(h, None)
            if raw is None:
                failed.append(h)
            else:
                self.deleted.append(raw["MessageId"])
        return succeed(failed)

    def change_visibility_batch(self, queue_url, handles, timeout):
        self.calls["ChangeMessageVisibilityBatch"] += 1
        failed = []
        for h in handles:
            raw = self.in_flight.get(h)
            if raw is None:
                failed.append(h)
            elif timeout == 0:
                del self.in_flight[h]
                self.released.append(raw["MessageId"])
                self.visible.append(raw)
            else:
                self.extended.append((raw["MessageId"], timeout))
        self._serve()
        return succeed(failed)

    def send_batch(self, queue_url, entries):
        self.calls["SendMessageBatch"] += 1
        self.sent.extend(entries)
        return succeed(self.put(*(e["MessageBody"] for e in entries)))

    def queue_attributes(self, queue_url, names=("All",)):
        self.calls["GetQueueAttributes"] += 1
        if self.error is not None:
            return fail(self.error)
        return succeed({})

    def counts(self) -> tuple[int, int]:
        """(visible, in flight), as SQS's approximate counts would say."""
        return len(self.visible), len(self.in_flight)


#: Seconds moto's server may take to start listening.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """
    One moto server process: C{endpoint} (an SQS C{endpoint_url}), and C{sqs}, a boto3
    client for test setup. moto does not check signatures, so any keys do. For
    example, as a pytest fixture::

        @pytest.fixture(scope="session")
        def moto():
            server = MotoServer()
            yield server
            server.stop()

        def test_it(moto):
            queue = moto.create_queue()
            moto.send(queue, ['{"n": 1}'])
            ...  # point the code under test at moto.endpoint
            assert moto.counts(queue) == (0, 0)  # every message deleted
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )
        self._ready = threading.Event()
        self.log: list[bytes] = []
        # Werkzeug says "Running on ..." once it listens; the thread then keeps draining
        # the request log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"moto did not start in {START_TIMEOUT}s: {self.log[-5:]}")
        self.sqs = self.boto3_client()

    def _drain(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None  # opened with stderr=PIPE
        for line in stderr:
            if b"Running on" in line:
                self._ready.set()
            if len(self.log) < 200:
                self.log.append(line)

    def boto3_client(self):
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_queue(self, fifo: bool = False, **attributes) -> str:
        name = "q-" + uuid.uuid4().hex[:12] + (".fifo" if fifo else "")
        if fifo:
            attributes.setdefault("FifoQueue", "true")
        attributes = {k: str(v) for k, v in attributes.items()}
        return self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    def send(self, queue_url: str, bodies, **extra) -> list[str]:
        """Send C{bodies} (strings) in batches of 10; returns the MessageIds in order."""
        ids: list[str] = []
        bodies = list(bodies)
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": b, **extra}
                       for i, b in enumerate(bodies[start:start + 10])]
            answer = self.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            assert not answer.get("Failed"), answer
            ids.extend(m["MessageId"] for m in
                       sorted(answer["Successful"], key=lambda m: int(m["Id"])))
        return ids

    def counts(self, queue_url: str) -> tuple[int, int]:
        """(visible, in flight) as SQS reports them."""
        a = self.sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (int(a["ApproximateNumberOfMessages"]),
                int(a["ApproximateNumberOfMessagesNotVisible"]))

    def receive_all(self, queue_url: str, n: int, seconds: float = 0.0) -> list[dict]:
        """
        Receive up to C{n} messages now, each hidden for 10 minutes so that none comes
        twice; with C{seconds}, long polls go on that long for hidden ones to come back.
        """
        out: list[dict] = []
        deadline = time.monotonic() + seconds
        while len(out) < n:
            got = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=min(10, n - len(out)),
                WaitTimeSeconds=1 if seconds else 0, VisibilityTimeout=600,
            ).get("Messages", [])
            out += got
            if not got and time.monotonic() >= deadline:
                break
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
