"""
The stream routes: publish (C{POST /streams/NAME/messages}), read
(C{GET /streams/NAME}, C{.../sample}, C{POST .../filter}) and acknowledge
(C{POST /streams/NAME/ack}).
"""

from __future__ import annotations

import secrets

from twisted.internet.defer import Deferred
from twisted.web.http import parse_qs

from streamd import filters
from streamd.errors import (
    InvalidRequest,
    SourceDown,
    TooLarge,
    Unknown,
    UnsupportedMediaType,
)
from streamd.message import InvalidPayload, decode_body
from streamd.web.common import (
    BODY_TYPES,
    JSON_TYPES,
    arg,
    bool_arg,
    content_type,
    json_body,
    json_response,
    opened,
    query,
    read_body,
    readable,
    retry_after,
    stream_options,
)
from streamd.web.routes import routes


@routes.route("/streams/<name>/messages", methods=["POST"])
def publish(web, request, name):
    # Not a coroutine: most sources publish synchronously, and a one-message POST
    # is the common case, where the coroutine and Deferred layers cost more than
    # the publish itself.
    web.identify(request, "publish", name)
    source, settings = web.service.source(name)
    top = web.settings
    body = read_body(request, BODY_TYPES, top.max_body_bytes, "one value")
    try:
        payloads = decode_body(body, content_type(request), top.max_json_depth)
    except InvalidPayload as e:
        raise InvalidRequest(f"line {e.line}: {e.reason}") from None
    max_message = settings.max_message_bytes
    for n, payload in enumerate(payloads, 1):
        if len(payload) > max_message:
            raise TooLarge(
                f"line {n}: message over max_message_bytes ({max_message} bytes)"
            )
    if not payloads:
        raise InvalidRequest("no message in the body")
    state, reason = source.status()
    if state != "ok":
        raise SourceDown(f"stream {name!r} is down: {reason}", retry_after(settings))
    params = {k: v[-1] for k, v in query(request).items()} if request.args else {}
    started = web.reactor.seconds()
    ids = source.publish(payloads, params)
    if isinstance(ids, Deferred):
        return ids.addCallback(_published, web, request, name, source, len(payloads),
                               started)
    return _published(ids, web, request, name, source, len(payloads), started)


def _published(ids, web, request, name, source, count, started):
    web.published(name, source.kind, count, started)
    return json_response(request, 202, {"ids": ids})


@routes.route("/streams/<name>", methods=["GET"])
def stream(web, request, name):
    return _open(web, request, name, query(request))


@routes.route("/streams/<name>/sample", methods=["GET"])
def sample(web, request, name):
    """The stream at its configured C{sample} rate (unless the request names one)."""
    return _open(web, request, name, query(request), sample=True)


@routes.route("/streams/<name>/filter", methods=["POST"])
def filtered(web, request, name):
    """
    Filters in the body (for lists too long for a URL): a form, or JSON such as
    C{{"track": ["a b", "c"], "follow": ["12"], "locations": [-10, 35, 5, 45],
    "where": {"kind": ["x", "y"]}}}. Query parameters still apply.
    """
    ctype = content_type(request)
    limit = web.settings.max_body_bytes
    if ctype == "application/x-www-form-urlencoded":
        # The Site leaves form bodies alone (see streamd.web.site): parsed here, as
        # Twisted would, over the query's values of the same names.
        request.args.update(parse_qs(request.content.read(limit), 1))
    params = query(request)
    if ctype == "application/json":
        body = request.content.read(limit)
        params.update(filters.params_from_json(
            json_body(body or b"{}", web.settings.max_json_depth)))
    return _open(web, request, name, params)


def _open(web, request, name: str, params: dict[str, list[str]], sample: bool = False):
    identity = web.identify(request, "read", name)
    source, settings = web.service.source(name)
    chosen, limit, heartbeat, since = stream_options(request, params, settings.heartbeat)
    if since is not None and arg(params, "since") is None and \
            not getattr(source, "resumes_by_id", True):
        # Last-Event-ID, which a browser's EventSource sends by itself on reconnecting,
        # and after any answer but a 200 it never tries again: a queue has nothing to
        # resume (what was not acknowledged comes back), so it is no error (?since= is).
        since = None
    ack = arg(params, "ack")
    if ack is None:
        ack = settings.ack
    if ack not in ("write", "client"):
        raise InvalidRequest(f"ack: expected write or client, got {ack!r}")
    stream_filter = filters.parse(params, settings, settings.sample if sample else None)
    stall_warnings = bool_arg(params, "stall_warnings")
    # A source that is down: 503, or (on_source_down = "wait") the stream all the same.
    reading = readable(source, settings, request, chosen, web.reactor,
                       f"stream {name!r} is down")
    if request.method == b"HEAD":
        # Headers only: a stream whose body nobody will read must not be opened.
        request.setHeader(b"Content-Type", chosen.content_type)
        return b""
    return opened(web.open_streams.open(
        request, reading, chosen, identity, settings,
        name=name,
        metrics=web.service.metrics.for_stream(web.service.metrics_label(name),
                                               source.kind),
        limit=limit,
        heartbeat=heartbeat,
        since=since,
        ack=ack,
        session=secrets.token_urlsafe(18) if ack == "client" else None,
        filter=stream_filter,
        stall_warnings=stall_warnings,
    ), reading)


@routes.route("/streams/<name>/ack", methods=["POST"])
def ack(web, request, name):
    web.identify(request, "read", name)
    web.service.source(name)
    if content_type(request) not in JSON_TYPES:
        raise UnsupportedMediaType("send application/json")
    body = json_body(request.content.read(web.settings.max_body_bytes),
                     web.settings.max_json_depth)
    if not isinstance(body, dict):
        raise InvalidRequest('body: expected {"session": ..., "ids": [...]}')
    session, ids = body.get("session"), body.get("ids")
    if not isinstance(session, str):
        raise InvalidRequest("session: expected the Streamd-Session header's value")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids: expected a list of message ids (strings)")
    stream = web.open_streams.sessions.get(session)
    if stream is None or stream.name != name:
        raise Unknown(f"no open client-ack session {session!r} on stream {name!r}")
    acked, unknown = stream.client_acked(ids)
    return json_response(request, 200, {"acked": acked, "unknown": unknown})
