"""
The parent's broker: what the workers share, held once, spoken to over AMP.

Memory streams live here as L{MemorySource}s, exactly as in one process: ids, the resume
buffer and the coalescer are theirs. Each worker that has readers of a stream is one
subscriber of it (a L{WorkerReader}), so a batch crosses to a worker once, whatever the
number of its readers, and the worker fans it out with its own write path. Channel values
and channel subscriptions are kept here and announced to every worker, which keeps a copy
(so a snapshot needs no round trip), as the Redis channel store does between instances.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from streamd.channels import MemoryChannels
from streamd.config import Settings
from streamd.service import STREAM_NAME
from streamd.sources.memory import MemorySource
from streamd.store import make_store
from streamd.workers import wire
from streamd.workers.gather import merge_metrics, merge_status
from streamd.workers.store import serve_call

log = Logger()

#: Seconds between sweeps for dynamic streams and subscriptions that are no longer used.
SWEEP_INTERVAL = 60.0


class WorkerReader:
    """One worker, as a subscriber of one memory stream."""

    __slots__ = ("worker", "stream")

    def __init__(self, worker: BrokerProtocol, stream: str) -> None:
        self.worker = worker
        self.stream = stream

    def deliver(self, batch) -> None:
        if not batch:
            return
        encoded = getattr(batch, "encoded", None)
        wire_form = encoded.get("wire") if encoded is not None else None
        if wire_form is None:
            wire_form = (int(batch[0].id), wire.join([m.data for m in batch]))
            if encoded is not None:  # one encoding for every worker
                encoded["wire"] = wire_form
        self.worker.callRemote(wire.Deliver, stream=self.stream, first=wire_form[0],
                               payloads=wire_form[1])

    def gap(self, info) -> None:  # replays are answered to Subscribe, never sent here
        pass

    def source_ended(self, reason: str) -> None:
        self.worker.callRemote(wire.Ended, stream=self.stream, reason=reason)


class Broker:
    """
    @ivar sources: memory stream name -> L{MemorySource} (declared ones, and those made
        on first use).
    @ivar workers: worker index -> its connection, while it is connected.
    @ivar subscriptions: channel subscription id -> C{{"channels", "owner"}}; C{used}
        counts their open streams per worker, C{idle_since} when they had none.
    @ivar identities: open streams per identity, per worker (for C{max_connections_per_identity}).
    """

    def __init__(self, settings: Settings, reactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.sources: dict[str, MemorySource] = {}
        self.dynamic: set[str] = set()
        for name, s in settings.streams.items():
            if s.source == "memory":
                self.sources[name] = self._memory(s.table)
        self.workers: dict[int, BrokerProtocol] = {}
        self.pids: dict[int, int] = {}
        self.channels = MemoryChannels()
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.used: dict[str, Counter[BrokerProtocol]] = {}
        self.idle_since: dict[str, float] = {}
        self.identities: dict[BrokerProtocol, Counter[str]] = {}
        self.on_joined = lambda index: None
        # The memory and SQLite event stores are the parent's; a Redis one each worker's.
        self.store = make_store(settings, reactor) if settings.store.backend != "redis" \
            else None
        self._sweep = None

    def _memory(self, table) -> MemorySource:
        return MemorySource(table["name"], self.reactor, table["buffer"],
                            table["buffer_ttl"], table["coalesce_ms"] / 1000)

    async def start(self) -> None:
        self._sweep = self.reactor.callLater(SWEEP_INTERVAL, self._swept)
        if self.store is not None:
            try:
                await defer.maybeDeferred(self.store.start)
            except Exception:
                log.failure("the event store failed to start")

    async def stop(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        for source in self.sources.values():
            source.outgoing.flush()
        if self.store is not None:
            await defer.maybeDeferred(self.store.stop)

    def source(self, name: str) -> MemorySource:
        source = self.sources.get(name)
        if source is None:
            # The worker checked the name and that dynamic streams are on.
            if not STREAM_NAME.match(name) or not self.settings.dynamic_streams:
                raise wire.BrokerError(f"no memory stream named {name!r}")
            source = self.sources[name] = self._memory(
                self.settings.dynamic_stream(name).table)
            self.dynamic.add(name)
        return source

    # -- workers -----------------------------------------------------------------------

    def joined(self, worker: BrokerProtocol, index: int, pid: int) -> None:
        old = self.workers.get(index)
        if old is not None and old is not worker and old.transport is not None:
            old.transport.loseConnection()  # a restarted worker's stale connection
        self.workers[index] = worker
        self.pids[index] = pid
        worker.index = index
        self.on_joined(index)

    def left(self, worker: BrokerProtocol) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        for source in self.sources.values():
            for sub in list(source.subscribers):
                if isinstance(sub.consumer, WorkerReader) and sub.consumer.worker is worker:
                    source.subscribers.discard(sub)
        worker.readers.clear()
        for sub_id, used in self.used.items():
            if used.pop(worker, 0) and not +used:
                self.idle_since[sub_id] = self.reactor.seconds()
        self.identities.pop(worker, None)

    def others(self, worker: BrokerProtocol | None):
        return [w for w in self.workers.values() if w is not worker]

    # -- channel subscriptions -----------------------------------------------------------

    def subscription_used(self, worker: BrokerProtocol, sub_id: str, delta: int) -> None:
        if sub_id not in self.subscriptions:
            return
        used = self.used.setdefault(sub_id, Counter())
        used[worker] += delta
        if not +used:
            self.idle_since[sub_id] = self.reactor.seconds()
        else:
            self.idle_since.pop(sub_id, None)

    def end_subscription(self, sub_id: str, deleted: bool, by=None) -> None:
        if self.subscriptions.pop(sub_id, None) is None:
            return
        self.used.pop(sub_id, None)
        self.idle_since.pop(sub_id, None)
        for w in self.others(by):
            w.callRemote(wire.SubscriptionEnded, id=sub_id, deleted=deleted)

    def _swept(self) -> None:
        self._sweep = self.reactor.callLater(SWEEP_INTERVAL, self._swept)
        now = self.reactor.seconds()
        horizon = now - self.settings.channels.expire
        for sub_id, since in list(self.idle_since.items()):
            if since < horizon:
                self.end_subscription(sub_id, deleted=False)
        for name in list(self.dynamic):
            source = self.sources[name]
            source.expire()
            if not source.subscribers and not source.recent:
                del self.sources[name]
                self.dynamic.discard(name)

    # -- what all workers report -----------------------------------------------------------

    async def gather(self, what: str) -> bytes:
        """Every worker's report of C{what} ("status" or "metrics"), merged."""
        count = self.settings.workers
        asked = {i: self.workers[i].callRemote(wire.Report, what=what)
                 for i in range(count) if i in self.workers}
        answers: dict[int, bytes | None] = {}
        for i in range(count):
            d = asked.get(i)
            try:
                answers[i] = (await d)["result"] if d is not None else None
            except Exception:
                answers[i] = None  # a worker that died while asked is reported down
        if what == "metrics":
            return merge_metrics([a for a in answers.values() if a is not None])
        reports = {i: (json.loads(a) if a is not None else None) for i, a in answers.items()}
        return json.dumps(merge_status(reports, self.pids)).encode()


class BrokerProtocol(amp.AMP):
    """The broker's side of one worker's connection."""

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        self.index = -1
        self.readers: dict[str, Any] = {}  # stream name -> its subscription here

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.broker.left(self)

    @wire.Hello.responder
    def hello(self, index: int, pid: int):
        self.broker.joined(self, index, pid)
        subs = {i: {"channels": s["channels"], "owner": s["owner"]}
                for i, s in self.broker.subscriptions.items()}
        values = {k: v.decode() for k, v in self.broker.channels.values.items()}
        store = self.broker.store
        state, reason = store.status() if store is not None else ("ok", None)
        return {"channels": values, "subscriptions": subs,
                "store": {"status": state, "reason": reason}}

    @wire.Publish.responder
    def publish(self, streams: list, payloads: bytes):
        every = wire.split(payloads)
        firsts = []
        start = 0
        for name, count in streams:
            ids = self.broker.source(name).publish(every[start:start + count])
            start += count
            firsts.append(int(ids[0]) if ids else 0)
        return {"firsts": firsts}

    @wire.Subscribe.responder
    def subscribe(self, stream: str, since: str | None):
        source = self.broker.source(stream)
        sub, gap, replay = source.attach(WorkerReader(self, stream), since,
                                         subscribe=stream not in self.readers)
        if sub is not None:
            self.readers[stream] = sub
        first = int(replay[0].id) if replay else 0
        return {"first": first, "payloads": wire.join([m.data for m in replay]), "gap": gap}

    @wire.Unsubscribe.responder
    def unsubscribe(self, stream: str):
        sub = self.readers.pop(stream, None)
        if sub is not None:
            sub.cancel()
        return {}

    @wire.SetChannel.responder
    def set_channel(self, name: str, value: bytes):
        self.broker.channels.set(name, value)
        for w in self.broker.workers.values():  # the setter too: its watchers hear it now
            w.callRemote(wire.ChannelChanged, name=name, value=value)
        return {}

    @wire.CreateSubscription.responder
    def create_subscription(self, id: str, channels: list, owner: str):
        self.broker.subscriptions[id] = {"channels": channels, "owner": owner}
        self.broker.idle_since[id] = self.broker.reactor.seconds()
        for w in self.broker.others(self):
            w.callRemote(wire.SubscriptionCreated, id=id, channels=channels, owner=owner)
        return {}

    @wire.ChangeSubscription.responder
    def change_subscription(self, id: str, add: list, remove: list):
        sub = self.broker.subscriptions.get(id)
        if sub is not None:
            removed = set(remove)
            kept = [c for c in sub["channels"] if c not in removed]
            sub["channels"] = kept + [c for c in dict.fromkeys(add) if c not in kept]
            for w in self.broker.others(self):
                w.callRemote(wire.SubscriptionChanged, id=id, add=add, remove=remove)
        return {}

    @wire.EndSubscription.responder
    def end_subscription(self, id: str, deleted: bool):
        self.broker.end_subscription(id, deleted, by=self)
        return {}

    @wire.SubscriptionUsed.responder
    def subscription_used(self, id: str, delta: int):
        self.broker.subscription_used(self, id, delta)
        return {}

    @wire.Reserve.responder
    def reserve(self, identity: str, delta: int, limit: int):
        counts = self.broker.identities.setdefault(self, Counter())
        if delta > 0 and limit:
            total = sum(c[identity] for c in self.broker.identities.values())
            if total >= limit:
                return {"ok": False}
        counts[identity] += delta
        if counts[identity] <= 0:
            del counts[identity]
        return {"ok": True}

    @wire.StoreCall.responder
    def store_call(self, method: str, args: bytes):
        return defer.ensureDeferred(self._store_call(method, args))

    async def _store_call(self, method: str, args: bytes):
        ok, value = await serve_call(self.broker.store, method, args)
        if ok and method == "insert" and value:
            for w in self.broker.others(self):
                w.callRemote(wire.StoreInserted, first=value[0].id, last=value[-1].id)
        return {"result": pickle.dumps((ok, value))}

    @wire.Gather.responder
    def gather(self, what: str):
        return defer.ensureDeferred(self.broker.gather(what)).addCallback(
            lambda result: {"result": result})


class BrokerFactory(Factory):
    noisy = False  # one line per worker's connection would say nothing the log does not

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def buildProtocol(self, addr):
        return BrokerProtocol(self.broker)

