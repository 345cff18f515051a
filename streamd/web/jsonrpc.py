"""
JSON-RPC on the event store: C{POST /jsonrpc} (and C{POST /}, where AwesomeStream's
client posts). AwesomeStream's C{{"id", "method", "args", "kwargs"}} and JSON-RPC 2.0
(one call or a batch), methods C{insert} and C{items}.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import ensureDeferred

from streamd.errors import InvalidRequest, Unavailable
from streamd.json_input import InvalidJSON, parse
from streamd.json_input import compact_json as _dumps
from streamd.store import base
from streamd.store.base import QueryError, StoreUnavailable
from streamd.web.common import JSON_TYPES, read_body
from streamd.web.events import ACCESS_NAME, check_up
from streamd.web.routes import routes


class RPCError(Exception):
    """A JSON-RPC error: C{code} as in JSON-RPC 2.0."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@routes.route("/jsonrpc", methods=["POST"])
async def jsonrpc(web, request):
    return await _call(web, request)


@routes.route("/", methods=["POST"])
async def jsonrpc_root(web, request):
    # AwesomeStream's own client posts its calls to "/".
    return await _call(web, request)


async def _call(web, request):
    """
    One call (or a JSON-RPC 2.0 batch). AwesomeStream's format answers
    C{{"id", "result", "error"}} with C{error} a string; JSON-RPC 2.0 answers
    C{{"jsonrpc", "id", "result"}} or C{{..., "error": {"code", "message"}}}.
    """
    settings = web.settings
    body = read_body(request, JSON_TYPES, settings.max_body_bytes, "one object")
    try:
        call = parse(body, settings.max_json_depth)
    except InvalidJSON as e:
        request.setResponseCode(400)
        request.setHeader(b"Content-Type", b"application/json")
        return _dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32700, "message": f"parse error: {e}"}}) + b"\n"
    identity = web.identify(request)  # 401 without credentials
    methods = _Methods(web.service.store, settings.max_message_bytes)
    answers: list[dict[str, Any]] | dict[str, Any] | None
    if isinstance(call, list) and call:
        each = [await _one(methods, c, identity) for c in call]
        answers = [a for a in each if a is not None]
    else:
        answers = await _one(methods, call, identity)
    request.setHeader(b"Content-Type", b"application/json")
    if answers is None or answers == []:
        request.setResponseCode(204)  # JSON-RPC 2.0 notifications only
        return b""
    return _dumps(answers) + b"\n"


async def _one(methods: _Methods, call: Any, identity) -> dict[str, Any] | None:
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
        by_name: dict[str, Callable[..., Awaitable[Any]]] = {
            "insert": methods.insert, "items": methods.items}
        method = by_name.get(call["method"])
        if method is None:
            raise RPCError(-32601, f"no method {call['method']!r} (insert, items)")
        # A 403 for the whole request, as on the other routes.
        identity.require("publish" if call["method"] == "insert" else "read", ACCESS_NAME)
        _check_params(method, args, kwargs)
        result = await method(*args, **kwargs)
    except RPCError as e:
        return _rpc_error(v2, cid, e.code, e.message)
    except (QueryError, InvalidRequest) as e:
        return _rpc_error(v2, cid, -32602, str(e))
    except (StoreUnavailable, Unavailable) as e:
        return _rpc_error(v2, cid, -32000, f"event store unavailable: {e}")
    if v2:
        if "id" not in call:
            return None
        return {"jsonrpc": "2.0", "id": cid, "result": result}
    return {"id": cid, "result": result, "error": None}


class _Methods:
    """The methods a call may name, on C{store}."""

    def __init__(self, store, max_message_bytes: int) -> None:
        self.store = store
        self.max_message_bytes = max_message_bytes

    async def insert(self, data, date=None) -> str:
        if date is not None:
            raise QueryError("date: not supported (events are ordered as inserted)")
        if not isinstance(data, dict):
            raise QueryError("data: expected an object")
        raw = _dumps(data)
        if len(raw) > self.max_message_bytes:
            raise QueryError("data: over max_message_bytes")
        check_up(self.store)
        stored = await ensureDeferred(self.store.insert([base.new_event(raw, self.store.keys)]))
        return str(stored[0].id)

    async def items(self, start=0, end=20, before=None, with_ids=False, **filters):
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise QueryError(f"{name}: expected an integer")
        q = base.Query(base.make_filters(filters, self.store.keys), start, end,
                       None if before is None else base.parse_id(before, "before"))
        check_up(self.store)
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
