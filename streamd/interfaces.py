"""
The seams of streamd: what a source offers a stream, and what a stream offers back.

Demand flows up (a stream pauses and resumes its subscription), messages flow down
(a subscription hands lists of L{streamd.message.Message} to its consumer), and
acknowledgements flow back up to the source that owns the message.

This module is the public contract of a source plugin: a package adds a source kind by
naming an L{ISourceKind} in the C{streamd.sources} entry point group (see
L{streamd.sources}), whose sources provide L{ISource} and hand out L{ISubscription}s.
C{streamd.testing.conformance} checks a source against the guarantees written here.

Everything is called on the reactor thread, and nothing may block it: a source does
its I/O asynchronously and returns Deferreds where the contract allows them.
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
    """
    One consumer's attachment to a source, returned by L{ISource.subscribe}.

    What a durable source (C{durable = True}) must guarantee, and
    C{streamd.testing.conformance} checks:

      - B{Nothing is lost}: a message delivered to the consumer stays the source's
        (held, or kept by the broker) until C{ack}ed; C{nack}, C{cancel} of what was not
        given back, C{stop()}, a lost connection or a crash of streamd make it
        available again (at once for C{nack}; after C{cancel}, once the source stops
        waiting for late acks, see below; for the others as soon as the source's
        broker notices). Duplicates are allowed (at least once), loss is not.
      - B{Demand is obeyed}: after C{pause()}, no new read is started for this
        subscription; at most one read already under way (the source's in-flight
        bound, such as a receive batch or an AMQP prefetch window) may still be
        delivered, so a paused client costs bounded memory.
      - B{Acks are accepted at any time} after delivery, in any order, in any
        grouping, including after C{cancel()}: what the consumer had not settled
        when it cancelled stays the source's, out of other clients' reach, until it
        is settled, for a while at least (streamd's sources: SQS and AMQP 30 s, a
        Redis stream group 2/3 of C{claim_idle}, a Redis list until settled), so an ack then
        still counts (deleted, not delivered again) and a nack gives it back at once.
        An ack after that while, or after the connection that delivered the message
        was lost, is a no-op (the broker has taken the message back: at least once).
        An ack or nack for a message already settled is ignored, never an error.
      - B{Give-backs are exact}: a message nacked is delivered again (to this client
        or another); a message acked is not delivered again, not even after a
        restart of streamd (unless streamd died before the ack reached the server).

    Every method returns None and may be called from within L{IConsumer.deliver}.
    """

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
        Detach from the source: no C{deliver} after this returns. Messages delivered
        but neither acked nor nacked are given back by the caller first, or acked or
        nacked later (see the class doc); a source releases its resources for the
        subscription once they are settled, or once it gives up waiting, and then
        makes what is still unsettled available again.
        """


class ISource(Interface):
    """
    A named stream's supplier of messages (memory broker, SQS queue, Redis key).

    Built by its kind's L{ISourceKind.from_config} when the service starts (or when a
    dynamic stream is first used), then C{start()}ed once and C{stop()}ped once.
    A source that loses its server stays usable: C{status()} says C{down} with the
    reason, new subscriptions and publishes are refused with
    L{streamd.errors.SourceDown}, open subscriptions stay open and go on once the
    server is back.

    A source refuses what it cannot do by raising one of L{streamd.errors}' classes,
    whose message the client reads; the web layer alone chooses the HTTP status for
    each (L{streamd.web.errors}). Any other exception is an internal error: logged,
    and the client told no more than that.
    """

    name = Attribute("The stream name this source feeds.")
    kind = Attribute("The source kind from the config: memory, sqs, redis-list, ...")
    durable = Attribute(
        "True when messages are kept by the source until acked (SQS, Redis lists and "
        "streams): the stream then acks after write, or on the client's ack."
    )
    resumes_by_id = Attribute(
        "Optional, True when absent. False for a queue that cannot resume after an id "
        "(SQS, AMQP: what was not acknowledged comes back by itself): C{subscribe} then "
        "refuses C{since}, and the web layer does not pass it the C{Last-Event-ID} that a "
        "browser's EventSource sends on its own when it reconnects."
    )

    def start():
        """
        Connect (a Deferred, or None). Called once when the service starts; should
        fire once the server was tried once (up or down), and never fail: a source
        that cannot connect says so in C{status()} and keeps trying.
        """

    def stop():
        """
        End every open subscription (C{consumer.source_ended("shutdown")}: the stream
        writes what it can, acks that and nacks the rest), give back what is still
        held, release connections (a Deferred, or None).
        """

    def status():
        """C{("ok", None)} or C{("down", reason)}: shown on C{GET /} and C{/health}."""

    def subscribe(consumer, since=None):
        """
        Attach C{consumer} (an L{IConsumer}) and return an L{ISubscription}.

        C{since} is a message id the client already has (resume), or None to start
        with new messages. Raises L{streamd.errors.InvalidRequest} for an id this
        source cannot read, L{streamd.errors.SourceDown} when the source is down.
        May call C{consumer.deliver} before returning.
        """

    def publish(payloads, params):
        """
        Publish these JSON payloads (a list of bytes, each one line of JSON) and return
        a Deferred firing with their ids, or the ids directly. C{params} holds the
        request's query parameters (for source-specific options). Fails, for the
        client to see, with L{streamd.errors.InvalidRequest} (a bad parameter: the same
        request will fail again), L{streamd.errors.SourceDown} (the server is away, or
        went away during the publish: try again later) or L{streamd.errors.Refused}
        (the server turned some messages away; the message says which, and that the
        others went through).
        """


class ISourceKind(Interface):
    """
    What an entry point of the C{streamd.sources} group names: one source kind. The
    entry point's name is the kind (C{source = "NAME"} in a stream table); the object
    is usually the source class itself, with these as class attributes and
    classmethods.
    """

    config_keys = Attribute(
        "The keys a C{[streams.NAME]} table of this kind may set besides C{source} "
        "and the stream-level keys (heartbeat, ack, ...): a list of "
        "L{streamd.config.Key}, named unlike the stream-level keys. streamd checks each "
        "value, fills in defaults and reports a bad one in one line naming it "
        "(C{streams.NAME.KEY: problem}) when the service is built, not while it reads "
        "the settings (which import no kind): see L{streamd.sources.stream_table}."
    )

    def check_config(settings, where):
        """
        Optional: checks across keys, once each key is valid. C{settings} is the
        stream's validated table, defaults filled in: a read-only mapping (name ->
        value, a list key's value a tuple), with C{name} and C{source}; C{where} is
        its name (C{streams.NAME}). Raise L{streamd.config.ConfigError} naming the key.
        """

    def from_config(settings, services):
        """
        Build (do not start) the L{ISource} for one validated stream table (the
        read-only mapping C{check_config} gets); C{services} is a
        L{streamd.sources.Services} (the reactor, the whole settings as a
        L{streamd.config.Settings}, metrics).
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

    def pruned():
        """
        Fire with the highest id retention has removed (0 when none): a tail resuming
        from an older id may have missed events, and says so.
        """

    def listen(callback):
        """
        Call C{callback(events)} with every batch of events inserted through this
        store, in id order, once stored. Returns a function that stops listening.
        """
