"""
A private Redis Cluster for tests (L{RedisCluster}: six redis-server nodes, 3 primaries
and 3 replicas, on free ports below 55,536 since a node's bus port is its port plus
10,000), and L{ClusterView}, through which a test written for one server
(L{streamd.testing.redis.RedisServer}) runs against the cluster too.

Fixtures: C{redis_cluster} (one cluster for the session), C{redis_cluster_private}
(one for a test that kills nodes), and L{either} for a parametrized C{redis} fixture.
Needs C{redis-server} and C{redis-cli}, nothing more.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import pytest

from streamd.redis.slots import command_slot, key_slot
from streamd.testing.redis import (
    RedisReplyError,
    RedisServer,
    Reply,
    free_port,
    make_certificates,
    require,
    served,
)


def cluster_port() -> int:
    """A free port below 55,536 whose cluster bus port (port + 10,000) is free too."""
    for _ in range(200):
        port = free_port() % 30000 + 20000
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


class RedisCluster:
    """
    A private Redis Cluster: six C{redis-server --cluster-enabled yes} on free ports,
    joined by C{redis-cli --cluster create --cluster-replicas 1} (3 primaries, 3
    replicas; C{cluster-node-timeout} 1 s and C{cluster-replica-validity-factor 0}, so
    that a replica takes over about 2 s after its primary dies). L{command} follows
    MOVED and ASK, as a cluster client would.

    With C{tls=True} every node speaks TLS only, to clients, to its replicas and on the
    cluster bus, with a certificate for localhost and 127.0.0.1 signed by one CA made
    in C{directory} (C{ca}, the C{tls_ca} of a streamd that uses the cluster); the
    URLs are C{rediss://localhost:PORT}, while C{CLUSTER SLOTS} names the nodes by IP.
    """

    def __init__(self, directory: str, nodes: int = 6, tls: bool = False) -> None:
        self.dir = directory
        self.tls = tls
        self.ca = make_certificates(directory) if tls else None
        self.nodes: list[RedisServer] = []
        for _ in range(nodes):
            port = cluster_port()
            node = RedisServer(port, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
                "--dir", directory,
                *(("--tls-cluster", "yes", "--tls-replication", "yes") if tls else ())))
            if tls:  # the one CA's certificates, not a CA per node (RedisServer's own)
                node.tls_dir, node.ca = directory, self.ca
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def table(self) -> dict:
        """The C{[redis]} table of a streamd that uses this cluster."""
        return {"url": self.url, "cluster": True, "urls": self.urls,
                **({"tls_ca": self.ca} if self.tls else {})}

    def toml(self, name: str = "") -> str:
        """The C{[redis]} table (C{[redis.NAME]} for a C{name}) of this cluster, as TOML."""
        urls = ", ".join(f'"{u}"' for u in self.urls)
        table = f"redis.{name}" if name else "redis"
        ca = f'tls_ca = "{self.ca}"\n' if self.tls else ""
        return f'[{table}]\nurl = "{self.url}"\ncluster = true\nurls = [{urls}]\n{ca}'

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [require("redis-cli"), *(("--tls", "--cacert", self.ca) if self.tls else ()),
                 "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in self.nodes],
                 "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True, timeout=60, check=True)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node sees all slots served and every replica in sync."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._ok(n) for n in self.live()):
                    return
            except (OSError, RedisReplyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become ready")
            time.sleep(0.1)

    def _ok(self, node: RedisServer) -> bool:
        info = node.command("CLUSTER", "INFO").decode()
        if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
            return False
        repl = node.command("INFO", "replication").decode()
        return "role:master" in repl or "master_link_status:up" in repl

    def shards(self) -> list[tuple[int, int, RedisServer]]:
        """(first slot, last slot, primary) of each slot range."""
        by_port = {n.port: n for n in self.nodes}
        out = []
        for node in self.live():
            try:
                ranges = node.command("CLUSTER", "SLOTS")
            except OSError:
                continue
            for first, last, primary, *_ in ranges:
                out.append((first, last, by_port[primary[1]]))
            return out
        raise RuntimeError("no cluster node answers")

    def primary_of(self, key) -> RedisServer:
        return self.primary_of_slot(key_slot(key))

    def primaries(self) -> list[RedisServer]:
        seen: list[RedisServer] = []
        for _, _, p in self.shards():
            if p not in seen:
                seen.append(p)
        return seen

    def keys_on_each_shard(self, prefix: str) -> list[str]:
        """One key per primary, each C{prefix} plus a number, in L{primaries} order."""
        shards = self.shards()  # one reading of the map, not one per key tried
        want = self.primaries()
        out: dict[int, str] = {}
        n = 0
        while len(out) < len(want):
            key = f"{prefix}{n}"
            out.setdefault(want.index(self.primary_of_slot(key_slot(key), shards)), key)
            n += 1
        return [out[i] for i in range(len(want))]

    def command(self, *args) -> Reply:
        """One command on the node that serves its key, following MOVED and ASK."""
        slot = command_slot(args)
        node = self.primary_of_slot(slot) if slot is not None else self.live()[0]
        asking = False
        for _ in range(10):
            try:
                if asking:
                    return node.command_asking(*args)
                return node.command(*args)
            except RedisReplyError as e:
                kind, _, rest = str(e).partition(" ")
                if kind not in ("MOVED", "ASK", "TRYAGAIN"):
                    raise
                if kind == "TRYAGAIN":
                    time.sleep(0.05)
                    continue
                port = int(rest.rsplit(":", 1)[1])
                node = next(n for n in self.nodes if n.port == port)
                asking = kind == "ASK"
        raise RuntimeError(f"too many redirections for {args!r}")

    def primary_of_slot(self, slot: int, shards=None) -> RedisServer:
        """The primary serving C{slot}, in C{shards} (a reading of L{shards}) or now."""
        return next(p for first, last, p in shards or self.shards() if first <= slot <= last)

    def kill_primary_of(self, key) -> RedisServer:
        """SIGKILL the primary that serves C{key} (its replica takes over)."""
        node = self.primary_of(key)
        node.stop()
        return node

    def wait_served(self, key, timeout: float = 30.0) -> RedisServer:
        """Wait until a live primary serves C{key} (after a failover); that primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                node = self.primary_of(key)
                if node.proc is not None and self._ok(node):
                    return node
            except (OSError, RedisReplyError, StopIteration):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no live primary serves {key!r}")

    def push_replicated(self, key: str, *values) -> int:
        """RPUSH C{values} then C{WAIT 1 1000} on one connection: the list's length."""
        node = self.primary_of(key)
        length, _ = node.commands(("RPUSH", key, *values), ("WAIT", 1, 1000))
        return length

    def begin_migration(self, slot: int, target: RedisServer) -> tuple:
        """C{slot} MIGRATING from its primary, IMPORTING into C{target} (then ASK)."""
        source = self.primary_of_slot(slot)
        src_id = source.command("CLUSTER", "MYID").decode()
        dst_id = target.command("CLUSTER", "MYID").decode()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        return slot, source, target, dst_id

    def move_keys(self, migration: tuple, count: int = 100) -> int:
        """MIGRATE up to C{count} keys of the slot; how many were moved."""
        slot, source, target, _ = migration
        keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, count)
        if keys:
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def end_migration(self, migration: tuple) -> None:
        """The rest of the keys, then the slot is the target's on every node."""
        slot, source, target, dst_id = migration
        while self.move_keys(migration):
            pass
        for node in (target, source, *self.live()):
            with contextlib.suppress(RedisReplyError):
                node.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def migrate_slot(self, slot: int, target: RedisServer) -> None:
        """Move C{slot} to C{target}, as C{redis-cli --cluster reshard} does."""
        if self.primary_of_slot(slot) is not target:
            self.end_migration(self.begin_migration(slot, target))


class _Shared:
    """
    The session's cluster, and how many fixture definitions hold it: each test module
    that imports L{redis_cluster_fixture} gets a definition of its own, so a session
    fixture alone would start one cluster per module (six servers and several seconds
    each).
    """

    cluster: RedisCluster | None = None
    holders = 0


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory):
    """
    One private Redis Cluster (3 primaries, 3 replicas) for the whole test session;
    every test keeps to its own keys. A test that kills a node should use
    C{redis_cluster_private} instead.
    """
    if _Shared.cluster is None:
        require("redis-cli")
        cluster = RedisCluster(str(tmp_path_factory.mktemp("cluster")))
        cluster.start()
        _Shared.cluster = cluster
    _Shared.holders += 1
    try:
        yield _Shared.cluster
    finally:
        _Shared.holders -= 1
        if _Shared.holders == 0:
            cluster, _Shared.cluster = _Shared.cluster, None
            cluster.stop()


@pytest.fixture(name="redis_cluster_private")
def redis_cluster_private_fixture(tmp_path):
    """A private Redis Cluster for one test (which may kill its nodes)."""
    yield from _cluster(str(tmp_path))


def _cluster(directory: str):
    require("redis-cli")
    cluster = RedisCluster(directory)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class ClusterView:
    """
    The session's cluster as a test written for one L{RedisServer} sees it: emptied
    first, with the slot of C{home} (the test's key) moved to the C{shard}th primary,
    so that the same test runs with its keys on each shard. Commands that name no
    key, C{CLIENT LIST} and C{INFO} go to that primary.
    """

    clustered = True

    def __init__(self, cluster: RedisCluster, home: str, shard: int) -> None:
        self.cluster = cluster
        cluster.wait_ok()
        for node in cluster.primaries():
            node.command("FLUSHALL")
        target = cluster.primaries()[shard % len(cluster.primaries())]
        cluster.migrate_slot(key_slot(home), target)
        self.node = target
        self.port = target.port

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def table(self) -> dict:
        return self.cluster.table

    def command(self, *args) -> Reply:
        if [str(a).upper() for a in args[:2]] == ["PUBSUB", "NUMSUB"]:
            # Classic subscriptions are per node: count them on every node.
            return [args[2], sum(n.command(*args)[1] for n in self.cluster.live())]
        if [str(a).upper() for a in args[:2]] == ["PUBSUB", "NUMPAT"]:
            return sum(n.command(*args) for n in self.cluster.live())
        if command_slot(args) is None:
            return self.node.command(*args)
        return self.cluster.command(*args)

    def cli(self, *args: str) -> str:
        slot = command_slot(args)
        node = self.node if slot is None else self.cluster.primary_of_slot(slot)
        return node.cli(*args)


def either(request, home: str = "jobs"):
    """
    For a parametrized C{redis} fixture (params L{PARAMS}): a private L{RedisServer}
    for C{"single"}, else a L{ClusterView} of the session's cluster with C{home} on
    the shard the param names.
    """
    if request.param == "single":
        yield from served()
    else:
        cluster = request.getfixturevalue("redis_cluster")
        yield ClusterView(cluster, home, int(request.param.rsplit("-", 1)[1]))


#: One server, then the cluster with the test's key on each of its three shards.
PARAMS = ["single", "cluster-0", "cluster-1", "cluster-2"]
