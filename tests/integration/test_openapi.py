"""
The published API (C{GET /openapi.json}) is true: every klein route and method is in
it and nothing else is, it is a valid OpenAPI 3.1 document, and a fuzz run against the
served document (schemathesis, derandomized) finds no 5xx, no traceback, no status
or content type the document does not declare.

The fuzz run talks to C{twistd -n streamd} in a subprocess (a real server, as an
operator runs it), so schemathesis's blocking HTTP client cannot stall the test
reactor. Streams are never read past their headers: a stream may never end.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess

import pytest
import pytest_twisted
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    status_code_conformance,
)

from streamd.web import StreamdApp
from streamd.web.openapi import document
from tests.support.daemon import start
from tests.support.web import settings, stub

# Per operation and mode. STREAMD_FUZZ_EXAMPLES=500 makes a longer, randomized hunt.
EXAMPLES = int(os.environ.get("STREAMD_FUZZ_EXAMPLES", "25"))
STREAM_TYPES = ("application/x-ndjson", "text/event-stream")


def _rules(app):
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        yield (path.rstrip("/") or "/"), rule.methods


def _klein_routes() -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for path, methods in _rules(StreamdApp.app):
        # werkzeug adds HEAD to every GET rule by itself; it is no separate route.
        routes.setdefault(path, set()).update(m for m in methods if m != "HEAD")
    return routes


def test_every_route_is_documented_and_nothing_else():
    doc = document()
    documented = {
        path: {m.upper() for m in item if m in ("get", "put", "post", "patch", "delete")}
        for path, item in doc["paths"].items()
    }
    routes = _klein_routes()
    missing = {p: m - documented.get(p, set()) for p, m in routes.items()}
    extra = {p: m - routes.get(p, set()) for p, m in documented.items()}
    # A new route goes into streamd/web/openapi.py with it.
    assert not any(missing.values()), f"routes not in the document: {missing}"
    assert not any(extra.values()), f"documented, but no such route: {extra}"
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            if method == "parameters":
                continue
            params = item.get("parameters", []) + op.get("parameters", [])
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == names, (method, path)
    ids = [op["operationId"] for item in doc["paths"].values()
           for m, op in item.items() if m != "parameters"]
    assert len(ids) == len(set(ids))


def test_document_is_valid_openapi_31_with_streaming_media_types():
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    for path in ("/streams/{name}", "/streams/{name}/sample", "/subscription",
                 "/subscriptions/{sub_id}/stream"):
        content = doc["paths"][path]["get"]["responses"]["200"]["content"]
        assert set(content) == set(STREAM_TYPES), path


@pytest_twisted.ensureDeferred
async def test_served_document():
    _, http, _ = stub(settings())
    response = await http.get("http://streamd/openapi.json")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert await response.json() == document()


# -- the fuzz run ------------------------------------------------------------------


class Daemon:
    def __init__(self, proc: subprocess.Popen, port: int, log) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.seen = 0

    def new_log(self) -> str:
        """What the daemon logged since the last call."""
        text = self.log.read_bytes()[self.seen:]
        self.seen += len(text)
        return text.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    # A short heartbeat so an idle stream can never hold a connection long.
    proc, port = start(tmp, "--heartbeat", "1")
    try:
        yield Daemon(proc, port, tmp / "streamd.log")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def served_schema(daemon):
    return schemathesis.openapi.from_url(daemon.url + "/openapi.json")


def _cases() -> list:
    """Every operation with valid inputs, and with invalid ones where it has any."""
    out = []
    for path, item in document()["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            out.append(pytest.param(path, method, GenerationMode.POSITIVE,
                                    id=f"{method} {path} valid"))
            params = item.get("parameters", []) + op.get("parameters", [])
            bodies = op.get("requestBody", {}).get("content", {}).values()
            # Invalid inputs exist only where the document constrains something.
            if (any(set(b["schema"]) - {"description"} for b in bodies)
                    or any(p["schema"] != {"type": "string"} for p in params)):
                out.append(pytest.param(path, method, GenerationMode.NEGATIVE,
                                        id=f"{method} {path} invalid"))
    return out


@pytest.mark.parametrize(("path", "method", "mode"), _cases())
def test_fuzz(path, method, mode, served_schema, daemon):
    operation = served_schema[path][method.upper()]

    @given(case=operation.as_strategy(mode))
    @hypothesis_settings(max_examples=EXAMPLES, derandomize=EXAMPLES == 25, database=None,
                         deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        kwargs = case.as_transport_kwargs(base_url=daemon.url)
        # A connection per request: a stream is hung up on unread, and its connection
        # must not go back to a pool.
        with requests.Session() as http:
            response = http.request(**kwargs, stream=True, timeout=10)
        ctype = response.headers.get("content-type", "")
        try:
            if ctype.startswith(STREAM_TYPES):
                # A live stream: its status and headers say all there is to check here;
                # reading the body could wait forever.
                response._content = b""
                checks = [not_a_server_error, status_code_conformance,
                          content_type_conformance, response_headers_conformance,
                          negative_data_rejection]
            else:
                assert b"Traceback" not in response.content
                checks = None  # all of schemathesis's checks, but:
            # A request valid by the document may still be refused for what no schema
            # can say: `since` names an id this stream never had, `follow` on a stream
            # with no id_fields, a subscription id that does not exist.
            case.validate_response(response, checks=checks,
                                   excluded_checks=[positive_data_acceptance])
        finally:
            response.close()
        logged = daemon.new_log()
        assert "Traceback" not in logged and "Unhandled" not in logged, logged

    run()


# -- what the fuzz run found, kept as plain tests ----------------------------------


def _get(daemon: Daemon, target: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, str, bytes]:
    """Send C{target} exactly as given (http.client sends the path unchanged)."""
    host, port = daemon.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, target, body, headers or {})
        response = conn.getresponse()
        ctype = response.getheader("content-type") or ""
        # A stream is not read: it may never end (that alone is a failure to report).
        body = b"" if ctype.startswith(STREAM_TYPES) else response.read()
        return response.status, ctype, body
    finally:
        conn.close()


@pytest.mark.parametrize("target", ["/streams/%FF", "/channels/a%FFb",
                                    "/subscriptions/%C3%28/stream"])
def test_a_url_that_is_not_utf8_is_a_json_400(daemon, target):
    status, ctype, body = _get(daemon, target)
    assert status == 400
    assert ctype == "application/json"
    assert json.loads(body)["error"]["message"] == "URL: not valid UTF-8"
    assert "Traceback" not in daemon.new_log()


def test_a_host_that_is_not_utf8_is_a_json_400(daemon):
    status, ctype, body = _get(daemon, "/health", headers={"Host": "caf\xe9.example"})
    assert (status, ctype) == (400, "application/json")
    assert json.loads(body)["error"]["message"] == "URL: not valid UTF-8"
    assert "Traceback" not in daemon.new_log()


def test_an_empty_ack_is_refused(daemon):
    status, _, body = _get(daemon, "/streams/demo?ack=")
    assert status == 400
    assert json.loads(body)["error"]["message"] == "ack: expected write or client, got ''"


@pytest.mark.parametrize(("body", "key"), [
    ({"track": [{"a": 1}]}, "track"),
    ({"follow": [["1", "2"]]}, "follow"),
    ({"where": {"kind": [None]}}, "where.kind"),
    ({"limit": None}, "limit"),
])
def test_a_filter_body_value_that_is_no_value_is_refused(daemon, body, key):
    status, _, answer = _get(daemon, "/streams/demo/filter", "POST", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(answer)["error"]["message"] == (
        f"{key}: expected a string, number or boolean, or a list of them")


@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/streams/news%0A/messages"),
    ("PUT", "/channels/x%0A"),
    ("GET", "/streams/news%0A"),
])
def test_a_name_ending_in_a_newline_is_refused(daemon, method, target):
    status, _, answer = _get(daemon, target, method, b"1", {"Content-Type": "application/json"})
    assert status == 400, answer
    assert "name" in json.loads(answer)["error"]["message"]


def test_a_patch_with_channels_and_add_is_refused(daemon):
    json_type = {"Content-Type": "application/json"}
    status, _, body = _get(daemon, "/subscriptions", "POST", b'{"channels": ["a"]}', json_type)
    assert status == 201
    target = f"/subscriptions/{json.loads(body)['id']}"
    status, _, body = _get(daemon, target, "PATCH",
                           b'{"channels": ["b"], "remove": [""]}', json_type)
    assert status == 400, body
    assert "send it alone" in json.loads(body)["error"]["message"]
    status, _, body = _get(daemon, target, "GET")
    assert json.loads(body)["channels"] == ["a"]  # unchanged
