"""
streamd.testing.conformance run against streamd's own durable queue sources, with their
real servers: a private redis-server (redis-list, redis-stream with a group) and moto
(sqs). The amqp source runs it in tests/integration/test_amqp.py.
"""

from __future__ import annotations

import uuid

import pytest
from twisted.internet import reactor

from streamd import config
from streamd.sources import Services, make_source
from streamd.testing.conformance import SourceConformance, SourceHarness
from streamd.testing.redis import redis_fixture  # noqa: F401  (fixture)
from tests.support.sqs_server import moto  # noqa: F401  (fixture)


class ConfigHarness(SourceHarness):
    """A source built from a stream table, as streamd builds it."""

    def __init__(self, table: dict, top: dict | None = None, in_flight: int = 1) -> None:
        self.settings = config.load_settings({"streams": {"conformance": table}, **(top or {})}, {})
        self.in_flight = in_flight

    async def make(self):
        services = Services(reactor=reactor, settings=self.settings)
        source = make_source(self.settings.streams["conformance"], services)
        await source.start()
        return source


class TestRedisList(SourceConformance):
    @pytest.fixture
    def source_harness(self, redis):  # noqa: F811
        return ConfigHarness(
            {"source": "redis-list", "key": f"conf-{uuid.uuid4().hex}", "instance": "conf",
             "block": 0.2, "batch": 5},
            {"redis": {"url": redis.url}}, in_flight=5)


class TestRedisStreamGroup(SourceConformance):
    @pytest.fixture
    def source_harness(self, redis):  # noqa: F811
        return ConfigHarness(
            {"source": "redis-stream", "key": f"conf-{uuid.uuid4().hex}", "group": "g",
             "instance": "conf", "block": 0.2, "batch": 5, "start": "0"},
            {"redis": {"url": redis.url}}, in_flight=5)


class TestSQS(SourceConformance):
    @pytest.fixture
    def source_harness(self, moto, monkeypatch):  # noqa: F811
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        return ConfigHarness(
            {"source": "sqs", "queue_url": moto.create_queue(), "endpoint_url": moto.endpoint,
             "region": "us-east-1", "wait_time_seconds": 1, "max_messages": 5,
             # A long poll abandoned at stop() may still take a message (SQS, like
             # moto, answers it anyway): it comes back after this many seconds.
             "visibility_timeout": 2},
            in_flight=5)
