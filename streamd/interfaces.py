"""
The seams of streamd: what a source offers a stream, and what a stream offers back.

Demand flows up (a stream pauses and resumes its subscription), messages flow down
(a subscription hands lists of L{streamd.message.Message} to its consumer), and
acknowledgements flow back up to the source that owns the message.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IConsumer(Interface):
    """What a subscription delivers to: in practice a L{streamd.stream.Stream}."""

    def deliver(messages):
        """
        Take these messages (a list, in source order).

        The consumer owns them from now on: each is later either acked
        (L{ISubscription.ack}: written, or acknowledged by the client) or given back
        (L{ISubscription.nack}: not written). A consumer that has reached its limit
        gives back the surplus at once.
        """

    def gap(info):
        """
        Tell the client that messages were missed (a resume id no longer buffered,
        a pub/sub outage). C{info} is a JSON-able dict.
        """

    def source_ended(reason):
        """The source will deliver nothing more (deleted, shut down): end the stream."""


class ISubscription(Interface):
    """One consumer's attachment to a source."""

    def pause():
        """Stop taking messages from the source (no more polls, no more reads)."""

    def resume():
        """Take messages again, continuing where the subscription stopped."""

    def ack(messages):
        """
        These messages were written to the client (or acknowledged by it): a durable
        source may now delete them. A no-op for at-most-once sources.
        """

    def nack(messages):
        """
        These messages were not written: a durable source makes them available again
        at once (for another client, or this one later).
        """

    def skip(messages):
        """
        The consumer's filter rejected these (optional; C{nack} is used when absent).
        A queue source gives them back so another client may take them; a broadcast
        source counts them as handled for this consumer.
        """

    def cancel():
        """
        Detach from the source and release what the subscription holds. Messages
        delivered but neither acked nor nacked are given back by the caller first.
        """


class ISource(Interface):
    """A named stream's supplier of messages (memory broker, SQS queue, Redis key)."""

    name = Attribute("The stream name this source feeds.")
    kind = Attribute("The source kind from the config: memory, sqs, redis-list, ...")
    durable = Attribute(
        "True when messages are kept by the source until acked (SQS, Redis lists and "
        "streams): the stream then acks after write, or on the client's ack."
    )

    def start():
        """Connect (a Deferred, or None). Called once when the service starts."""

    def stop():
        """Release connections and give back held messages (a Deferred, or None)."""

    def status():
        """C{("ok", None)} or C{("down", reason)}: shown on C{GET /} and C{/health}."""

    def subscribe(consumer, since=None):
        """
        Attach C{consumer} (an L{IConsumer}) and return an L{ISubscription}.

        C{since} is a message id the client already has (resume), or None to start
        with new messages. Raises L{streamd.errors.BadRequest} for an id this source
        cannot read, L{streamd.errors.Unavailable} when the source is down.
        """

    def publish(payloads, params):
        """
        Publish these JSON payloads (a list of bytes, each one line of JSON) and return
        a Deferred firing with their ids, or the ids directly. C{params} holds the
        request's query parameters (for source-specific options).
        """


class IStore(Interface):
    """
    The event store: events kept in insertion order, indexed by the configured keys,
    queried newest first ("AND across keys, OR within a key").

    Ids are integers that order events (insertion time in milliseconds times 1000,
    plus a sequence); every method that touches storage returns a Deferred so that a
    backend can do its I/O off the reactor thread or over the network.
    """

    keys = Attribute("The indexed fields, in configuration order (a tuple of str).")
    backend = Attribute("memory, sqlite or redis.")

    def start():
        """Open the storage (a Deferred, or None)."""

    def stop():
        """Close the storage (a Deferred, or None)."""

    def status():
        """C{("ok", None)} or C{("down", reason)}."""

    def insert(events):
        """
        Store these events (a list of L{streamd.store.base.NewEvent}) and fire with
        the stored L{streamd.store.base.Event}s, ids assigned, in insertion order.
        Listeners (L{listen}) are told after the events are stored.
        """

    def query(query):
        """
        Fire with the events matching a L{streamd.store.base.Query}, newest first,
        sliced by its C{start}/C{end} after the C{before} cursor.
        """

    def after(filters, since, limit):
        """
        Fire with at most C{limit} events matching C{filters} with ids greater than
        C{since}, oldest first (the catch-up of a live tail).
        """

    def listen(callback):
        """
        Call C{callback(events)} with every batch of events inserted through this
        store, in id order, once stored. Returns a function that stops listening.
        """


class Unacknowledged:
    """
    The subscription side of an at-most-once broadcast source (memory, pub/sub,
    channel values): nothing to pause at the source, nothing to ack or give back.
    A paused client's messages queue in its stream, bounded by its slow policy.
    """

    __slots__ = ()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def ack(self, messages) -> None:
        pass

    def nack(self, messages) -> None:
        pass

    def skip(self, messages) -> None:
        pass
