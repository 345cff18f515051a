"""
streamd's errors carry no HTTP status; L{streamd.web.errors} alone answers each with the
status, body and headers clients have always had, also when a plugin raises them.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from streamd import errors
from streamd.testing import FakeSource
from streamd.web.errors import STATUS, answer
from tests.support.web import settings, stub

ensure = pytest_twisted.ensureDeferred


class SpoolIdUnreadable(errors.InvalidRequest):
    """A plugin's own kind of refusal: answered as its streamd base class is."""


@pytest.mark.parametrize(("err", "status", "headers"), [
    (errors.InvalidRequest("since: no"), 400, {}),
    (SpoolIdUnreadable("since: no"), 400, {}),
    (errors.Unauthorized("identifier missing", 'Identifier realm="streamd"'), 401,
     {b"WWW-Authenticate": b'Identifier realm="streamd"'}),
    (errors.Forbidden("'a' may not read 'b'"), 403, {}),
    (errors.UnknownStream("no stream named 'x'"), 404, {}),
    (errors.UnknownSubscription("no subscription 'x'"), 404, {}),
    (errors.Unknown("channel 'x' has no value"), 404, {}),
    (errors.TooLarge("body over max_body_bytes"), 413, {}),
    (errors.UnsupportedMediaType("send application/json"), 415, {}),
    (errors.TooManyStreams("'a' already has 1 open streams", retry_after=10), 429,
     {b"Retry-After": b"10"}),
    (errors.StreamdError("something"), 500, {}),
    (errors.Refused("1 of 2 messages refused"), 502, {}),
    (errors.Unavailable("event store unavailable: gone"), 503, {}),
    (errors.SourceDown("redis is down"), 503, {}),
    (errors.SourceDown("stream 'a' is down: x", retry_after=3), 503, {b"Retry-After": b"3"}),
])
def test_each_error_answers_with_its_status_and_headers(err, status, headers):
    assert answer(err) == (status, headers)


def test_every_error_class_has_an_answer():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.StreamdError)]
    for cls in classes:
        assert any(base in STATUS for base in cls.__mro__), cls
    assert not any(hasattr(c, "status") or hasattr(c, "headers") for c in classes)


class Refusing(FakeSource):
    """A source whose publish fails with C{error}."""

    def __init__(self, error: Exception) -> None:
        super().__init__("r")
        self.error = error

    def publish(self, payloads, params=None):
        raise self.error


async def publish_to(error: Exception):
    app, http, _ = stub(settings({"a": {}}, store={"backend": "memory"}))
    app.service.add("r", Refusing(error), app.service.stream_settings["a"])
    r = await http.post("http://streamd/streams/r/messages", data=b'{"n": 1}',
                        headers={"Content-Type": "application/json"})
    return r.code, json.loads(await r.content()), r.headers


@ensure
async def test_a_source_that_refuses_messages_is_a_502_naming_them():
    message = "1 of 2 messages refused by the broker (line 2: nacked); the others were confirmed"
    code, body, headers = await publish_to(errors.Refused(message))
    assert (code, body) == (502, {"error": {"status": 502, "message": message}})


@ensure
async def test_a_source_down_during_a_publish_is_a_503_without_retry_after():
    code, body, headers = await publish_to(errors.SourceDown("stream 'r': SQS: throttled"))
    assert (code, body) == (503, {"error": {"status": 503,
                                            "message": "stream 'r': SQS: throttled"}})
    assert not headers.hasHeader("retry-after")


@ensure
async def test_a_plugins_bad_parameter_is_a_400():
    code, body, _ = await publish_to(SpoolIdUnreadable("group_id: required"))
    assert (code, body) == (400, {"error": {"status": 400, "message": "group_id: required"}})


@ensure
async def test_any_other_exception_is_an_internal_error_that_says_nothing_more():
    code, body, _ = await publish_to(RuntimeError("secret detail"))
    assert (code, body) == (500, {"error": {"status": 500, "message": "internal error"}})
