"""
Routes for value channels and channel subscriptions.

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
from streamd.errors import InvalidRequest, TooLarge, Unknown, UnsupportedMediaType
from streamd.message import InvalidPayload, normalize_json
from streamd.service import STREAM_NAME
from streamd.web.common import (
    arg,
    content_type,
    int_arg,
    json_body,
    json_response,
    negotiate,
    query,
)
from streamd.web.routes import routes

COOKIE = b"streamd_subscription"


def _channel_name(name: str) -> str:
    if not STREAM_NAME.match(name):
        raise InvalidRequest(f"channel name {name!r}: use 1-200 letters, digits and . _ : -")
    return name


def _json_body(web, request):
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("send application/json")
    body = request.content.read(web.settings.max_body_bytes + 1)
    if len(body) > web.settings.max_body_bytes:
        raise TooLarge("body over max_body_bytes")
    return json_body(body, web.settings.max_json_depth)


def _channel_list(web, value, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise InvalidRequest(f"{key}: expected a list of channel names")
    limit = web.settings.channels.max_channels
    if len(value) > limit:
        raise InvalidRequest(f"{key}: at most {limit} channels")
    return [_channel_name(c) for c in value]


@routes.route("/channels/<name>", methods=["PUT"])
async def put_channel(web, request, name):
    _channel_name(name)
    web.identify(request, "publish", name)
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType("send application/json")
    limit = web.settings.max_message_bytes
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"value over max_message_bytes ({limit} bytes)")
    try:
        value = normalize_json(body, max_depth=web.settings.max_json_depth)
    except InvalidPayload as e:
        raise InvalidRequest(f"body: {e.reason}") from None
    await maybeDeferred(web.service.channels.set, name, value)
    return json_response(request, 200, {"channel": name, "value": json.loads(value)})


@routes.route("/channels/<name>", methods=["GET"])
def get_channel(web, request, name):
    _channel_name(name)
    web.identify(request, "read", name)
    value = web.service.channels.get(name)
    if value is None:
        raise Unknown(f"channel {name!r} has no value")
    return json_response(request, 200, {"channel": name, "value": json.loads(value)})


@routes.route("/subscriptions", methods=["POST"])
def create_subscription(web, request):
    identity = web.identify(request)
    body = _json_body(web, request)
    if not isinstance(body, dict):
        raise InvalidRequest('body: expected {"channels": [...]}')
    channels = _channel_list(web, body.get("channels"), "channels")
    for c in channels:
        identity.require("read", c)
    sub = web.service.subscriptions.create(channels, owner=identity.name)
    request.addCookie(COOKIE, sub.id.encode(), path=b"/", httpOnly=True,
                      sameSite="lax")
    request.setHeader(b"Location", f"/subscriptions/{sub.id}".encode())
    if sub.announced is not None:  # several workers: every one knows it
        return sub.announced.addCallback(
            lambda _: json_response(request, 201, _describe(sub)))
    return json_response(request, 201, _describe(sub))


def _owned(web, request, sub_id: str):
    identity = web.identify(request)
    sub = web.service.subscriptions.get(sub_id)
    if sub.owner is not None and sub.owner != identity.name and web.auth.mode != "none":
        raise Unknown(f"no subscription {sub_id!r} (it may have expired)")
    return identity, sub


@routes.route("/subscriptions/<sub_id>", methods=["GET"])
def describe_subscription(web, request, sub_id):
    _, sub = _owned(web, request, sub_id)
    return json_response(request, 200, _describe(sub))


@routes.route("/subscriptions/<sub_id>", methods=["PATCH"])
def patch_subscription(web, request, sub_id):
    identity, sub = _owned(web, request, sub_id)
    body = _json_body(web, request)
    if not isinstance(body, dict) or not set(body) <= {"add", "remove", "channels"}:
        raise InvalidRequest('body: expected {"add": [...], "remove": [...]} or '
                             '{"channels": [...]}')
    if "channels" in body and len(body) > 1:
        raise InvalidRequest('body: "channels" replaces the list: send it alone, or '
                             '"add" and "remove"')
    if "channels" in body:
        wanted = _channel_list(web, body["channels"], "channels")
        add = [c for c in wanted if c not in sub.channels]
        remove = [c for c in sub.channels if c not in wanted]
    else:
        add = _channel_list(web, body.get("add", []), "add")
        remove = _channel_list(web, body.get("remove", []), "remove")
    for c in add:
        identity.require("read", c)
    if len(set(sub.channels) - set(remove) | set(add)) > web.settings.channels.max_channels:
        raise InvalidRequest(f"channels: at most {web.settings.channels.max_channels}")
    sub.change(add, remove)
    return json_response(request, 200, _describe(sub))


@routes.route("/subscriptions/<sub_id>", methods=["DELETE"])
def delete_subscription(web, request, sub_id):
    _owned(web, request, sub_id)
    web.service.subscriptions.delete(sub_id)
    request.setResponseCode(204)
    return b""


@routes.route("/subscriptions/<sub_id>/stream", methods=["GET"])
def stream_subscription(web, request, sub_id):
    identity, sub = _owned(web, request, sub_id)
    return _stream(web, request, identity, sub)


@routes.route("/subscription", methods=["GET"])
def stream_cookie_subscription(web, request):
    sub_id = request.getCookie(COOKIE)
    if not sub_id:
        raise Unknown("no subscription cookie: POST /subscriptions first")
    identity, sub = _owned(web, request, sub_id.decode("latin-1"))
    return _stream(web, request, identity, sub)


def _describe(sub) -> dict:
    return {"id": sub.id, "channels": sub.channels,
            "stream": f"/subscriptions/{sub.id}/stream"}


def _stream(web, request, identity, sub):
    params = query(request)
    chosen = negotiate(request, arg(params, "format"))
    return web.open_streams.open(
        request, sub, framing.VALUE_FRAMINGS[chosen], identity, web.settings,
        name=f"subscription:{sub.id}",
        metrics=web.service.metrics.for_stream("_subscriptions", "channels"),
        limit=int_arg(params, "limit", 1),
        heartbeat=web.settings.channels.idle,
    )
