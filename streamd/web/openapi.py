"""
The published API: an OpenAPI 3.1 description of every route, served at
C{GET /openapi.json}. It is built here as plain data next to nothing else, and
C{tests/integration/test_openapi.py} keeps it true (every klein route and method is described,
and nothing else is; a fuzz run against the served document finds no 5xx).

Streams are documented with their two media types, C{application/x-ndjson} (one
JSON object per line) and C{text/event-stream}; OpenAPI 3.1 has no per-item schema
for those, so each line's shape is given as the schema of one line.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from streamd import __version__
from streamd.web.openapi_schemas import NAME_PATTERN, SCHEMAS
from streamd.web.routes import routes


def _any_case(*words: str) -> str:
    # JSON Schema's regex dialect has no case-insensitive flag: spell each letter both ways.
    spelled = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in w)
               for w in words)
    return "^(" + "|".join(spelled) + ")?$"


_BOOLEAN = _any_case("1", "0", "true", "false", "yes", "no", "on", "off")

_ERRORS = {
    400: "Bad parameter or body (the message names it)",
    401: "Credentials missing or invalid (with WWW-Authenticate)",
    403: "Not allowed for this identity",
    404: "No such stream, channel, subscription or session",
    413: "Message or body too large: nothing of it was published",
    415: "Unsupported Content-Type",
    429: "Too many open streams for this identity (with Retry-After)",
    503: "The stream's source is down",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


def _name(what: str) -> dict[str, Any]:
    return {"name": "name", "in": "path", "required": True,
            "description": f"The {what}'s name.",
            "schema": {"type": "string", "pattern": NAME_PATTERN}}


_SUB_ID = {"name": "sub_id", "in": "path", "required": True,
           "description": "The subscription's id (from POST /subscriptions).",
           "schema": {"type": "string"}}


def _query(name: str, schema: dict, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_FORMAT = _query("format", {"type": "string", "enum": ["ndjson", "sse"]},
                 "Framing; without it, `Accept: text/event-stream` chooses SSE, "
                 "anything else NDJSON.")
_LIMIT = _query("limit", {"type": "integer", "minimum": 1},
                "End the response cleanly after exactly this many messages.")

_STREAM_PARAMS = [
    _FORMAT,
    _LIMIT,
    _query("heartbeat", {"type": "number", "minimum": 0},
           "Seconds of quiet before a heartbeat (0: none, else at least 0.05)."),
    _query("since", {"type": "string"},
           "Resume after this message id (replaces the Last-Event-ID header)."),
    _query("ack", {"type": "string", "enum": ["write", "client"]},
           "`client`: hold each message until POST /streams/{name}/ack."),
    _query("track", {"type": "string"},
           "Comma-separated phrases; a phrase matches when all its words occur."),
    _query("follow", {"type": "string"}, "Comma-separated ids matched on `id_fields`."),
    _query("locations", {"type": "string"},
           "Bounding boxes `LON1,LAT1,LON2,LAT2[,...]`, south-west corner first. "
           "Any `where.FIELD=VALUE` parameter (repeatable) filters on a field too."),
    _query("sample", {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
           "Keep this share of messages, chosen by id (the same for every client)."),
    _query("stall_warnings", {"type": "string", "pattern": _BOOLEAN},
           "Warn when this client's queue passes half of `max_pending` (true, false, "
           "1, 0, yes, no, on, off, any case; empty means true)."),
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "schema": {"type": "string"},
     "description": "Resume after this id (what EventSource sends by itself)."},
]

_LINE_SCHEMA = {
    "description": "One line of an NDJSON stream: a message, or one notice.",
    "oneOf": [
        _ref("Message"),
        {"type": "object", "required": ["heartbeat"],
         "properties": {"heartbeat": {"type": "integer", "description": "Unix time"}}},
        {"type": "object", "required": ["gap"],
         "properties": {"gap": {"type": "object", "properties": {
             "since": {"type": "string"}, "missed": {"type": ["integer", "null"]},
             "reason": {"type": "string"}}}}},
        {"type": "object", "required": ["dropped"],
         "properties": {"dropped": {"type": "integer"}}},
        {"type": "object", "required": ["warning"], "properties": {"warning": {
            "type": "object", "properties": {"code": {"type": "string"},
                                             "message": {"type": "string"},
                                             "percent_full": {"type": "integer"},
                                             "dropped": {"type": "integer"}}}}},
        {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "properties": {"message": {"type": "string"},
                                             "max_pending": {"type": "integer"}}}}},
        {"type": "object", "required": ["status"], "properties": {"status": {
            "type": "object", "required": ["source"],
            "description": "The source is down (the stream stays open, with heartbeats) "
                           "or up again (its messages follow).",
            "properties": {"source": {"enum": ["down", "up"]},
                           "reason": {"type": "string"}}}}},
        {"type": "object", "required": ["shutdown"],
         "properties": {"shutdown": {"const": True}}},
        {"type": "object", "required": ["end"], "properties": {"end": {
            "type": "object", "properties": {"reason": {"type": "string"}}}}},
    ],
}

_SSE_SCHEMA = {
    "type": "string",
    "description": "Server-Sent Events: a `retry:` hint first, then `id: ID` / `data: JSON` "
                   "per message; notices are the named events `gap`, `dropped`, `warning`, "
                   "`stream-error`, `status`, `shutdown` and `end` (data: the same JSON as "
                   "the NDJSON notice's value); heartbeats are `: heartbeat` comments.",
}


def _stream_response(line_schema: dict, description: str) -> dict[str, Any]:
    return {
        "description": description + " The status line and headers are sent at once, "
                                     "before any message.",
        "headers": {"Streamd-Session": {
            "description": "With ack=client: the session to acknowledge messages in.",
            "schema": {"type": "string"}}},
        "content": {
            "application/x-ndjson": {"schema": line_schema},
            "text/event-stream": {"schema": _SSE_SCHEMA},
        },
    }


_STREAM_RESPONSES = {
    "200": _stream_response(_LINE_SCHEMA, "The live stream."),
    **_errors(400, 401, 403, 404, 429, 503),
}

_SCALAR = {"type": ["string", "number", "boolean"]}
_SCALARS = {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}

_FILTER_BODY = {
    "type": "object",
    "description": "Filters too long for a URL, as the query parameters of the same names "
                   "(a list is joined with commas); `where` maps a field to its values.",
    "properties": {
        "track": _SCALARS,
        "follow": _SCALARS,
        "locations": _SCALARS,
        "where": {"type": "object", "additionalProperties": _SCALARS},
    },
    "additionalProperties": _SCALARS,
}

_SUB_STREAM = {
    "parameters": [_FORMAT, _LIMIT],
    "responses": {
        "200": _stream_response(
            {"type": "object", "description": "The first line is a snapshot of every "
                                              "channel's value (null: none yet), then one "
                                              "object per change, and {\"Updates\": false} "
                                              "after `idle` quiet seconds.",
             "additionalProperties": True},
            "The subscription's stream."),
        **_errors(400, 401, 404, 429),
    },
}


_RPC_ANSWER = {"type": "object", "description": "AwesomeStream's {id, result, error} "
                                              "or JSON-RPC 2.0's {jsonrpc, id, result|error}",
               "properties": {"id": {}, "result": {}, "error": {}, "jsonrpc": {"const": "2.0"}}}

_JSONRPC = {
    "summary": "JSON-RPC: methods `insert` and `items` on the event store",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "description": "One call, AwesomeStream's {\"id\", \"method\", \"args\", "
                       "\"kwargs\"} or JSON-RPC 2.0's {\"jsonrpc\": \"2.0\", \"id\", "
                       "\"method\", \"params\"}, or a JSON-RPC 2.0 batch (an array)."}}}},
    "responses": {
        "200": _json({"anyOf": [_RPC_ANSWER, {"type": "array", "items": _RPC_ANSWER}]},
                     "The answer (an error is an answer too)."),
        "204": {"description": "JSON-RPC 2.0 notifications only: no answer."},
        "400": _json({"anyOf": [_ref("Error"), _RPC_ANSWER]},
                     "The body is not JSON (a JSON-RPC parse error)."),
        **_errors(401, 403, 413, 415),
    },
}


def _doc() -> dict[str, Any]:
    msg_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"description": "Any one JSON value."}},
            "application/x-ndjson": {"schema": {
                "type": "string", "description": "JSON values, one per line."}},
        },
    }
    channel_body = {"required": True, "content": {"application/json": {
        "schema": {"description": "The channel's new value (any JSON)."}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamd",
            "version": __version__,
            "summary": "Message sources as live HTTP streams (NDJSON and Server-Sent Events).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "security": [{}, {"bearer": []}, {"tokenCookie": []}, {"tokenQuery": []},
                     {"identifierHeader": []}, {"identifierQuery": []}],
        "paths": {
            "/": {"get": {
                "operationId": "index",
                "summary": "Service status; a browser (Accept: text/html) gets the live page",
                "responses": {"200": {
                    "description": "Name, version, uptime, open streams, each source's status.",
                    "content": {
                        "application/json": {"schema": _ref("Info")},
                        "text/html": {"schema": {"type": "string"}},
                    }}, **_errors(401, 403)},
            },
                "post": {**_JSONRPC, "operationId": "jsonrpc_root",
                         "summary": "JSON-RPC, as POST /jsonrpc (where AwesomeStream's "
                                    "client posts)"}},
            "/jsonrpc": {"post": {**_JSONRPC, "operationId": "jsonrpc"}},
            "/metrics": {"get": {
                "operationId": "metrics_page",
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format.",
                                      "content": {"text/plain": {
                                          "schema": {"type": "string"}}}},
                              **_errors(401, 403)},
            }},
            "/events": {
                "get": {"operationId": "query_events",
                        "summary": "Stored events, newest first: AND across keys, OR within "
                                   "a key",
                        "parameters": [
                            _query("start", {"type": "integer", "minimum": 0},
                                   "Skip this many (default 0)."),
                            _query("end", {"type": "integer", "minimum": 0},
                                   "Stop before this position (default 20). Any other "
                                   "parameter KEY=VALUE (repeatable) matches an indexed "
                                   "key."),
                            _query("before", {"type": "string"},
                                   "Only events older than this id."),
                        ],
                        "responses": {"200": _json({"type": "array",
                                                    "items": _ref("Event")}, "The events."),
                                      **_errors(400, 401, 403, 503)}},
                "post": {"operationId": "insert_events",
                         "summary": "Store one event (a JSON object), or many as NDJSON",
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": {"type": "object"}},
                             "application/x-ndjson": {"schema": {
                                 "type": "string",
                                 "description": "JSON objects, one per line."}}}},
                         "responses": {"201": _json(_ref("Published"), "Stored."),
                                       **_errors(400, 401, 403, 413, 415, 503)}},
            },
            "/events/stream": {"get": {
                "operationId": "stream_events",
                "summary": "The live tail of the event store (filters as GET /events)",
                "parameters": [_FORMAT, _LIMIT, _STREAM_PARAMS[2], _STREAM_PARAMS[3],
                               _STREAM_PARAMS[-1]],
                "responses": {
                    "200": _stream_response(_LINE_SCHEMA, "The live tail."),
                    **_errors(400, 401, 403, 429, 503)},
            }},
            "/health": {"get": {
                "operationId": "health",
                "summary": "200 when every source is up, 503 otherwise",
                "responses": {"200": _json(_ref("Health"), "Every source is up."),
                              "503": _json(_ref("Health"), "A source is down."),
                              **_errors(401, 403)},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1."),
                              **_errors(401, 403)},
            }},
            "/streams/{name}": {
                "parameters": [_name("stream")],
                "get": {"operationId": "stream", "summary": "Stream the messages",
                        "parameters": _STREAM_PARAMS, "responses": _STREAM_RESPONSES},
                "head": {"operationId": "stream_head", "summary": "The stream's headers only",
                         "parameters": _STREAM_PARAMS, "responses": _STREAM_RESPONSES},
            },
            "/streams/{name}/sample": {
                "parameters": [_name("stream")],
                "get": {"operationId": "sample",
                        "summary": "The stream at its configured `sample` rate",
                        "parameters": _STREAM_PARAMS, "responses": _STREAM_RESPONSES},
            },
            "/streams/{name}/filter": {
                "parameters": [_name("stream")],
                "post": {"operationId": "filtered",
                         "summary": "Stream with filters given in the body",
                         "parameters": _STREAM_PARAMS,
                         "requestBody": {"content": {
                             "application/json": {"schema": _FILTER_BODY},
                             "application/x-www-form-urlencoded": {"schema": {
                                 "type": "object", "additionalProperties": {
                                     "type": "string"}}}}},
                         "responses": _STREAM_RESPONSES},
            },
            "/streams/{name}/messages": {
                "parameters": [_name("stream")],
                "post": {"operationId": "publish",
                         "summary": "Publish one JSON value, or many as NDJSON",
                         "requestBody": msg_body,
                         "responses": {"202": _json(_ref("Published"), "Accepted."),
                                       **_errors(400, 401, 403, 404, 413, 415, 503)}},
            },
            "/streams/{name}/ack": {
                "parameters": [_name("stream")],
                "post": {"operationId": "ack",
                         "summary": "Acknowledge messages of a client-ack stream",
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": _ref("AckRequest")}}},
                         "responses": {"200": _json(_ref("AckResult"), "Acknowledged."),
                                       **_errors(400, 401, 403, 404, 415)}},
            },
            "/channels/{name}": {
                "parameters": [_name("channel")],
                "get": {"operationId": "get_channel", "summary": "A channel's current value",
                        "responses": {"200": _json(_ref("ChannelValue"), "The value."),
                                      **_errors(400, 401, 403, 404)}},
                "put": {"operationId": "put_channel",
                        "summary": "Set a channel's value (publishes the change)",
                        "requestBody": channel_body,
                        "responses": {"200": _json(_ref("ChannelValue"), "Set."),
                                      **_errors(400, 401, 403, 413, 415)}},
            },
            "/subscriptions": {"post": {
                "operationId": "create_subscription",
                "summary": "Subscribe to channels (sets the streamd_subscription cookie)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["channels"], "properties": {
                        "channels": {"type": "array", "items": {
                            "type": "string", "pattern": NAME_PATTERN}}}}}}},
                "responses": {"201": _json(_ref("Subscription"), "Created."),
                              **_errors(400, 401, 403, 413, 415)},
            }},
            "/subscriptions/{sub_id}": {
                "parameters": [_SUB_ID],
                "get": {"operationId": "describe_subscription",
                        "summary": "A subscription's channels",
                        "responses": {"200": _json(_ref("Subscription"), "The subscription."),
                                      **_errors(401, 404)}},
                "patch": {"operationId": "patch_subscription",
                          "summary": "Add and remove channels (applies to the open stream)",
                          "requestBody": {"required": True, "content": {"application/json": {
                              "schema": _ref("SubscriptionPatch")}}},
                          "responses": {"200": _json(_ref("Subscription"), "Changed."),
                                        **_errors(400, 401, 403, 404, 413, 415)}},
                "delete": {"operationId": "delete_subscription",
                           "summary": "End a subscription (and its stream)",
                           "responses": {"204": {"description": "Ended."},
                                         **_errors(401, 404)}},
            },
            "/subscriptions/{sub_id}/stream": {
                "parameters": [_SUB_ID],
                "get": {"operationId": "stream_subscription",
                        "summary": "Stream a subscription by id", **_SUB_STREAM},
            },
            "/subscription": {"get": {
                "operationId": "stream_cookie_subscription",
                "summary": "Stream the subscription named by the streamd_subscription cookie",
                **_SUB_STREAM,
            }},
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": {f"E{code}": _json(_ref("Error"), text)
                          for code, text in _ERRORS.items()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A static token (auth.mode token) or an HS256 JWT "
                                          "(auth.mode jwt)."},
                "tokenCookie": {"type": "apiKey", "in": "cookie", "name": "streamd_token"},
                "tokenQuery": {"type": "apiKey", "in": "query", "name": "access_token",
                               "description": "For EventSource, which cannot set headers."},
                "identifierHeader": {"type": "apiKey", "in": "header",
                                     "name": "Streamd-Identifier"},
                "identifierQuery": {"type": "apiKey", "in": "query", "name": "identifier"},
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return json.loads(_encoded())


@lru_cache(maxsize=1)
def _encoded() -> bytes:
    return json.dumps(_doc(), indent=1).encode() + b"\n"


@routes.route("/openapi.json", methods=["GET"])
def openapi_document(web, request):
    web.operator(request, "openapi")
    request.setHeader(b"Content-Type", b"application/json")
    return _encoded()
