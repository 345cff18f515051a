"""
The HTTP surface (klein routes): parse the request, call the domain, render errors as
JSON. Routes are methods of L{StreamdApp}, which holds its dependencies (the reactor,
the settings, the sources), so nothing here reaches for a global.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.logger import Logger
from twisted.web.http import parse_qs
from werkzeug.exceptions import MethodNotAllowed

from streamd import __version__, config, filters, metrics, sources
from streamd.auth import Auth
from streamd.channels import MemoryChannels, Subscriptions
from streamd.errors import (
    BadRequest,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from streamd.message import InvalidPayload, decode_body
from streamd.metrics import Metrics
from streamd.sources import Services, make_source
from streamd.stream import Stream
from streamd.web import channels as channels_routes
from streamd.web import openapi, page
from streamd.web.activity import Activity
from streamd.web.common import (
    BODY_TYPES,
    JSON_TYPES,
    STREAM_NAME,
    arg,
    bool_arg,
    install_error_handler,
    json_body,
    json_response,
    query,
    read_body,
    stream_options,
)
from streamd.web.common import content_type as request_content_type
from streamd.web.events import EventsAPI

log = Logger()

#: Seconds between sweeps for dynamic streams that are no longer used.
REAP_INTERVAL = 60.0


class StreamdApp:
    """
    The streamd HTTP API.

    @ivar sources: stream name -> source, for declared streams and (when
        C{dynamic_streams}) memory streams created on first use.
    @ivar open_streams: every L{Stream} whose response is still open.
    @ivar sessions: C{Streamd-Session} -> the client-ack L{Stream} it names.
    """

    app = Klein()

    def __init__(self, settings: dict[str, Any], reactor) -> None:
        self.settings = settings
        self.reactor = reactor
        self.started_at = reactor.seconds()
        self.metrics = Metrics()
        self._publish_metrics: dict[tuple[str, str], tuple] = {}  # bound children
        self.services = Services(reactor=reactor, settings=settings, metrics=self.metrics)
        self.stream_settings: dict[str, dict[str, Any]] = dict(settings["streams"])
        self.sources: dict[str, Any] = {
            name: make_source(s, self.services) for name, s in self.stream_settings.items()
        }
        self.open_streams: set[Stream] = set()
        self.sessions: dict[str, Stream] = {}
        self.auth = Auth.from_settings(settings["auth"])
        self.connections: Counter[str] = Counter()  # open streams per identity
        self.channels = self._channel_store(settings["channels"])
        self.subscriptions = Subscriptions(self.channels, reactor,
                                           settings["channels"]["expire"],
                                           settings["channels"]["max_channels"])
        self._reaper = None
        self.events = EventsAPI(settings, reactor, root=self)
        # Readers and messages per second of each stream, for GET / and the live page.
        self.activity = Activity(reactor, lambda: self.open_streams, lambda: self.sources)

    def _channel_store(self, table: dict[str, Any]):
        if table["backend"] != "redis":
            return MemoryChannels()
        from streamd.redis.channels import RedisChannels
        from streamd.redis.shared import acquire

        conn = acquire(self.services, {"connection": table["connection"],
                                             "name": "channels"})
        return RedisChannels(conn, self.reactor, table["prefix"])

    def resource(self):
        return self.app.resource()

    async def start(self) -> None:
        """Start what the app stands on: the event store, the sources, the channels."""

        async def one(what, start) -> None:
            try:
                await maybeDeferred(start)
            except Exception:
                log.failure("{what} failed to start", what=what)

        self._reaper = self.reactor.callLater(REAP_INTERVAL, self._reap)
        self.activity.start()
        await one("the event store", self.events.start)
        for name, source in self.sources.items():
            await one(f"source {name}", source.start)
        if hasattr(self.channels, "start"):
            await one("the channel store", self.channels.start)

    async def stop(self, timeout: float) -> None:
        """
        End every open stream (a C{shutdown} line: they give back what they did not
        write), then stop the sources (they return what they hold) and the stores,
        within C{timeout} seconds.
        """
        self.subscriptions.close()
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self.activity.stop()
        for stream in list(self.open_streams):
            stream.source_ended("shutdown")
        stops = [maybeDeferred(s.stop) for s in self.sources.values()]
        stops.append(maybeDeferred(self.events.stop))
        if hasattr(self.channels, "stop"):
            stops.append(maybeDeferred(self.channels.stop))
        done = DeferredList(stops, consumeErrors=True)
        try:
            await done.addTimeout(timeout, self.reactor)
        except TimeoutError:
            log.warn("sources did not stop within shutdown_timeout")

    def identify(self, request, action: str | None = None, name: str | None = None):
        """Who is asking (401 if that cannot be told); with C{action}, 403 unless allowed."""
        identity = self.auth.identify(request, self.reactor.seconds())
        if action is not None:
            identity.require(action, name)
        return identity

    def operator(self, request, endpoint: str) -> None:
        """401 or 403 unless the operational C{endpoint} is public or the caller an admin."""
        self.auth.operator(request, endpoint, self.reactor.seconds())

    def _admin(self, request) -> bool:
        """Whether the caller is an admin (no error if it cannot be told)."""
        try:
            return self.identify(request).admin
        except HTTPError:
            return False

    # -- sources ----------------------------------------------------------------

    def _source(self, name: str):
        source = self.sources.get(name)
        if source is not None:
            return source, self.stream_settings[name]
        if not STREAM_NAME.match(name):
            raise BadRequest(
                "stream name: use 1-200 letters, digits and . _ : - (starting with a "
                "letter or digit)"
            )
        if not self.settings["dynamic_streams"]:
            raise NotFound(f"no stream named {name!r}")
        settings = self.stream_settings[name] = config.stream_defaults(name, self.settings)
        source = self.sources[name] = make_source(settings, self.services)
        source.start()
        return source, settings

    def _reap(self) -> None:
        self._reaper = self.reactor.callLater(REAP_INTERVAL, self._reap)
        self.reap_unused()

    def reap_unused(self) -> None:
        """
        Forget dynamic memory streams that nobody reads and whose resume buffer has
        expired, so that names used once do not accumulate.
        """
        for name in [n for n in self.sources if n not in self.settings["streams"]]:
            source = self.sources[name]
            source._expire()
            if not source.subscribers and not source.recent:
                del self.sources[name]
                del self.stream_settings[name]

    def source_statuses(self) -> dict[str, Any]:
        out = {}
        for name, source in self.sources.items():
            state, reason = source.status()
            out[name] = {"source": source.kind, "status": state, "reason": reason,
                         "declared": name in self.settings["streams"]}
        return self.activity.describe(out)

    # -- service info --------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "service": "streamd",
            "version": __version__,
            "uptime": round(self.reactor.seconds() - self.started_at, 3),
            "open_streams": len(self.open_streams),
            "sources": self.source_statuses(),
            "source_kinds": sources.installed(),
            "events": self.events.status(),
        }

    @app.route("/", methods=["GET"])
    def index(self, request):
        if page.prefers_html(request):
            self.operator(request, "page")
            return page.render_page(request)
        self.operator(request, "status")
        info = self._info()
        if self._admin(request):
            info["identities"] = {k: v for k, v in self.connections.items() if v}
        return json_response(request, 200, info)

    @app.route("/metrics", methods=["GET"])
    def metrics_page(self, request):
        self.operator(request, "metrics")
        request.setHeader(b"Content-Type", metrics.CONTENT_TYPE.encode())
        return self.metrics.render()

    def metrics_label(self, name: str) -> str:
        """A declared stream's name; one label for all dynamic ones (bounded cardinality)."""
        return name if name in self.settings["streams"] else metrics.DYNAMIC

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """
        200 when every source is up, else 503. Only those who may see the status
        (C{GET /}) learn more than that: source names and reasons describe the setup.
        """
        self.operator(request, "health")
        info = self._info()
        up = all(s["status"] == "ok" for s in info["sources"].values())
        up = up and info["events"]["status"] == "ok"
        status = "ok" if up else "down"
        if not (self.auth.is_public("status") or self._admin(request)):
            info = {"service": info["service"]}
        return json_response(request, 200 if up else 503, {**info, "status": status})

    # -- the event store (streamd/web/events.py) ---------------------------------------

    @app.route("/events", branch=True)
    def events_api(self, request):
        # The sub-app sees an empty path for /events and /events/, where werkzeug's
        # matching cannot tell "no such method" from "no such resource": say it here.
        if request.path.rstrip(b"/") == b"/events" and request.method not in (
                b"GET", b"HEAD", b"POST"):
            raise MethodNotAllowed(valid_methods=["GET", "HEAD", "POST"])
        return self.events.app.resource()

    @app.route("/jsonrpc", methods=["POST"])
    def jsonrpc(self, request):
        return self.events.jsonrpc(request)

    @app.route("/", methods=["POST"])
    def jsonrpc_root(self, request):
        # AwesomeStream's own client posts its calls to "/".
        return self.events.jsonrpc(request)

    # -- publish ----------------------------------------------------------------------

    @app.route("/streams/<name>/messages", methods=["POST"])
    def publish(self, request, name):
        # Not a coroutine: most sources publish synchronously, and a one-message POST
        # is the common case, where the coroutine and Deferred layers cost more than
        # the publish itself.
        self.identify(request, "publish", name)
        source, settings = self._source(name)
        body = read_body(request, BODY_TYPES, self.settings["max_body_bytes"], "one value")
        ctype = request_content_type(request)
        try:
            payloads = decode_body(body, ctype, self.settings["max_json_depth"])
        except InvalidPayload as e:
            raise BadRequest(f"line {e.line}: {e.reason}") from None
        max_message = settings["max_message_bytes"]
        for n, payload in enumerate(payloads, 1):
            if len(payload) > max_message:
                raise PayloadTooLarge(
                    f"line {n}: message over max_message_bytes ({max_message} bytes)"
                )
        if not payloads:
            raise BadRequest("no message in the body")
        state, reason = source.status()
        if state != "ok":
            raise Unavailable(f"stream {name!r} is down: {reason}")
        params = {k: v[-1] for k, v in query(request).items()} if request.args else {}
        started = self.reactor.seconds()
        ids = source.publish(payloads, params)
        if isinstance(ids, Deferred):
            return ids.addCallback(self._published, request, name, source, len(payloads),
                                   started)
        return self._published(ids, request, name, source, len(payloads), started)

    def _published(self, ids, request, name, source, count, started):
        label = self.metrics_label(name)
        counted = self._publish_metrics.get((label, source.kind))
        if counted is None:
            counted = self._publish_metrics[label, source.kind] = (
                self.metrics.messages_in.labels(label, source.kind),
                self.metrics.publish_seconds.labels(label))
        counted[0].inc(count)
        self.activity.publish(name, count)
        counted[1].observe(self.reactor.seconds() - started)
        return json_response(request, 202, {"ids": ids})

    # -- stream -------------------------------------------------------------------------

    @app.route("/streams/<name>", methods=["GET"])
    def stream(self, request, name):
        return self._open_stream(request, name, query(request))

    @app.route("/streams/<name>/sample", methods=["GET"])
    def sample(self, request, name):
        """The stream at its configured C{sample} rate (unless the request names one)."""
        return self._open_stream(request, name, query(request), sample=True)

    @app.route("/streams/<name>/filter", methods=["POST"])
    def filtered(self, request, name):
        """
        Filters in the body (for lists too long for a URL): a form, or JSON such as
        C{{"track": ["a b", "c"], "follow": ["12"], "locations": [-10, 35, 5, 45],
        "where": {"kind": ["x", "y"]}}}. Query parameters still apply.
        """
        ctype = request_content_type(request)
        if ctype == "application/x-www-form-urlencoded":
            # The Site leaves form bodies alone (see streamd.web.site): parsed here, as
            # Twisted would, over the query's values of the same names.
            body = request.content.read(self.settings["max_body_bytes"])
            request.args.update(parse_qs(body, 1))
        params = query(request)
        if ctype == "application/json":
            body = request.content.read(self.settings["max_body_bytes"])
            params.update(_json_params(json_body(body or b"{}", self.settings["max_json_depth"])))
        return self._open_stream(request, name, params)

    def _open_stream(self, request, name: str, params: dict[str, list[str]],
                     sample: bool = False):
        identity = self.identify(request, "read", name)
        source, settings = self._source(name)
        chosen, limit, heartbeat, since = stream_options(request, params,
                                                         settings["heartbeat"])
        ack = arg(params, "ack")
        if ack is None:
            ack = settings.get("ack", "write")
        if ack not in ("write", "client"):
            raise BadRequest(f"ack: expected write or client, got {ack!r}")
        stream_filter = filters.parse(params, settings,
                                      settings["sample"] if sample else None)
        stall_warnings = bool_arg(params, "stall_warnings")
        state, reason = source.status()
        if state != "ok":
            raise Unavailable(f"stream {name!r} is down: {reason}")
        if request.method == b"HEAD":
            # Headers only: a stream whose body nobody will read must not be opened.
            request.setHeader(b"Content-Type", chosen.content_type)
            return b""
        session = secrets.token_urlsafe(18) if ack == "client" else None
        stream = Stream(
            request,
            source,
            chosen,
            self.reactor,
            limit=limit,
            heartbeat=heartbeat,
            max_pending=settings["max_pending"],
            max_pending_bytes=settings["max_pending_bytes"],
            send_buffer=settings["send_buffer"],
            slow_policy=settings["slow_policy"],
            ack=ack,
            max_unacked=settings["max_unacked"],
            retry=settings["retry"],
            session=session,
            on_end=self._stream_ended,
            filter=stream_filter,
            stall_warnings=stall_warnings,
            name=name,
            metrics=self.metrics.for_stream(self.metrics_label(name), source.kind),
        )
        return self.start_stream(stream, identity, since)

    def start_stream(self, stream: Stream, identity, since: str | None = None):
        """Open C{stream} for C{identity} (429 past its limit); its Deferred for klein."""
        limit = self.auth.max_connections_per_identity
        if limit and self.connections[identity.name] >= limit:
            raise HTTPError(f"{identity.name!r} already has {limit} open streams",
                            429, {b"Retry-After": b"10"})
        stream.identity = identity.name
        done = stream.start(since)
        if not stream.ended:
            if stream.metrics is not None:
                stream.metrics.open.inc()
            self.connections[identity.name] += 1
            self.open_streams.add(stream)
            if stream.session is not None:
                self.sessions[stream.session] = stream
        return done

    def _stream_ended(self, stream: Stream) -> None:
        log.info(
            "stream {stream} ended ({reason}): identity={identity} duration={duration:.3f}s "
            "messages={messages} bytes={bytes}",
            stream=stream.name, reason=stream.end_reason, identity=stream.identity,
            duration=self.reactor.seconds() - stream.started_at, messages=stream.written,
            bytes=stream.bytes_written,
        )
        if stream in self.open_streams:
            if stream.metrics is not None:
                stream.metrics.open.dec()
            self.open_streams.discard(stream)
            self.connections[stream.identity] -= 1
            if not self.connections[stream.identity]:
                del self.connections[stream.identity]
        if stream.session is not None:
            self.sessions.pop(stream.session, None)
        self.activity.ended(stream)

    @app.route("/streams/<name>/ack", methods=["POST"])
    def ack(self, request, name):
        self.identify(request, "read", name)
        self._source(name)
        if request_content_type(request) not in JSON_TYPES:
            raise UnsupportedMediaType("send application/json")
        body = json_body(request.content.read(self.settings["max_body_bytes"]),
                         self.settings["max_json_depth"])
        if not isinstance(body, dict):
            raise BadRequest('body: expected {"session": ..., "ids": [...]}')
        session, ids = body.get("session"), body.get("ids")
        if not isinstance(session, str):
            raise BadRequest("session: expected the Streamd-Session header's value")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadRequest("ids: expected a list of message ids (strings)")
        stream = self.sessions.get(session)
        if stream is None or stream.name != name:
            raise NotFound(f"no open client-ack session {session!r} on stream {name!r}")
        acked, unknown = stream.client_acked(ids)
        return json_response(request, 200, {"acked": acked, "unknown": unknown})


channels_routes.mount(StreamdApp.app)
openapi.mount(StreamdApp.app)
install_error_handler(StreamdApp.app)


def _json_params(value: Any) -> dict[str, list[str]]:
    """A JSON filter body as query parameters: lists join with commas, as in a URL."""
    if not isinstance(value, dict):
        raise BadRequest("body: expected a JSON object of filters")
    out: dict[str, list[str]] = {}

    def text(key: str, v, lists: bool = True) -> str:
        if lists and isinstance(v, list):
            return ",".join(text(key, i, False) for i in v)
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, int, float)):
            return json.dumps(v)
        # An object or null has no meaning as a filter value: refuse, don't guess.
        raise BadRequest(f"{key}: expected a string, number or boolean, or a list of them")

    for key, v in value.items():
        if key == "where":
            if not isinstance(v, dict):
                raise BadRequest('where: expected {"FIELD": [values]}')
            for f, vals in v.items():
                vals = vals if isinstance(vals, list) else [vals]
                out[f"where.{f}"] = [text(f"where.{f}", x, False) for x in vals]
        else:
            out[key] = [text(key, v)]
    return out
