"""The one parser for incoming JSON: nesting depth, NaN and the infinities, and where it is used."""

import json

import pytest

from streamd import config
from streamd.json_input import InvalidJSON, nested_deeper, parse
from streamd.message import InvalidPayload, decode_body
from streamd.redis.values import as_json
from streamd.tap import Options


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def test_depth_up_to_the_limit_parses_one_more_is_refused_by_name():
    assert parse(nested(5), 5) == [[[[[1]]]]]
    assert parse(b'{"a": {"b": [[1]]}}', 4) == {"a": {"b": [[1]]}}
    with pytest.raises(InvalidJSON, match=r"nested deeper than max_json_depth \(4 levels\)"):
        parse(b'{"a": {"b": [[[1]]]}}', 4)


def test_ten_thousand_deep_is_refused_without_recursing():
    with pytest.raises(InvalidJSON, match="max_json_depth"):
        parse(nested(10_000), 64)
    # Without a limit (what a source's payloads get), still an InvalidJSON, never a
    # RecursionError.
    with pytest.raises(InvalidJSON, match="nested too deep"):
        parse(nested(10_000))


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"s": "[[[[{{{{", "t": 'a\\"[[[[', "u": "\\", "v": ["]]]]"]}).encode()
    assert parse(text, 2)["s"] == "[[[[{{{{"
    assert not nested_deeper(text, 2)
    assert nested_deeper(text, 1)


def test_depth_scan_agrees_with_the_parsed_value():
    def depth(v):
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        return 0

    def chain(n, leaf):
        return leaf if n == 0 else [chain(n - 1, leaf)]

    values = [[], {}, [[], [[]], {"a": [{"b": []}]}], chain(11, 1), ["]", {"[": ["{"]}],
              [chain(9, []), chain(13, {})], {"k": '\\"[[[', "l": [[]]},
              [chain(3, {"x": chain(4, "]]")}), {"y": chain(12, None)}]]
    for v in values:
        raw = json.dumps(v).encode()
        for limit in range(1, 16):
            assert nested_deeper(raw, limit) == (depth(v) > limit), (v, limit)


def test_utf16_body_is_measured_in_characters():
    body = json.dumps([[["[[[["]]]).encode("utf-16")
    assert parse(body, 3) == [[["[[[["]]]
    with pytest.raises(InvalidJSON, match="max_json_depth"):
        parse(body, 2)


@pytest.mark.parametrize(("body", "name"), [(b"NaN", "NaN"), (b"Infinity", "Infinity"),
                                            (b"-Infinity", "-Infinity"),
                                            (b'{"a": [1, NaN]}', "NaN")])
def test_nan_and_infinities_are_refused_by_name(body, name):
    with pytest.raises(InvalidJSON, match=f"{name} is not a JSON number"):
        parse(body)


def test_other_bad_input_is_invalid_json_too():
    for body in (b"{oops", b"\xff\xfe\xfd", b"1" * 5000, b""):
        with pytest.raises(InvalidJSON, match="not valid JSON"):
            parse(body)


def test_publish_bodies_go_through_it():
    with pytest.raises(InvalidPayload) as e:
        decode_body(b'1\n{"a": NaN}\n', "application/x-ndjson", 64)
    assert e.value.line == 2 and "NaN" in e.value.reason
    with pytest.raises(InvalidPayload, match="max_json_depth"):
        decode_body(nested(65), "application/json", 64)
    assert decode_body(nested(64), "application/json", 64) == [nested(64)]


def test_pretty_printed_number_beyond_a_double_is_refused_not_relayed_as_infinity():
    # One line is relayed as sent (JSON.parse reads 1e400); re-encoding it would write
    # "Infinity", which it does not.
    assert decode_body(b'{"a": 1e400}', "application/json") == [b'{"a": 1e400}']
    with pytest.raises(InvalidPayload, match="too large for a double"):
        decode_body(b'{\n"a": 1e400\n}', "application/json")


def test_a_source_payload_that_is_not_json_becomes_a_string():
    assert as_json(b"NaN") == b'"NaN"'
    assert as_json(b'{"a": 1}') == b'{"a": 1}'
    deep = as_json(nested(10_000))
    assert json.loads(deep) == nested(10_000).decode()


def test_max_json_depth_is_a_config_key_and_an_option():
    assert config.load_settings({}, {}).max_json_depth == 64
    assert config.load_settings({"max_json_depth": 8}, {}).max_json_depth == 8
    with pytest.raises(config.ConfigError, match="max_json_depth: must be at most 500"):
        config.load_settings({"max_json_depth": 10_000}, {})
    options = Options()
    assert "--max-json-depth" in options.getUsage()
    options.parseOptions(["--max-json-depth", "3"])
    assert options["settings"].max_json_depth == 3
