"""Helpers of tests that test_client.py shared."""

import dataclasses

from twisted.internet import reactor

from streamd.client import (
    Backoff,
    StreamClient,
)
from streamd.testing import FakeSource

FAST = Backoff(initial=0.02, maximum=0.1)


def make_client(server, path: str, **options) -> StreamClient:
    options.setdefault("backoff", FAST)
    return StreamClient(server.url + path, reactor=reactor, **options)


def add_fake_source(server, name: str, **stream_keys) -> FakeSource:
    """A durable fake source (it records acks and nacks) served as stream C{name}."""
    source = FakeSource(name)
    server.service.add(name, source, dataclasses.replace(
        server.service.settings.dynamic_stream(name), **stream_keys))
    return source


def the_stream(server):
    (stream,) = server.app.open_streams
    return stream


def ids(records) -> list[str]:
    return [r.id for r in records]
