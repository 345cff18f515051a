"""
SQS requests without I/O: botocore builds, signs (SigV4) and parses them; the caller
sends them (see L{streamd.sqs.client}).

The SQS service model speaks AWS JSON 1.0 (C{X-Amz-Target: AmazonSQS.<Op>}), so the
JSON serializer and parser go with it. Parameter errors raise botocore's
C{ParamValidationError} before anything could be sent.

Credentials come from botocore's standard chain (environment, shared config and
credentials files, profiles, container and instance roles). Resolving or refreshing
them may block on files or the network, so L{Credentials} does it in a thread, and
refreshes temporary credentials before they expire. No credential value is ever put
in a log line, a C{repr} or an error message.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from botocore import loaders, model, parsers, serialize
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest, create_request_object, prepare_request_dict
from botocore.credentials import ReadOnlyCredentials
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: Error codes that mean "slow down": retried with backoff, like 5xx answers.
THROTTLING = frozenset({
    "ThrottlingException", "Throttling", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "AWS.SimpleQueueService.RequestThrottled",
    "KmsThrottled", "KMS.ThrottlingException", "RequestLimitExceeded",
})

#: Error codes that mean the queue cannot be used as configured (gone, or not ours):
#: retrying soon will not help, so the source reports itself down until they clear.
UNUSABLE = frozenset({
    "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue",
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
    "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidSecurity",
    "ExpiredToken", "ExpiredTokenException", "MissingAuthenticationToken",
    "KMS.AccessDeniedException", "KmsAccessDenied", "KMS.DisabledException",
    "QueueDeletedRecently", "AWS.SimpleQueueService.QueueDeletedRecently",
})


class SQSError(Exception):
    """
    An error answer from SQS (or no answer at all).

    @ivar code: AWS's error code (C{QueueDoesNotExist}, C{ThrottlingException}, ...),
        or C{"ConnectionError"} when no answer came.
    @ivar status: the HTTP status, or None when no answer came.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth trying again soon: throttled, a server-side error, or no answer."""
        return (
            self.status is None or self.status >= 500 or self.status == 429
            or self.code in THROTTLING
        )

    @property
    def unusable(self) -> bool:
        """The queue is missing or access is refused: the source is down."""
        return self.code in UNUSABLE or self.status == 403


class NoCredentials(SQSError):
    """The credential chain found nothing (or failed): names no value, by design."""

    def __init__(self, detail: str = "no AWS credentials found") -> None:
        super().__init__("NoCredentials", detail)

    retryable = False
    unusable = True


class FrozenCredentials:
    """One consistent set of keys, shown as C{<FrozenCredentials AKID…>} at most."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token

    def __repr__(self) -> str:
        return "<FrozenCredentials (hidden)>"


def botocore_chain(profile: str | None = None):
    """
    Resolve botocore's standard credential chain (blocking: run it in a thread).

    Honours C{AWS_ACCESS_KEY_ID}/..., C{AWS_PROFILE}, C{AWS_CONFIG_FILE},
    C{AWS_SHARED_CREDENTIALS_FILE}, container and instance roles. Returns botocore's
    credentials object (refreshable for temporary credentials) or None.
    """
    import botocore.session

    session = botocore.session.Session(profile=profile)
    return session.get_credentials()


class Credentials:
    """
    The credentials requests are signed with, resolved and refreshed off the reactor
    thread.

    @param run_blocking: runs a blocking callable in a thread and returns a Deferred
        with its result (e.g. C{partial(deferToThreadPool, reactor, pool)}).
    @param resolve: returns botocore credentials (blocking), or None when none exist.
    """

    def __init__(self, run_blocking: Callable[[Callable[[], Any]], Deferred],
                 resolve: Callable[[], Any]) -> None:
        self._run_blocking = run_blocking
        self._resolve = resolve
        self._source: Any = None  # botocore's (possibly refreshable) credentials
        self._frozen: FrozenCredentials | None = None
        self._waiters: list[Deferred] | None = None

    @classmethod
    def from_chain(cls, reactor, profile: str | None = None, threadpool=None) -> Credentials:
        """The standard chain, resolved in C{threadpool} (default: the reactor's)."""
        from twisted.internet.threads import deferToThreadPool

        pool = threadpool if threadpool is not None else reactor.getThreadPool()
        return cls(functools.partial(deferToThreadPool, reactor, pool),
                   functools.partial(botocore_chain, profile))

    @classmethod
    def static(cls, access_key: str, secret_key: str, token: str | None = None):
        """Fixed keys (tests, or keys given by the caller): nothing to resolve."""
        from botocore.credentials import Credentials as Static
        from twisted.internet.defer import maybeDeferred

        return cls(maybeDeferred, lambda: Static(access_key, secret_key, token))

    def _stale(self) -> bool:
        if self._frozen is None:
            return True
        # RefreshableCredentials says when it is inside its advisory window (15 minutes
        # before expiry by default); static credentials never need refreshing.
        needed = getattr(self._source, "refresh_needed", None)
        return bool(needed and needed())

    async def get(self) -> FrozenCredentials:
        """Current credentials; resolves or refreshes them in a thread when needed."""
        if self._frozen is not None and not self._stale():
            return self._frozen
        waiter: Deferred = Deferred()
        if self._waiters is None:
            # One resolution at a time, however many requests wait for it; a waiter
            # that is cancelled (its request abandoned) leaves the others waiting.
            self._waiters = [waiter]
            self._run_blocking(self._load).addBoth(self._loaded)
        else:
            self._waiters.append(waiter)
        return await waiter

    def _loaded(self, result) -> None:
        waiters, self._waiters = self._waiters or [], None
        if not isinstance(result, Failure):
            self._frozen = result
        for w in waiters:
            if not w.called:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

    def _load(self) -> FrozenCredentials:
        """Runs in a thread: resolve (once) and freeze (refreshing if due)."""
        try:
            if self._source is None:
                self._source = self._resolve()
            if self._source is None:
                raise NoCredentials()
            ro = self._source.get_frozen_credentials()
        except NoCredentials:
            raise
        except Exception as e:
            # botocore's messages name files and profiles, never key values; keep
            # only the exception type and that message to be sure nothing else leaks.
            raise NoCredentials(f"cannot load AWS credentials ({type(e).__name__})") from None
        if not ro.access_key or not ro.secret_key:
            raise NoCredentials()
        return FrozenCredentials(ro.access_key, ro.secret_key, ro.token)


class Request:
    """A signed request, ready to send: method, url, headers, body (bytes)."""

    __slots__ = ("method", "url", "headers", "body")

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:  # the headers hold the signature and any session token
        return f"<Request {self.method} {self.url} {len(self.body)}B>"


@functools.lru_cache(maxsize=1)
def _service_model() -> model.ServiceModel:
    return model.ServiceModel(loaders.Loader().load_service_model("sqs", "service-2"), "sqs")


def region_of(queue_url: str) -> str | None:
    """C{us-west-2} from C{https://sqs.us-west-2.amazonaws.com/…}, else None."""
    host = urlsplit(queue_url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs" and parts[-2] == "amazonaws":
        return parts[1]
    return None


class SQSProtocol:
    """
    Builds signed SQS requests and parses SQS answers for one region and endpoint.

    @param endpoint: C{https://sqs.REGION.amazonaws.com} by default; a local server's
        URL for moto, LocalStack or ElasticMQ.
    @param now: returns the current UTC time (injected so signing can be tested).
    """

    def __init__(self, region: str, endpoint: str | None = None,
                 now: Callable[[], datetime.datetime] | None = None) -> None:
        self.region = region
        self.endpoint = endpoint or f"https://sqs.{region}.amazonaws.com"
        self._now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self._model = _service_model()
        self._serializer = serialize.create_serializer(
            self._model.protocol, include_validation=True
        )
        self._parser = parsers.create_parser(self._model.protocol)

    def build(self, operation: str, params: dict[str, Any],
              credentials: FrozenCredentials) -> Request:
        """
        A signed request for C{operation} with C{params}.

        @raise botocore.exceptions.ParamValidationError: C{params} do not fit the model.
        """
        op = self._model.operation_model(operation)
        rd = self._serializer.serialize_to_request(params, op)
        prepare_request_dict(rd, self.endpoint)
        aws = create_request_object(rd)
        _Signer(credentials, "sqs", self.region).sign(aws, self._now())
        prepared = aws.prepare()
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode()
        # The HTTP client frames the body itself: a second Content-Length is a 400.
        headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
        return Request(prepared.method, prepared.url, headers, body)

    def parse(self, operation: str, status: int, headers: dict[str, str],
              body: bytes) -> dict[str, Any]:
        """
        The answer to C{operation} as a dict.

        @raise SQSError: an error answer (code and message as AWS gave them).
        """
        op = self._model.operation_model(operation)
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            parsed = self._parser.parse(
                {"status_code": status, "headers": lowered, "body": body},
                # None for an operation that answers nothing (DeleteMessage): the JSON
                # parser takes it, though botocore-stubs types the argument as Shape.
                op.output_shape,  # type: ignore[arg-type]
            )
        except Exception as e:  # a proxy's HTML error page, a truncated body
            raise SQSError("BadResponse", f"unreadable answer ({type(e).__name__})",
                           status) from None
        if status >= 300 or "Error" in parsed:
            err = parsed.get("Error", {})
            code = err.get("QueryErrorCode") or err.get("Code") or f"HTTP{status}"
            raise SQSError(code, err.get("Message", ""), status)
        parsed.pop("ResponseMetadata", None)
        return parsed


class _Signer(SigV4Auth):
    """
    botocore's SigV4 with the time passed in, and without botocore's debug logging of
    the canonical request (which would carry a session token into the logs).
    """

    def __init__(self, credentials: FrozenCredentials, service_name: str,
                 region_name: str) -> None:
        # SigV4Auth reads the three fields of botocore's own frozen credentials; it is
        # made here, in the short-lived signer, because its repr shows the secret.
        super().__init__(
            ReadOnlyCredentials(credentials.access_key, credentials.secret_key,
                                credentials.token),
            service_name, region_name,
        )

    def sign(self, request: AWSRequest, now: datetime.datetime) -> None:
        request.context["timestamp"] = now.strftime(SIGV4_TIMESTAMP)
        # These two private helpers are all of SigV4Auth.add_auth besides the clock
        # and the logging; the published test vectors in tests/unit/test_aws.py pin them.
        # botocore-stubs declares only the public methods: hence the two ignores.
        self._modify_request_before_signing(request)  # type: ignore[attr-defined]
        canonical = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical)
        self._inject_signature_to_request(  # type: ignore[attr-defined]
            request, self.signature(string_to_sign, request))
