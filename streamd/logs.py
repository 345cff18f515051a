"""
Log output for twistd: C{--log-format text} (twistd's own) or C{json} (one JSON object
per line, for log shippers). Events carry their fields (stream, identity, reason...),
never payloads or secrets.

A JSON line holds C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{message} (the
event rendered, as the text format shows it), C{traceback} for a failure, and the
event's own fields that are plain data. Twisted's bookkeeping (C{log_*} keys, the
legacy C{log.msg} keys) is left out, and so is any field that is not plain data: the
repr of an object (a request, say) may hold what must not be logged.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, formatEvent
from twisted.python.logfile import LogFile

_where: dict[str, str | None] = {"logfile": None}

#: Keys of events from Twisted's legacy C{log.msg}/C{log.err}, which say again what the
#: C{log_*} keys say.
_LEGACY = frozenset({"message", "format", "isError", "system", "time", "printed", "why",
                     "failure"})
_TOP = ("time", "level", "namespace", "message", "traceback")


def use_json(logfile: str | None) -> str:
    """
    Remember where twistd was told to log and return the name of the observer factory
    to hand to twistd's C{--logger} machinery (it takes a dotted name).
    """
    _where["logfile"] = logfile
    return f"{__name__}.json_observer"


def json_observer():
    """A JSON-lines observer on twistd's log destination (stdout with C{-n})."""
    path = _where["logfile"]
    out = sys.stdout if not path or path == "-" else LogFile.fromFullPath(path)
    return json_file_observer(out)


def json_file_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing one JSON object per line (L{json_line}) to C{out}."""
    return FileLogObserver(out, json_line)


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON (with its newline)."""
    level = event.get("log_level")
    line: dict[str, Any] = {
        "time": _iso_utc(event.get("log_time")),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        if not line["message"]:
            line["message"] = failure.getErrorMessage()
        line["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in _TOP:
            continue
        if _plain(value):
            line[key] = value
    return json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n"


def _iso_utc(t: float | None) -> str | None:
    if t is None:
        return None
    stamp = datetime.fromtimestamp(t, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether C{value} is JSON data as it is (no object, no bytes, no NaN)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 8:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False
