"""
An SQS queue in memory behind L{streamd.sqs_client.SQSClient}'s methods, for unit
tests of the SQS source that run on a Clock (no network, no sleeps).

Long polls on an empty queue stay pending until L{FakeSQS.put} (like SQS answering a
long poll early); visibility timeouts do not expire by themselves (tests make
messages visible again explicitly, as SQS would after the timeout).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from streamd.aws import SQSError


def fired(d: Deferred):
    """The result of a Deferred that must already have fired (raises its failure)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class FakeSQS:
    def __init__(self) -> None:
        self.visible: deque[dict[str, Any]] = deque()
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.polls: list[tuple[Deferred, int]] = []
        self.waits: list[int] = []  # WaitTimeSeconds of every receive
        self.deleted: list[str] = []
        self.released: list[str] = []
        self.extended: list[tuple[str, int]] = []
        self.sent: list[dict[str, Any]] = []
        self.error: SQSError | None = None
        self._seq = 0
        self._receipts = 0

    # -- test side -------------------------------------------------------------------

    def put(self, *bodies: str, **extra: Any) -> list[str]:
        ids = []
        for body in bodies:
            self._seq += 1
            mid = f"m{self._seq}"
            self.visible.append({"MessageId": mid, "Body": body, "count": 0, **extra})
            ids.append(mid)
        self._serve()
        return ids

    def expire(self) -> None:
        """Every in-flight message becomes visible again (its timeout ran out)."""
        for raw in self.in_flight.values():
            self.visible.append(raw)
        self.in_flight.clear()
        self._serve()

    def _serve(self) -> None:
        while self.polls and self.visible:
            d, n = self.polls.pop(0)
            d.callback(self._take(n))

    def _take(self, n: int) -> list[dict[str, Any]]:
        out = []
        while self.visible and len(out) < n:
            raw = self.visible.popleft()
            raw["count"] += 1
            self._receipts += 1
            handle = f"{raw['MessageId']}#{self._receipts}"
            self.in_flight[handle] = raw
            attrs = {"ApproximateReceiveCount": str(raw["count"]), "SentTimestamp": "1000"}
            out.append({"MessageId": raw["MessageId"], "ReceiptHandle": handle,
                        "Body": raw["Body"], "Attributes": attrs,
                        "MessageAttributes": raw.get("MessageAttributes", {})})
        return out

    # -- the client's API ----------------------------------------------------------

    def receive(self, queue_url, *, max_messages=10, wait=20, visibility=None,
                message_attributes=("All",), system_attributes=()):
        self.calls["ReceiveMessage"] += 1
        self.waits.append(wait)
        if self.error is not None:
            return fail(self.error)
        if self.visible or wait == 0:
            return succeed(self._take(max_messages))
        d: Deferred = Deferred(lambda d: self.polls.remove((d, max_messages)))
        self.polls.append((d, max_messages))
        return d

    def delete_batch(self, queue_url, handles):
        self.calls["DeleteMessageBatch"] += 1
        failed = []
        for h in handles:
            raw = self.in_flight.pop(h, None)
            if raw is None:
                failed.append(h)
            else:
                self.deleted.append(raw["MessageId"])
        return succeed(failed)

    def change_visibility_batch(self, queue_url, handles, timeout):
        self.calls["ChangeMessageVisibilityBatch"] += 1
        failed = []
        for h in handles:
            raw = self.in_flight.get(h)
            if raw is None:
                failed.append(h)
            elif timeout == 0:
                del self.in_flight[h]
                self.released.append(raw["MessageId"])
                self.visible.append(raw)
            else:
                self.extended.append((raw["MessageId"], timeout))
        self._serve()
        return succeed(failed)

    def send_batch(self, queue_url, entries):
        self.calls["SendMessageBatch"] += 1
        self.sent.extend(entries)
        return succeed(self.put(*(e["MessageBody"] for e in entries)))

    def queue_attributes(self, queue_url, names=("All",)):
        self.calls["GetQueueAttributes"] += 1
        if self.error is not None:
            return fail(self.error)
        return succeed({})

    def counts(self) -> tuple[int, int]:
        return len(self.visible), len(self.in_flight)


class Recorder:
    """A consumer that records deliveries; the test acks, nacks, pauses by hand."""

    def __init__(self) -> None:
        self.delivered: list = []
        self.ended: list[str] = []
        self.sub = None

    def deliver(self, messages) -> None:
        self.delivered.extend(messages)

    def gap(self, info) -> None:
        pass

    def source_ended(self, reason) -> None:
        self.ended.append(reason)

    def ids(self) -> list[str]:
        return [m.id for m in self.delivered]
