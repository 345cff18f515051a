"""
Fakes that streamd's tests use and that users and plugin authors may use for their
own: a request that records what a stream writes, a durable source that records acks
and pauses, and a consumer that records what a source delivers.

L{streamd.testing.conformance} checks a source plugin against the contract of
L{streamd.interfaces.ISubscription} (it needs pytest and pytest-twisted).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from zope.interface import implementer

from streamd.interfaces import IConsumer, ISource, ISubscription
from streamd.message import Message
from streamd.outbox import WaitingStreams


class _Channel:
    def __init__(self) -> None:
        self.transport = StringTransport()


class FakeRequest:
    """
    Enough of L{twisted.web.server.Request} for a L{streamd.stream.Stream}: headers,
    writes (kept in C{written}), and the registered producer.
    """

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.writes: list[bytes] = []
        self.producer = None
        self.streaming: bool | None = None
        self.channel = _Channel()
        self.transport = self.channel.transport
        self.finished = False
        self.outbox: FakeOutbox | None = None  # counts what is written while it is set

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write after finish")
        self.writes.append(data)
        if self.outbox is not None:
            self.outbox.wrote(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def lines(self) -> list[bytes]:
        return [line for line in self.written.split(b"\n") if line]


@implementer(ISubscription)
class FakeSubscription:
    """Records what a stream asked of its source."""

    def __init__(self, source: FakeSource, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.paused = False
        self.pauses = 0
        self.acked: list[Message] = []
        self.nacked: list[Message] = []
        self.skipped: list[Message] = []
        self.cancelled = False

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False

    def ack(self, messages) -> None:
        self.acked.extend(messages)

    def nack(self, messages) -> None:
        self.nacked.extend(messages)

    def skip(self, messages) -> None:
        self.skipped.extend(messages)

    def cancel(self) -> None:
        self.cancelled = True


@implementer(ISource)
class FakeSource:
    """A durable source whose messages a test hands out with L{push}."""

    kind = "fake"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    durable = True

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.subscriptions: list[FakeSubscription] = []
        self.state: tuple[str, str | None] = ("ok", None)
        self.seq = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self):
        return self.state

    def subscribe(self, consumer, since=None) -> FakeSubscription:
        sub = FakeSubscription(self, consumer)
        self.subscriptions.append(sub)
        return sub

    def make(self, n: int, data: bytes = b"{}") -> list[Message]:
        out = []
        for _ in range(n):
            self.seq += 1
            out.append(Message(str(self.seq), self.name, data))
        return out

    def push(self, n: int = 1, data: bytes = b"{}", sub: int = -1) -> list[Message]:
        msgs = self.make(n, data)
        self.subscriptions[sub].consumer.deliver(msgs)
        return msgs

    def publish(self, payloads, params=None) -> list[Any]:
        msgs = []
        for data in payloads:
            self.seq += 1
            msgs.append(Message(str(self.seq), self.name, data))
        for sub in self.subscriptions:
            sub.consumer.deliver(msgs)
        return [m.id for m in msgs]


@implementer(IConsumer)
class Recorder:
    """
    A consumer that keeps what its source delivers (C{messages}, in order), the gap
    notices (C{gaps}) and why the source ended it (C{ended}). C{subscription} is set
    by L{attach}. With C{auto_ack}, each delivery is acked as it arrives (a client
    that keeps up).
    """

    def __init__(self, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.subscription: Any = None
        self.messages: list[Message] = []
        self.gaps: list[dict] = []
        self.ended: str | None = None

    def attach(self, source, since=None):
        """Subscribe to C{source}; returns the subscription (also C{self.subscription})."""
        self.subscription = source.subscribe(self, since)
        if self.auto_ack and self.messages:  # delivered within subscribe()
            self.subscription.ack(list(self.messages))
        return self.subscription

    def deliver(self, messages) -> None:
        messages = list(messages)
        self.messages.extend(messages)
        if self.auto_ack and self.subscription is not None:
            self.subscription.ack(messages)

    def gap(self, info) -> None:
        self.gaps.append(info)

    def source_ended(self, reason: str) -> None:
        self.ended = reason

    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    def data(self) -> list[bytes]:
        return [m.data for m in self.messages]


class FakeOutbox(WaitingStreams):
    """
    A stand-in for a connection's L{streamd.outbox.Outbox}, over a L{FakeRequest}:
    the "kernel" takes what is written at once while C{open}; when not, the bytes wait
    until L{take} (the client read them) or L{lose} (the connection died).
    """

    def __init__(self, request: FakeRequest, open: bool = True) -> None:
        self.waiting = 0  # bytes still "in the process"
        self.open = open
        self.listeners: list = []
        request.outbox = self

    def wrote(self, data: bytes) -> None:
        """The stream wrote C{data}: while not C{open}, it waits "in the process"."""
        if not self.open:
            self.waiting += len(data)

    def buffered(self) -> int:
        return self.waiting

    backlog = buffered

    def clear(self) -> bool:
        return not self.waiting

    def watch(self) -> None:
        pass

    def take(self, n: int | None = None) -> None:
        """The kernel takes C{n} more bytes (default: all); drained once none wait."""
        self.waiting = 0 if n is None else max(0, self.waiting - n)
        if not self.waiting:
            self.drained()

    lose = WaitingStreams.lost  # the connection died


def memory_kib(pid: int) -> dict[str, int]:
    """A process's resident set now (C{VmRSS}) and at its highest (C{VmHWM}), in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out
