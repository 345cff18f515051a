"""
What operators ask: C{GET /} (the service status as JSON, or the live page for a
browser), C{GET /health} and C{GET /metrics}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from streamd import __version__, metrics, sources
from streamd.web import page
from streamd.web.common import json_response
from streamd.web.routes import routes


def info(web) -> dict[str, Any]:
    """The service status C{GET /} answers."""
    service = web.service
    return {
        "service": "streamd",
        "version": __version__,
        "uptime": round(web.reactor.seconds() - service.started_at, 3),
        "open_streams": len(web.open_streams),
        "sources": web.activity.describe(service.statuses()),
        "source_kinds": sources.installed(),
        "events": service.store_status(),
        **({"redis_clusters": clusters} if (clusters := service.redis_clusters()) else {}),
    }


async def info_of_all(web) -> dict[str, Any]:
    """
    L{info}, for the whole server: with several workers, their open streams, readers
    and rates added up, a C{workers} list (index, pid, open streams, up), and the
    identities' open streams over all of them (C{identities}, shown to admins).
    """
    body = info(web)
    broker = web.service.broker
    if broker is None:
        body["workers"] = [{"index": 0, "pid": os.getpid(), "open_streams": len(web.open_streams),
                            "up": True}]
        body["identities"] = dict(web.open_streams.per_identity)
        return body
    merged = json.loads(await broker.gather("status"))
    for key in ("open_streams", "sources", "workers", "identities"):
        body[key] = merged[key]
    return body


@routes.route("/", methods=["GET"])
async def index(web, request):
    if page.prefers_html(request):
        web.operator(request, "page")
        return page.render_page(request)
    web.operator(request, "status")
    body = await info_of_all(web)
    identities = body.pop("identities")
    if web.is_admin(request):
        body["identities"] = identities
    return json_response(request, 200, body)


@routes.route("/metrics", methods=["GET"])
async def metrics_page(web, request):
    web.operator(request, "metrics")
    request.setHeader(b"Content-Type", metrics.CONTENT_TYPE.encode())
    broker = web.service.broker
    if broker is not None:  # one scrape for every worker: their series summed
        return await broker.gather("metrics")
    return web.service.metrics.render()


@routes.route("/health", methods=["GET"])
async def health(web, request):
    """
    200 when every source is up, else 503. Only those who may see the status
    (C{GET /}) learn more than that: source names and reasons describe the setup.
    """
    web.operator(request, "health")
    body = await info_of_all(web)
    body.pop("identities")
    up = all(s["status"] == "ok" for s in body["sources"].values())
    up = up and body["events"]["status"] == "ok"
    status = "ok" if up else "down"
    if not (web.auth.is_public("status") or web.is_admin(request)):
        body = {"service": body["service"]}
    return json_response(request, 200 if up else 503, {**body, "status": status})
