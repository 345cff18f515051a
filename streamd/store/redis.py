"""
The Redis event store: for several streamd instances sharing one event history.

Layout (every key under C{prefix}, default C{streamd:events:}):
  - C{data}: a hash, id -> C{"<ts>\\n<index names JSON>\\n<event JSON>"};
  - C{all}: a sorted set of every id (score = id);
  - C{i:KEY=VALUE}: a sorted set per indexed value (score = id);
  - C{last}: the last id handed out; C{pruned}: the last id retention removed.

Inserts and queries are Lua scripts, so an insert (ids, index entries, retention) is
atomic, and ids order events across every instance: an id is the inserting
instance's clock (milliseconds times 1000) or the last id plus one, whichever is
greater. A query
walks the smallest of the asked keys' sets (ZCARD is O(1)) newest first and checks
the other keys with ZSCORE, stopping as soon as it has C{end} matches.

One connection carries every command: Redis answers in order on a connection, so a
live tail's catch-up query and the inserts racing it are seen in the order Redis
ran them. A second connection subscribes to C{<prefix>inserted}, where every insert
script publishes the inserting store's token and its first and last id: the live
tails of every instance learn of inserts made elsewhere (a L{Notice}) and fetch them
from the store (their own instance's inserts reach them directly). After that
connection comes back from an outage, every tail checks the store once, since
notices sent meanwhile are lost.

On a Redis Cluster (C{[store] connection} names a C{[redis.NAME]} with C{cluster =
true}; or C{cluster=True}, with C{url} and C{urls} the seed nodes) the prefix becomes a
hash tag (C{{streamd:events}:}), so that every key of the store is in one slot and the
scripts run on one node: the store lives on one shard.
"""

from __future__ import annotations

import dataclasses
import json
import secrets

from zope.interface import implementer

from streamd.interfaces import IStore
from streamd.redis.cluster import open_connection
from streamd.redis.connection import RedisConnection, address, connection_settings
from streamd.redis.hub import Hub
from streamd.redis.settings import RedisConnectionSettings
from streamd.redis.shared import declared
from streamd.redis.slots import hash_tag
from streamd.store.base import (
    Event,
    Filters,
    NewEvent,
    Notice,
    Query,
    StoreUnavailable,
    horizon,
)
from streamd.store.listeners import InsertListeners

INSERT = r"""
local p = KEYS[1]
local max_events, cut, ts = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ms = tonumber(ARGV[4])
local last = tonumber(redis.call('GET', p .. 'last') or '0')
local id = math.max(ms * 1000, last + 1)
local out = {ts}
for i = 6, #ARGV, 2 do
  local sid = string.format('%.0f', id)
  redis.call('HSET', p .. 'data', sid, ts .. '\n' .. ARGV[i + 1] .. '\n' .. ARGV[i])
  redis.call('ZADD', p .. 'all', sid, sid)
  for _, name in ipairs(cjson.decode(ARGV[i + 1])) do
    redis.call('ZADD', p .. 'i:' .. name, sid, sid)
  end
  out[#out + 1] = sid
  last = id
  id = id + 1
end
redis.call('SET', p .. 'last', string.format('%.0f', last))
redis.call('PUBLISH', p .. 'inserted', ARGV[5] .. ' ' .. out[2] .. ' ' .. out[#out])
local function drop(ids)
  for _, sid in ipairs(ids) do
    local v = redis.call('HGET', p .. 'data', sid)
    if v then
      local a = string.find(v, '\n', 1, true)
      local b = string.find(v, '\n', a + 1, true)
      for _, name in ipairs(cjson.decode(string.sub(v, a + 1, b - 1))) do
        redis.call('ZREM', p .. 'i:' .. name, sid)
      end
      redis.call('HDEL', p .. 'data', sid)
    end
    redis.call('ZREM', p .. 'all', sid)
  end
  if #ids > 0 then redis.call('SET', p .. 'pruned', ids[#ids]) end
end
if max_events > 0 then
  local n = redis.call('ZCARD', p .. 'all') - max_events
  if n > 0 then drop(redis.call('ZRANGE', p .. 'all', 0, n - 1)) end
end
if cut ~= '0' then
  drop(redis.call('ZRANGEBYSCORE', p .. 'all', '-inf', '(' .. cut, 'LIMIT', 0, 10000))
end
return out
"""

SELECT = r"""
local p = KEYS[1]
local below, above, limit, desc = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local filters = {}
local i = 6
for f = 1, tonumber(ARGV[5]) do
  local n = tonumber(ARGV[i])
  i = i + 1
  local names, size = {}, 0
  for j = 1, n do
    names[j] = p .. 'i:' .. ARGV[i]
    size = size + redis.call('ZCARD', names[j])
    i = i + 1
  end
  filters[f] = {names = names, size = size}
end
local walk = {names = {p .. 'all'}}
if #filters > 0 then
  table.sort(filters, function(a, b) return a.size < b.size end)
  walk = table.remove(filters, 1)
end
local function wanted(sid)
  for _, f in ipairs(filters) do
    local found = false
    for _, name in ipairs(f.names) do
      if redis.call('ZSCORE', name, sid) then
        found = true
        break
      end
    end
    if not found then return false end
  end
  return true
end
local ids, seen = {}, {}
for _, name in ipairs(walk.names) do
  local hi, lo, got = '(' .. below, '(' .. above, 0
  while got < limit do
    local page
    if desc then
      page = redis.call('ZREVRANGEBYSCORE', name, hi, lo, 'LIMIT', 0, 256)
    else
      page = redis.call('ZRANGEBYSCORE', name, lo, hi, 'LIMIT', 0, 256)
    end
    for _, sid in ipairs(page) do
      if wanted(sid) then
        got = got + 1
        if not seen[sid] then
          seen[sid] = true
          ids[#ids + 1] = sid
        end
        if got >= limit then break end
      end
    end
    if #page < 256 then break end
    if desc then hi = '(' .. page[#page] else lo = '(' .. page[#page] end
  end
end
if desc then
  table.sort(ids, function(a, b) return tonumber(a) > tonumber(b) end)
else
  table.sort(ids, function(a, b) return tonumber(a) < tonumber(b) end)
end
local out = {}
for k = 1, math.min(limit, #ids) do
  out[#out + 1] = ids[k]
  out[#out + 1] = redis.call('HGET', p .. 'data', ids[k])
end
return out
"""


def index_name(key: str, value: str) -> str:
    # Indexed keys are names without "=" (checked in the config), so this is unambiguous.
    return f"{key}={value}"


class _Notices:
    """The store's member of its connection's pub/sub L{Hub}: the insert notices."""

    patterns: list[bytes] = []

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.channels = [(store.prefix + "inserted").encode()]

    def received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        token, first, last = data.decode().split(" ")
        if token != self.store.token:  # our own inserts reached our tails already
            self.store.listeners.notify(Notice(int(first), int(last)))

    def outage(self, since: float, until: float) -> None:
        # Notices published while we were disconnected are lost: let every tail look
        # in the store (Notice(0, maxsize) is newer than anything delivered).
        self.store.listeners.notify(Notice(0, 1 << 62))


@implementer(IStore)
class RedisStore:
    """
    @param url: C{redis://[[user]:password@]host[:port][/db]}, or C{rediss://} for TLS
        (the server's certificate checked against C{tls_ca}, a PEM file, or the
        system's CAs).
    @param connection: a validated C{[redis.NAME]} table to use instead of C{url},
        C{tls_ca}, C{cluster} and C{urls} (L{from_settings}: C{[store] connection}).
    @ivar conn: the store's connection (one for commands, one for the insert notices),
        open between L{start} and L{stop}.
    """

    backend = "redis"

    def __init__(self, keys, reactor, url: str, max_events: int = 0, max_age: float = 0.0,
                 prefix: str = "streamd:events:", tls_ca: str = "", cluster: bool = False,
                 urls=(), connection: RedisConnectionSettings | None = None) -> None:
        self.keys = tuple(keys)
        self.reactor = reactor
        self.url = url
        if connection is not None:
            # The store's own connections, with the table's settings (its timeouts
            # included), named "store" in the logs like those from a URL.
            self.settings = dataclasses.replace(connection, name="store")
            cluster = connection.cluster
        else:
            self.settings = connection_settings(
                # A lost connection comes back within a second or so: clients are waiting.
                url, name="store", connect_timeout=5.0, reconnect_max=1.0, tls_ca=tls_ca,
                cluster=cluster, urls=tuple(urls))
        self.max_events = max_events
        self.max_age = max_age
        if cluster and "{" not in prefix:
            prefix = hash_tag(prefix.rstrip(":")) + ":"
        self.prefix = prefix
        self.listeners = InsertListeners()
        self.listen = self.listeners.listen
        self.conn: RedisConnection | None = None
        self.hub: Hub | None = None
        self.token = secrets.token_hex(8)  # tells our own insert notices from others'

    @classmethod
    def from_settings(cls, settings, reactor, **common) -> RedisStore:
        """
        The store the C{[store]} table describes: on C{redis_url}, or on the
        C{[redis.NAME]} connection that C{connection} names (the only way to a Redis
        Cluster, or to a server that needs C{tls_ca}, from the config).
        """
        conf = settings.store
        named = declared(settings, conf.connection, "store.connection") \
            if conf.connection else None
        return cls(conf.keys, reactor, named.url if named else conf.redis_url,
                   prefix=conf.redis_prefix, connection=named, **common)

    def start(self) -> None:
        self.conn = open_connection(self.settings, self.reactor)
        self.hub = Hub.of(self.conn, self.reactor)
        self.hub.add(_Notices(self))

    async def stop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()

    def status(self):
        if self.conn is not None and self.hub is not None and self.conn.up and self.hub.up:
            return ("ok", None)
        if self.conn is not None and self.conn.clustered:
            state = self.conn.status()
            if state[1]:
                return state  # which slots have no live primary
        return ("down", f"not connected to {address(self.settings)}")

    def _connection(self) -> RedisConnection:
        """The connection, open between L{start} and L{stop}."""
        assert self.conn is not None, "the store is not started"
        return self.conn

    def _check(self) -> None:
        # Commands sent while disconnected wait for the reconnect instead of failing:
        # answer at once instead.
        state, reason = self.status()
        if state != "ok":
            raise StoreUnavailable(reason)

    async def insert(self, events: list[NewEvent]) -> list[Event]:
        self._check()
        # Time comes from our (injected) clock, as for the other backends; order
        # across instances comes from the script: ids only grow from "last".
        now = self.reactor.seconds()
        args: list = [self.max_events, horizon(now, self.max_age), repr(now),
                      int(now * 1000), self.token]
        for e in events:
            args.append(e.data)
            args.append(json.dumps(sorted(index_name(k, v) for k, v in e.pairs)))
        reply = await self._connection().eval(INSERT, [self.prefix], args)
        ts = float(reply[0])
        stored = [
            Event(int(sid), ts, e.data, e.pairs)
            for sid, e in zip(reply[1:], events, strict=True)
        ]
        self.listeners.notify(stored)
        return stored

    async def _select(self, filters: Filters, below, above: int, limit: int,
                      newest_first: bool, wait: bool = False) -> list[Event]:
        if not wait:
            self._check()
        if limit <= 0:
            return []
        args: list = ["+inf" if below is None else below, above, limit,
                      "1" if newest_first else "0", len(filters)]
        for key, values in filters:
            args.append(len(values))
            args.extend(index_name(key, v) for v in values)
        reply = await self._connection().eval(SELECT, [self.prefix], args)
        out = []
        for i in range(0, len(reply), 2):
            if reply[i + 1] is None:  # pruned between the walk and the read: impossible
                continue  # inside one script, but harmless to guard
            ts, _, rest = reply[i + 1].partition(b"\n")
            _, _, data = rest.partition(b"\n")
            out.append(Event(int(reply[i]), float(ts), data))
        return out

    async def query(self, query: Query) -> list[Event]:
        found = await self._select(query.filters, query.before, self._above(), query.end,
                                   True)
        return found[query.start : query.end]

    async def after(self, filters: Filters, since: int, limit: int) -> list[Event]:
        # A live tail's catch-up waits out a reconnect (its notice may come first)
        # rather than end the stream; new tails were refused while the store was down.
        return await self._select(filters, None, max(since, self._above()), limit, False,
                                  wait=True)

    def _above(self) -> int:
        # Expired events are hidden at once, whatever the pruning has reached.
        return horizon(self.reactor.seconds(), self.max_age) - 1

    async def pruned(self) -> int:
        self._check()
        return int(await self._connection().command("GET", self.prefix + "pruned") or 0)

    async def count(self) -> int:
        self._check()
        return int(await self._connection().command("ZCARD", self.prefix + "all"))
