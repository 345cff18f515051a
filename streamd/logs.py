"""
Log output for twistd: C{--log-format text} (twistd's own) or C{json} (one JSON object
per line, for log shippers). Events carry their fields (stream, identity, reason...),
never payloads or secrets.
"""

from __future__ import annotations

import sys

from twisted.logger import jsonFileLogObserver
from twisted.python.logfile import LogFile

_where: dict[str, str | None] = {"logfile": None}


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
    # No record separator: plain JSON lines, which every log shipper reads.
    return jsonFileLogObserver(out, recordSeparator="")
