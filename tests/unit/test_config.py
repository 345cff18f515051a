"""Settings: defaults, TOML, command line; one error naming the key."""

import dataclasses

import pytest
from twisted.internet.task import Clock

from streamd import config, sources
from streamd.auth import AuthSettings, TokenSettings
from streamd.message import InvalidPayload, decode_body
from streamd.redis.settings import RedisConnectionSettings
from streamd.service import Service


def test_embedded_defaults():
    s = config.load_settings({}, {})
    assert s.listen == ("tcp:8080:interface=127.0.0.1",)  # not every interface
    assert s.dynamic_streams is True and s.streams == {}
    assert (s.heartbeat, s.buffer, s.max_pending) == (15.0, 100, 1000)


def test_stream_tables_inherit_top_level_and_override():
    s = config.load_settings({"max_pending": 10, "streams": {"a": {"heartbeat": 2}}}, {})
    assert s.streams["a"].max_pending == 10
    assert s.streams["a"].heartbeat == 2.0
    assert s.dynamic_streams is False  # declared streams: others are 404


def test_command_line_wins_over_file():
    s = config.load_settings({"heartbeat": 30}, {"heartbeat": 1.5, "listen": ["unix:/tmp/s"]})
    assert s.heartbeat == 1.5 and s.listen == ("unix:/tmp/s",)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"max_pending": "10"}, "max_pending"),
        ({"max_pending": True}, "max_pending"),
        ({"slow_policy": "block"}, "slow_policy"),
        ({"nonsense": 1}, "nonsense"),
        ({"streams": {"x": {"buffer": -1}}}, "streams.x.buffer"),
        ({"streams": {"x": {"nope": 1}}}, "streams.x.nope"),
        ({"streams": {"x": 3}}, "streams.x"),
        ({"bogus": {"a": 1}}, "bogus"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(config.ConfigError) as e:
        # As start-up reads them: the settings, then each stream's kind checks its table.
        sources.check_streams(config.load_settings(values, {}))
    assert e.value.key == key
    assert str(e.value).startswith(key + ": ")


def test_cli_strings_are_typed():
    key = config.TOP_KEYS["max_pending"]
    assert key.parse_cli("12") == 12
    with pytest.raises(config.ConfigError):
        key.parse_cli("lots")


def test_bad_toml_is_one_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("heartbeat = = 1")
    with pytest.raises(config.ConfigError) as e:
        config.load_toml(str(p))
    assert e.value.key == "config"


def test_publish_body_decoding():
    assert decode_body(b'{"a": 1}', "application/json") == [b'{"a": 1}']
    assert decode_body(b'1\n\n"x"\n', "application/x-ndjson") == [b"1", b'"x"']
    # A pretty-printed value is folded onto one line (framing needs one line).
    assert decode_body(b'{\n "a": 1\n}', "application/json") == [b'{"a":1}']
    with pytest.raises(InvalidPayload) as e:
        decode_body(b"1\n{oops\n", "application/x-ndjson")
    assert e.value.line == 2


def test_typed_settings_defaults_and_types():
    s = config.load_settings({}, {})
    assert isinstance(s, config.Settings)
    assert s.listen == ("tcp:8080:interface=127.0.0.1",)
    assert (s.heartbeat, s.buffer, s.max_pending, s.slow_policy) == (
        15.0, 100, 1000, "disconnect")
    assert s.dynamic_streams is True and dict(s.streams) == {}
    assert (s.auth.mode, s.auth.public, s.auth.tokens) == ("none", ("health",), ())
    assert (s.channels.backend, s.channels.idle) == ("memory", 10.0)
    assert (s.store.backend, s.store.keys) == ("sqlite", ("kind", "user"))
    assert list(s.redis) == ["default"] and s.redis["default"].port == 6379


def test_typed_settings_are_immutable():
    s = config.load_settings({"streams": {"a": {}}, "auth": {"admins": ["x"]}}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.heartbeat = 1.0
    for table in (s.auth, s.channels, s.store, s.redis["default"], s.streams["a"]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            table.backend = "x"
    for mapping in (s.streams, s.redis, s.streams["a"].table):
        with pytest.raises(TypeError):
            mapping["x"] = 1
    assert s.auth.admins == ("x",)  # a list in TOML is a tuple here


def test_a_streams_fields_and_its_source_kinds_table():
    s = config.load_settings(
        {"max_pending": 10, "streams": {"p": {
            "source": "redis-pubsub", "channels": ["news"], "heartbeat": 2,
            "text_fields": ["text"]}}}, {})
    p = s.streams["p"]
    assert isinstance(p, config.StreamSettings)
    assert (p.name, p.source, p.heartbeat, p.max_pending, p.text_fields) == (
        "p", "redis-pubsub", 2.0, 10, ("text",))
    # The kind's own keys, as written: checked by the kind, not while reading settings.
    assert dict(p.options) == {"channels": ["news"]} and "channels" not in p.table
    # What the kind's from_config receives: the whole table, its own keys included.
    table = sources.stream_table(p)
    assert table["channels"] == ("news",) and table["patterns"] == ()
    assert table["connection"] == "default" and table["heartbeat"] == 2.0
    assert (table["name"], table["source"]) == ("p", "redis-pubsub")
    d = s.dynamic_stream("other")
    assert (d.name, d.source, d.max_pending, d.table["max_pending"]) == (
        "other", "memory", 10, 10)
    # A kind's from_config takes the read-only table as it took the dict.
    memory = sources.load("memory").from_config(d.table, sources.Services(Clock(), s))
    assert (memory.name, memory.buffer_ttl) == ("other", 300.0)


def test_a_kinds_keys_are_checked_when_the_service_is_built():
    # Reading settings takes a table it cannot check without importing its kind...
    s = config.load_settings({"store": {"backend": "memory"}, "streams": {
        "q": {"source": "sqs", "queue_url": "http://sqs.local/1/q", "max_messages": 11}}},
        {})
    assert s.streams["q"].options["max_messages"] == 11
    # ... and building the service refuses it, in the one line start-up prints.
    with pytest.raises(config.ConfigError) as e:
        Service(s, Clock())
    assert str(e.value) == "streams.q.max_messages: must be at most 10, got 11"
    with pytest.raises(config.ConfigError) as e:
        sources.check_streams(s)
    assert str(e.value) == "streams.q.max_messages: must be at most 10, got 11"


def test_a_redis_connections_fields():
    s = config.load_settings({"redis": {
        "url": "redis://:p%40ss@db.local:6380/2",
        "cache": {"url": "rediss://user:pw@cache:6390/0", "pool_size": 4}}}, {})
    default, cache = s.redis["default"], s.redis["cache"]
    assert isinstance(cache, RedisConnectionSettings)
    assert (default.name, default.host, default.port, default.db, default.password,
            default.tls) == ("default", "db.local", 6380, 2, "p@ss", False)
    assert (cache.name, cache.username, cache.tls, cache.pool_size,
            cache.reconnect_max) == ("cache", "user", True, 4, 0.5)
    assert "p@ss" not in repr(default) and "pw" not in repr(cache)  # secrets stay out


def test_auth_tokens_are_typed():
    s = config.load_settings({"auth": {"mode": "token", "tokens": [
        {"token": "s3cret-token", "identity": "alice", "publish": ["news"]}]}}, {})
    assert s.auth == AuthSettings(mode="token", tokens=(TokenSettings(
        token="s3cret-token", identity="alice", publish=("news",)),))
    assert "s3cret" not in repr(s.auth)


# Which annotation each key type is held as (a list as a tuple: settings are immutable).
HELD_AS = {"int": "int", "number": "float", "bool": "bool", "str": "str", "enum": "str",
           "list": "tuple[str, ...]"}





@pytest.mark.parametrize("table", ["store", "channels"])
def test_a_redis_backend_on_an_undeclared_connection_is_one_config_error(table):
    # Before: a traceback from deep in the service's build, after the settings passed.
    values = {table: {"backend": "redis", "connection": "nope"}}
    with pytest.raises(config.ConfigError) as e:
        config.load_settings(values, {})
    assert str(e.value).startswith(f"{table}.connection: no Redis connection named 'nope'")
    declared = {**values, "redis": {"nope": {"url": "redis://127.0.0.1:6379/0"}}}
    assert getattr(config.load_settings(declared, {}), table).connection == "nope"
