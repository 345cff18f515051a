"""Identity and access: each mode's 401/403/429 paths, the happy paths, CORS."""

import json
import time

import jwt
import pytest
import pytest_twisted
import treq

from streamd import config
from streamd.auth import Auth, check_hs256, sign_hs256, verify_hs256
from streamd.web.access import redact
from tests.support.web import StreamReader, open_stream, settings, stub, within

ensure = pytest_twisted.ensureDeferred
SECRET = "0123456789abcdef-secret"

TOKENS = {
    "mode": "token",
    "admins": [],
    "tokens": [
        {"token": "alice-token", "identity": "alice", "read": ["news*"], "publish": ["news"]},
        {"token": "ops-token", "identity": "ops", "read": ["*"], "admin": True},
    ],
}


async def status(method, url, **kw):
    r = await within(getattr(treq, method)(url, **kw))
    body = await treq.json_content(r)
    return r, body


@ensure
async def test_identifier_mode(serve):
    server = await serve(settings(auth={"mode": "identifier"}))
    r, body = await status("get", server.url + "/streams/a")
    assert r.code == 401 and body["error"]["message"] == "identifier missing"
    assert r.headers.getRawHeaders("www-authenticate")
    s1 = await open_stream(server.url + "/streams/a?identifier=app1")
    s2 = await open_stream(server.url + "/streams/a", {"Streamd-Identifier": "app2"})
    await server.wait_open_streams(2)
    assert dict(server.app.open_streams.per_identity) == {"app1": 1, "app2": 1}
    s1.close()
    s2.close()


@ensure
async def test_token_mode_401_403_and_happy_paths(serve):
    server = await serve(settings(auth=TOKENS))
    url = server.url
    r, body = await status("get", url + "/streams/news")
    assert r.code == 401
    assert r.headers.getRawHeaders("www-authenticate") == ['Bearer realm="streamd"']
    r, body = await status("get", url + "/streams/news", headers={"Authorization": "Bearer x"})
    assert r.code == 401 and "invalid_token" in r.headers.getRawHeaders("www-authenticate")[0]
    r, body = await status("get", url + "/streams/weather",
                           headers={"Authorization": "Bearer alice-token"})
    assert r.code == 403 and "alice" in body["error"]["message"]
    r, body = await status("post", url + "/streams/news-archive/messages", data=b"1",
                           headers={"Authorization": "Bearer alice-token",
                                    "Content-Type": "application/json"})
    assert r.code == 403  # may read news*, may publish only news
    # The three ways to present a token.
    a = await open_stream(url + "/streams/news", {"Authorization": "Bearer alice-token"})
    b = await open_stream(url + "/streams/news?access_token=alice-token")
    c = await open_stream(url + "/streams/news-eu", {"Cookie": "streamd_token=alice-token"})
    await server.wait_open_streams(3)
    r, body = await status("post", url + "/streams/news/messages", data=b'"hi"',
                           headers={"Authorization": "Bearer alice-token",
                                    "Content-Type": "application/json"})
    assert r.code == 202
    for reader in (a, b):
        assert (await reader.wait_for(1))[0]["data"] == "hi"
    # GET / lists connected identities to an admin only.
    r, body = await status("get", url + "/", headers={"Authorization": "Bearer ops-token"})
    assert body["identities"] == {"alice": 3}
    r, body = await status("get", url + "/", headers={"Authorization": "Bearer alice-token"})
    assert "identities" not in body
    for reader in (a, b, c):
        reader.close()


@ensure
async def test_jwt_mode_claims_and_expiry(serve):
    server = await serve(settings(auth={"mode": "jwt", "jwt_secret": SECRET}))
    url = server.url + "/streams/orders"
    now = time.time()
    good = sign_hs256({"sub": "svc", "read": ["orders"], "exp": now + 60}, SECRET.encode())
    expired = sign_hs256({"sub": "svc", "read": ["orders"], "exp": now - 1}, SECRET.encode())
    wrong = sign_hs256({"sub": "svc", "read": ["orders"]}, b"another-secret-entirely")
    other = sign_hs256({"sub": "svc", "read": ["billing"]}, SECRET.encode())
    for token, code in ((expired, 401), (wrong, 401), (other, 403)):
        r, _ = await status("get", url, headers={"Authorization": f"Bearer {token}"})
        assert r.code == code
    reader = await open_stream(url + f"?access_token={good}&heartbeat=0.05")
    assert "heartbeat" in (await reader.wait_for(1))[0]
    reader.close()


async def stub_status(http, method, url, **kw):
    r = await getattr(http, method)(url, **kw)
    return r, await r.json()


@ensure
async def test_jwt_says_expired_or_not_yet_valid():
    _, http, _ = stub(settings(auth={"mode": "jwt", "jwt_secret": SECRET}))
    url = "http://streamd/streams/orders"
    now = time.time()
    cases = [
        ({"exp": now - 1}, "token expired"),
        ({"nbf": now + 600}, "token not yet valid"),
        ({"exp": "tomorrow"}, "invalid token"),
    ]
    for claims, why in cases:
        token = sign_hs256({"sub": "svc", "read": ["*"], **claims}, SECRET.encode())
        r, body = await stub_status(http, "get", url,
                                    headers={"Authorization": f"Bearer {token}"})
        assert r.code == 401 and body["error"]["message"] == why
        assert r.headers.getRawHeaders("www-authenticate") == [
            f'Bearer realm="streamd", error="invalid_token", error_description="{why}"']
    # An expired token signed with another secret is just invalid: say nothing more.
    forged = sign_hs256({"sub": "svc", "exp": now - 1}, b"another-secret-entirely")
    r, body = await stub_status(http, "get", url, headers={"Authorization": f"Bearer {forged}"})
    assert body["error"]["message"] == "invalid token"


OPS = {"/metrics": {}, "/openapi.json": {}, "/": {},
       "/ ": {"Accept": "text/html"}}  # "/ ": the live page


def getter(s):
    """A GET of a path of a StreamdApp built from C{s}, in memory (StubTreq)."""
    _, http, _ = stub(s)

    async def get(path, headers=None):
        r = await http.get("http://streamd" + path, headers=headers or {})
        return r, await r.content()
    return get


@ensure
async def test_with_auth_on_only_health_answers_anyone():
    get = getter(settings(auth=TOKENS))
    alice = {"Authorization": "Bearer alice-token"}
    ops = {"Authorization": "Bearer ops-token"}
    for path, headers in OPS.items():
        url = path.strip()
        r, body = await get(url, headers)
        assert r.code == 401, (path, body)
        assert r.headers.getRawHeaders("www-authenticate") == ['Bearer realm="streamd"']
        r, body = await get(url, {**headers, **alice})
        assert r.code == 403 and b"needs an admin identity" in body, (path, body)
        r, body = await get(url, {**headers, **ops})
        assert r.code == 200, (path, body)
    # /health: anyone learns up or down, and nothing of the setup.
    r, body = await get("/health")
    assert r.code == 200 and json.loads(body) == {"service": "streamd", "status": "ok"}
    r, body = await get("/health", alice)
    assert json.loads(body) == {"service": "streamd", "status": "ok"}
    r, body = await get("/health", ops)
    full = json.loads(body)
    assert full["status"] == "ok" and "sources" in full and "version" in full


@ensure
async def test_public_lists_the_endpoints_that_answer_anyone():
    get = getter(settings(auth={**TOKENS, "public": ["metrics", "status"]}))
    r, body = await get("/metrics")
    assert r.code == 200 and b"streamd_" in body
    r, body = await get("/")
    assert r.code == 200 and "identities" not in json.loads(body)
    r, body = await get("/health")
    assert r.code == 401  # not listed any more
    r, body = await get("/health", {"Authorization": "Bearer alice-token"})
    assert r.code == 403
    r, body = await get("/openapi.json")
    assert r.code == 401


@ensure
async def test_with_auth_off_every_operational_endpoint_is_public():
    get = getter(settings())
    for path, headers in {**OPS, "/health": {}}.items():
        r, body = await get(path.strip(), headers)
        assert r.code == 200, (path, body)
    r, body = await get("/health")
    assert "sources" in json.loads(body)


def test_admins_make_static_tokens_admins_too():
    auth = Auth.from_settings(config.load_settings(
        {"auth": {**TOKENS, "admins": ["alice"]}}, {}).auth)
    assert auth.tokens["alice-token"].admin


def test_jwt_rejects_alg_none_and_tampering():
    token = sign_hs256({"sub": "a"}, b"k" * 16)
    head, body, sig = token.split(".")
    assert verify_hs256(token, b"k" * 16) == {"sub": "a"}
    none_head = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    assert verify_hs256(f"{none_head}.{body}.", b"k" * 16) is None
    forged = sign_hs256({"sub": "admin"}, b"k" * 16).split(".")[1]
    assert verify_hs256(f"{head}.{forged}.{sig}", b"k" * 16) is None


def test_jwt_accepts_only_hs256_even_signed_with_our_secret():
    secret = b"k" * 64  # long enough for PyJWT not to warn
    for alg in ("HS384", "HS512"):
        token = jwt.encode({"sub": "a"}, secret, algorithm=alg)
        assert check_hs256(token, secret) == (None, "invalid token")


def test_jwt_leeway_iat_and_audience():
    secret, now = b"k" * 16, time.time()
    late = sign_hs256({"sub": "a", "exp": now - 5}, secret)
    assert check_hs256(late, secret) == (None, "token expired")
    assert check_hs256(late, secret, leeway=60)[0] is not None  # clock skew forgiven
    early = sign_hs256({"sub": "a", "nbf": now + 600}, secret)
    assert check_hs256(early, secret) == (None, "token not yet valid")
    assert check_hs256(early, secret, leeway=900)[0] is not None
    # iat is not a condition: a token from a host whose clock runs ahead is accepted.
    ahead = sign_hs256({"sub": "a", "iat": now + 600}, secret)
    assert check_hs256(ahead, secret)[0]["sub"] == "a"
    for_us = sign_hs256({"sub": "a", "aud": "streamd"}, secret)
    for_them = sign_hs256({"sub": "a", "aud": "billing"}, secret)
    assert check_hs256(for_us, secret, audience="streamd")[0]["sub"] == "a"
    assert check_hs256(for_them, secret, audience="streamd") == (None, "invalid token")
    assert check_hs256(for_them, secret)[0] is not None  # no audience set: not checked
    assert check_hs256(sign_hs256({"read": ["*"]}, secret), secret) == (None, "invalid token")


@ensure
async def test_max_connections_per_identity_is_429_with_retry_after(serve):
    server = await serve(settings(auth={"mode": "identifier",
                                        "max_connections_per_identity": 1}))
    first = await open_stream(server.url + "/streams/a?identifier=me")
    await server.wait_open_streams(1)
    r, body = await status("get", server.url + "/streams/a?identifier=me")
    assert r.code == 429 and r.headers.getRawHeaders("retry-after") == ["10"]
    assert r.phrase == b"Too Many Requests"  # the status line's reason (not "Unknown Status")
    other = await open_stream(server.url + "/streams/a?identifier=you")
    first.close()
    other.close()
    await server.wait_open_streams(0)
    again = await open_stream(server.url + "/streams/a?identifier=me")
    again.close()


@ensure
async def test_cors_preflight_and_stream_for_listed_origin_only(serve):
    server = await serve(settings(cors_origins=["https://app.example"]))
    url = server.url + "/streams/c"
    r = await within(treq.request("OPTIONS", url, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id"}))
    assert r.code == 204
    h = r.headers
    assert h.getRawHeaders("access-control-allow-origin") == ["https://app.example"]
    assert h.getRawHeaders("access-control-allow-credentials") == ["true"]
    assert "Last-Event-ID" in h.getRawHeaders("access-control-allow-headers")[0]
    # What an EventSource on that origin sends: a GET with Origin and Accept.
    es = await within(treq.get(url, unbuffered=True, headers={
        "Origin": "https://app.example", "Accept": "text/event-stream"}))
    assert es.headers.getRawHeaders("access-control-allow-origin") == ["https://app.example"]
    StreamReader(es).close()
    # Errors carry the header too, so the page can read them.
    r = await within(treq.get(url + "?limit=0", headers={"Origin": "https://app.example"}))
    assert r.code == 400 and r.headers.getRawHeaders("access-control-allow-origin")
    # Another origin gets no CORS headers at all.
    r = await within(treq.get(url + "?limit=0", headers={"Origin": "https://evil.example"}))
    assert not r.headers.getRawHeaders("access-control-allow-origin")


@ensure
async def test_cors_any_origin_without_credentials(serve):
    # CORS wraps the site's resource (streamd.web.site), so this one needs a real socket.
    server = await serve(settings(cors_origins=["*"]))
    r = await within(treq.get(server.url + "/", headers={"Origin": "https://x.example"}))
    assert r.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    assert not r.headers.getRawHeaders("access-control-allow-credentials")


def test_access_log_never_has_tokens():
    assert redact(b"/streams/a?x=1&access_token=s3cr3t&y=2") == \
        b"/streams/a?x=1&access_token=REDACTED&y=2"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"mode": "token"}, "auth.tokens"),
        ({"mode": "jwt", "jwt_secret": "short"}, "auth.jwt_secret"),
        ({"mode": "magic"}, "auth.mode"),
        ({"mode": "token", "tokens": [{"identity": "x"}]}, "auth.tokens[0].token"),
        ({"mode": "jwt", "jwt_secret": SECRET, "public": ["health", "docs"]}, "auth.public"),
    ],
)
def test_auth_config_errors(table, key):
    with pytest.raises(config.ConfigError) as e:
        config.load_settings({"auth": table}, {})
    assert e.value.key == key


def test_secret_values_never_echoed_in_config_errors():
    with pytest.raises(config.ConfigError) as e:
        config.load_settings({"auth": {"mode": "jwt", "jwt_secret": 12345678901234567}}, {})
    assert "12345678901234567" not in str(e.value)


def test_none_mode_identity_is_the_client_address():
    class Req:
        args = {}

        def getClientAddress(self):
            from twisted.internet.address import IPv4Address

            return IPv4Address("TCP", "10.1.2.3", 5000)

    assert Auth().identify(Req()).name == "10.1.2.3"
