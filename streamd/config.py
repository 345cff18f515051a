"""
Settings: the embedded defaults, a TOML file, and the command line, validated into one
plain dict. A bad value stops start-up with one line naming the key.

Every top-level option is also a config key (the command line wins); a stream is a
TOML table C{[streams.NAME]} with C{source = "..."} and that source's keys. Stream
tables may also set the stream-level keys (heartbeat, buffer, ...) to override the
top-level values for that stream.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamd import sources
from streamd.json_input import DEFAULT_MAX_DEPTH
from streamd.store.base import RESERVED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """One bad setting; C{str()} is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Key:
    """One setting: its name, type, default and an optional extra check."""

    name: str
    type: str  # "int", "number", "bool", "str", "list", "enum"
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    cli: bool = True
    secret: bool = False  # never echo the value in an error

    def parse_cli(self, text: str) -> Any:
        """Turn a command-line string into this key's type (then L{validate})."""
        if self.type == "int":
            try:
                return int(text)
            except ValueError:
                raise ConfigError(self.name, f"expected an integer, got {text!r}") from None
        if self.type == "number":
            try:
                return float(text)
            except ValueError:
                raise ConfigError(self.name, f"expected a number, got {text!r}") from None
        if self.type == "bool":
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(self.name, f"expected true or false, got {text!r}")
        if self.type == "list":
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    def validate(self, value: Any, where: str) -> Any:
        """Return C{value} checked (and normalised) or raise L{ConfigError}."""
        try:
            return self._validate(value, where)
        except ConfigError as e:
            if self.secret:
                raise ConfigError(where, "invalid value (not shown: it is a secret)") from None
            raise e

    def _validate(self, value: Any, where: str) -> Any:
        t = self.type
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(where, f"expected an integer, got {value!r}")
        elif t == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(where, f"expected a number, got {value!r}")
            value = float(value)
        elif t == "bool":
            if not isinstance(value, bool):
                raise ConfigError(where, f"expected true or false, got {value!r}")
        elif t in ("str", "enum"):
            if not isinstance(value, str):
                raise ConfigError(where, f"expected a string, got {value!r}")
            if t == "enum" and value not in self.choices:
                raise ConfigError(
                    where, f"expected one of {', '.join(self.choices)}, got {value!r}"
                )
        elif t == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(where, f"expected a list of strings, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(where, f"must be at least {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(where, f"must be at most {self.maximum:g}, got {value!r}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(where, problem)
        return value


#: Keys that a stream table may set, and whose top-level value is every stream's default.
STREAM_KEYS = [
    Key("heartbeat", "number", 15.0, "seconds without a message before a heartbeat (0: none)",
        minimum=0),
    Key("buffer", "int", 100, "messages a memory stream keeps for resuming by id", minimum=0),
    Key("buffer_ttl", "number", 300.0, "seconds a buffered message stays resumable",
        minimum=0),
    Key("max_pending", "int", 1000, "messages queued for one client that is behind",
        minimum=1),
    Key("max_pending_bytes", "int", 1024 * 1024, "payload bytes queued for one client that "
        "is behind", minimum=1),
    Key("send_buffer", "int", 32 * 1024, "kernel send buffer of a streaming connection, "
        "bytes (SO_SNDBUF; 0: the kernel's default)", minimum=0),
    Key("slow_policy", "enum", "disconnect", "what a client gets when its queue is full",
        choices=("disconnect", "drop-oldest")),
    Key("max_message_bytes", "int", 256 * 1024, "largest message accepted", minimum=1),
    Key("retry", "int", 3000, "SSE reconnection hint, milliseconds", minimum=0),
    Key("coalesce_ms", "number", 0.0, "milliseconds messages may wait to reach a stream "
        "together (0: until the end of the reactor turn)", minimum=0, maximum=1000),
    Key("ack", "enum", "write", "when a durable source's message counts as delivered",
        choices=("write", "client")),
    Key("max_unacked", "int", 100, "client-ack mode: messages outstanding per stream",
        minimum=1),
    Key("text_fields", "list", [], "fields that track= matches (default: the whole payload)",
        cli=False),
    Key("id_fields", "list", [], "fields that follow= matches", cli=False),
    Key("location_field", "str", "", "field with a point [lon, lat] or box that "
        "locations= matches", cli=False),
    Key("fields", "list", [], "fields where.FIELD= may name (empty: any)", cli=False),
    Key("max_track", "int", 400, "phrases a track filter may hold", minimum=1),
    Key("max_follow", "int", 5000, "ids a follow filter may hold", minimum=1),
    Key("max_locations", "int", 25, "boxes a locations filter may hold", minimum=1),
    Key("sample", "number", 0.01, "rate of GET /streams/NAME/sample", minimum=0,
        maximum=1, check=lambda v: None if v > 0 else "must be more than 0"),
]

#: Keys of the whole service only.
SERVICE_KEYS = [
    # Loopback only: open to the network is a choice (--listen tcp:8080), not a default.
    Key("listen", "list", ["tcp:8080:interface=127.0.0.1"],
        "endpoint to listen on (repeatable)"),
    Key("max_body_bytes", "int", 8 * 1024 * 1024, "largest publish request body", minimum=1),
    # At most 500: json.loads and json.dumps recurse once per level, within Python's
    # recursion limit (1000 frames, some of them Twisted's and klein's).
    Key("max_json_depth", "int", DEFAULT_MAX_DEPTH, "deepest nesting of arrays and objects "
        "in a JSON body", minimum=1, maximum=500),
    Key("log_format", "enum", "text", "log lines as text, or json (one object per line)",
        choices=("text", "json")),
    Key("access_log", "enum", "log", "one line per response: in the log, raw on stdout, "
        "in access_log_file, or off", choices=("log", "stdout", "file", "off")),
    Key("access_log_file", "str", "streamd-access.log", "where access_log = \"file\" writes"),
    Key("shutdown_timeout", "number", 10.0, "seconds SIGTERM waits for streams to end",
        minimum=0),
    Key("cors_origins", "list", [], "origins whose browsers may use the API ('*': any)"),
    Key("data_dir", "str", "./streamd-data",
        "directory of the embedded event store (created on first use)"),
    Key("dynamic_streams", "bool", None,
        "serve undeclared stream names as memory streams (default: only when no "
        "[streams] are declared)"),
]

TOP_KEYS = {k.name: k for k in SERVICE_KEYS + STREAM_KEYS}


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a L{ConfigError}."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def build(file_values: dict[str, Any], cli_values: dict[str, Any]) -> dict[str, Any]:
    """
    Merge the embedded defaults, the TOML values and the command line (which wins)
    into validated settings: every top-level key, plus C{streams}: name -> the
    stream's settings with the top-level stream keys filled in.
    """
    settings: dict[str, Any] = {k.name: k.default for k in TOP_KEYS.values()}
    tables: dict[str, Any] = {}
    for name, value in file_values.items():
        if name in ("streams",) or isinstance(value, dict):
            tables[name] = value
            continue
        if name not in TOP_KEYS:
            raise ConfigError(name, "unknown key")
        settings[name] = TOP_KEYS[name].validate(value, name)
    for name, value in cli_values.items():
        if value is not None:
            settings[name] = TOP_KEYS[name].validate(value, name)
    streams_table = tables.pop("streams", {})
    for name in tables:
        if name not in EXTRA_TABLES:
            raise ConfigError(name, "unknown table")
    for name, check in EXTRA_TABLES.items():
        settings[name] = check(tables.get(name, {}), name)
    if not isinstance(streams_table, dict):
        raise ConfigError("streams", "expected tables [streams.NAME]")
    settings["streams"] = {
        name: _stream(name, table, settings) for name, table in streams_table.items()
    }
    if settings["dynamic_streams"] is None:
        settings["dynamic_streams"] = not settings["streams"]
    return settings


#: Other top-level tables ([redis], [auth], ...): name -> validator(table, where).
def _auth_table(table: Any, where: str) -> Any:
    from streamd.auth import validate_table  # auth builds on this module's Key

    return validate_table(table, where)


def flat_table(keys: list[Key]) -> Callable[[Any, str], dict[str, Any]]:
    """A validator for a table of plain keys (defaults filled in)."""

    def validate(table: Any, where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise ConfigError(where, "expected a table")
        known = {k.name: k for k in keys}
        out = {k.name: k.default for k in keys}
        for name, value in table.items():
            if name not in known:
                raise ConfigError(f"{where}.{name}", "unknown key")
            out[name] = known[name].validate(value, f"{where}.{name}")
        return out

    return validate


CHANNEL_KEYS = [
    Key("backend", "enum", "memory", "where channel values live: this process, or Redis "
        "(shared by several instances)", choices=("memory", "redis")),
    Key("connection", "str", "default", "the [redis] connection of the redis backend"),
    Key("prefix", "str", "streamd:channels", "the redis backend's hash (and channel prefix)"),
    Key("idle", "number", 10.0, "seconds without a change before {\"Updates\": false}",
        minimum=0.05),
    Key("expire", "number", 3600.0, "seconds a subscription with no open stream is kept",
        minimum=1),
    Key("max_channels", "int", 1000, "channels one subscription may name", minimum=1),
]

EXTRA_TABLES: dict[str, Callable[[Any, str], Any]] = {
    "auth": _auth_table,
    "channels": flat_table(CHANNEL_KEYS),
}


def _stream(name: str, table: Any, top: dict[str, Any]) -> dict[str, Any]:
    where = f"streams.{name}"
    if not isinstance(table, dict):
        raise ConfigError(where, "expected a table")
    kind = table.get("source", "memory")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.source", f"expected a string, got {kind!r}")
    try:
        plugin = sources.load(kind)
    except sources.KindError as e:
        raise ConfigError(f"{where}.source", str(e)) from None
    kind_keys: list[Key] = list(plugin.config_keys)
    known = {k.name: k for k in STREAM_KEYS + kind_keys}
    out: dict[str, Any] = {"name": name, "source": kind}
    for k in STREAM_KEYS:
        out[k.name] = top[k.name]
    for k in kind_keys:
        out[k.name] = k.default
    for key, value in table.items():
        if key == "source":
            continue
        if key not in known:
            raise ConfigError(f"{where}.{key}", f"unknown key for a {kind} stream")
        out[key] = known[key].validate(value, f"{where}.{key}")
    for k in kind_keys:
        if out[k.name] is None and k.default is None and k.check is not None:
            problem = k.check(None)
            if problem:
                raise ConfigError(f"{where}.{k.name}", problem)
    check = getattr(plugin, "check_config", None)
    if check is not None:
        check(out, where)
    return out


def stream_defaults(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of an undeclared (dynamic, memory) stream."""
    out = {k.name: settings[k.name] for k in STREAM_KEYS}
    out.update(name=name, source="memory")
    return out


_STORE_KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _check_store_keys(keys: list[str]) -> str | None:
    for k in keys:
        if not _STORE_KEY_NAME.match(k):
            return f"{k!r}: use letters, digits and _ . - (starting with a letter or _)"
        if k in RESERVED:
            return f"{k!r} is a query parameter name; index another field"
    if len(set(keys)) != len(keys):
        return "a key is listed twice"
    return None


#: The event store's table, C{[store]} (see L{streamd.store}).
STORE_KEYS = [
    Key("backend", "enum", "sqlite", "where events are kept",
        choices=("sqlite", "memory", "redis")),
    Key("keys", "list", ["kind", "user"], "event fields to index (filterable)",
        check=_check_store_keys),
    Key("max_events", "int", 0, "keep at most this many events (0: no limit)", minimum=0),
    Key("max_age", "number", 0.0, "drop events older than this, seconds (0: no limit)",
        minimum=0),
    Key("redis_url", "str", "redis://127.0.0.1:6379/0", "the redis backend's server"),
    Key("redis_prefix", "str", "streamd:events:", "prefix of the redis backend's keys"),
]


def _store_table(table: Any, where: str) -> dict[str, Any]:
    out = flat_table(STORE_KEYS)(table, where)
    if out["backend"] == "redis" and not out["redis_url"].startswith("redis://"):
        raise ConfigError(f"{where}.redis_url", "expected redis://host[:port][/db]")
    return out


EXTRA_TABLES["store"] = _store_table


# Registers the [redis] table and the redis-* source keys (kept in their own module).
import streamd.redis_settings  # noqa: E402,F401
