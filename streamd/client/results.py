"""How a client's run ends: a L{Result}, or an error that carries one."""

from __future__ import annotations

import json

import attrs


@attrs.frozen
class Result:
    """
    How a run ended.

    @ivar count: records handed over in this run.
    @ivar reason: C{"limit"} (N handed over), C{"off"} (the switch), C{"stopped"}
        (L{StreamClient.stop} or a cancelled run), C{"ended"} (the server ended the
        stream: its own limit, its source ended).
    @ivar last_id: the id of the last record handed over (to resume from later).
    @ivar reconnects: connections made after the first.
    @ivar gaps: gap notices the server sent (records it could not replay).
    """

    count: int
    reason: str
    last_id: str | None = None
    reconnects: int = 0
    gaps: int = 0


class ClientError(Exception):
    """
    The server refused the stream (a 4xx, or a status the client cannot use): retrying
    would not help. C{result} says what the run handed over before.
    """

    def __init__(self, status: int, message: str, url: str, result: Result | None = None):
        super().__init__(f"{url}: {status} {message}")
        self.status = status
        self.message = message
        self.url = url
        self.result = result


class GaveUp(Exception):
    """C{max_retries} consecutive connection attempts failed."""

    def __init__(self, attempts: int, last_error: str, result: Result | None = None):
        super().__init__(f"gave up after {attempts} attempts: {last_error}")
        self.attempts = attempts
        self.last_error = last_error
        self.result = result


def error_message(body: bytes) -> str:
    """streamd's C{{"error": {"message"}}}, or the start of any other body."""
    try:
        value = json.loads(body)
        return str(value["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode("utf-8", "replace").strip() or "(no body)"
