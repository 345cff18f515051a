"""How a Redis value becomes a message body, and a publish request's parameters."""

from __future__ import annotations

import json
from typing import Any

from streamd.json_input import compact_json
from streamd.message import InvalidPayload, normalize_json


def as_json(raw: bytes) -> bytes:
    """
    A Redis value as one line of JSON: JSON text stays the publisher's bytes; any
    other value (C{hello}, C{007}, written by a program that is not streamd) becomes
    a JSON string, so that a stream never carries a line its clients cannot parse.
    """
    try:
        return normalize_json(raw)
    except InvalidPayload:
        return json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False).encode()


def json_object(value: dict[str, Any]) -> bytes:
    """A dict as one line of JSON text."""
    return compact_json(value)


def param(params: dict[str, str] | None, name: str) -> str | None:
    """One query parameter of a publish request."""
    return (params or {}).get(name)
