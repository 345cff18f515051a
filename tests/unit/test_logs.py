"""--log-format json: one plain JSON object per line, as a log shipper reads it."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel

from streamd import logs


def lines_of(emit) -> list[dict]:
    """What the JSON observer writes for the events C{emit(log)} logs."""
    out = io.StringIO()
    observer = logs.json_file_observer(out)
    emit(Logger(namespace="streamd.test", observer=observer))
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_has_time_level_namespace_the_message_and_the_fields():
    (line,) = lines_of(lambda log: log.info("stream {stream} ended ({reason})",
                                            stream="news", reason="limit", messages=3))
    assert line.pop("time").endswith("Z")
    assert line == {"level": "info", "namespace": "streamd.test",
                    "message": "stream news ended (limit)",
                    "stream": "news", "reason": "limit", "messages": 3}


def test_time_is_iso_8601_utc():
    event = {"log_time": 0.25, "log_level": LogLevel.warn, "log_namespace": "x",
             "log_format": "hi"}
    assert json.loads(logs.json_line(event))["time"] == "1970-01-01T00:00:00.250Z"


def test_objects_that_are_not_plain_data_are_left_out():
    class Thing:
        def __repr__(self) -> str:
            return "<Thing with a secret token>"

    (line,) = lines_of(lambda log: log.warn("saw {thing!r}", thing=Thing(), n=float("nan"),
                                            ok=[1, {"a": None}], raw=b"payload"))
    assert line["message"] == "saw <Thing with a secret token>"  # rendered, as asked
    assert set(line) == {"time", "level", "namespace", "message", "ok"}
    assert line["ok"] == [1, {"a": None}]


def test_twisteds_own_keys_are_not_copied():
    (line,) = lines_of(lambda log: log.info("hello"))
    assert not [k for k in line if k.startswith("log_") or "uuid" in k]
    assert "unpersistable" not in json.dumps(line)


def test_a_failure_has_its_traceback():
    def emit(log):
        try:
            {}["missing"]
        except KeyError:
            log.failure("could not {what}", what="look it up")

    (line,) = lines_of(emit)
    assert line["level"] == "critical"
    assert line["message"] == "could not look it up"
    assert line["what"] == "look it up"
    assert "Traceback" in line["traceback"] and "KeyError: 'missing'" in line["traceback"]


def test_legacy_log_msg_events_render_their_text():
    event = {"message": ("Site starting on 8080",), "isError": 0, "system": "-",
             "time": 5.0, "log_time": 5.0, "log_text": "Site starting on 8080",
             "log_format": "{log_text}", "log_level": LogLevel.info,
             "log_namespace": "log_legacy", "log_system": "-"}
    assert json.loads(logs.json_line(event)) == {
        "time": "1970-01-01T00:00:05.000Z", "level": "info", "namespace": "log_legacy",
        "message": "Site starting on 8080"}
