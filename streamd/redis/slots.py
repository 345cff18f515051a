"""
Redis Cluster's key slots: which of the 16384 slots a key (or a sharded pub/sub channel)
falls in, and which key of a command decides where the command goes.

Plain data, no Twisted: the cluster layer (L{streamd.redis.cluster}) routes with it, and
the test cluster's blocking client (L{streamd.testing.redis_cluster.RedisCluster}) does too.
"""

from __future__ import annotations

SLOTS = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC = _table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum Redis Cluster takes of a key."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC[((crc >> 8) ^ byte) & 0xFF]
    return crc


def as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def key_slot(key) -> int:
    """
    The slot of C{key}: of the part between the first C{{} and the next C{}} when that
    part is not empty (a hash tag: C{{jobs}:a} and C{{jobs}:b} share a slot), else of
    the whole key.
    """
    key = as_bytes(key)
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % SLOTS


def hash_tag(key: str) -> str:
    """
    C{key} as a hash tag (C{{key}}), unless it holds one already: either way, keys
    that start with it share C{key}'s slot (but for a key with a C{E{rb}} and no tag).
    """
    start = key.find("{")
    if start >= 0 and key.find("}", start + 1) > start + 1:
        return key
    return "{" + key + "}"


#: Commands whose first key is not their first argument: where to find it.
_AFTER_STREAMS = {b"XREAD", b"XREADGROUP"}
_SECOND = {b"XGROUP", b"XINFO", b"OBJECT"}
_SCRIPTS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL"}
#: Commands that name no key: any primary answers them (PUBLISH reaches every node
#: over the cluster bus).
KEYLESS = {b"PING", b"INFO", b"PUBLISH", b"CLUSTER", b"WAIT", b"TIME", b"SCRIPT",
           b"CLIENT", b"CONFIG", b"DBSIZE", b"ECHO", b"READONLY", b"ASKING",
           b"PUBSUB", b"FLUSHALL"}


def command_key(args) -> bytes | None:
    """
    The key (or, for C{SPUBLISH}, the channel) that decides which node runs the
    command C{args}; None for a command that names none.
    """
    if not args:
        return None
    name = as_bytes(args[0]).upper()
    if name in KEYLESS:
        return None
    if name in _SCRIPTS:
        return as_bytes(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name in _AFTER_STREAMS:
        upper = [as_bytes(a).upper() for a in args]
        if b"STREAMS" in upper:
            i = upper.index(b"STREAMS")
            return as_bytes(args[i + 1]) if i + 1 < len(args) else None
        return None
    if name in _SECOND:
        return as_bytes(args[2]) if len(args) > 2 else None
    return as_bytes(args[1]) if len(args) > 1 else None


def command_slot(args) -> int | None:
    key = command_key(args)
    return None if key is None else key_slot(key)
