"""Unit tests of the Redis pieces that need no server: settings and the reply reader."""

import pytest
import txredisapi

from streamd import config
from streamd.resp import _INCOMPLETE, parse


def build(**tables):
    return config.build(tables, {})


def test_redis_connections_default_named_and_parsed():
    s = build(redis={"url": "redis://:p%40ss@db.local:6380/2",
                     "cache": {"url": "rediss://user:pw@cache:6390/0", "reconnect_max": 1}})
    default, cache = s["redis"]["default"], s["redis"]["cache"]
    assert (default["host"], default["port"], default["db"], default["password"],
            default["tls"]) == ("db.local", 6380, 2, "p@ss", False)
    assert (cache["username"], cache["tls"], cache["reconnect_max"]) == ("user", True, 1.0)
    assert build()["redis"]["default"]["url"] == "redis://127.0.0.1:6379/0"


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


def test_reply_reader_bytes_exact_nested_and_partial():
    wire = (b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$3\r\n007\r\n"
            b"*2\r\n$-1\r\n*1\r\n:42\r\n+OK\r\n-ERR no such key\r\n-NOGROUP gone\r\n")
    replies, pos = [], 0
    while pos < len(wire):
        reply, pos = parse(wire, pos)
        replies.append(reply)
    assert replies[:3] == [[b"message", b"news", b"007"], [None, [42]], "OK"]
    assert str(replies[3]) == "no such key" and isinstance(replies[3], txredisapi.ResponseError)
    assert str(replies[4]) == "NOGROUP gone"
    # Every cut of the first reply is incomplete, not a wrong reply.
    for cut in range(1, 36):
        assert parse(wire[:cut], 0) == (_INCOMPLETE, 0)
