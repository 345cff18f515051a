"""
What the parent and its workers say to each other: AMP commands over one UNIX socket per
worker (L{streamd.workers.broker} answers in the parent, L{streamd.workers.remote} in a
worker).

AMP carries values of at most 65,535 bytes; a batch of messages (a 6 MB publish) is more.
L{Blob} spreads one value over as many keys of the box as it needs, so a command still
crosses in one box, in order with every other box on the connection: a subscriber's
replay answer and the batches that follow it can never overtake each other.

Messages of a memory stream are one line of JSON each (L{streamd.message.normalize_json})
and their ids are consecutive, so a batch crosses as its first id and its payloads joined
by newlines.
"""

from __future__ import annotations

import json

from twisted.protocols import amp

CHUNK = amp.MAX_VALUE_LENGTH


class Blob(amp.Argument):
    """Bytes of any length: C{name}, then C{name.1}, C{name.2}, ... of 65,535 bytes each."""

    def toBox(self, name, strings, objects, proto):
        value = objects.pop(name.decode(), None) if self.optional else objects.pop(
            name.decode())
        if value is None:
            return
        strings[name] = value[:CHUNK]
        for n, start in enumerate(range(CHUNK, len(value), CHUNK), 1):
            strings[name + b".%d" % n] = value[start:start + CHUNK]

    def fromBox(self, name, strings, objects, proto):
        first = strings.pop(name, None)
        if first is None:
            objects[name.decode()] = None
            return
        parts = [first]
        n = 1
        while (part := strings.pop(name + b".%d" % n, None)) is not None:
            parts.append(part)
            n += 1
        objects[name.decode()] = b"".join(parts)


class Json(amp.Argument):
    """A JSON value (small: a status, a gap notice, a list of channel names)."""

    def toString(self, inObject):
        return json.dumps(inObject, separators=(",", ":")).encode()

    def fromString(self, inString):
        return json.loads(inString)


def join(payloads: list[bytes]) -> bytes:
    return b"\n".join(payloads)


def split(data: bytes) -> list[bytes]:
    return data.split(b"\n") if data else []


class BrokerError(Exception):
    """A request the broker refused; C{args[0]} is the kind, C{args[1]} the message."""


_ERRORS: dict[type[Exception], bytes] = {BrokerError: b"BROKER"}

# -- worker -> parent ------------------------------------------------------------------


class Hello(amp.Command):
    """A worker is up: its index and pid. The answer: the channel values and subscriptions."""

    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer())]
    response = [(b"channels", Json()), (b"subscriptions", Json()), (b"store", Json())]


class Publish(amp.Command):
    """
    The publishes of one reactor turn of a worker: C{streams} is C{[[name, count], ...]},
    C{payloads} all their payloads in that order. The answer: each one's first id (a
    publish's ids are consecutive). One box for many POSTs: the parent handles them in
    one turn, so they reach the readers as one batch.
    """

    arguments = [(b"streams", Json()), (b"payloads", Blob())]
    response = [(b"firsts", Json())]
    errors = _ERRORS


class Subscribe(amp.Command):
    """
    This worker has (another) reader of C{stream}: from now on it gets the stream's
    batches. The answer: what a resume from C{since} replays, and the gap notice if any.
    """

    arguments = [(b"stream", amp.Unicode()), (b"since", amp.Unicode(optional=True))]
    response = [(b"first", amp.Integer()), (b"payloads", Blob()),
                (b"gap", Json(optional=True))]
    errors = _ERRORS


class Unsubscribe(amp.Command):
    """This worker has no reader of C{stream} left."""

    arguments = [(b"stream", amp.Unicode())]
    requiresAnswer = False


class SetChannel(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"value", Blob())]
    response = []


class CreateSubscription(amp.Command):
    """A channel subscription made on a worker: every other worker learns of it."""

    arguments = [(b"id", amp.Unicode()), (b"channels", Json()), (b"owner", amp.Unicode())]
    response = []


class ChangeSubscription(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"add", Json()), (b"remove", Json())]
    response = []


class EndSubscription(amp.Command):
    """Deleted (C{DELETE}), or forgotten after C{expire} seconds without a stream."""

    arguments = [(b"id", amp.Unicode()), (b"deleted", amp.Boolean())]
    response = []


class SubscriptionUsed(amp.Command):
    """A stream of subscription C{id} opened (+1) or ended (-1) on a worker."""

    arguments = [(b"id", amp.Unicode()), (b"delta", amp.Integer())]
    requiresAnswer = False


class Gather(amp.Command):
    """Ask the parent for what all workers report (C{what}: "status" or "metrics")."""

    arguments = [(b"what", amp.Unicode())]
    response = [(b"result", Blob())]


class Reserve(amp.Command):
    """
    One more open stream for C{identity}, unless it already has C{limit} across the
    workers; C{delta} -1 gives one back.
    """

    arguments = [(b"identity", amp.Unicode()), (b"delta", amp.Integer()),
                 (b"limit", amp.Integer())]
    response = [(b"ok", amp.Boolean())]


class StoreCall(amp.Command):
    """One call of the event store's (L{streamd.workers.store}); arguments and answer pickled."""

    arguments = [(b"method", amp.Unicode()), (b"args", Blob())]
    response = [(b"result", Blob())]


# -- parent -> worker ------------------------------------------------------------------


class Deliver(amp.Command):
    """A batch of C{stream} for this worker's readers."""

    arguments = [(b"stream", amp.Unicode()), (b"first", amp.Integer()),
                 (b"payloads", Blob())]
    requiresAnswer = False


class Ended(amp.Command):
    """The parent ended C{stream} (shutdown): its readers get the notice."""

    arguments = [(b"stream", amp.Unicode()), (b"reason", amp.Unicode())]
    requiresAnswer = False


class ChannelChanged(amp.Command):
    arguments = [(b"name", amp.Unicode()), (b"value", Blob())]
    requiresAnswer = False


class SubscriptionCreated(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"channels", Json()), (b"owner", amp.Unicode())]
    requiresAnswer = False


class SubscriptionChanged(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"add", Json()), (b"remove", Json())]
    requiresAnswer = False


class SubscriptionEnded(amp.Command):
    arguments = [(b"id", amp.Unicode()), (b"deleted", amp.Boolean())]
    requiresAnswer = False


class StoreInserted(amp.Command):
    """Another worker inserted events C{first} to C{last} into the event store."""

    arguments = [(b"first", amp.Integer()), (b"last", amp.Integer())]
    requiresAnswer = False


class Report(amp.Command):
    """The parent asks a worker for its part of a L{Gather}."""

    arguments = [(b"what", amp.Unicode())]
    response = [(b"result", Blob())]
