"""
The access log, off the request's path: one line per response in the combined log
format, with credentials taken out of the URI, gathered in memory and written once a
second (or once 64 KiB have gathered), not through Twisted's log observers one by one.

C{access_log = "log"} (default): into streamd's log, wherever twistd sends it (each line
still becomes a log event, formatted by the log's observers: the costly part, now once a
second rather than in the request). C{"stdout"}: raw lines to the process's standard output
(for containers and C{twistd -n}: the cheapest). C{"file"}: raw lines to C{access_log_file}.
C{"off"}: none.
"""

from __future__ import annotations

import json
import re
import sys
import time

from twisted.logger import Logger
from twisted.web import http

_SECRET_PARAMS = re.compile(rb"((?:^|[?&])(?:access_token|token)=)[^&]*", re.I)

#: Bytes gathered before a write even within the second.
FLUSH_BYTES = 64 * 1024
#: The same for C{access_log = "log"}, where each line is a log event (about 20 µs of
#: Twisted's observers each): 64 KiB there held the reactor for about 9 ms at once (p99
#: 14 ms in bench scenario (c)), 4 KiB for well under a millisecond (p99 2 ms).
LOG_FLUSH_BYTES = 4 * 1024


def redact(uri: bytes) -> bytes:
    """C{uri} with the value of any token parameter replaced."""
    return _SECRET_PARAMS.sub(rb"\1REDACTED", uri)


def access_log_line(timestamp: str, request) -> str:
    """Twisted's combined log format, with credentials taken out of the URI."""
    original = request.uri
    request.uri = redact(original)
    try:
        return http.combinedLogFormatter(timestamp, request)
    finally:
        request.uri = original


class AccessLog:
    """
    Lines gathered for the next write. C{out} is a text file (stdout, or one opened by
    L{open_access_log}); with C{json_lines} each line is a JSON object like streamd's
    other log lines.
    """

    def __init__(self, out, clock, json_lines: bool = False, every: float = 1.0,
                 flush_bytes: int = FLUSH_BYTES) -> None:
        self.out = out
        self.flush_bytes = flush_bytes
        self.clock = clock
        self.json_lines = json_lines
        self.every = every
        self.lines: list[str] = []
        self.size = 0
        self._call = None
        self._second = -1
        self._timestamp = ""

    def log(self, request) -> None:
        now = int(self.clock.seconds())
        if now != self._second:
            self._second = now
            self._timestamp = http.datetimeToLogString(now)
        line = access_log_line(self._timestamp, request)
        if self.json_lines:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "level": "info", "namespace": "streamd.access",
                               "message": line})
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.flush_bytes:
            self.flush()
        elif self._call is None:
            self._call = self.clock.callLater(self.every, self.flush)

    def flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.lines:
            lines, self.lines, self.size = self.lines, [], 0
            out = self.out() if callable(self.out) else self.out
            out.write("\n".join(lines) + "\n")
            out.flush()


_log = Logger(namespace="streamd.access")


class _ToLog:
    """A file whose lines go to streamd's log, as C{streamd.access} events."""

    def write(self, text: str) -> None:
        for line in text.splitlines():
            _log.info("{line}", line=line)

    def flush(self) -> None:
        pass


def open_access_log(kind: str, path: str, clock, json_lines: bool) -> AccessLog | None:
    """The access log C{access_log = kind} asks for, or None for C{"off"}."""
    if kind == "off":
        return None
    if kind == "log":
        # One log event per line, in the log's own format (text or JSON).
        return AccessLog(_ToLog(), clock, json_lines=False, flush_bytes=LOG_FLUSH_BYTES)
    if kind == "stdout":
        out = sys.__stdout__
    else:
        out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open while streamd runs)
    return AccessLog(out, clock, json_lines)
