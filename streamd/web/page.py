"""
The live page: C{GET /} asked for by a browser (C{Accept: text/html}) gets one HTML file
with its script and style inline (C{static/index.html}, shipped as package data); every
other client keeps getting the JSON service status from the same URL.

The page loads nothing from another host, and its Content-Security-Policy says so: the
inline script and style are allowed by their hashes, and connections go only to this
origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from streamd.web.common import accepted

_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


def prefers_html(request) -> bool:
    """
    Whether C{request} would rather have the page than JSON: a browser's navigation
    (C{text/html} ranked above C{application/json}). C{*/*} alone (curl) means JSON.
    Marks the answer as varying with C{Accept}, for caches.
    """
    request.responseHeaders.addRawHeader(b"Vary", b"Accept")
    return accepted(request).best_match(["application/json", "text/html"]) == "text/html"


@lru_cache(maxsize=1)
def page() -> tuple[bytes, bytes]:
    """The page's bytes and its Content-Security-Policy (read once)."""
    body = resources.files("streamd.web").joinpath("static/index.html").read_bytes()
    hashes: dict[bytes, list[bytes]] = {b"script": [], b"style": []}
    for kind, content in _INLINE.findall(body):
        digest = base64.b64encode(hashlib.sha256(content).digest())
        hashes[kind].append(b"'sha256-" + digest + b"'")
    csp = b"; ".join([
        b"default-src 'none'",
        b"script-src " + b" ".join(hashes[b"script"]),
        b"style-src " + b" ".join(hashes[b"style"]),
        b"connect-src 'self'",
        b"img-src data:",
        b"base-uri 'none'",
        b"form-action 'none'",
        b"frame-ancestors 'none'",
    ])
    return body, csp


def render_page(request) -> bytes:
    body, csp = page()
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Security-Policy", csp)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cache-Control", b"no-cache")
    return body
