"""Unit tests of the Redis pieces that need no server: settings, URLs, reconnection."""

import pytest
from twisted.internet.task import Clock

from streamd import config, sources
from streamd.redis.connection import Factory, connection_settings
from streamd.redis.url import parse_url
from streamd.store.redis import RedisStore


def build(**tables):
    """Settings as start-up reads them: each stream's kind checks its table too."""
    settings = config.load_settings(tables, {})
    sources.check_streams(settings)
    return settings


def test_redis_connections_default_named_and_parsed():
    s = build(redis={"url": "redis://:p%40ss@db.local:6380/2",
                     "cache": {"url": "rediss://user:pw@cache:6390/0", "reconnect_max": 1}})
    default, cache = s.redis["default"], s.redis["cache"]
    assert (default.host, default.port, default.db, default.password,
            default.tls) == ("db.local", 6380, 2, "p@ss", False)
    assert (cache.username, cache.tls, cache.reconnect_max) == ("user", True, 1.0)
    assert build().redis["default"].url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("tables", "message"), [
    ({"redis": {"url": "http://x"}}, "redis.url: expected redis://"),
    ({"redis": {"url": "redis://h/zero"}}, "redis.url: the database"),
    ({"redis": {"cache": {"urll": "redis://h"}}}, "redis.cache.urll: unknown key"),
    ({"redis": {"reconnect_initial": 2, "reconnect_max": 1}}, "redis.reconnect_max: must be"),
    ({"redis": {"url": "redis://a", "default": {"url": "redis://b"}}}, "redis.default: give"),
    ({"streams": {"q": {"source": "redis-list"}}}, "streams.q.key: required"),
    ({"streams": {"s": {"source": "redis-stream", "key": "k", "start": "soon"}}},
     "streams.s.start: expected"),
    ({"streams": {"s": {"source": "redis-stream", "key": "k", "batch": 0}}},
     "streams.s.batch: must be at least 1"),
    ({"streams": {"p": {"source": "redis-pubsub", "channel": ["x"]}}},
     "streams.p.channel: unknown key"),
])
def test_bad_redis_settings_name_the_key(tables, message):
    with pytest.raises(config.ConfigError) as e:
        build(**tables)
    assert str(e.value).startswith(message)


def test_url_parser_takes_tls_user_password_and_db():
    assert parse_url("rediss://alice:p%40ss@cache.local:6390/3") == {
        "host": "cache.local", "port": 6390, "db": 3, "username": "alice",
        "password": "p@ss", "tls": True}
    assert parse_url("redis://:secret@h") == {
        "host": "h", "port": 6379, "db": 0, "username": None, "password": "secret",
        "tls": False}
    assert parse_url("redis://h:1/")["password"] is None
    # The client, as in its first release, takes a URL without a host as 127.0.0.1;
    # the config and the event store want one named.
    assert parse_url("redis:///2", default_host="127.0.0.1")["host"] == "127.0.0.1"
    assert parse_url("redis://h/2", default_host="127.0.0.1")["host"] == "h"


@pytest.mark.parametrize(("url", "message"), [
    ("http://h", "expected redis://"),
    ("redis://", "no host"),
    ("redis://h:port", "bad port"),
    ("redis://h/one", "the database"),
])
def test_url_parser_says_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_store_and_client_take_the_same_urls():
    store = RedisStore(["kind"], Clock(), "rediss://alice:pw@cache.local:6390/3")
    assert (store.settings.username, store.settings.tls) == ("alice", True)
    assert store.status() == ("down", "not connected to rediss://cache.local:6390/3")
    with pytest.raises(ValueError, match="expected redis://"):
        RedisStore(["kind"], Clock(), "http://h")


def test_reconnection_waits_grow_to_reconnect_max():
    s = connection_settings("redis://h", reconnect_initial=0.1, reconnect_max=0.5)
    factory = Factory(s, 1, None, lambda: None)
    waits = [factory.retryDelay(attempt) for attempt in range(1, 20)]
    assert waits[0] == pytest.approx(0.1)
    assert waits == sorted(waits) and max(waits) == 0.5
