"""
moto's SQS server as pytest fixtures (L{streamd.testing.sqs.MotoServer}, started once
per session on a free port).

Import the fixtures into a test module (C{from sqs_server import moto, queue}).
moto does not check signatures, so any keys do; tests that need signing checked
use the SigV4 test vectors instead (tests/unit/test_aws.py).
"""

from __future__ import annotations

import pytest

from streamd.testing.sqs import MotoServer


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def queue(moto) -> str:
    """A fresh standard queue's URL."""
    return moto.create_queue()
