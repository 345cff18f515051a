"""
The settings of the Redis sources: the C{[redis]} table of named connections and the
keys of C{redis-pubsub}, C{redis-list} and C{redis-stream} stream tables.

Plain data and checks, no Twisted: L{streamd.config} reads the C{[redis]} table with
L{read_redis_table}, the Redis source kinds take their C{config_keys} from here, and
L{streamd.redis.connection} turns a validated connection into live txredisapi connections.

A connection is C{[redis.NAME]} with a C{url}; keys given directly in C{[redis]}
describe the connection named C{default}, which a stream uses unless it sets
C{connection = "NAME"}::

    [redis]
    url = "redis://:secret@127.0.0.1:6379/0"

    [redis.cache]
    url = "rediss://cache.internal:6380/2"
    reconnect_max = 1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from streamd.keys import ConfigError, Key, check_ca, frozen, keys_of, read_table, setting
from streamd.redis.url import parse_url


def _check_url(value: str) -> str | None:
    try:
        parse_url(value)
    except ValueError as e:
        return str(e)
    return None


def _check_urls(value: list[str]) -> str | None:
    for url in value:
        problem = _check_url(url)
        if problem:
            return problem
    return None


@dataclass(frozen=True, kw_only=True)
class RedisConnectionSettings:
    """
    One C{[redis.NAME]} connection: its keys, and the parts of its URL (filled in by
    L{read_redis_table}).
    """

    url: str = setting(
        "str", "redis://127.0.0.1:6379/0",
        "redis://[[user]:password@]host:port/db; rediss:// for TLS", check=_check_url,
        repr=False)  # it may hold the password
    tls_ca: str = setting(
        "str", "", "PEM file of the CA that signed a rediss:// server's certificate "
        "(default: the system's CAs)", check=check_ca)
    connect_timeout: float = setting(
        "number", 2.0, "seconds to wait for a TCP (and TLS) connection", minimum=0.01)
    command_timeout: float = setting(
        "number", 10.0, "seconds to wait for the reply to a command once sent (0: "
        "forever); blocking reads wait this long beyond their own block time", minimum=0)
    reconnect_initial: float = setting(
        "number", 0.1, "seconds before the first reconnection attempt", minimum=0.01)
    reconnect_max: float = setting(
        "number", 0.5, "longest wait between reconnection attempts", minimum=0.01)
    pool_size: int = setting(
        "int", 2, "connections shared by ordinary (non-blocking) commands (per primary, "
        "on a cluster)", minimum=1, maximum=64)
    cluster: bool = setting(
        "bool", False, "a Redis Cluster: url (and urls) are seed nodes; commands go to "
        "the primary of their key's slot")
    urls: tuple[str, ...] = setting(
        "list", [], "more seed nodes of a cluster (url is the first)", check=_check_urls)
    # From the URL (see parse_url), and the connection's name.
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    name: str = "default"


def read_redis_table(table: Any, where: str) -> Mapping[str, RedisConnectionSettings]:
    """
    Validate C{[redis]} into C{{name: connection}} (read-only). With no table at all,
    C{default} is C{redis://127.0.0.1:6379/0}.
    """
    if not isinstance(table, dict):
        raise ConfigError(where, "expected a table")
    plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
    named = {k: v for k, v in table.items() if isinstance(v, dict)}
    if plain and "default" in named:
        raise ConfigError(f"{where}.default",
                          "give the default connection either in [redis] or in "
                          "[redis.default], not both")
    tables: dict[str, tuple[str, dict[str, Any]]] = {
        name: (f"{where}.{name}", t) for name, t in named.items()
    }
    if plain or "default" not in tables:
        tables["default"] = (where, plain)
    out: dict[str, RedisConnectionSettings] = {}
    for name, (prefix, t) in tables.items():
        conn = read_table(keys_of(RedisConnectionSettings), t, prefix,
                          unknown="unknown key for a Redis connection")
        if conn["reconnect_max"] < conn["reconnect_initial"]:
            raise ConfigError(f"{prefix}.reconnect_max",
                              "must be at least reconnect_initial")
        if conn["urls"] and not conn["cluster"]:
            raise ConfigError(f"{prefix}.urls", "several urls are for a cluster: "
                              "set cluster = true, or give one url")
        if conn["cluster"] and any(parse_url(u)["db"] for u in [conn["url"], *conn["urls"]]):
            raise ConfigError(f"{prefix}.url", "a Redis Cluster has only database 0")
        out[name] = RedisConnectionSettings(
            **{k: frozen(v) for k, v in conn.items()}, **parse_url(conn["url"]), name=name)
    return MappingProxyType(out)


def declared_in(tables: Mapping[str, RedisConnectionSettings], name: str,
                key: str) -> RedisConnectionSettings:
    """
    The C{[redis.NAME]} of C{tables} named C{name} by the config key C{key};
    L{ConfigError} naming C{key} if there is none.
    """
    if name not in tables:
        raise ConfigError(key, f"no Redis connection named {name!r} (declare [redis.{name}])")
    return tables[name]


def _required(what: str):
    def check(value: Any) -> str | None:
        if value is None or value == "":
            return f"required: {what}"
        return None
    return check


def _check_stream_start(value: str) -> str | None:
    if value in ("$", "0") or (value.startswith("-") and value[1:].isdigit()):
        return None
    return f'expected "$" (new entries), "0" (all) or "-N" (the last N), got {value!r}'


_CONNECTION = Key("connection", "str", "default", "the [redis.NAME] connection to use")
_INSTANCE = Key(
    "instance", "str", "",
    "this streamd's name in Redis (processing lists, consumer names); default: "
    "host name and listen address, stable across restarts so that a restarted "
    "streamd takes back what it held")
_BLOCK = Key("block", "number", 1.0, "seconds one blocking read waits for a message",
             minimum=0.01, maximum=60)
_BATCH = Key("batch", "int", 10, "messages taken from Redis per read", minimum=1,
             maximum=1000)

#: The keys of each Redis source kind's stream table (the kinds' C{config_keys}).
PUBSUB_KEYS = [
    _CONNECTION,
    Key("channels", "list", [], "channels to subscribe to (SUBSCRIBE)"),
    Key("patterns", "list", [], "glob patterns to subscribe to (PSUBSCRIBE)"),
    Key("sharded", "bool", False, "sharded pub/sub (SSUBSCRIBE, SPUBLISH; Redis 7): on a "
        "cluster, each channel is served by the primary of its slot; no patterns"),
]
LIST_KEYS = [
    _CONNECTION, _INSTANCE, _BLOCK, _BATCH,
    Key("key", "str", None, "the list to take messages from",
        check=_required("the Redis list's key")),
    Key("instance_ttl", "number", 15.0,
        "seconds after which another streamd takes back the messages held by a "
        "streamd that stopped refreshing its heartbeat", minimum=1),
]
STREAM_KEYS = [
    _CONNECTION, _INSTANCE, _BLOCK, _BATCH,
    Key("key", "str", None, "the Redis stream's key",
        check=_required("the Redis stream's key")),
    Key("group", "str", "", "consumer group: each entry to one client (empty: every "
        "client reads every entry from its own position)"),
    Key("start", "str", "$", 'where a new client (or a new group) starts: "$" new '
        'entries, "0" all, "-N" the last N entries', check=_check_stream_start),
    Key("claim_idle", "number", 30.0, "seconds an entry may stay unacknowledged in the "
        "group before another client is given it (XAUTOCLAIM)", minimum=0.01),
    Key("maxlen", "int", 0, "approximate length XADD trims the stream to (0: no trim)",
        minimum=0),
    Key("field", "str", "data", "the entry field that holds the message"),
]
