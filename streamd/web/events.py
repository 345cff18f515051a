"""
The event store's HTTP surface:

  - C{POST /events}: insert one JSON object, or NDJSON; 201 with the ids.
  - C{GET /events?kind=friend&user=23&user=291&start=0&end=20&before=ID}: newest
    first, AND across keys, OR within a key.
  - C{GET /events/stream?kind=...&since=ID}: the live tail, a core L{Stream}.

The JSON-RPC methods on the same store are in L{streamd.web.jsonrpc}.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred

from streamd.errors import InvalidRequest, TooLarge, Unavailable
from streamd.message import InvalidPayload, decode_body
from streamd.store.base import (
    RESERVED,
    Query,
    QueryError,
    StoreUnavailable,
    make_filters,
    new_event,
    parse_id,
)
from streamd.store.tail import EventTail
from streamd.web.common import (
    BODY_TYPES,
    arg,
    content_type,
    int_arg,
    json_response,
    opened,
    read_body,
    readable,
    stream_options,
)
from streamd.web.common import query as query_params
from streamd.web.routes import routes

#: Query parameters of C{GET /events/stream} that are not filters.
STREAM_PARAMS = frozenset({"since", "limit", "format", "heartbeat", "access_token",
                           "identifier"})

#: The name access rules give the event store: C{read = ["events"]} lets an identity
#: query and tail it, C{publish = ["events"]} insert into it.
ACCESS_NAME = "events"


async def call_store(call):
    """Await a store call, its errors as HTTP errors (400, 503)."""
    try:
        return await ensureDeferred(call)
    except QueryError as e:
        raise InvalidRequest(str(e)) from None
    except StoreUnavailable as e:
        raise Unavailable(f"event store unavailable: {e}") from None


def check_up(store) -> None:
    """503 unless the event store is up."""
    state, reason = store.status()
    if state != "ok":
        raise Unavailable(f"event store unavailable: {reason}")


def _filters(request, keys, skip) -> tuple:
    raw: dict[str, list[str]] = {}
    for name, values in request.args.items():
        key = name.decode("utf-8", "replace")
        if key in skip:
            continue
        try:
            raw[key] = [v.decode() for v in values]
        except UnicodeDecodeError:
            raise InvalidRequest(f"{key}: not valid UTF-8") from None
    try:
        return make_filters(raw, keys)
    except QueryError as e:
        raise InvalidRequest(str(e)) from None


# strict_slashes=False: "/events/" is "/events" too.
@routes.route("/events", methods=["POST"], strict_slashes=False)
async def insert_events(web, request):
    web.identify(request, "publish", ACCESS_NAME)
    store, settings = web.service.store, web.settings
    body = read_body(request, BODY_TYPES, settings.max_body_bytes, "one object")
    try:
        payloads = decode_body(body, content_type(request), settings.max_json_depth)
    except InvalidPayload as e:
        raise InvalidRequest(f"line {e.line}: {e.reason}") from None
    if not payloads:
        raise InvalidRequest("no event in the body")
    max_message = settings.max_message_bytes
    events = []
    for n, raw in enumerate(payloads, 1):
        if len(raw) > max_message:
            raise TooLarge(
                f"line {n}: event over max_message_bytes ({max_message} bytes)")
        try:
            events.append(new_event(raw, store.keys))
        except QueryError as e:
            raise InvalidRequest(f"line {n}: {e}") from None
    check_up(store)
    stored = await call_store(store.insert(events))
    return json_response(request, 201, {"ids": [str(e.id) for e in stored]})


@routes.route("/events", methods=["GET"], strict_slashes=False)
async def query_events(web, request):
    web.identify(request, "read", ACCESS_NAME)
    store = web.service.store
    filters = _filters(request, store.keys, RESERVED)
    params = query_params(request)
    start = int_arg(params, "start", 0)
    end = int_arg(params, "end", 0)
    before = arg(params, "before")
    try:
        q = Query(
            filters,
            0 if start is None else start,
            20 if end is None else end,
            None if before is None else parse_id(before, "before"),
        )
    except QueryError as e:
        raise InvalidRequest(str(e)) from None
    check_up(store)
    found = await call_store(store.query(q))
    return json_response(request, 200, [e.envelope() for e in found])


@routes.route("/events/stream", methods=["GET"])
def stream_events(web, request):
    identity = web.identify(request, "read", ACCESS_NAME)
    store, settings = web.service.store, web.settings
    filters = _filters(request, store.keys, STREAM_PARAMS)
    params = query_params(request)
    chosen, limit, heartbeat, since = stream_options(request, params,
                                                     settings.heartbeat)
    try:
        since_id = None if since is None else parse_id(since, "since")
    except QueryError as e:
        raise InvalidRequest(str(e)) from None
    # Pages no bigger than max_pending: a paused stream holds at most one.
    tail = EventTail(store, filters, settings.max_pending)
    # The store down: 503, or (on_source_down = "wait") the tail all the same.
    reading = readable(tail, settings, request, chosen, web.reactor,
                       "event store unavailable")
    if request.method == b"HEAD":
        # Headers only: a tail whose body nobody will read must not be opened.
        request.setHeader(b"Content-Type", chosen.content_type)
        return b""
    return opened(web.open_streams.open(
        request, reading, chosen, identity, settings,
        name="events",
        metrics=web.service.metrics.for_stream("events", "events"),
        limit=limit,
        heartbeat=heartbeat,
        since=since_id,
    ), reading)
