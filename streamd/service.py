"""
The streamd service without HTTP: what the settings describe, built once and started
and stopped together. L{Service} builds the sources, the event store, the channel store
and its subscriptions, and the metrics, and keeps the registry of sources by stream name
(declared ones, and memory streams made on first use when C{dynamic_streams} is on, which
it forgets once nobody uses them).

L{streamd.tap.makeService} builds it with the reactor and hands it to the web layer
(L{streamd.web.StreamdApp}), which only maps HTTP onto it.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import DeferredList, TimeoutError, maybeDeferred
from twisted.logger import Logger

from streamd import metrics
from streamd.channels import MemoryChannels, Subscriptions
from streamd.config import ChannelSettings, Settings, StreamSettings
from streamd.errors import InvalidRequest, UnknownStream
from streamd.metrics import Metrics
from streamd.sources import Services, make_source
from streamd.store import make_store

log = Logger()

# \Z, not $: "$" also matches before a final newline, and "news\n" is no name.
STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}\Z")

#: Seconds between sweeps for dynamic streams that are no longer used.
REAP_INTERVAL = 60.0


class Service:
    """
    @ivar sources: stream name -> source, for declared streams and dynamic ones.
    @ivar stream_settings: stream name -> its L{StreamSettings} (a dynamic one's: the
        top-level values).
    @ivar store: the event store (L{streamd.interfaces.IStore}).
    @ivar channels: the channel store; C{subscriptions} the channel subscriptions.
    """

    def __init__(self, settings: Settings, reactor, broker=None,
                 worker: int | None = None) -> None:
        """
        @param broker: in a worker of several, its link to the parent
            (L{streamd.workers.remote.BrokerClient}), which holds the memory streams,
            channel values and channel subscriptions that all workers share.
        @param worker: in a worker, its index (its durable sources' names carry it).
        """
        self.settings = settings
        self.reactor = reactor
        self.broker = broker
        self.started_at = reactor.seconds()
        self.metrics = Metrics()
        self.services = Services(reactor=reactor, settings=settings, metrics=self.metrics,
                                 broker=broker, worker=worker)
        metrics.ClusterCounters(self.services.shared, self.metrics.registry)
        self.stream_settings: dict[str, StreamSettings] = dict(settings.streams)
        self.sources: dict[str, Any] = {
            name: make_source(s, self.services) for name, s in self.stream_settings.items()
        }
        self.dynamic: set[str] = set()  # names of the memory streams made on first use
        if broker is not None and settings.store.backend != "redis":
            from streamd.workers.store import RemoteStore

            self.store = RemoteStore(broker, settings.store.backend, settings.store.keys)
        else:
            self.store = make_store(settings, reactor)
        self.channels = self._channel_store(settings.channels)
        if broker is None:
            self.subscriptions = Subscriptions(self.channels, reactor,
                                               settings.channels.expire,
                                               settings.channels.max_channels)
        else:
            from streamd.workers.remote import SharedSubscriptions

            self.subscriptions = SharedSubscriptions(broker, self.channels, reactor,
                                                     settings.channels.expire,
                                                     settings.channels.max_channels)
        self._reaper = None

    def _channel_store(self, table: ChannelSettings):
        if table.backend != "redis":
            return MemoryChannels() if self.broker is None else self.broker.channels
        from streamd.redis.channels import RedisChannels
        from streamd.redis.shared import acquire

        conn = acquire(self.services, table.connection, "channels.connection")
        return RedisChannels(conn, self.reactor, table.prefix)

    # -- the source registry ---------------------------------------------------------

    def source(self, name: str) -> tuple[Any, StreamSettings]:
        """
        The source of stream C{name} and its settings. An undeclared name, when
        C{dynamic_streams} is on, gets a memory stream (started now); else
        L{UnknownStream}. A name no stream may have is an L{InvalidRequest}.
        """
        source = self.sources.get(name)
        if source is not None:
            return source, self.stream_settings[name]
        if not STREAM_NAME.match(name):
            raise InvalidRequest(
                "stream name: use 1-200 letters, digits and . _ : - (starting with a "
                "letter or digit)"
            )
        if not self.settings.dynamic_streams:
            raise UnknownStream(f"no stream named {name!r}")
        settings = self.settings.dynamic_stream(name)
        source = make_source(settings, self.services)
        self.add(name, source, settings)
        self.dynamic.add(name)
        source.start()
        return source, settings

    def add(self, name: str, source, settings: StreamSettings) -> None:
        """Serve C{source} as stream C{name} with C{settings} (embedding, tests)."""
        self.sources[name] = source
        self.stream_settings[name] = settings

    def declared(self, name: str) -> bool:
        """Whether stream C{name} is in the config (not made on first use)."""
        return name in self.settings.streams

    def metrics_label(self, name: str) -> str:
        """A declared stream's name; one label for all dynamic ones (bounded cardinality)."""
        return name if name in self.settings.streams else metrics.DYNAMIC

    def reap_unused(self) -> None:
        """
        Forget dynamic memory streams that nobody reads and whose resume buffer has
        expired, so that names used once do not accumulate.
        """
        for name in list(self.dynamic):
            source = self.sources[name]
            source.expire()
            if not source.subscribers and not source.recent:
                del self.sources[name]
                del self.stream_settings[name]
                self.dynamic.discard(name)

    def _reap(self) -> None:
        self._reaper = self.reactor.callLater(REAP_INTERVAL, self._reap)
        self.reap_unused()

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Each stream's source kind, status, reason, and whether it is declared."""
        out = {}
        for name, source in self.sources.items():
            state, reason = source.status()
            out[name] = {"source": source.kind, "status": state, "reason": reason,
                         "declared": self.declared(name)}
        return out

    def redis_clusters(self) -> dict[str, dict[str, Any]]:
        """Each Redis Cluster connection in use: its status and its shards."""
        out = {}
        for name, conn in self.services.shared.get("redis", {}).items():
            if conn.clustered:
                state, reason = conn.status()
                out[name] = {"status": state, "reason": reason, **conn.figures()}
        return out

    def store_status(self) -> dict[str, Any]:
        """
        The event store's backend, indexed keys, status and reason; on a Redis Cluster
        also the shards, redirections and map readings of the store's own connection.
        """
        state, reason = self.store.status()
        out = {"backend": self.store.backend, "keys": list(self.store.keys),
               "status": state, "reason": reason}
        conn = getattr(self.store, "conn", None)
        if conn is not None and conn.clustered:  # its own cluster connection
            out.update(conn.figures())
        return out

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the event store, the sources and the channel store (each failure logged)."""

        async def one(what, start) -> None:
            try:
                await maybeDeferred(start)
            except Exception:
                log.failure("{what} failed to start", what=what)

        self._reaper = self.reactor.callLater(REAP_INTERVAL, self._reap)
        await one("the event store", self.store.start)
        for name, source in self.sources.items():
            await one(f"source {name}", source.start)
        if hasattr(self.channels, "start"):
            await one("the channel store", self.channels.start)

    async def stop(self, timeout: float) -> None:
        """
        Stop the sources (they return what they hold), the event store and the channel
        store, within C{timeout} seconds. End the streams that read them first.
        """
        self.subscriptions.close()
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        stops = [maybeDeferred(s.stop) for s in self.sources.values()]
        stops.append(maybeDeferred(self.store.stop))
        if hasattr(self.channels, "stop"):
            stops.append(maybeDeferred(self.channels.stop))
        done = DeferredList(stops, consumeErrors=True)
        try:
            await done.addTimeout(timeout, self.reactor)
        except TimeoutError:
            log.warn("sources did not stop within shutdown_timeout")
