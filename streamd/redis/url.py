"""
The one parser of Redis URLs, for every Redis user in streamd (the C{[redis]} table, the
event store's C{redis_url}, the client's L{streamd.client.RedisLink.from_url}).

Plain data, no Twisted and no streamd imports, so that the config and the client may use it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit


def parse_url(url: str, default_host: str | None = None) -> dict[str, Any]:
    """
    Split C{redis://[[user]:password@]host[:port][/db]} (or C{rediss://} for TLS) into
    C{host}, C{port}, C{db}, C{username}, C{password} and C{tls}; raise ValueError with a
    reason a person can act on. A URL without a host (C{redis:///0}) is an error unless
    C{default_host} is given (the client's L{RedisLink.from_url} takes 127.0.0.1).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected redis://host:port/db or rediss://..., got {url!r}")
    host = parts.hostname or default_host
    if not host:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in {url!r} must be a number")
    return {
        "host": host,
        "port": port,
        "db": int(path) if path else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "tls": parts.scheme == "rediss",
    }
