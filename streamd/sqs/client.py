"""
An asynchronous SQS client: treq sends what L{streamd.sqs.aws} builds and signs.

Throttling, 5xx answers, timeouts and connection failures are retried with
exponential backoff (Twisted's C{backoffPolicy}) and full jitter (the clock and the
random source are injected); anything else (a missing queue, access denied, a bad
parameter) is raised at once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from streamd.net import client_endpoint
from streamd.sqs.aws import Credentials, SQSError, SQSProtocol, region_of

#: SQS's limit of entries in one batch call.
BATCH = 10

#: SQS's limit on the bodies of one SendMessageBatch call (256 KiB).
BATCH_BYTES = 256 * 1024

#: Seconds a request may take beyond its long-poll wait before it counts as lost.
MARGIN = 10.0

#: Seconds a connection to SQS may take to open (Twisted's Agent uses the same).
CONNECT_TIMEOUT = 30.0

_NETWORK_ERRORS = (
    neterror.ConnectError, neterror.ConnectionLost, neterror.ConnectionDone,
    neterror.DNSLookupError, ResponseFailed, ResponseNeverReceived, RequestNotSent,
    RequestTransmissionFailed, neterror.TimeoutError,
)


#: Errors whose AWS message may quote the canonical request (and so a session token).
_SIGNATURE_ERRORS = frozenset({"SignatureDoesNotMatch", "IncompleteSignature",
                               "InvalidSignatureException"})


#: Shorter credential values are not searched for in error messages.
MIN_SCRUBBED = 8


def scrub(e: SQSError, credentials) -> None:
    """Keep credential values out of an error that may be logged or shown."""
    if e.code in _SIGNATURE_ERRORS:
        e.message = "signature rejected: check the secret key and the clock"
    for secret in (credentials.secret_key, credentials.token):
        # A secret of a few characters (a demo's "x") cannot be told apart from the
        # words around it; replacing it would only mangle the message. Real keys are 40.
        if secret and len(secret) >= MIN_SCRUBBED and secret in e.message:
            e.message = e.message.replace(secret, "(hidden)")
    e.args = (f"{e.code}: {e.message}" if e.message else e.code,)


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """An endpoint whose connections' factories log nothing when they start or stop."""

    def __init__(self, endpoint) -> None:
        self.endpoint = endpoint

    def connect(self, factory):
        # Twisted's connection pool makes one factory per connection, and each says
        # "Starting factory ..." and "Stopping factory ...": noise, not news.
        # Factory.noisy is the public switch for exactly that.
        factory.noisy = False
        return self.endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class QuietEndpoints:
    """
    The endpoints Twisted's C{Agent} would use (TCP, or TLS checked against the
    system's CAs for C{https}), without the two log lines per pooled connection; for
    C{Agent.usingEndpointFactory}.
    """

    def __init__(self, reactor, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri):
        return _QuietEndpoint(client_endpoint(
            self.reactor, uri.host.decode("ascii"), uri.port, self.connect_timeout,
            tls=uri.scheme == b"https"))


def _send_chunks(entries: list[dict[str, Any]]):
    """Entries with their C{Id}s, grouped by SQS's per-call count and size limits."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for i, entry in enumerate(entries):
        n = len(entry["MessageBody"].encode())
        if chunk and (len(chunk) == BATCH or size + n > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append({"Id": str(i), **entry})
        size += n
    if chunk:
        yield chunk


def _outcome(e: SQSError) -> str:
    """A bounded label for the request metric."""
    if e.code in ("Timeout", "ConnectionError"):
        return e.code.lower()
    if e.status is not None and e.status >= 500:
        return "server_error"
    return "throttled" if e.retryable else "client_error"


def _timed_out(result, timeout: float):
    """C{Deferred.addTimeout}'s hook, called only once the timeout has cancelled the
    request: whatever the cancelled request failed with is our timeout."""
    if isinstance(result, Failure):
        return Failure(SQSError("Timeout", f"no answer in {timeout:g}s"))
    return result


def _cancelled(e: Exception) -> bool:
    if isinstance(e, CancelledError):
        return True
    return any(r.check(CancelledError) for r in getattr(e, "reasons", ()))


@attrs.define(eq=False, slots=False)
class SQSClient:
    """
    The calls the SQS source needs, each an C{async def}.

    @param http: a treq C{HTTPClient} (or anything with its C{request} signature).
    @param clock: an C{IReactorTime}: timeouts and backoff delays.
    @param random: returns a float in [0, 1) for the jitter.
    @ivar calls: how many requests were sent, by operation (retries included).
    """

    http: Any
    protocol: SQSProtocol
    credentials: Credentials
    clock: Any
    max_attempts: int = attrs.field(default=6, kw_only=True)
    base_delay: float = attrs.field(default=0.1, kw_only=True)
    max_delay: float = attrs.field(default=5.0, kw_only=True)
    timeout: float = attrs.field(default=30.0, kw_only=True)
    random: Callable[[], float] = attrs.field(default=random.random, kw_only=True)
    metrics: Any = attrs.field(default=None, kw_only=True)  # streamd.metrics.Metrics
    calls: Counter[str] = attrs.field(init=False, factory=Counter)
    # backoffPolicy's own jitter is added to the delay; full jitter scales it instead
    # (see backoff()), so its jitter is zero here.
    _curve: Callable[[int], float] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._curve = backoffPolicy(self.base_delay, self.max_delay, 2.0, jitter=lambda: 0.0)

    @classmethod
    def connect(cls, reactor, queue_url: str, region: str | None = None,
                endpoint: str | None = None, profile: str | None = None,
                connections: int = 4, metrics=None) -> SQSClient:
        """A client with its own persistent connection pool and the standard chain."""
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = connections
        agent = Agent.usingEndpointFactory(reactor, QuietEndpoints(reactor), pool=pool)
        http = treq.client.HTTPClient(agent)
        region = region or region_of(queue_url) or "us-east-1"
        return cls(http, SQSProtocol(region, endpoint),
                   Credentials.from_chain(reactor, profile), reactor, metrics=metrics)

    def backoff(self, attempt: int) -> float:
        """
        Seconds to wait before retry number C{attempt} (1-based): full jitter, a
        random share of C{min(max_delay, base_delay * 2 ** (attempt - 1))}.
        """
        return self._curve(attempt - 1) * self.random()

    async def call(self, operation: str, params: dict[str, Any],
                   timeout: float | None = None) -> dict[str, Any]:
        """
        Send C{operation}, retrying what is worth retrying.

        @raise botocore.exceptions.ParamValidationError: before anything is sent.
        @raise SQSError: an answer not worth retrying, or the last of the attempts.
        """
        attempt = 0
        while True:
            attempt += 1
            credentials = await self.credentials.get()
            request = self.protocol.build(operation, params, credentials)
            try:
                return await self._send(operation, request, timeout or self.timeout)
            except SQSError as e:
                scrub(e, credentials)
                if not e.retryable or attempt >= self.max_attempts:
                    raise
            await deferLater(self.clock, self.backoff(attempt), lambda: None)

    async def _send(self, operation: str, request, timeout: float) -> dict[str, Any]:
        self.calls[operation] += 1
        outcome = "error"
        try:
            answer = await self._exchange_parsed(operation, request, timeout)
            outcome = "ok"
            return answer
        except SQSError as e:
            outcome = _outcome(e)
            raise
        except CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.sqs_requests.labels(operation, outcome).inc()

    async def _exchange_parsed(self, operation: str, request, timeout: float):
        d: Deferred = ensureDeferred(self._exchange(request))
        d.addTimeout(timeout, self.clock, onTimeoutCancel=_timed_out)
        try:
            status, headers, body = await d
        except SQSError:
            raise  # our timeout
        except Exception as e:
            # Cancelling an Agent request fails it with ResponseNeverReceived wrapping a
            # CancelledError: tell our caller's cancel and the network apart.
            if _cancelled(e):
                raise CancelledError() from None
            if isinstance(e, _NETWORK_ERRORS):
                raise SQSError("ConnectionError", type(e).__name__) from None
            raise
        return self.protocol.parse(operation, status, headers, body)

    async def _exchange(self, request):
        response = await self.http.request(
            request.method, request.url, headers=request.headers, data=request.body
        )
        body = await response.content()
        headers = {k.decode("latin-1"): b", ".join(v).decode("latin-1")
                   for k, v in response.headers.getAllRawHeaders()}
        return response.code, headers, body

    async def receive(self, queue_url: str, *, max_messages: int = 10, wait: int = 20,
                      visibility: int | None = None,
                      message_attributes: Iterable[str] = ("All",),
                      system_attributes: Iterable[str] = ()) -> list[dict[str, Any]]:
        """ReceiveMessage (a long poll of C{wait} seconds): the messages, maybe none."""
        params: dict[str, Any] = {
            "QueueUrl": queue_url, "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait, "MessageAttributeNames": list(message_attributes),
        }
        if system_attributes:
            params["MessageSystemAttributeNames"] = list(system_attributes)
        if visibility is not None:
            params["VisibilityTimeout"] = visibility
        answer = await self.call("ReceiveMessage", params, timeout=wait + MARGIN)
        return answer.get("Messages", [])

    async def delete_batch(self, queue_url: str, handles: list[str]) -> list[str]:
        """DeleteMessageBatch in calls of 10; returns the handles SQS did not delete."""
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        return await self._batches("DeleteMessageBatch", queue_url, entries, handles)

    async def change_visibility_batch(self, queue_url: str, handles: list[str],
                                      timeout: int) -> list[str]:
        """ChangeMessageVisibilityBatch to C{timeout} seconds; returns the failed handles."""
        entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": timeout}
                   for i, h in enumerate(handles)]
        return await self._batches("ChangeMessageVisibilityBatch", queue_url, entries,
                                   handles)

    async def _batches(self, operation: str, queue_url: str, entries: list[dict],
                       handles: list[str]) -> list[str]:
        failed: list[str] = []
        for start in range(0, len(entries), BATCH):
            answer = await self.call(operation, {
                "QueueUrl": queue_url, "Entries": entries[start:start + BATCH]
            })
            failed.extend(handles[int(f["Id"])] for f in answer.get("Failed", []))
        return failed

    async def send_batch(self, queue_url: str, entries: list[dict[str, Any]]) -> list[Any]:
        """
        SendMessageBatch in calls of at most 10 entries and L{BATCH_BYTES}. C{entries}
        are SendMessageBatchRequestEntry dicts without C{Id}; returns, in order, each
        MessageId or the L{SQSError} that refused that entry.
        """
        out: list[Any] = [None] * len(entries)
        for chunk in _send_chunks(entries):
            answer = await self.call("SendMessageBatch",
                                     {"QueueUrl": queue_url, "Entries": chunk})
            for ok in answer.get("Successful", []):
                out[int(ok["Id"])] = ok["MessageId"]
            for bad in answer.get("Failed", []):
                out[int(bad["Id"])] = SQSError(bad.get("Code", "Failed"),
                                               bad.get("Message", ""))
        return out

    async def queue_attributes(self, queue_url: str,
                               names: Iterable[str] = ("All",)) -> dict[str, str]:
        """GetQueueAttributes: also the cheapest way to ask "is the queue there?"."""
        answer = await self.call("GetQueueAttributes",
                                 {"QueueUrl": queue_url, "AttributeNames": list(names)})
        return answer.get("Attributes", {})
