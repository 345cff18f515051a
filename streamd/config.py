"""
Settings: the embedded defaults, a TOML file, and the command line, validated into one
frozen L{Settings}. A bad value stops start-up with one line naming the key.

Every top-level option is also a config key (the command line wins); a stream is a
TOML table C{[streams.NAME]} with C{source = "..."} and that source's keys. Stream
tables may also set the stream-level keys (heartbeat, buffer, ...) to override the
top-level values for that stream.

Reading settings imports no source kind (nor Twisted, treq or pika with it): a stream
table's stream-level keys are checked here, and its kind's own keys are kept as written
(L{StreamSettings.options}) for the kind to check when the service is built
(L{streamd.sources.stream_table}), with the same one-line error.

Each table's keys are declared once, as the fields of its frozen dataclass (see
L{streamd.keys.setting}): L{StreamKeys}, L{Settings}, L{ChannelSettings},
L{StoreSettings} here, L{streamd.auth.AuthSettings} and
L{streamd.redis.settings.RedisConnectionSettings} beside the code that uses them. The
tables a config file may hold are the fields of L{Settings}; nothing is registered at
import time.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from streamd.auth import AuthSettings
from streamd.json_input import DEFAULT_MAX_DEPTH
from streamd.keys import ConfigError, Key, Table, frozen, keys_of, setting
from streamd.redis.settings import RedisConnectionSettings, declared_in, read_redis_table
from streamd.redis.url import parse_url
from streamd.store.base import RESERVED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ChannelSettings", "ConfigError", "Key", "Settings", "StoreSettings", "StreamKeys",
    "StreamSettings", "TOP_KEYS", "load_settings", "load_toml",
]


@dataclass(frozen=True, kw_only=True)
class StreamKeys:
    """
    The keys that a stream table may set, and whose top-level value (in L{Settings}) is
    every stream's default.
    """

    heartbeat: float = setting(
        "number", 15.0, "seconds without a message before a heartbeat (0: none)", minimum=0)
    buffer: int = setting(
        "int", 100, "messages a memory stream keeps for resuming by id", minimum=0)
    buffer_ttl: float = setting(
        "number", 300.0, "seconds a buffered message stays resumable", minimum=0)
    max_pending: int = setting(
        "int", 1000, "messages queued for one client that is behind", minimum=1)
    max_pending_bytes: int = setting(
        "int", 1024 * 1024, "payload bytes queued for one client that is behind", minimum=1)
    send_buffer: int = setting(
        "int", 32 * 1024, "kernel send buffer of a streaming connection, bytes (SO_SNDBUF; "
        "0: the kernel's default)", minimum=0)
    slow_policy: str = setting(
        "enum", "disconnect", "what a client gets when its queue is full",
        choices=("disconnect", "drop-oldest"))
    max_message_bytes: int = setting(
        "int", 256 * 1024, "largest message accepted", minimum=1)
    retry: int = setting("int", 3000, "SSE reconnection hint, milliseconds", minimum=0)
    on_source_down: str = setting(
        "enum", "wait", "a reader of a stream whose source is down: wait (200, a status "
        "notice, then the messages once the source is back) or refuse (503 with "
        "Retry-After)", choices=("wait", "refuse"))
    coalesce_ms: float = setting(
        "number", 0.0, "milliseconds messages may wait to reach a stream together (0: "
        "until the end of the reactor turn)", minimum=0, maximum=1000)
    ack: str = setting(
        "enum", "write", "when a durable source's message counts as delivered",
        choices=("write", "client"))
    max_unacked: int = setting(
        "int", 100, "client-ack mode: messages outstanding per stream", minimum=1)
    text_fields: tuple[str, ...] = setting(
        "list", [], "fields that track= matches (default: the whole payload)", cli=False)
    id_fields: tuple[str, ...] = setting(
        "list", [], "fields that follow= matches", cli=False)
    location_field: str = setting(
        "str", "", "field with a point [lon, lat] or box that locations= matches",
        cli=False)
    fields: tuple[str, ...] = setting(
        "list", [], "fields where.FIELD= may name (empty: any)", cli=False)
    max_track: int = setting("int", 400, "phrases a track filter may hold", minimum=1)
    max_follow: int = setting("int", 5000, "ids a follow filter may hold", minimum=1)
    max_locations: int = setting("int", 25, "boxes a locations filter may hold", minimum=1)
    sample: float = setting(
        "number", 0.01, "rate of GET /streams/NAME/sample", minimum=0, maximum=1,
        check=lambda v: None if v > 0 else "must be more than 0")


@dataclass(frozen=True, kw_only=True)
class StreamSettings(StreamKeys):
    """
    One stream: its name, its source kind and its stream-level keys (the top-level
    values unless its table sets them).

    @ivar table: the checked part of the stream table, read-only: C{name}, C{source}
        and every stream-level key.
    @ivar options: the rest of the table, read-only and as written: the source kind's
        own keys, not checked yet (that would import the kind). The kind checks them
        when the service is built; L{streamd.sources.stream_table} returns the whole
        checked table, defaults filled in, that its C{check_config} and C{from_config}
        receive (see L{streamd.interfaces.ISourceKind}).
    """

    name: str
    source: str = "memory"
    table: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}),
                                     repr=False)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}),
                                       repr=False)


@dataclass(frozen=True, kw_only=True)
class ChannelSettings(Table):
    """The C{[channels]} table: value channels (see L{streamd.channels})."""

    backend: str = setting(
        "enum", "memory", "where channel values live: this process, or Redis (shared by "
        "several instances)", choices=("memory", "redis"))
    connection: str = setting("str", "default", "the [redis] connection of the redis backend")
    prefix: str = setting(
        "str", "streamd:channels", "the redis backend's hash (and channel prefix)")
    idle: float = setting(
        "number", 10.0, "seconds without a change before {\"Updates\": false}", minimum=0.05)
    expire: float = setting(
        "number", 3600.0, "seconds a subscription with no open stream is kept", minimum=1)
    max_channels: int = setting("int", 1000, "channels one subscription may name", minimum=1)


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


@dataclass(frozen=True, kw_only=True)
class StoreSettings(Table):
    """The event store's table, C{[store]} (see L{streamd.store})."""

    backend: str = setting(
        "enum", "sqlite", "where events are kept", choices=("sqlite", "memory", "redis"))
    keys: tuple[str, ...] = setting(
        "list", ["kind", "user"], "event fields to index (filterable)",
        check=_check_store_keys)
    max_events: int = setting(
        "int", 0, "keep at most this many events (0: no limit)", minimum=0)
    max_age: float = setting(
        "number", 0.0, "drop events older than this, seconds (0: no limit)", minimum=0)
    redis_url: str = setting("str", "redis://127.0.0.1:6379/0", "the redis backend's server")
    connection: str = setting(
        "str", "", "the [redis.NAME] connection of the redis backend, instead of redis_url "
        "(a Redis Cluster: cluster = true)")
    redis_prefix: str = setting(
        "str", "streamd:events:", "prefix of the redis backend's keys")

    @classmethod
    def from_table(cls, table: Any, where: str) -> StoreSettings:
        store = super().from_table(table, where)
        if store.backend == "redis":
            try:
                parse_url(store.redis_url)
            except ValueError as e:
                raise ConfigError(f"{where}.redis_url", str(e)) from None
        return store


def _table(read: Callable[[Any, str], Any]) -> Any:
    """A field of L{Settings} that holds a top-level table, read by C{read(table, where)}."""
    return field(metadata={"table": read})


@dataclass(frozen=True, kw_only=True)
class Settings(StreamKeys):
    """
    The whole service: every top-level key (the stream-level ones of L{StreamKeys}
    included, as every stream's default), the top-level tables, and C{streams}: name ->
    L{StreamSettings} of each declared stream. Built by L{load_settings}.
    """

    # Loopback only: open to the network is a choice (--listen tcp:8080), not a default.
    listen: tuple[str, ...] = setting(
        "list", ["tcp:8080:interface=127.0.0.1"], "endpoint to listen on (repeatable)")
    # "auto" becomes the number of cores in load_settings.
    workers: int = setting(
        "int", 1, "worker processes serving the listen endpoints, sharing one broker "
        "(auto: one per core)", minimum=1, maximum=256, choices=("auto",))
    max_body_bytes: int = setting(
        "int", 8 * 1024 * 1024, "largest publish request body", minimum=1)
    # At most 500: json.loads and json.dumps recurse once per level, within Python's
    # recursion limit (1000 frames, some of them Twisted's and klein's).
    max_json_depth: int = setting(
        "int", DEFAULT_MAX_DEPTH, "deepest nesting of arrays and objects in a JSON body",
        minimum=1, maximum=500)
    log_format: str = setting(
        "enum", "text", "log lines as text, or json (one object per line)",
        choices=("text", "json"))
    access_log: str = setting(
        "enum", "log", "one line per response: in the log, raw on stdout, in "
        "access_log_file, or off", choices=("log", "stdout", "file", "off"))
    access_log_file: str = setting(
        "str", "streamd-access.log", "where access_log = \"file\" writes")
    shutdown_timeout: float = setting(
        "number", 10.0, "seconds SIGTERM waits for streams to end", minimum=0)
    cors_origins: tuple[str, ...] = setting(
        "list", [], "origins whose browsers may use the API ('*': any)")
    data_dir: str = setting(
        "str", "./streamd-data", "directory of the embedded event store (created on first "
        "use)")
    # None (the key's default) becomes a bool in load_settings.
    dynamic_streams: bool = setting(
        "bool", None, "serve undeclared stream names as memory streams (default: only "
        "when no [streams] are declared)")

    # The top-level tables, in the order they are checked.
    auth: AuthSettings = _table(AuthSettings.from_table)
    channels: ChannelSettings = _table(ChannelSettings.from_table)
    store: StoreSettings = _table(StoreSettings.from_table)
    redis: Mapping[str, RedisConnectionSettings] = _table(read_redis_table)
    streams: Mapping[str, StreamSettings]

    def dynamic_stream(self, name: str) -> StreamSettings:
        """The settings of an undeclared (dynamic, memory) stream: the top-level values."""
        values = {k.name: getattr(self, k.name) for k in STREAM_KEYS}
        return StreamSettings(name=name, source="memory", **values,
                              table=MappingProxyType({**values, "name": name,
                                                      "source": "memory"}))


#: The stream-level keys, then the service's own; every one is also a command-line option.
STREAM_KEYS: list[Key] = list(keys_of(StreamKeys))
SERVICE_KEYS: list[Key] = [k for k in keys_of(Settings)
                            if k.name not in {s.name for s in STREAM_KEYS}]
TOP_KEYS: dict[str, Key] = {k.name: k for k in SERVICE_KEYS + STREAM_KEYS}

#: The top-level tables besides [streams]: name -> validator(table, where).
TABLES: dict[str, Callable[[Any, str], Any]] = {
    f.name: f.metadata["table"] for f in fields(Settings) if "table" in f.metadata
}


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a L{ConfigError}."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def load_settings(file_values: dict[str, Any], cli_values: dict[str, Any]) -> Settings:
    """
    Merge the embedded defaults, the TOML values and the command line (which wins)
    into validated L{Settings}, each stream's with the top-level stream keys filled in.
    """
    top: dict[str, Any] = {k.name: k.default for k in TOP_KEYS.values()}
    tables: dict[str, Any] = {}
    for name, value in file_values.items():
        if name in ("streams",) or isinstance(value, dict):
            tables[name] = value
            continue
        if name not in TOP_KEYS:
            raise ConfigError(name, "unknown key")
        top[name] = TOP_KEYS[name].validate(value, name)
    for name, value in cli_values.items():
        if value is not None:
            top[name] = TOP_KEYS[name].validate(value, name)
    streams_table = tables.pop("streams", {})
    for name in tables:
        if name not in TABLES:
            raise ConfigError(name, "unknown table")
    read = {name: check(tables.get(name, {}), name) for name, check in TABLES.items()}
    for name in ("store", "channels"):
        conf = read[name]
        if conf.backend == "redis" and conf.connection:
            declared_in(read["redis"], conf.connection, f"{name}.connection")
    if not isinstance(streams_table, dict):
        raise ConfigError("streams", "expected tables [streams.NAME]")
    streams = {name: _stream(name, table, top) for name, table in streams_table.items()}
    if top["dynamic_streams"] is None:
        top["dynamic_streams"] = not streams
    if top["workers"] == "auto":
        top["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return Settings(**{name: frozen(v) for name, v in top.items()}, **read,
                    streams=MappingProxyType(streams))


def _stream(name: str, table: Any, top: dict[str, Any]) -> StreamSettings:
    """
    One stream table: C{source} and the stream-level keys checked; the other keys kept
    as written, for the kind to check (see L{StreamSettings}).
    """
    where = f"streams.{name}"
    if not isinstance(table, dict):
        raise ConfigError(where, "expected a table")
    kind = table.get("source", "memory")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.source", f"expected a string, got {kind!r}")
    stream_keys = {k.name: k for k in STREAM_KEYS}
    values = {k.name: top[k.name] for k in STREAM_KEYS}
    options = {}
    for key, value in table.items():
        if key == "source":
            continue
        if key in stream_keys:
            values[key] = stream_keys[key].validate(value, f"{where}.{key}")
        else:
            options[key] = value
    checked = MappingProxyType(
        {"name": name, "source": kind, **{k: frozen(v) for k, v in values.items()}})
    return StreamSettings(name=name, source=kind, table=checked,
                          options=MappingProxyType(options),
                          **{k.name: checked[k.name] for k in STREAM_KEYS})
