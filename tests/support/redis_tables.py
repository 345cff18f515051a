"""The Redis list tests' helpers, which the pub/sub and stream tests use too."""

import pytest

from tests.support.web import (
    settings,
)


def base(redis, key="jobs") -> str:
    """Where the list's own keys start: on a cluster, the key as a hash tag."""
    return f"{{{key}}}" if getattr(redis, "clustered", False) else key


def processing(redis, instance="test") -> str:
    return f"{base(redis)}:streamd:processing:{instance}"


def single_only(redis) -> None:
    """A test that stops and starts the server: its cluster counterpart is a failover."""
    if getattr(redis, "clustered", False):
        pytest.skip("stops the server; on a cluster see test_redis_cluster_live")


def redis_table(redis) -> dict:
    return getattr(redis, "table", None) or {"url": redis.url}


def config(redis, **stream):
    stream.setdefault("source", "redis-list")
    stream.setdefault("key", "jobs")
    stream.setdefault("instance", "test")
    stream.setdefault("block", 0.2)
    return settings({"jobs": stream}, redis=redis_table(redis))


def llen(redis, key="jobs") -> int:
    return redis.command("LLEN", key)


def reads(redis, *commands: str) -> int:
    """How many of these commands (default: BLMOVE and EVAL) Redis has run."""
    commands = commands or ("cmdstat_blmove", "cmdstat_eval")
    stats = redis.command("INFO", "commandstats").decode()
    return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines()
               if line.startswith(commands))


def idle(redis, reader) -> int:
    """Seconds since a dedicated reader connection last sent a command."""
    (port,) = reader.local_ports()
    for line in redis.cli("CLIENT", "LIST").splitlines():
        if f"addr=127.0.0.1:{port} " in line:
            return int(line.split(" idle=")[1].split()[0])
    raise AssertionError("reader connection not found")
