"""
The event store's HTTP surface, mounted by L{streamd.web.app.StreamdApp} under
C{/events} (plus C{POST /jsonrpc}):

  - C{POST /events}: insert one JSON object, or NDJSON; 201 with the ids.
  - C{GET /events?kind=friend&user=23&user=291&start=0&end=20&before=ID}: newest
    first, AND across keys, OR within a key.
  - C{GET /events/stream?kind=...&since=ID}: the live tail, a core L{Stream}.
  - C{POST /jsonrpc}: AwesomeStream's C{{"id", "method", "args", "kwargs"}} and
    JSON-RPC 2.0, methods C{insert} and C{items}.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from klein import Klein
from twisted.internet.defer import ensureDeferred

from streamd.errors import BadRequest, PayloadTooLarge, Unavailable
from streamd.json_input import InvalidJSON, parse
from streamd.message import InvalidPayload, decode_body
from streamd.store import make_store
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
from streamd.stream import Stream
from streamd.web.common import (
    BODY_TYPES,
    JSON_TYPES,
    arg,
    content_type,
    install_error_handler,
    int_arg,
    json_response,
    read_body,
    stream_options,
)
from streamd.web.common import query as query_params

#: Query parameters of C{GET /events/stream} that are not filters.
STREAM_PARAMS = frozenset({"since", "limit", "format", "heartbeat", "access_token",
                           "identifier"})

#: The name access rules give the event store: C{read = ["events"]} lets an identity
#: query and tail it, C{publish = ["events"]} insert into it.
ACCESS_NAME = "events"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class RPCError(Exception):
    """A JSON-RPC error: C{code} as in JSON-RPC 2.0."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventsAPI:
    """
    @ivar store: the L{streamd.interfaces.IStore}.
    @ivar root: the L{streamd.web.app.StreamdApp} that mounts us, for identities and
        access (L{ACCESS_NAME}), per-identity stream limits, metrics and the set of open
        streams that shutdown ends; None when used on its own (no access control).
    """

    app = Klein()

    def __init__(self, settings: dict[str, Any], reactor, store=None, root=None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.store = store if store is not None else make_store(settings, reactor)
        self.root = root
        self.open_streams: set[Stream] = set()  # on our own, without a root

    def _identify(self, request, action: str | None = None):
        if self.root is None:
            return None
        return self.root.identify(request, action, None if action is None else ACCESS_NAME)

    def start(self):
        return self.store.start()

    def stop(self):
        return self.store.stop()

    def status(self) -> dict[str, Any]:
        state, reason = self.store.status()
        return {"backend": self.store.backend, "keys": list(self.store.keys),
                "status": state, "reason": reason}

    # -- calls into the store, with its errors as HTTP errors ----------------------

    async def _store(self, call):
        try:
            return await ensureDeferred(call)
        except QueryError as e:
            raise BadRequest(str(e)) from None
        except StoreUnavailable as e:
            raise Unavailable(f"event store unavailable: {e}") from None

    def _check_up(self) -> None:
        state, reason = self.store.status()
        if state != "ok":
            raise Unavailable(f"event store unavailable: {reason}")

    def _body(self, request, types) -> bytes:
        return read_body(request, types, self.settings["max_body_bytes"], "one object")

    # -- insert ----------------------------------------------------------------------

    # strict_slashes=False: mounted as a branch, "/events" reaches us as "" and would
    # otherwise be redirected to "/events/".
    @app.route("/", methods=["POST"], strict_slashes=False)
    async def insert(self, request):
        self._identify(request, "publish")
        body = self._body(request, BODY_TYPES)
        try:
            payloads = decode_body(body, content_type(request), self.settings["max_json_depth"])
        except InvalidPayload as e:
            raise BadRequest(f"line {e.line}: {e.reason}") from None
        if not payloads:
            raise BadRequest("no event in the body")
        max_message = self.settings["max_message_bytes"]
        events = []
        for n, raw in enumerate(payloads, 1):
            if len(raw) > max_message:
                raise PayloadTooLarge(
                    f"line {n}: event over max_message_bytes ({max_message} bytes)")
            try:
                events.append(new_event(raw, self.store.keys))
            except QueryError as e:
                raise BadRequest(f"line {n}: {e}") from None
        self._check_up()
        stored = await self._store(self.store.insert(events))
        return json_response(request, 201, {"ids": [str(e.id) for e in stored]})

    # -- query -------------------------------------------------------------------------

    def _filters(self, request, skip) -> tuple:
        raw: dict[str, list[str]] = {}
        for name, values in request.args.items():
            key = name.decode("utf-8", "replace")
            if key in skip:
                continue
            try:
                raw[key] = [v.decode() for v in values]
            except UnicodeDecodeError:
                raise BadRequest(f"{key}: not valid UTF-8") from None
        try:
            return make_filters(raw, self.store.keys)
        except QueryError as e:
            raise BadRequest(str(e)) from None

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def query(self, request):
        self._identify(request, "read")
        filters = self._filters(request, RESERVED)
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
            raise BadRequest(str(e)) from None
        self._check_up()
        found = await self._store(self.store.query(q))
        return json_response(request, 200, [e.envelope() for e in found])

    # -- live tail ---------------------------------------------------------------------

    @app.route("/stream", methods=["GET"])
    def stream(self, request):
        identity = self._identify(request, "read")
        filters = self._filters(request, STREAM_PARAMS)
        params = query_params(request)
        chosen, limit, heartbeat, since = stream_options(request, params,
                                                         self.settings["heartbeat"])
        try:
            since_id = None if since is None else parse_id(since, "since")
        except QueryError as e:
            raise BadRequest(str(e)) from None
        self._check_up()
        if request.method == b"HEAD":
            # Headers only: a tail whose body nobody will read must not be opened.
            request.setHeader(b"Content-Type", chosen.content_type)
            return b""
        settings = self.settings
        root = self.root
        stream = Stream(
            request,
            # Pages no bigger than max_pending: a paused stream holds at most one.
            EventTail(self.store, filters, settings["max_pending"]),
            chosen,
            self.reactor,
            limit=limit,
            heartbeat=heartbeat,
            max_pending=settings["max_pending"],
            max_pending_bytes=settings["max_pending_bytes"],
            send_buffer=settings["send_buffer"],
            slow_policy=settings["slow_policy"],
            retry=settings["retry"],
            on_end=self.open_streams.discard if root is None else root._stream_ended,
            name="events",
            metrics=None if root is None else root.metrics.for_stream("events", "events"),
        )
        if root is not None:
            # Limits per identity, metrics, and the end of every open stream at shutdown.
            return root.start_stream(stream, identity, since_id)
        done = stream.start(since_id)
        if not stream.ended:
            self.open_streams.add(stream)
        return done

    # -- JSON-RPC ----------------------------------------------------------------------

    async def jsonrpc(self, request):
        """
        One call (or a JSON-RPC 2.0 batch). AwesomeStream's format answers
        C{{"id", "result", "error"}} with C{error} a string; JSON-RPC 2.0 answers
        C{{"jsonrpc", "id", "result"}} or C{{..., "error": {"code", "message"}}}.
        """
        body = self._body(request, JSON_TYPES)
        try:
            call = parse(body, self.settings["max_json_depth"])
        except InvalidJSON as e:
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"application/json")
            return _dumps({"jsonrpc": "2.0", "id": None,
                           "error": {"code": -32700, "message": f"parse error: {e}"}}) + b"\n"
        identity = self._identify(request)  # 401 without credentials
        if isinstance(call, list) and call:
            answers = [await self._rpc_one(c, identity) for c in call]
            answers = [a for a in answers if a is not None]
        else:
            answers = await self._rpc_one(call, identity)
        request.setHeader(b"Content-Type", b"application/json")
        if answers is None or answers == []:
            request.setResponseCode(204)  # JSON-RPC 2.0 notifications only
            return b""
        return _dumps(answers) + b"\n"

    async def _rpc_one(self, call: Any, identity) -> dict[str, Any] | None:
        v2 = isinstance(call, dict) and call.get("jsonrpc") == "2.0"
        cid = call.get("id") if isinstance(call, dict) else None
        try:
            if not isinstance(call, dict) or not isinstance(call.get("method"), str):
                raise RPCError(-32600, "invalid request: expected an object with a method")
            if v2:
                params = call.get("params", [])
                if isinstance(params, list):
                    args, kwargs = params, {}
                elif isinstance(params, dict):
                    args, kwargs = [], params
                else:
                    raise RPCError(-32600, "params: expected an array or an object")
            else:
                args, kwargs = call.get("args", []), call.get("kwargs", {})
                if not isinstance(args, list) or not isinstance(kwargs, dict):
                    raise RPCError(-32600, "args: expected an array; kwargs: an object")
            method = {"insert": self._rpc_insert, "items": self._rpc_items}.get(call["method"])
            if method is None:
                raise RPCError(-32601, f"no method {call['method']!r} (insert, items)")
            if identity is not None:  # a 403 for the whole request, as on the other routes
                identity.require("publish" if call["method"] == "insert" else "read",
                                 ACCESS_NAME)
            _check_params(method, args, kwargs)
            result = await method(*args, **kwargs)
        except RPCError as e:
            return _rpc_error(v2, cid, e.code, e.message)
        except (QueryError, BadRequest) as e:
            return _rpc_error(v2, cid, -32602, str(e))
        except (StoreUnavailable, Unavailable) as e:
            return _rpc_error(v2, cid, -32000, f"event store unavailable: {e}")
        if v2:
            if "id" not in call:
                return None
            return {"jsonrpc": "2.0", "id": cid, "result": result}
        return {"id": cid, "result": result, "error": None}

    async def _rpc_insert(self, data, date=None) -> str:
        if date is not None:
            raise QueryError("date: not supported (events are ordered as inserted)")
        if not isinstance(data, dict):
            raise QueryError("data: expected an object")
        raw = _dumps(data)
        if len(raw) > self.settings["max_message_bytes"]:
            raise QueryError("data: over max_message_bytes")
        self._check_up()
        stored = await ensureDeferred(self.store.insert([new_event(raw, self.store.keys)]))
        return str(stored[0].id)

    async def _rpc_items(self, start=0, end=20, before=None, with_ids=False, **filters):
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise QueryError(f"{name}: expected an integer")
        q = Query(make_filters(filters, self.store.keys), start, end,
                  None if before is None else parse_id(before, "before"))
        self._check_up()
        found = await ensureDeferred(self.store.query(q))
        if with_ids:
            return [e.envelope() for e in found]
        return [json.loads(e.data) for e in found]


def _check_params(method, args, kwargs) -> None:
    """Raise the JSON-RPC "invalid params" error when the arguments do not fit."""
    try:
        inspect.signature(method).bind(*args, **kwargs)
    except TypeError as e:
        raise RPCError(-32602, f"invalid params: {e}") from None


def _rpc_error(v2: bool, cid: Any, code: int, message: str) -> dict[str, Any]:
    if v2:
        return {"jsonrpc": "2.0", "id": cid, "error": {"code": code, "message": message}}
    return {"id": cid, "result": None, "error": message}


install_error_handler(EventsAPI.app)
