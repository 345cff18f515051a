"""Settings: defaults, TOML, command line; one error naming the key."""

import pytest

from streamd import config
from streamd.message import InvalidPayload, decode_body


def test_embedded_defaults():
    s = config.build({}, {})
    assert s["listen"] == ["tcp:8080:interface=127.0.0.1"]  # not every interface
    assert s["dynamic_streams"] is True and s["streams"] == {}
    assert (s["heartbeat"], s["buffer"], s["max_pending"]) == (15.0, 100, 1000)


def test_stream_tables_inherit_top_level_and_override():
    s = config.build({"max_pending": 10, "streams": {"a": {"heartbeat": 2}}}, {})
    assert s["streams"]["a"]["max_pending"] == 10
    assert s["streams"]["a"]["heartbeat"] == 2.0
    assert s["dynamic_streams"] is False  # declared streams: others are 404


def test_command_line_wins_over_file():
    s = config.build({"heartbeat": 30}, {"heartbeat": 1.5, "listen": ["unix:/tmp/s"]})
    assert s["heartbeat"] == 1.5 and s["listen"] == ["unix:/tmp/s"]


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
        config.build(values, {})
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
