"""
The C{redis-list} source: a Redis list used as a work queue (producers RPUSH, as
C{POST /streams/NAME/messages} does). Each message goes to one client; delivery is
at-least-once.

A client's reader takes messages with LMOVE/BLMOVE from the head of the list into
this streamd's processing list (C{KEY:streamd:processing:INSTANCE}), so that a
message is always in Redis until a client has it: the stream acks it once written
(or once the client acknowledges it, C{ack = "client"}) and it is LREMed; a message
not written (client gone, limit reached, stream ended) is nacked and moved back to
the head of the list at once.

Whatever a crash leaves in a processing list is moved back by the next streamd
with the same C{instance} name when it starts, or by any streamd on the same key
once the crashed one's heartbeat key (C{KEY:streamd:alive:INSTANCE}, refreshed every
C{instance_ttl}/3 seconds) has expired. Each client reads on a connection of its
own (BLMOVE blocks it) and a paused client issues no reads.

On a Redis Cluster the instance's keys carry the list's key as a hash tag
(C{{KEY}:streamd:processing:INSTANCE}, C{{KEY}:streamd:alive:INSTANCE},
C{{KEY}:streamd:instances}), so that they share its slot and LMOVE, BLMOVE and the
scripts stay on one node; a key that has a hash tag already keeps it. After a
failover, what the processing list holds that no client has (a BLMOVE whose reply was
lost with the old primary) goes back to the list at once (L{RECONCILE}).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from streamd.errors import SourceDown
from streamd.interfaces import ISource, ISubscription
from streamd.message import Message
from streamd.redis import settings as redis_settings
from streamd.redis.connection import RedisConnection
from streamd.redis.read_loop import SKIP_DELAY, Reader, share_out
from streamd.redis.shared import Faults, RedisKind
from streamd.redis.slots import hash_tag
from streamd.redis.values import as_json

log = Logger()

#: Move up to ARGV[1] values from the list's head to the processing list's tail.
TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
  out[#out + 1] = v
end
return out
"""

#: Move these values (ARGV, oldest first) from the processing list back to the
#: list's head, keeping their order; a value no longer held is left alone.
GIVE_BACK = """
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

#: Move a whole processing list back to the list's head, oldest first.
RECOVER = """
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""

#: Move back to the list's head what the processing list holds beyond ARGV (the
#: values that clients hold, with repeats), oldest first.
RECONCILE = """
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = (held[ARGV[i]] or 0) + 1 end
local values = redis.call('LRANGE', KEYS[2], 0, -1)
local back = {}
for i = 1, #values do
  local v = values[i]
  if (held[v] or 0) > 0 then held[v] = held[v] - 1 else back[#back + 1] = v end
end
for i = #back, 1, -1 do
  redis.call('LREM', KEYS[2], -1, back[i])
  redis.call('LPUSH', KEYS[1], back[i])
end
return #back
"""


@implementer(ISubscription)
class ListSubscription(Reader):
    """One client of a list stream, with its own reading connection."""

    async def read_once(self) -> list:
        src = self.source
        values = await self.reader.command("EVAL", TAKE, 2, src.key, src.processing, src.batch)
        if values:
            return values
        value = await self.reader.command(
            "BLMOVE", src.key, src.processing, "LEFT", "RIGHT", src.block)
        # A value moved just before a lost connection stays in the processing list
        # until this instance's next start.
        return [] if value is None else [value]

    def received(self, values: list) -> None:
        self.consumer.deliver([self.source.message(v) for v in values])

    def returned(self, values: list) -> None:
        self.source.give_back(values)

    def ack(self, messages) -> None:
        self.source.remove([m.handle for m in messages])
        self.source.settled(messages)

    def nack(self, messages) -> None:
        handles = [m.handle for m in messages]
        self.source.release(handles)
        self.source.give_back(handles)
        self.source.settled(messages)

    def skip(self, messages) -> None:
        """Filtered out: another client may want them (see L{RedisListSource.skip})."""
        self.source.skip(self, messages)


@implementer(ISource)
class RedisListSource(RedisKind):
    """One list stream (see the module doc)."""

    kind = "redis-list"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    config_keys = redis_settings.LIST_KEYS
    durable = True
    faults: Faults | None = None

    def __init__(self, name: str, conn: RedisConnection, key: str, instance: str,
                 clock, block: float = 1.0, batch: int = 10, instance_ttl: float = 15.0,
                 on_stop=None) -> None:
        self.name = name
        self.conn = conn
        self.key = key
        self.instance = instance
        self.clock = clock
        self.block = block
        self.batch = batch
        self.instance_ttl = instance_ttl
        self.on_stop = on_stop
        #: where this stream's keys start: on a cluster, the key as a hash tag (the
        #: same slot); elsewhere the key as it is (the names of earlier versions)
        self.base = hash_tag(key) if conn.clustered else key
        self.processing = self.processing_of(instance)
        self.alive = f"{self.base}:streamd:alive:{instance}"
        self.registry = f"{self.base}:streamd:instances"
        #: values (with repeats) delivered to clients or parked, not settled yet: what a
        #: failover gives back; kept on a cluster only (None elsewhere)
        self.held: Counter[bytes] | None = Counter() if conn.clustered else None
        self.was_down = False
        self.seq = 0
        self.subscribers: set[ListSubscription] = set()
        self.pending: set[Deferred] = set()
        #: message id -> clients whose filter refused it (see L{skip})
        self.refused: dict[str, set] = {}
        #: give-backs delayed because no client's filter wanted the message
        self.parked: set = set()
        self.heartbeat = LoopingCall(self._heartbeat)
        self.heartbeat.clock = clock

    def processing_of(self, instance: str) -> str:
        return f"{self.base}:streamd:processing:{instance}"

    @classmethod
    def build(cls, table: Mapping[str, Any], clock, conn, instance, on_stop) -> RedisListSource:
        return cls(table["name"], conn, table["key"], instance, clock, table["block"],
                   table["batch"], table["instance_ttl"], on_stop)

    def start(self):
        """
        Take back what this instance held before a restart, then keep alive; fires
        once Redis answers (or after connect_timeout).
        """
        d = self._track(self.conn.command("EVAL", RECOVER, 2, self.key, self.processing))
        d.addCallback(self._recovered, self.processing)
        self.heartbeat.start(self.instance_ttl / 3, now=True)
        if self.conn.clustered:
            self.conn.listeners.append(self._conn_changed)
        return self.conn.wait_for(lambda: self.conn.up)

    def _conn_changed(self, up: bool) -> None:
        """On a cluster, back from a failover: give back what no client holds."""
        if not up:
            self.was_down = True
        elif self.was_down:
            self.was_down = False
            held = list(self.held.elements()) if self.held is not None else []
            self._track(self.conn.eval(RECONCILE, [self.key, self.processing], held)
                        ).addCallback(self._recovered, self.processing).addErrback(
                            self._lost, "reconcile")

    def _recovered(self, count, processing) -> None:
        if count:
            log.info("redis-list {name}: moved {n} unfinished messages from {p} back "
                     "to {key}", name=self.name, n=count, p=processing, key=self.key)

    def _heartbeat(self):
        # A failed beat is retried at the next tick; Redis being away is status().
        ttl_ms = int(self.instance_ttl * 1000)
        beat = gatherResults([
            self.conn.command("SET", self.alive, b"1", "PX", ttl_ms),
            self.conn.command("SADD", self.registry, self.instance),
        ], consumeErrors=True)
        beat.addCallback(lambda _: self.conn.command("SMEMBERS", self.registry))
        beat.addCallback(lambda members: Deferred.fromCoroutine(self._recover_dead(members)))
        beat.addErrback(lambda f: log.warn("redis-list {name}: heartbeat failed: {e}",
                                           name=self.name, e=f.getErrorMessage()))
        return None

    async def _recover_dead(self, members) -> None:
        for member in members or []:
            other = member.decode("utf-8", "replace")
            if other == self.instance:
                continue
            if await self.conn.command("EXISTS", f"{self.base}:streamd:alive:{other}"):
                continue
            processing = self.processing_of(other)
            count = await self.conn.command("EVAL", RECOVER, 2, self.key, processing)
            await self.conn.command("SREM", self.registry, member)
            self._recovered(count, processing)

    def _track(self, d: Deferred) -> Deferred:
        self.pending.add(d)

        def done(result):
            self.pending.discard(d)
            return result
        return d.addBoth(done)

    def release(self, handles: list[bytes]) -> None:
        """No client holds these values any more."""
        held = self.held
        if held is None:
            return
        for h in handles:
            if held[h] > 1:
                held[h] -= 1
            else:
                held.pop(h, None)

    def remove(self, handles: list[bytes]) -> None:
        """Acked: these values are done with."""
        self.release(handles)
        for h in handles:
            self._track(self.conn.command("LREM", self.processing, 1, h)).addErrback(
                self._lost, "ack")

    def give_back(self, handles: list[bytes]) -> None:
        """Not written: back to the head of the list, in their order, for anyone."""
        if handles:
            self._track(self.conn.command(
                "EVAL", GIVE_BACK, 2, self.key, self.processing, *handles)
            ).addErrback(self._lost, "nack")

    def settled(self, messages) -> None:
        if self.refused:
            for m in messages:
                self.refused.pop(m.id, None)

    def skip(self, sub: ListSubscription, messages) -> None:
        """
        A client's filter rejected these: offered to the other clients; a message no
        client wants stays held for L{SKIP_DELAY} seconds, then goes back to
        the list (at once, the readers would only take it again).
        """
        offers, unwanted = share_out(sub, self.subscribers, messages, self.refused)
        for target, msgs in offers.items():
            target.consumer.deliver(msgs)
        if unwanted:
            handles = [m.handle for m in unwanted]

            def unpark():
                self.parked.discard(call)
                self.release(handles)
                self.give_back(handles)
            call = self.clock.callLater(SKIP_DELAY, unpark)
            self.parked.add(call)

    def _lost(self, failure, what: str) -> None:
        if self.faults is not None:
            self.faults.error()
        # The message stays in the processing list: moved back at the next start.
        log.warn("redis-list {name}: {what} failed: {e}", name=self.name, what=what,
                 e=failure.getErrorMessage())

    def message(self, value: bytes) -> Message:
        self.seq += 1
        if self.held is not None:
            self.held[value] += 1
        return Message(str(self.seq), self.name, as_json(value), None, value)

    async def _stop(self) -> None:
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")
        for sub in list(self.subscribers):
            sub.close_now()
        if self.heartbeat.running:
            self.heartbeat.stop()
        for call in self.parked:
            call.cancel()  # the processing list is given back whole below
        self.parked.clear()
        if self.conn.up:
            # Let the acks and give-backs already sent land, then give back what is
            # still held (reads cut short by the shutdown) and leave the registry;
            # bounded, since Redis may go away meanwhile (the next start recovers).
            cleanup = Deferred.fromCoroutine(self._clean_stop())
            cleanup.addTimeout(self.conn.settings.connect_timeout, self.clock)
            try:
                await cleanup
            except Exception as e:
                log.warn("redis-list {name}: clean stop failed: {e}", name=self.name, e=e)
        if self._conn_changed in self.conn.listeners:
            self.conn.listeners.remove(self._conn_changed)
        if self.faults is not None:
            self.faults.close()
        if self.on_stop:
            await maybeDeferred(self.on_stop)

    async def _clean_stop(self) -> None:
        await gatherResults(list(self.pending), consumeErrors=True)
        await self.conn.command("EVAL", RECOVER, 2, self.key, self.processing)
        await self.conn.command("DEL", self.alive)
        await self.conn.command("SREM", self.registry, self.instance)

    def stop(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    def status(self) -> tuple[str, str | None]:
        return self.conn.status()

    def subscribe(self, consumer, since: str | None = None) -> ListSubscription:
        """A new reader of the queue; C{since} means nothing for a queue and is ignored."""
        if not self.conn.up:
            raise SourceDown(self.conn.status()[1] or "redis is down")
        sub = ListSubscription(self, consumer)
        self.subscribers.add(sub)
        sub.start()
        return sub

    def publish(self, payloads: list[bytes], params=None) -> Deferred:
        """RPUSH the payloads (one command: all or none); list entries have no ids."""
        if not self.conn.up:
            raise SourceDown(self.conn.status()[1] or "redis is down")
        d = self.conn.command("RPUSH", self.key, *payloads)
        return d.addCallback(lambda _: [None for _ in payloads])
