"""
Prometheus metrics, recorded where things happen through this one module.

Labels are bounded: a stream label is a declared stream's name, or C{_dynamic} for every
memory stream created on first use (there may be any number of those); there is no
per-client label.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-export)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

DYNAMIC = "_dynamic"


class Tally:
    """A counter child without a lock: incremented on the reactor thread only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyCounter:
    """
    A labelled counter of L{Tally} children, read when scraped. prometheus_client's
    C{Counter} takes a mutex on every C{inc}: per write, per reader, that was 9% of the
    fan-out's CPU.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], Tally] = {}
        registry.register(self)

    def labels(self, *values: str) -> Tally:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Tally()
        return child

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(list(values), child.value)
        yield family

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]


class StreamMetrics:
    """The children of one stream's series, bound once (the hot path only increments)."""

    __slots__ = ("open", "out", "bytes", "pauses", "disconnects", "drops")

    def __init__(self, m: Metrics, stream: str, source: str) -> None:
        self.open = m.open_streams.labels(stream)
        self.out = m.messages_out.labels(stream, source)
        self.bytes = m.bytes_out.labels(stream)
        self.pauses = m.pauses.labels(stream)
        self.disconnects = m.slow_actions.labels(stream, "disconnect")
        self.drops = m.slow_actions.labels(stream, "drop")


class Metrics:
    """Every series streamd exports, in a registry of its own (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._extra: dict[str, Counter] = {}
        self.open_streams = Gauge("streamd_open_streams", "Open client streams",
                                  ["stream"], registry=r)
        self.messages_in = Counter("streamd_messages_in", "Messages taken in from sources "
                                   "or publishers", ["stream", "source"], registry=r)
        self.messages_out = TallyCounter("streamd_messages_out", "Messages written to "
                                         "clients", ["stream", "source"], registry=r)
        self.bytes_out = TallyCounter("streamd_bytes_out", "Bytes of messages written to "
                                      "clients", ["stream"], registry=r)
        self.pauses = Counter("streamd_pauses", "Times a client's stream was paused",
                              ["stream"], registry=r)
        self.slow_actions = Counter("streamd_slow_policy_actions", "Slow-client policy "
                                    "actions (disconnect, or messages dropped)",
                                    ["stream", "action"], registry=r)
        self.source_errors = Counter("streamd_source_errors", "Errors talking to a source",
                                     ["stream", "source"], registry=r)
        self.source_reconnects = Counter("streamd_source_reconnects", "Source reconnections",
                                         ["stream", "source"], registry=r)
        self.sqs_requests = Counter("streamd_sqs_requests", "SQS requests",
                                    ["operation", "outcome"], registry=r)
        self.publish_seconds = Histogram("streamd_publish_seconds", "Time to publish a "
                                         "request's messages", ["stream"], registry=r)
        self.store_seconds = Histogram("streamd_store_seconds", "Event store operation time",
                                       ["operation"], registry=r)

    def counter(self, name: str, documentation: str, labels: list[str]) -> Counter:
        """
        A counter of a source plugin's own (C{streamd_amqp_messages}, ...), created on
        first use and shared by every stream that asks for it by name.
        """
        existing = self._extra.get(name)
        if existing is None:
            existing = self._extra[name] = Counter(name, documentation, labels,
                                                   registry=self.registry)
        return existing

    def for_stream(self, stream: str, source: str) -> StreamMetrics:
        return StreamMetrics(self, stream, source)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ClusterCounters:
    """
    The redirections (C{MOVED}, C{ASK}) and slot-map readings of each Redis Cluster
    connection in C{shared} (a service's L{streamd.sources.Services.shared}), read when
    scraped.
    """

    def __init__(self, shared: dict, registry: CollectorRegistry) -> None:
        self.shared = shared
        registry.register(self)

    def collect(self):
        redirections = CounterMetricFamily(
            "streamd_redis_redirections", "MOVED and ASK replies of a Redis Cluster",
            labels=["connection"])
        refreshes = CounterMetricFamily(
            "streamd_redis_map_refreshes", "Readings of a Redis Cluster's slot map",
            labels=["connection"])
        for name, conn in self.shared.get("redis", {}).items():
            if conn.clustered:
                redirections.add_metric([name], conn.redirections)
                refreshes.add_metric([name], conn.refreshes)
        yield redirections
        yield refreshes

    def describe(self):
        return []
