"""
The broker of several workers without processes: one parent L{Broker} and two
L{BrokerClient}s joined by in-memory AMP connections (Twisted's iosim), on a Clock.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim

from streamd.errors import InvalidRequest
from streamd.framing import NDJSON
from streamd.stream import Stream
from streamd.testing import FakeRequest, Recorder
from streamd.workers.broker import Broker, BrokerProtocol
from streamd.workers.gather import merge_metrics
from streamd.workers.remote import BrokerClient
from tests.support.web import settings


class Parent:
    def __init__(self, **top) -> None:
        self.clock = Clock()
        self.broker = Broker(settings(store={"backend": "memory"}, **top), self.clock)
        self.pumps: list[iosim.IOPump] = []

    def worker(self, index: int) -> BrokerClient:
        client, _, pump = iosim.connectedServerAndClient(
            lambda: BrokerProtocol(self.broker), lambda: BrokerClient(index, self.clock))
        self.pumps.append(pump)
        hello = defer.ensureDeferred(client.hello())
        self.run()
        assert hello.called and index in self.broker.workers
        return client

    def run(self) -> None:
        """Let every message cross and every coalesced batch go out, until all is quiet."""
        for _ in range(50):
            self.clock.advance(0)
            moved = [pump.pump() for pump in self.pumps]
            if not any(moved) and not self.clock.getDelayedCalls():
                return


def test_a_publish_over_64_kib_crosses_whole_to_a_reader_on_another_worker():
    parent = Parent()
    a, b = parent.worker(0), parent.worker(1)
    reader = Recorder()
    reader.attach(b.memory_source("news"))
    parent.run()
    payloads = [json.dumps({"n": n, "pad": "x" * 2000}).encode() for n in range(3000)]
    ids = a.memory_source("news").publish(payloads)
    parent.run()
    assert ids.result == [str(n) for n in range(1, 3001)]
    assert reader.ids() == [str(n) for n in range(1, 3001)]
    assert reader.data() == payloads


def test_a_resume_racing_live_batches_has_no_gap_and_no_duplicate():
    parent = Parent()
    a, b = parent.worker(0), parent.worker(1)
    live = Recorder()
    live.attach(b.memory_source("news"))
    parent.run()
    for n in range(5):
        a.memory_source("news").publish([b'{"n": %d}' % n])
    parent.clock.advance(0)  # batches on their way to worker b, not there yet
    resumed = Recorder()
    resumed.attach(b.memory_source("news"), since="2")
    a.memory_source("news").publish([b'{"n": 5}'])
    parent.run()
    assert live.ids() == ["1", "2", "3", "4", "5", "6"]
    assert resumed.ids() == ["3", "4", "5", "6"]
    assert resumed.gaps == []


def test_a_resume_past_the_buffer_says_how_much_was_missed():
    parent = Parent(buffer=2)
    a, b = parent.worker(0), parent.worker(1)
    a.memory_source("news").publish([b"1", b"2", b"3", b"4"])
    parent.run()
    resumed = Recorder()
    resumed.attach(b.memory_source("news"), since="0")
    parent.run()
    assert resumed.gaps == [{"since": "0", "missed": 2, "reason": "no longer buffered"}]
    assert resumed.ids() == ["3", "4"]
    with pytest.raises(InvalidRequest):
        Recorder().attach(b.memory_source("news"), since="x")


def test_a_worker_without_readers_gets_no_batches():
    parent = Parent()
    a, b = parent.worker(0), parent.worker(1)
    reader = Recorder()
    sub = reader.attach(b.memory_source("news"))
    parent.run()
    source = parent.broker.sources["news"]
    assert len(source.subscribers) == 1
    sub.cancel()
    parent.run()
    assert source.subscribers == set()
    a.memory_source("news").publish([b"1"])
    parent.run()
    assert reader.ids() == []


def test_a_worker_that_goes_leaves_no_subscriber_behind():
    parent = Parent()
    parent.worker(0)
    b = parent.worker(1)
    Recorder().attach(b.memory_source("news"))
    parent.run()
    b.transport.loseConnection()
    parent.run()
    assert parent.broker.sources["news"].subscribers == set()
    assert 1 not in parent.broker.workers


def test_channel_values_and_changes_reach_every_worker():
    parent = Parent()
    a, b = parent.worker(0), parent.worker(1)
    heard = []
    b.channels.watch("X", lambda name, value: heard.append(value))
    a.channels.set("X", b"2")
    parent.run()
    assert b.channels.get("X") == b"2" and heard == [b"2"]
    late = parent.worker(2)  # a worker started later gets the values at once
    assert late.channels.get("X") == b"2"


def test_metrics_of_the_workers_are_summed():
    texts = []
    for n in (3, 4):
        registry = CollectorRegistry()
        Counter("streamd_messages_in", "in", ["stream"], registry=registry).labels("a").inc(n)
        Histogram("streamd_publish_seconds", "t", registry=registry).observe(0.001 * n)
        texts.append(generate_latest(registry))
    merged = {f.name: f for f in text_string_to_metric_families(merge_metrics(texts).decode())}
    total = [s for s in merged["streamd_messages_in"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in total] == [({"stream": "a"}, 7.0)]
    count = [s.value for s in merged["streamd_publish_seconds"].samples
             if s.name == "streamd_publish_seconds_count"]
    assert count == [2.0]
    assert not [s for f in merged.values() for s in f.samples if s.name.endswith("_created")]


def test_a_reader_that_saw_its_stream_open_gets_what_is_published_next_on_any_worker():
    # The head is what tells a client its stream is open: a worker sends it only once
    # the parent has this reader, or a publish answered just after it, on another worker,
    # reached the parent first and missed the reader (a reconnect storm lost some so).
    parent = Parent()
    a, b = parent.worker(0), parent.worker(1)
    request = FakeRequest()
    stream = Stream(request, b.memory_source("news"), NDJSON, parent.clock)
    stream.start()
    assert request.producer is None and request.writes == []  # no head yet
    while not request.writes:  # until the head: the parent answered
        parent.clock.advance(0)
        assert any([pump.pump() for pump in parent.pumps]), "the parent never answered"
    a.memory_source("news").publish([b'{"n": 1}'])
    parent.run()
    assert [json.loads(line)["data"] for line in request.lines()] == [{"n": 1}]
    assert request.producer is stream
