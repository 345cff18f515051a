"""
The HTTP API over a L{streamd.service.Service}: L{StreamdApp} holds what requests share
(the service, who may do what, the open streams, the activity counts); the routes are
module-level functions in the route modules, all registered on one klein app
(L{streamd.web.routes}), each receiving the StreamdApp as its first argument.
"""

from __future__ import annotations

from typing import overload

from streamd.auth import Auth, Identity
from streamd.errors import Forbidden, Unauthorized
from streamd.service import Service

# Each route module registers its routes on the one app as it is imported.
from streamd.web import channels, events, jsonrpc, openapi, status, streams  # noqa: F401
from streamd.web.activity import Activity
from streamd.web.routes import routes
from streamd.web.streaming import OpenStreams


class StreamdApp:
    """
    @ivar service: the L{Service} (sources, stores, metrics) the routes act on.
    @ivar open_streams: every open streaming response (L{OpenStreams}).
    """

    app = routes
    # Assigned after the Activity whose lambda reads it: declared here for mypy.
    open_streams: OpenStreams

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.reactor = service.reactor
        self.auth = Auth.from_settings(self.settings.auth)
        # Readers and messages per second of each stream, for GET / and the live page.
        self.activity = Activity(self.reactor, lambda: self.open_streams,
                                 lambda: service.sources)
        broker = service.broker
        self.open_streams = OpenStreams(self.reactor,
                                        self.auth.max_connections_per_identity,
                                        on_ended=self.activity.ended,
                                        reserve=broker.reserve if broker else None)
        self._publish_metrics: dict[tuple[str, str], tuple] = {}  # bound children

    def resource(self):
        return self.app.resource()

    async def start(self) -> None:
        """Start the service (the event store, the sources, the channels)."""
        self.activity.start()
        await self.service.start()

    async def stop(self, timeout: float) -> None:
        """
        End every open stream (a C{shutdown} line: they give back what they did not
        write), then stop the service (the sources return what they hold), within
        C{timeout} seconds.
        """
        self.activity.stop()
        self.open_streams.end_all("shutdown")
        await self.service.stop(timeout)

    @overload
    def identify(self, request) -> Identity: ...

    @overload
    def identify(self, request, action: str, name: str) -> Identity: ...

    def identify(self, request, action: str | None = None, name: str = "") -> Identity:
        """
        Who is asking (401 if that cannot be told); with C{action} on stream C{name}
        (the two go together), 403 unless allowed.
        """
        identity = self.auth.identify(request)
        if action is not None:
            identity.require(action, name)
        return identity

    def operator(self, request, endpoint: str) -> None:
        """401 or 403 unless the operational C{endpoint} is public or the caller an admin."""
        self.auth.operator(request, endpoint)

    def is_admin(self, request) -> bool:
        """Whether the caller is an admin (no error if it cannot be told)."""
        try:
            return self.identify(request).admin
        except (Unauthorized, Forbidden):
            return False

    def published(self, name: str, kind: str, count: int, started: float) -> None:
        """Count C{count} messages published to stream C{name}, from C{started} on."""
        label = self.service.metrics_label(name)
        counted = self._publish_metrics.get((label, kind))
        if counted is None:
            metrics = self.service.metrics
            counted = self._publish_metrics[label, kind] = (
                metrics.messages_in.labels(label, kind),
                metrics.publish_seconds.labels(label))
        counted[0].inc(count)
        self.activity.publish(name, count)
        counted[1].observe(self.reactor.seconds() - started)
