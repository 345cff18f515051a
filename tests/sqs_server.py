"""
moto's SQS server, started by the test suite in a subprocess on a free port.

Import the fixtures into a test module (C{from sqs_server import moto, queue}).
moto does not check signatures, so any keys do; tests that need signing checked
use the SigV4 test vectors instead (tests/test_aws.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """One moto server process: C{endpoint}, and a boto3 client for test setup."""

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
        for line in self.proc.stderr:  # type: ignore[union-attr]
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
        ids = []
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


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def queue(moto) -> str:
    """A fresh standard queue's URL."""
    return moto.create_queue()
