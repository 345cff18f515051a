"""
Settings: the embedded defaults, a TOML file, and the command line, validated into one
plain dict. A bad value stops start-up with one line naming the key.

Every top-level option is also a config key (the command line wins); a stream is a
TOML table C{[streams.NAME]} with C{source = "..."} and that source's keys. Stream
tables may also set the stream-level keys (heartbeat, buffer, ...) to override the
top-level values for that stream.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
        return text

    def validate(self, value: Any, where: str) -> Any:
        """Return C{value} checked (and normalised) or raise L{ConfigError}."""
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
    Key("max_pending", "int", 1000, "messages queued for one paused client", minimum=1),
    Key("slow_policy", "enum", "disconnect", "what a client gets when its queue is full",
        choices=("disconnect", "drop-oldest")),
    Key("max_message_bytes", "int", 256 * 1024, "largest message accepted", minimum=1),
    Key("retry", "int", 3000, "SSE reconnection hint, milliseconds", minimum=0),
    Key("ack", "enum", "write", "when a durable source's message counts as delivered",
        choices=("write", "client")),
    Key("max_unacked", "int", 100, "client-ack mode: messages outstanding per stream",
        minimum=1),
]

#: Keys of the whole service only.
SERVICE_KEYS = [
    Key("listen", "list", ["tcp:8080"], "endpoint to listen on (repeatable)"),
    Key("max_body_bytes", "int", 8 * 1024 * 1024, "largest publish request body", minimum=1),
    Key("dynamic_streams", "bool", None,
        "serve undeclared stream names as memory streams (default: only when no "
        "[streams] are declared)"),
]

#: Keys each source kind accepts in its stream table (beyond C{source} and STREAM_KEYS).
SOURCE_KEYS: dict[str, list[Key]] = {
    "memory": [],
}

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
EXTRA_TABLES: dict[str, Callable[[Any, str], Any]] = {}


def _stream(name: str, table: Any, top: dict[str, Any]) -> dict[str, Any]:
    where = f"streams.{name}"
    if not isinstance(table, dict):
        raise ConfigError(where, "expected a table")
    kind = table.get("source", "memory")
    if kind not in SOURCE_KEYS:
        raise ConfigError(
            f"{where}.source", f"unknown source {kind!r} (known: {', '.join(SOURCE_KEYS)})"
        )
    known = {k.name: k for k in STREAM_KEYS + SOURCE_KEYS[kind]}
    out: dict[str, Any] = {"name": name, "source": kind}
    for k in STREAM_KEYS:
        out[k.name] = top[k.name]
    for k in SOURCE_KEYS[kind]:
        out[k.name] = k.default
    for key, value in table.items():
        if key == "source":
            continue
        if key not in known:
            raise ConfigError(f"{where}.{key}", f"unknown key for a {kind} stream")
        out[key] = known[key].validate(value, f"{where}.{key}")
    for k in SOURCE_KEYS[kind]:
        if out[k.name] is None and k.default is None and k.check is not None:
            problem = k.check(None)
            if problem:
                raise ConfigError(f"{where}.{k.name}", problem)
    return out


def stream_defaults(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of an undeclared (dynamic, memory) stream."""
    out = {k.name: settings[k.name] for k in STREAM_KEYS}
    out.update(name=name, source="memory")
    return out


# Registers the [redis] table and the redis-* source keys (kept in their own module).
import streamd.redis_settings  # noqa: E402,F401
