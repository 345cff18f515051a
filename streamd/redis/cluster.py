"""
Redis Cluster under the same API as one Redis server: L{ClusterConnection} is a
L{RedisConnection} (C{command}, C{eval}, C{dedicated}, C{subscriber}, C{up},
C{status}, C{wait_for}) whose commands go to the primary that serves their key's slot.

  - The slot map comes from C{CLUSTER SLOTS}, asked of a live node (the seeds, C{url}
    and C{urls}, then every primary met since). It is asked again every
    L{REFRESH_EVERY} seconds, every L{REFRESH_DEGRADED} seconds while a slot has no
    live primary (a failover: the replica's promotion is seen within that), and soon
    after a lost connection or a C{MOVED}.
  - Each primary has a pool of txredisapi connections (L{RedisConnection._factory},
    C{pool_size} per primary); a L{ClusterDedicated} (blocking reads) has one
    connection per primary it has used.
  - C{MOVED}: the slot's new primary is noted, the map refreshed, the command sent
    there. C{ASK}: C{ASKING} and the command, once, on the node named (a slot being
    migrated). C{TRYAGAIN} and C{CLUSTERDOWN}: retried with a growing delay.
  - A command whose slot has no live primary waits (as a command to a single Redis
    waits for the reconnection) until the map names a live one; a command in flight
    when its primary dies fails with L{txredisapi.ConnectionError}, as on one server.
  - Classic pub/sub (L{subscriber}) connects to any live node (L{AnyNode}): the cluster
    bus carries PUBLISH to every node. Sharded pub/sub has a connection per primary
    that serves channels (L{node_subscriber}, L{streamd.redis.hub.ShardedPubSub}), told
    of every map reading (C{map_listeners}).

The map and the counters (C{redirections}, C{refreshes}) are in L{shards} and
L{status}, for C{/health}.
"""

from __future__ import annotations

import math
from typing import Any

import txredisapi
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from streamd.net import client_endpoint
from streamd.redis.connection import Factory, RedisConnection, address
from streamd.redis.settings import RedisConnectionSettings
from streamd.redis.slots import SLOTS, command_slot, key_slot
from streamd.redis.url import parse_url

log = Logger()

Address = tuple[str, int]

#: Seconds between two readings of the slot map while every slot has a live primary.
REFRESH_EVERY = 5.0
#: Seconds between two readings while some slot has none (a failover under way).
REFRESH_DEGRADED = 0.25
#: Shortest time between two readings asked for by redirections and lost connections.
REFRESH_SOONEST = 0.1
#: Redirections and retries one command may meet before it fails.
MAX_ATTEMPTS = 16
#: Seconds before retrying after TRYAGAIN or CLUSTERDOWN, by attempt.
RETRY = backoffPolicy(0.05, 1.0, factor=2, jitter=lambda: 0.0)


def error_text(error: Exception) -> str:
    text = error.args[0] if error.args else ""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def parse_redirect(text: str) -> tuple[str, int, Address] | None:
    """C{("MOVED" or "ASK", slot, (host, port))} of a redirection error, else None."""
    parts = text.split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        host, _, port = parts[2].rpartition(":")
        return parts[0], int(parts[1]), (host or "127.0.0.1", int(port))
    return None


def parse_slots(reply) -> list[tuple[int, int, Address]]:
    """C{CLUSTER SLOTS} as C{(first, last, primary)} ranges."""
    out = []
    for first, last, primary, *_ in reply:
        host = primary[0]
        host = host.decode() if isinstance(host, bytes) else str(host)
        out.append((int(first), int(last), (host, int(primary[1]))))
    return sorted(out)


def open_connection(settings: RedisConnectionSettings, reactor) -> RedisConnection:
    """A L{ClusterConnection} if the settings say C{cluster}, else a L{RedisConnection}."""
    if getattr(settings, "cluster", False):
        return ClusterConnection(settings, reactor)
    return RedisConnection(settings, reactor)


@implementer(IStreamClientEndpoint)
class AnyNode:
    """An endpoint that connects to the first cluster node that answers: live primaries
    first, then the seeds and every other node known."""

    def __init__(self, conn: ClusterConnection) -> None:
        self.conn = conn

    def connect(self, factory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        s = self.conn.settings
        error: Exception = ConnectError(string="no cluster node known")
        for host, port in self.conn.candidates():
            try:
                return await client_endpoint(self.conn.reactor, host, port,
                                             s.connect_timeout, s.tls, s.tls_ca
                                             ).connect(factory)
            except Exception as e:
                error = e
        raise error


class ClusterDedicated:
    """A blocking reader's connections: one per primary it has sent a command to."""

    def __init__(self, owner: ClusterConnection, reply_timeout: float | None) -> None:
        self.owner = owner
        self.reply_timeout = reply_timeout
        self.factories: dict[Address, Factory] = {}
        self.closed = False

    def _factory(self, addr: Address) -> Factory:
        if self.closed:
            raise txredisapi.ConnectionError("closed")
        factory = self.factories.get(addr)
        if factory is None:
            # A primary we no longer read from (failed over, resharded) is let go.
            for old in [a for a in self.factories if a not in self.owner.primaries()]:
                self._drop(old)
            factory = self.factories[addr] = self.owner._factory(
                1, self.reply_timeout, host=addr[0], port=addr[1])
        return factory

    def _drop(self, addr: Address):
        factory = self.factories.pop(addr)
        self.owner.forget(factory)
        return factory.disconnect()

    def command(self, *args) -> Deferred:
        return self.owner.run(command_slot(args), lambda f: f.command(*args), args,
                              via=self._factory)

    def local_ports(self) -> list[int]:
        return [p for f in self.factories.values() for p in f.local_ports()]

    def close(self):
        if self.closed:
            return None
        self.closed = True
        for addr in list(self.factories):
            self._drop(addr)
        return None


class ClusterConnection(RedisConnection):
    """
    A named Redis Cluster (see the module doc).

    @ivar slots: slot -> the address of its primary (None: not known yet).
    @ivar pools: address -> the command pool of that node.
    @ivar redirections: MOVED and ASK replies met; C{refreshes}: map readings.
    @ivar map_listeners: called after every reading of the map (changed or not), so that
        what is placed by slot (sharded subscriptions) follows the slots.
    """

    clustered = True

    def _connect(self) -> None:
        settings = self.settings
        self.seeds: list[Address] = [(settings.host, settings.port)]
        for url in settings.urls:
            parts = parse_url(url)
            self.seeds.append((parts["host"], parts["port"]))
        self.pools: dict[Address, Factory] = {}
        self.slots: list[Address | None] = [None] * SLOTS
        self.ranges: list[tuple[int, int, Address]] = []
        self.redirections = 0
        self.refreshes = 0
        self.refreshing = False
        self.last_refresh = -math.inf
        self.map_listeners: list = []
        for addr in self.seeds:
            self._pool(addr)
        self.ticker = LoopingCall(self._tick)
        self.ticker.clock = self.reactor
        self.ticker.start(REFRESH_DEGRADED, now=False)

    # -- the map --------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"cluster {address(self.settings)}"

    def _pool(self, addr: Address) -> Factory:
        pool = self.pools.get(addr)
        if pool is None:
            pool = self.pools[addr] = self._factory(
                self.settings.pool_size, self.settings.command_timeout,
                host=addr[0], port=addr[1])
        return pool

    def primaries(self) -> list[Address]:
        return list(dict.fromkeys(addr for _, _, addr in self.ranges))

    def candidates(self) -> list[Address]:
        """Nodes to ask or connect to, the likeliest to answer first."""
        known = list(dict.fromkeys([*self.primaries(), *self.seeds, *self.pools]))
        return sorted(known, key=lambda a: not (a in self.pools and self.pools[a].up))

    def _served_all(self) -> bool:
        return bool(self.ranges) and all(self._pool(a).up for a in self.primaries())

    def _tick(self) -> None:
        if not self._served_all() or (
                self.reactor.seconds() - self.last_refresh >= REFRESH_EVERY):
            self.refresh()

    def refresh_soon(self) -> None:
        if self.reactor.seconds() - self.last_refresh >= REFRESH_SOONEST:
            self.refresh()

    def refresh(self) -> Deferred | None:
        """Read the slot map again (one reading at a time)."""
        if self.refreshing or self.closing:
            return None
        self.refreshing = True
        self.last_refresh = self.reactor.seconds()
        d = Deferred.fromCoroutine(self._refresh())

        def done(result):
            self.refreshing = False
            return result
        return d.addBoth(done).addErrback(
            lambda f: log.warn("redis {name}: reading the cluster map failed: {e}",
                               name=self.name, e=f.getErrorMessage()))

    async def _refresh(self) -> None:
        for addr in self.candidates():
            pool = self.pools.get(addr)
            if pool is None or not pool.up:
                continue
            try:
                reply = await pool.command("CLUSTER", "SLOTS")
            except (txredisapi.ConnectionError, txredisapi.ResponseError, TimeoutError):
                continue
            ranges = parse_slots(reply)
            if ranges:
                self.apply(ranges)
                return

    def apply(self, ranges: list[tuple[int, int, Address]]) -> None:
        """Take C{ranges} (C{(first, last, primary)}) as the slot map."""
        self.refreshes += 1
        if ranges != self.ranges:
            if self.ranges:
                log.info("redis {name}: cluster map changed: {map}", name=self.name,
                         map=self.describe(ranges))
            slots: list[Address | None] = [None] * SLOTS
            for first, last, addr in ranges:
                slots[first:last + 1] = [addr] * (last - first + 1)
                self._pool(addr)
            self.slots = slots
            self.ranges = ranges
            primaries = set(self.primaries())
            for addr in [a for a in self.pools if a not in primaries and a not in self.seeds]:
                pool = self.pools.pop(addr)
                self.forget(pool)
                pool.disconnect()
        for listener in list(self.map_listeners):
            listener()
        self._changed()

    @staticmethod
    def describe(ranges) -> str:
        return ", ".join(f"{a}-{b} {h}:{p}" for a, b, (h, p) in ranges)

    def _serving(self, slot: int | None) -> Address | None:
        """The live primary that serves C{slot} (any live primary for None), or None."""
        if slot is None:
            return next((a for a in self.primaries() if self.pools[a].up), None)
        addr = self.slots[slot]
        if addr is None or not self._pool(addr).up:
            return None
        return addr

    # -- commands -------------------------------------------------------------------

    def command(self, *args) -> Deferred:
        return self.run(command_slot(args), lambda f: f.command(*args), args)

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        slot = key_slot(keys[0]) if keys else None
        return self.run(slot, lambda f: f.eval(script, keys, args),
                        ("EVAL", script, len(keys), *keys, *args))

    def run(self, slot: int | None, op, args, via=None) -> Deferred:
        """C{op(factory)} on the primary of C{slot}, following redirections."""
        return Deferred.fromCoroutine(self._run(slot, op, args, via or self._pool))

    async def _run(self, slot, op, args, via):
        target: Address | None = None
        asking = False
        attempt = 0
        while attempt < MAX_ATTEMPTS:
            if target is None:
                target = await self._node_for(slot)
            factory = via(target)
            if factory.closed or self.closing:
                raise txredisapi.ConnectionError(f"redis {self.name}: connection closed")
            if not factory.up:
                # Not connected (yet): txredisapi would hold the command until it is,
                # for ever if the node died. Wait for it, or for the map to move on.
                def ready(f: Factory = factory, t: Address = target,
                          a: bool = asking) -> bool:
                    return f.up or f.closed or (
                        not a and self._serving(slot) not in (t, None))
                await self.wait_for(ready)
                if not factory.up:
                    target, asking = None, False
                    continue
            try:
                if asking:
                    return await factory.asking(*args)
                return await op(factory)
            except txredisapi.ConnectionError:
                self.refresh_soon()
                raise
            except txredisapi.ResponseError as e:
                text = error_text(e)
                redirect = parse_redirect(text)
                attempt += 1
                if redirect is not None:
                    kind, moved, addr = redirect
                    if kind == "MOVED":
                        self.redirected(moved, addr)
                    else:
                        self.redirections += 1
                    target, asking = addr, kind == "ASK"
                    continue
                if text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
                    if text.startswith("CLUSTERDOWN"):
                        self.refresh_soon()
                    await deferLater(self.reactor, RETRY(attempt - 1), lambda: None)
                    target, asking = None, False
                    continue
                raise
        raise txredisapi.ResponseError(f"redis {self.name}: gave up after {MAX_ATTEMPTS} "
                                       f"redirections or retries of {args[0]!r}")

    async def _node_for(self, slot: int | None) -> Address:
        """The live primary of C{slot}: waits (re-reading the map) until there is one."""
        while True:
            addr = self._serving(slot)
            if addr is not None:
                return addr
            if self.closing:
                raise txredisapi.ConnectionError(f"redis {self.name} is closed")
            self.refresh_soon()
            await self.wait_for(lambda: self._serving(slot) is not None)

    def dedicated(self, block: float) -> ClusterDedicated:
        timeout = self.settings.command_timeout
        return ClusterDedicated(self, block + timeout if timeout else None)

    def subscriber(self, protocol) -> Factory:
        """A classic pub/sub connection to any live node."""
        return self._factory(1, None, protocol, endpoint=AnyNode(self))

    def node_subscriber(self, protocol, addr: Address) -> Factory:
        """A (sharded) pub/sub connection to the node at C{addr}, and to no other."""
        return self._factory(1, None, protocol, host=addr[0], port=addr[1])

    def redirected(self, slot: int, addr: Address) -> None:
        """A MOVED (in L{run}, or met by an SSUBSCRIBE): note it, read the map again."""
        self.redirections += 1
        self.slots[slot] = addr
        self._pool(addr)
        self.refresh_soon()

    # -- state ----------------------------------------------------------------------

    def _changed(self) -> None:
        if not self.closing and not self._served_all():
            self.refresh_soon()
        super()._changed()

    @property
    def up(self) -> bool:
        """Every slot has a live primary."""
        return self._served_all()

    def figures(self) -> dict[str, Any]:
        """What C{GET /} shows of this connection: shards, redirections, map readings."""
        return {"shards": self.shards(), "redirections": self.redirections,
                "map_refreshes": self.refreshes}

    def shards(self) -> list[dict[str, Any]]:
        """Each slot range, its primary, and whether that primary is connected."""
        return [{"slots": f"{a}-{b}", "primary": f"{h}:{p}",
                 "up": (h, p) in self.pools and self.pools[(h, p)].up}
                for a, b, (h, p) in self.ranges]

    def status(self) -> tuple[str, str | None]:
        if self.up:
            return ("ok", None)
        if not self.ranges:
            errors = [p.error for p in self.pools.values() if p.error]
            if errors:
                return ("down", f"redis {self.name}: {errors[0]}")
            return ("down", f"redis {self.name}: cannot reach any seed node of the cluster")
        down = [f"{s['slots']} ({s['primary']})" for s in self.shards() if not s["up"]]
        return ("down", f"redis {self.name}: no live primary for slots {', '.join(down)}")

    def close(self) -> Deferred:
        if self.ticker.running:
            self.ticker.stop()
        return super().close()
