"""
Routes for value channels and channel subscriptions, mounted on L{StreamdApp}'s klein
app by L{mount} (the route functions receive the StreamdApp instance as C{root}).

- C{PUT /channels/NAME} sets a value (JSON), C{GET /channels/NAME} reads it.
- C{POST /subscriptions} C{{"channels": [...]}} creates a subscription (201, and a
  cookie carrying its id); C{GET /subscriptions/ID/stream}, or C{GET /subscription} with
  the cookie, streams a snapshot line then one line per change; C{PATCH} adds and
  removes channels on the open stream; C{DELETE} ends it.
"""

from __future__ import annotations

import json

from twisted.internet.defer import maybeDeferred

from streamd import framing
from streamd.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from streamd.message import InvalidPayload, normalize_json
from streamd.stream import Stream
from streamd.web.common import (
    STREAM_NAME,
    arg,
    int_arg,
    json_body,
    json_response,
    query,
)
from streamd.web.common import content_type as request_content_type

COOKIE = b"streamd_subscription"


def _channel_name(name: str) -> str:
    if not STREAM_NAME.match(name):
        raise BadRequest(f"channel name {name!r}: use 1-200 letters, digits and . _ : -")
    return name


def _json_body(root, request):
    if request_content_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("send application/json")
    body = request.content.read(root.settings["max_body_bytes"] + 1)
    if len(body) > root.settings["max_body_bytes"]:
        raise PayloadTooLarge("body over max_body_bytes")
    return json_body(body, root.settings["max_json_depth"])


def _channel_list(root, value, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise BadRequest(f"{key}: expected a list of channel names")
    limit = root.settings["channels"]["max_channels"]
    if len(value) > limit:
        raise BadRequest(f"{key}: at most {limit} channels")
    return [_channel_name(c) for c in value]


def mount(app) -> None:
    """Add the channel and subscription routes to C{app} (StreamdApp's klein app)."""

    @app.route("/channels/<name>", methods=["PUT"])
    async def put_channel(root, request, name):
        _channel_name(name)
        root.identify(request, "publish", name)
        if request_content_type(request) not in ("application/json", ""):
            raise UnsupportedMediaType("send application/json")
        limit = root.settings["max_message_bytes"]
        body = request.content.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"value over max_message_bytes ({limit} bytes)")
        try:
            value = normalize_json(body, max_depth=root.settings["max_json_depth"])
        except InvalidPayload as e:
            raise BadRequest(f"body: {e.reason}") from None
        await maybeDeferred(root.channels.set, name, value)
        return json_response(request, 200, {"channel": name, "value": json.loads(value)})

    @app.route("/channels/<name>", methods=["GET"])
    def get_channel(root, request, name):
        _channel_name(name)
        root.identify(request, "read", name)
        value = root.channels.get(name)
        if value is None:
            raise NotFound(f"channel {name!r} has no value")
        return json_response(request, 200, {"channel": name, "value": json.loads(value)})

    @app.route("/subscriptions", methods=["POST"])
    def create_subscription(root, request):
        identity = root.identify(request)
        body = _json_body(root, request)
        if not isinstance(body, dict):
            raise BadRequest('body: expected {"channels": [...]}')
        channels = _channel_list(root, body.get("channels"), "channels")
        for c in channels:
            identity.require("read", c)
        sub = root.subscriptions.create(channels)
        sub.owner = identity.name
        request.addCookie(COOKIE, sub.id.encode(), path=b"/", httpOnly=True,
                          sameSite="lax")
        request.setHeader(b"Location", f"/subscriptions/{sub.id}".encode())
        return json_response(request, 201, _describe(sub))

    def _owned(root, request, sub_id: str):
        identity = root.identify(request)
        sub = root.subscriptions.get(sub_id)
        if getattr(sub, "owner", identity.name) != identity.name and root.auth.mode != "none":
            raise NotFound(f"no subscription {sub_id!r} (it may have expired)")
        return identity, sub

    @app.route("/subscriptions/<sub_id>", methods=["GET"])
    def describe_subscription(root, request, sub_id):
        _, sub = _owned(root, request, sub_id)
        return json_response(request, 200, _describe(sub))

    @app.route("/subscriptions/<sub_id>", methods=["PATCH"])
    def patch_subscription(root, request, sub_id):
        identity, sub = _owned(root, request, sub_id)
        body = _json_body(root, request)
        if not isinstance(body, dict) or not set(body) <= {"add", "remove", "channels"}:
            raise BadRequest('body: expected {"add": [...], "remove": [...]} or '
                             '{"channels": [...]}')
        if "channels" in body and len(body) > 1:
            raise BadRequest('body: "channels" replaces the list: send it alone, or '
                             '"add" and "remove"')
        if "channels" in body:
            wanted = _channel_list(root, body["channels"], "channels")
            add = [c for c in wanted if c not in sub.channels]
            remove = [c for c in sub.channels if c not in wanted]
        else:
            add = _channel_list(root, body.get("add", []), "add")
            remove = _channel_list(root, body.get("remove", []), "remove")
        for c in add:
            identity.require("read", c)
        if len(set(sub.channels) - set(remove) | set(add)) > root.settings["channels"][
                "max_channels"]:
            raise BadRequest(f"channels: at most {root.settings['channels']['max_channels']}")
        sub.change(add, remove)
        return json_response(request, 200, _describe(sub))

    @app.route("/subscriptions/<sub_id>", methods=["DELETE"])
    def delete_subscription(root, request, sub_id):
        _owned(root, request, sub_id)
        root.subscriptions.delete(sub_id)
        request.setResponseCode(204)
        return b""

    @app.route("/subscriptions/<sub_id>/stream", methods=["GET"])
    def stream_subscription(root, request, sub_id):
        identity, sub = _owned(root, request, sub_id)
        return _stream(root, request, identity, sub)

    @app.route("/subscription", methods=["GET"])
    def stream_cookie_subscription(root, request):
        sub_id = request.getCookie(COOKIE)
        if not sub_id:
            raise NotFound("no subscription cookie: POST /subscriptions first")
        identity, sub = _owned(root, request, sub_id.decode("latin-1"))
        return _stream(root, request, identity, sub)


def _describe(sub) -> dict:
    return {"id": sub.id, "channels": sub.channels,
            "stream": f"/subscriptions/{sub.id}/stream"}


def _stream(root, request, identity, sub):
    params = query(request)
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    chosen = framing.choose(arg(params, "format"), accept)
    if chosen is None:
        raise BadRequest("format: expected ndjson or sse")
    idle = root.settings["channels"]["idle"]
    stream = Stream(
        request, sub, framing.VALUE_FRAMINGS[chosen], root.reactor,
        limit=int_arg(params, "limit", 1),
        heartbeat=idle,
        max_pending=root.settings["max_pending"],
        max_pending_bytes=root.settings["max_pending_bytes"],
        send_buffer=root.settings["send_buffer"],
        slow_policy=root.settings["slow_policy"],
        retry=root.settings["retry"],
        on_end=root._stream_ended,
        name=f"subscription:{sub.id}",
        metrics=root.metrics.for_stream("_subscriptions", "channels"),
    )
    return root.start_stream(stream, identity)
