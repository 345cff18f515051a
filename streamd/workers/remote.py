"""
A worker's side of the broker (L{streamd.workers.broker} is the parent's): the same
interfaces as in one process, across a socket.

  - L{RemoteMemorySource} is a memory stream to the service and the web layer: publishing
    asks the parent for ids; the first reader of a stream on this worker subscribes it to
    the parent's batches, which this worker then fans out to its own readers.
  - L{RemoteChannels} keeps a copy of the channel values, changed by the parent's news.
  - L{SharedSubscriptions} keeps a copy of every channel subscription, so that one made or
    changed on any worker is read, streamed, changed or deleted on any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from streamd.channels import Subscriptions, SubscriptionSource, Watched
from streamd.coalesce import Coalescer
from streamd.interfaces import ISource, ISubscription
from streamd.message import Message, SharedBatch
from streamd.sources.memory import check_since, fan_out
from streamd.sources.unacknowledged import Unacknowledged
from streamd.workers import wire

log = Logger()


@implementer(ISubscription)
class RemoteSubscription(Unacknowledged):
    """
    One reader of a memory stream on this worker.

    @ivar ready: fires once the parent answered this reader's C{Subscribe}: from then on
        every batch reaches it. The stream sends its head only then (L{Stream.start}):
        a client that saw its stream open, and a publish answered after that on any
        worker, must not miss each other (tests/integration/test_backlog.py saw 70 of 15,000
        readers miss the message published once all had their head, before this).
    """

    __slots__ = ("source", "consumer", "cancelled", "ready")

    def __init__(self, source: RemoteMemorySource, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.cancelled = False
        self.ready: defer.Deferred[None] = defer.Deferred()

    def cancel(self) -> None:
        self.cancelled = True
        self.source.subscribers.discard(self)
        self.source.unsubscribe_if_unread()


@implementer(ISource)
class RemoteMemorySource:
    """
    A memory stream held by the parent.

    @ivar subscribers: this worker's readers that the parent's batches reach.
    @ivar waiting: readers whose subscription the parent has not answered yet.
    """

    kind = "memory"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    durable = False
    recent = ()  # the resume buffer is the parent's

    def __init__(self, name: str, client: BrokerClient) -> None:
        self.name = name
        self.client = client
        self.subscribers: set[RemoteSubscription] = set()
        self.waiting = 0
        # The parent's batches that one read of its socket brings reach each reader as
        # one batch: a worker that was busy writes once per reader, not once per batch.
        self.incoming = Coalescer(client.clock, self.deliver)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.incoming.flush()
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")

    def status(self) -> tuple[str, str | None]:
        return self.client.status()

    def expire(self) -> None:
        pass

    def publish(self, payloads: list[bytes], params=None):
        return self.client.publish(self.name, payloads)

    def messages(self, first: int, payloads: list[bytes]) -> list[Message]:
        name = self.name
        return [Message(str(first + i), name, data) for i, data in enumerate(payloads)]

    def deliver(self, batch: SharedBatch) -> None:
        fan_out(self.name, self.subscribers, batch)

    def subscribe(self, consumer, since: str | None = None) -> RemoteSubscription:
        if since is not None:
            check_since(since)  # a bad id is the request's fault: 400 now, as in one process
        sub = RemoteSubscription(self, consumer)
        self.waiting += 1
        d = self.client.callRemote(wire.Subscribe, stream=self.name, since=since)
        d.addCallbacks(self._subscribed, self._refused, callbackArgs=(sub,),
                       errbackArgs=(sub,))
        return sub

    def _subscribed(self, answer: dict, sub: RemoteSubscription) -> None:
        self.waiting -= 1
        # What came before the answer is not for this reader (the replay has it).
        self.incoming.flush()
        if not sub.cancelled:
            sub.ready.callback(None)  # the head: before the replay, as in one process
        if not sub.cancelled:
            if answer["gap"] is not None:
                sub.consumer.gap(answer["gap"])
            replay = wire.split(answer["payloads"])
            if replay and not sub.cancelled:
                sub.consumer.deliver(SharedBatch(self.messages(answer["first"], replay)))
            if not sub.cancelled:
                self.subscribers.add(sub)
                return
        self.unsubscribe_if_unread()

    def _refused(self, failure, sub: RemoteSubscription) -> None:
        self.waiting -= 1
        if not sub.cancelled:
            log.failure("the parent refused a reader of {name}", failure, name=self.name)
            sub.ready.callback(None)
            sub.consumer.source_ended("the stream is gone")

    def unsubscribe_if_unread(self) -> None:
        if not self.subscribers and not self.waiting and self.client.connected:
            self.client.callRemote(wire.Unsubscribe, stream=self.name)


class RemoteChannels(Watched):
    """C{get}, C{set} and C{watch} like L{streamd.channels.MemoryChannels}, held by the parent."""

    def __init__(self, client: BrokerClient) -> None:
        super().__init__()
        self.client = client
        self.values: dict[str, bytes] = {}

    def get(self, name: str) -> bytes | None:
        return self.values.get(name)

    def set(self, name: str, value: bytes):
        # The parent tells every worker, this one before it answers: watchers here have
        # heard of the change when the PUT is answered.
        return self.client.callRemote(wire.SetChannel, name=name, value=value)

    def changed(self, name: str, value: bytes) -> None:
        self.values[name] = value
        self.notify(name, value)


class SharedSubscriptionSource(SubscriptionSource):
    """A channel subscription whose changes and open streams the parent hears of."""

    def __init__(self, id: str, channels: Iterable[str], store, clock,
                 client: BrokerClient) -> None:
        super().__init__(id, channels, store, clock)
        self.client = client

    def change(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        add, remove = list(add), list(remove)
        super().change(add, remove)
        self.client.callRemote(wire.ChangeSubscription, id=self.id, add=add, remove=remove)

    def subscribe(self, consumer, since=None):
        reader = super().subscribe(consumer, since)
        self.client.callRemote(wire.SubscriptionUsed, id=self.id, delta=1)
        return reader

    def _reader_ended(self, reader) -> None:
        super()._reader_ended(reader)
        if self.client.connected:
            self.client.callRemote(wire.SubscriptionUsed, id=self.id, delta=-1)


class SharedSubscriptions(Subscriptions):
    """
    L{Subscriptions} whose every subscription exists on every worker: made, changed and
    deleted through the parent, which also forgets those with no stream on any worker
    for C{expire} seconds (a worker alone cannot tell).
    """

    def __init__(self, client: BrokerClient, store, clock, expire: float = 3600.0,
                 max_channels: int = 1000) -> None:
        super().__init__(store, clock, expire, max_channels)
        self.client = client
        client.subscriptions = self
        for sub_id, sub in client.initial_subscriptions.items():
            self.created(sub_id, sub["channels"], sub["owner"])

    def make(self, id: str, channels: Iterable[str]) -> SubscriptionSource:
        return SharedSubscriptionSource(id, channels, self.store, self.clock, self.client)

    def create(self, channels: Iterable[str], owner: str | None = None) -> SubscriptionSource:
        sub = super().create(channels, owner)
        # The 201 waits for this, so that the next request may land on any worker.
        sub.announced = self.client.callRemote(
            wire.CreateSubscription, id=sub.id, channels=sub.channels, owner=owner or "")
        return sub

    def _schedule(self) -> None:
        pass  # the parent expires subscriptions

    def delete(self, id: str) -> None:
        super().delete(id)
        self.client.callRemote(wire.EndSubscription, id=id, deleted=True)

    # -- the parent's news ---------------------------------------------------------------

    def created(self, id: str, channels: list[str], owner: str) -> None:
        sub = self.by_id[id] = self.make(id, channels)
        if owner:
            sub.owner = owner

    def changed(self, id: str, add: list[str], remove: list[str]) -> None:
        sub = self.by_id.get(id)
        if sub is not None:
            SubscriptionSource.change(sub, add, remove)

    def ended(self, id: str, deleted: bool) -> None:
        sub = self.by_id.pop(id, None)
        if sub is not None and deleted:
            sub.end()


class BrokerClient(amp.AMP):
    """
    A worker's connection to its parent: what C{services.broker} is in a worker.

    @ivar reporter: answers the parent's L{wire.Report} (C{what} -> bytes).
    @ivar lost: fires when the parent is gone (the worker then stops).
    """

    def __init__(self, index: int, clock) -> None:
        super().__init__()
        self.index = index
        self.clock = clock
        self.outgoing: list[tuple[str, list[bytes], defer.Deferred]] = []
        self.connected = False
        self.sources: dict[str, RemoteMemorySource] = {}
        self.channels = RemoteChannels(self)
        self.subscriptions: SharedSubscriptions | None = None
        self.initial_subscriptions: dict[str, Any] = {}
        self.reporter: Callable[[str], bytes] | None = None
        self.store = None  # the RemoteStore, when the parent holds the event store
        self.store_status: tuple[str, str | None] = ("ok", None)
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        super().connectionLost(reason)
        self.lost.callback(None)

    def status(self) -> tuple[str, str | None]:
        return ("ok", None) if self.connected else ("down", "the parent process is gone")

    async def hello(self) -> None:
        state = await self.callRemote(wire.Hello, index=self.index, pid=os.getpid())
        for name, value in state["channels"].items():
            self.channels.values[name] = value.encode()
        self.initial_subscriptions = state["subscriptions"]
        self.store_status = (state["store"]["status"], state["store"]["reason"])

    def publish(self, stream: str, payloads: list[bytes]) -> defer.Deferred:
        """
        Publish to a memory stream: the ids, once the parent gave them. The publishes of
        one reactor turn go to the parent in one box, at the end of the turn.
        """
        d: defer.Deferred = defer.Deferred()
        if not self.outgoing:
            self.clock.callLater(0, self._send_publishes)
        self.outgoing.append((stream, payloads, d))
        return d

    def _send_publishes(self) -> None:
        sent, self.outgoing = self.outgoing, []
        answer = self.callRemote(
            wire.Publish, streams=[[name, len(p)] for name, p, _ in sent],
            payloads=wire.join([data for _, p, _ in sent for data in p]))

        def answered(result: dict) -> None:
            for (_, p, d), first in zip(sent, result["firsts"], strict=True):
                d.callback([str(first + i) for i in range(len(p))])

        def failed(failure) -> None:
            for _, _, d in sent:
                d.errback(failure)

        answer.addCallbacks(answered, failed)

    def memory_source(self, name: str) -> RemoteMemorySource:
        source = self.sources.get(name)
        if source is None:
            source = self.sources[name] = RemoteMemorySource(name, self)
        return source

    def reserve(self, identity: str, delta: int, limit: int):
        """One more (C{delta} 1, unless C{limit} is reached on all workers) or one less."""
        if delta < 0:
            if self.connected:
                self.callRemote(wire.Reserve, identity=identity, delta=delta, limit=0)
            return defer.succeed(True)
        return self.callRemote(wire.Reserve, identity=identity, delta=delta,
                               limit=limit).addCallback(lambda answer: answer["ok"])

    async def gather(self, what: str) -> bytes:
        return (await self.callRemote(wire.Gather, what=what))["result"]

    # -- the parent's news ---------------------------------------------------------------

    @wire.Deliver.responder
    def _deliver(self, stream: str, first: int, payloads: bytes):
        source = self.sources.get(stream)
        if source is not None and source.subscribers:
            source.incoming.add(source.messages(first, wire.split(payloads)))
        return {}

    @wire.Ended.responder
    def _ended(self, stream: str, reason: str):
        source = self.sources.get(stream)
        if source is not None:
            source.incoming.flush()
            for sub in list(source.subscribers):
                sub.consumer.source_ended(reason)
        return {}

    @wire.ChannelChanged.responder
    def _channel_changed(self, name: str, value: bytes):
        self.channels.changed(name, value)
        return {}

    @wire.SubscriptionCreated.responder
    def _subscription_created(self, id: str, channels: list, owner: str):
        if self.subscriptions is not None:
            self.subscriptions.created(id, channels, owner)
        else:
            self.initial_subscriptions[id] = {"channels": channels, "owner": owner}
        return {}

    @wire.SubscriptionChanged.responder
    def _subscription_changed(self, id: str, add: list, remove: list):
        if self.subscriptions is not None:
            self.subscriptions.changed(id, add, remove)
        return {}

    @wire.SubscriptionEnded.responder
    def _subscription_ended(self, id: str, deleted: bool):
        if self.subscriptions is not None:
            self.subscriptions.ended(id, deleted)
        return {}

    @wire.StoreInserted.responder
    def _store_inserted(self, first: int, last: int):
        if self.store is not None:
            self.store.inserted_elsewhere(first, last)
        return {}

    @wire.Report.responder
    def _report(self, what: str):
        result = self.reporter(what) if self.reporter is not None else b"{}"
        return {"result": result}


def status_report(app) -> bytes:
    """This worker's part of GET / and /health: its pid, streams and readers."""
    return json.dumps({
        "pid": os.getpid(),
        "open_streams": len(app.open_streams),
        "sources": app.activity.describe(app.service.statuses()),
        "identities": dict(app.open_streams.per_identity),
    }).encode()
