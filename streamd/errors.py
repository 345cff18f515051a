"""
streamd's own errors: what the service, the sources, filters, channels, the event store
and auth raise when they refuse a request, each saying in its message what was wrong,
for the client to read. They know nothing of HTTP: L{streamd.web.errors} alone turns
each class into a status code, a JSON body and headers (C{Retry-After},
C{WWW-Authenticate}), so that a source plugin chooses the meaning of a refusal, not a
status code.

A source plugin raises these too (see L{streamd.interfaces.ISource}): L{InvalidRequest}
for a request it cannot serve as asked, L{SourceDown} while its server is away,
L{Refused} when its server turned messages away.
"""

from __future__ import annotations


class StreamdError(Exception):
    """
    A request streamd refuses. C{message} (also C{str()}) is one sentence for the
    client: what was wrong, naming the parameter, key or line at fault.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(StreamdError):
    """
    The request asks for something that cannot be done as asked: a malformed or out of
    range parameter, a resume id this source cannot read, a body that is not what the
    route takes. Asking again unchanged fails again.
    """


class Unknown(StreamdError):
    """The request names something that does not exist (or no longer does)."""


class UnknownStream(Unknown):
    """No stream has that name (and C{dynamic_streams} does not make one)."""


class UnknownSubscription(Unknown):
    """No channel subscription has that id: it never existed, or it expired."""


class TooLarge(StreamdError):
    """A body, a message or a value is over its configured size limit."""


class UnsupportedMediaType(StreamdError):
    """A body in a format the route does not read (its declared media type)."""


class Unauthorized(StreamdError):
    """
    Who is asking cannot be told: no credentials, or credentials that are not valid.

    @ivar challenge: how to authenticate, in the form of a C{WWW-Authenticate} value
        (C{Bearer realm="streamd", error="invalid_token", ...}), so that a client
        library knows what to send.
    """

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(StreamdError):
    """Who is asking is known, and may not do this."""


class TooManyStreams(StreamdError):
    """
    An identity already has as many open streams as C{max_connections_per_identity}
    allows.

    @ivar retry_after: whole seconds after which one of them may well have ended.
    """

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(StreamdError):
    """
    The source's server turned messages away (SQS or the AMQP broker refused some of a
    batch); the message says which, and that the others went through. Not the
    client's fault, and not an outage.
    """


class Unavailable(StreamdError):
    """
    Something the request needs is down for now (a source's server, the event
    store): the same request may succeed later.

    @ivar retry_after: whole seconds a client should wait before it tries again, when
        streamd has a hint (a stream's C{retry} setting); None when it has none.
    """

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceDown(Unavailable):
    """
    A stream's source cannot reach its server: it refuses new subscriptions and
    publishes until it is back (open subscriptions wait, see
    L{streamd.interfaces.ISource}).
    """
