"""
The C{redis-stream} source: a Redis stream (XADD, as C{POST /streams/NAME/messages}
does), read in one of two ways.

Cursor mode (no C{group}): broadcast. Every client reads every entry from its own
position; a message's id is its entry id, so a client that reconnects with
C{Last-Event-ID} (or C{?since=ID}) resumes exactly after it, with a gap notice if
entries after it were trimmed away. A new client starts at C{start}, or at
C{?since=$} (new entries), C{?since=0} (all), C{?since=-N} (the last N).

Group mode (C{group = "NAME"}): a queue, at-least-once. Clients read with
XREADGROUP as consumers of the group; an entry is XACKed once written (or once the
client acknowledges it, C{ack = "client"}); an entry not written is made claimable
at once, and entries left unacknowledged longer than C{claim_idle} (a client or a
streamd that died) are taken over with XAUTOCLAIM.

Each client reads on a connection of its own (XREAD BLOCK holds it), and a paused
client issues no reads.

A group consumer's name (C{INSTANCE:N}) goes to the next client once its client is done
with it (no read in flight, nothing held); that client first reads the name's pending
entries (a restarted streamd's), once the XACKs and give-backs sent for the name (over
the pool) were answered, so that none is handed out twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from streamd.errors import InvalidRequest, SourceDown
from streamd.interfaces import ISource, ISubscription
from streamd.message import Message
from streamd.redis import settings as redis_settings
from streamd.redis.connection import RedisConnection
from streamd.redis.read_loop import Reader, share_out
from streamd.redis.shared import Faults, RedisKind
from streamd.redis.values import as_json, json_object, param

log = Logger()

ENTRY_ID = re.compile(r"^\d+(-\d+)?$")
#: Idle time given to a nacked entry so that the next XAUTOCLAIM takes it at once.
RETURNED_IDLE_MS = 10**12


def parse_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def before(entry_id: bytes) -> str:
    """The id just before C{entry_id} (XREAD reads after the id it is given)."""
    ms, seq = parse_id(entry_id.decode())
    if seq:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms else "0-0"


@implementer(ISubscription)
class StreamSubscription(Reader):
    """
    One client of a stream stream, with its own reading connection.

    @ivar cursor: cursor mode: the id of the last entry read; None until resolved.
    @ivar consumer_name: group mode: this client's consumer name in the group.
    """

    def __init__(self, source: RedisStreamSource, consumer, since: str | None,
                 consumer_name: str | None) -> None:
        super().__init__(source, consumer)
        self.since = since
        self.cursor: str | None = None
        self.consumer_name = consumer_name
        self.claim_cursor = "0-0"
        #: group mode: where we are in re-reading entries still pending for this
        #: consumer name (left by this streamd before a restart); None once done
        self.history: str | None = "0-0"
        self.last_claim = float("-inf")
        #: group mode: ids (bytes) delivered to the client and not yet acked or nacked
        self.held: set[bytes] = set()
        #: group mode, while re-reading pending entries: ids delivered so far (an entry
        #: claimed or offered to us, then settled, may still show up there)
        self.seen: set[bytes] = set()
        self.name_freed = False

    async def read_once(self) -> list:
        if not self.source.group:
            return await self._read_cursor()
        try:
            return await self._read_group()
        finally:
            if self.cancelled:  # the last read: what it took is given back at once
                self._free_name(last_read=True)

    def recover(self, error) -> bool:
        if "NOGROUP" not in str(error):
            return False
        # The group is gone (Redis restarted without persistence): what the stream
        # holds now was all added since, so the group is re-created at 0.
        self.source.group_ready = False
        self.source.recreate_at = "0"
        return True

    def received(self, entries: list) -> None:
        src = self.source
        if src.group:
            # An entry this client already holds (claimed back from itself) is not
            # sent twice.
            entries = [e for e in entries if e[0] not in self.held]
            self.took(e[0] for e in entries)
        self.consumer.deliver([src.message(eid, fields) for eid, fields in entries])

    def took(self, ids) -> None:
        """We hold these entries (ids as bytes) now."""
        ids = set(ids)
        self.held.update(ids)
        if self.history is not None:
            self.seen.update(ids)

    def returned(self, entries: list) -> None:
        self.source.give_back([e[0] for e in entries], self.consumer_name)

    async def _read_cursor(self):
        src = self.source
        if self.cursor is None:
            self.cursor = await src.position(self.since, self.consumer)
        reply = await self.reader.command(
            "XREAD", "COUNT", src.batch, "BLOCK", int(src.block * 1000),
            "STREAMS", src.key, self.cursor)
        entries = reply[0][1] if reply else []
        if entries:
            self.cursor = entries[-1][0].decode()
        return entries

    async def _read_group(self):
        src = self.source
        if not src.group_ready:
            await src.ensure_group()
        now = src.clock.seconds()
        if self.claim_cursor != "0-0" or now - self.last_claim >= src.block:
            # Entries idle too long (their client or streamd died), or given back.
            self.last_claim = now
            nxt, claimed, *_ = await self.reader.command(
                "XAUTOCLAIM", src.key, src.group, self.consumer_name,
                int(src.claim_idle * 1000), self.claim_cursor, "COUNT", src.batch)
            self.claim_cursor = nxt.decode()
            claimed = [e for e in claimed if e and e[1] is not None]
            if claimed:
                return claimed
        if self.history is not None:
            # What was acked or given back under this name (by us, or by the client
            # that had it before us) must have left its pending entries first.
            await src.settled(self.consumer_name)
            reply = await self.reader.command(
                "XREADGROUP", "GROUP", src.group, self.consumer_name, "COUNT", src.batch,
                "STREAMS", src.key, self.history)
            entries = reply[0][1] if reply else []
            if entries:
                self.history = entries[-1][0].decode()
                # Entries deleted since they were read come back without fields; one
                # delivered and settled while this read was under way is not sent again.
                return [e for e in entries if e[1] is not None and e[0] not in self.seen]
            self.history = None
            self.seen = set()
        reply = await self.reader.command(
            "XREADGROUP", "GROUP", src.group, self.consumer_name, "COUNT", src.batch,
            "BLOCK", int(src.block * 1000), "STREAMS", src.key, ">")
        return reply[0][1] if reply else []

    def ack(self, messages) -> None:
        if self.source.group:
            mine = self._release(messages)
            self.source.remove([m.handle for m in mine], self.consumer_name)
            self._free_name()

    def nack(self, messages) -> None:
        if self.source.group:
            mine = self._release(messages)
            self.source.give_back([m.handle for m in mine], self.consumer_name)
            self._free_name()

    def skip(self, messages) -> None:
        """Filtered out: group mode offers them to the other clients (cursor mode: done)."""
        if self.source.group:
            mine = self._release(messages)
            if mine:
                self.source.skip(self, mine)
            self._free_name()

    def _release(self, messages) -> list:
        """The messages still held (settling one twice is ignored), held no more."""
        held = self.held
        mine = []
        for m in messages:
            handle = m.handle.encode()
            if handle in held:
                held.discard(handle)
                mine.append(m)
        if self.source.refused:
            for m in mine:
                self.source.refused.pop(m.id, None)
        return mine

    def leave(self) -> None:
        super().leave()
        self._free_name()

    def _free_name(self, last_read: bool = False) -> None:
        """
        Group mode: hand our consumer name to the next client once we are done with it:
        gone, no read in flight (it may still take entries under the name), nothing
        held (acks may still come, see L{ISubscription.cancel}).
        """
        if (self.cancelled and (last_read or not self.reading) and not self.held
                and not self.name_freed and self.consumer_name is not None):
            self.name_freed = True
            self.source.free_names.append(self.consumer_name)


@implementer(ISource)
class RedisStreamSource(RedisKind):
    """One Redis stream, in cursor or group mode (see the module doc)."""

    kind = "redis-stream"
    resumes_by_id = True  # ISource: a Last-Event-ID is passed on as C{since}
    config_keys = redis_settings.STREAM_KEYS
    faults: Faults | None = None

    def __init__(self, name: str, conn: RedisConnection, key: str, clock, *,
                 group: str = "", instance: str = "", start: str = "$",
                 block: float = 1.0, batch: int = 10, claim_idle: float = 30.0,
                 maxlen: int = 0, field: str = "data", on_stop=None) -> None:
        self.name = name
        self.conn = conn
        self.key = key
        self.clock = clock
        self.group = group
        self.instance = instance
        self.start_at = start
        self.block = block
        self.batch = batch
        self.claim_idle = claim_idle
        self.maxlen = maxlen
        self.field = field.encode()
        self.on_stop = on_stop
        self.durable = bool(group)
        self.group_ready = False
        self.recreate_at: str | None = None
        self.consumers = 0
        #: consumer names of clients that left, reused so that the group's consumer
        #: list stays as long as the most clients ever connected at once
        self.free_names: list[str] = []
        self.subscribers: set[StreamSubscription] = set()
        #: message id -> clients whose filter refused it (group mode, see L{skip})
        self.refused: dict[str, set] = {}
        #: consumer name -> its XACKs and give-backs not answered yet (L{settled})
        self.settling: dict[str, set[Deferred]] = {}
        self.refresher = LoopingCall(self._refresh)
        self.refresher.clock = clock

    @classmethod
    def build(cls, table: Mapping[str, Any], clock, conn, instance,
              on_stop) -> RedisStreamSource:
        return cls(table["name"], conn, table["key"], clock, group=table["group"],
                   instance=instance, start=table["start"], block=table["block"],
                   batch=table["batch"], claim_idle=table["claim_idle"],
                   maxlen=table["maxlen"], field=table["field"], on_stop=on_stop)

    def start(self):
        """Create the group if needed; fires once Redis answers (or after connect_timeout)."""
        if self.group:
            self.ensure_group().addErrback(
                lambda f: log.warn("redis-stream {name}: cannot create group: {e}",
                                   name=self.name, e=f.getErrorMessage()))
            self.refresher.start(self.claim_idle / 3, now=False)
        return self.conn.wait_for(lambda: self.conn.up)

    def _refresh(self) -> None:
        """
        Reset the idle time of the entries our clients hold (a paused client, or one
        slow to acknowledge, is alive): XAUTOCLAIM takes only entries of a client or
        streamd that died.
        """
        for sub in self.subscribers:
            if sub.held:
                self.conn.command(
                    "XCLAIM", self.key, self.group, sub.consumer_name, 0, *sub.held,
                    "JUSTID").addErrback(self._lost, "refresh")

    def ensure_group(self) -> Deferred:
        """Create the consumer group (and the stream) unless they exist."""
        return Deferred.fromCoroutine(self._ensure_group())

    async def _ensure_group(self) -> None:
        start = self.recreate_at or self.start_at
        if start.startswith("-"):
            start = await self._back(int(start[1:]))
        try:
            await self.conn.command("XGROUP", "CREATE", self.key, self.group, start,
                                    "MKSTREAM")
        except txredisapi.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self.group_ready = True

    async def _back(self, n: int) -> str:
        """The position from which a read returns the last C{n} entries."""
        if n == 0:
            return await self._last()
        entries = await self.conn.command("XREVRANGE", self.key, "+", "-", "COUNT", n)
        return before(entries[-1][0]) if entries else "0-0"

    async def _last(self) -> str:
        entries = await self.conn.command("XREVRANGE", self.key, "+", "-", "COUNT", 1)
        return entries[0][0].decode() if entries else "0-0"

    async def position(self, since: str | None, consumer) -> str:
        """
        Cursor mode: the id to read after, for a client resuming C{since} (telling it
        of entries it can no longer get) or starting at C{start}.
        """
        since = since or self.start_at
        if since == "$":
            return await self._last()
        if since == "0":
            return "0-0"
        if since.startswith("-"):
            return await self._back(int(since[1:]))
        try:
            info = await self.conn.command("XINFO", "STREAM", self.key)
        except txredisapi.ResponseError:
            consumer.gap({"since": since, "missed": None, "reason": "no such stream"})
            return "0-0"
        info = dict(zip(info[::2], info[1::2], strict=False))
        last = parse_id(info[b"last-generated-id"].decode())
        deleted = parse_id(info.get(b"max-deleted-entry-id", b"0-0").decode())
        first = info.get(b"recorded-first-entry-id") or b"0-0"
        after = parse_id(since)
        if after > last:
            # Not an id of this stream (it was re-created, say): go on with new entries
            # rather than wait for the clock to pass that id.
            consumer.gap({"since": since, "missed": None, "reason": "unknown id"})
            return info[b"last-generated-id"].decode()
        if after < deleted:
            consumer.gap({"since": since, "missed": None, "reason": "deleted"})
        elif after < parse_id(first.decode()) and not await self.conn.command(
                "XRANGE", self.key, since, since):
            # The client's last entry was trimmed away, and maybe some after it.
            consumer.gap({"since": since, "missed": None, "reason": "trimmed"})
        return since

    def stop(self) -> Deferred:
        if self.refresher.running:
            self.refresher.stop()
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")
        for sub in list(self.subscribers):
            sub.close_now()
        return Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        if self.faults is not None:
            self.faults.close()
        if self.on_stop:
            await maybeDeferred(self.on_stop)

    def status(self) -> tuple[str, str | None]:
        return self.conn.status()

    def subscribe(self, consumer, since: str | None = None) -> StreamSubscription:
        """
        A new reader. C{since}: cursor mode resumes after that entry id (or takes
        C{$}, C{0}, C{-N}); group mode ignores it (the group holds the position).
        """
        if not self.conn.up:
            raise SourceDown(self.conn.status()[1] or "redis is down")
        name = None
        if self.group:
            since = None
            if self.free_names:
                name = self.free_names.pop()
            else:
                self.consumers += 1
                name = f"{self.instance}:{self.consumers}"
        elif since is not None and not (
            since in ("$", "0") or ENTRY_ID.match(since)
            or (since.startswith("-") and since[1:].isdigit())
        ):
            raise InvalidRequest(f"since: {since!r} is not an entry id of this stream "
                                 '(ms-seq), "$", "0" or "-N"')
        sub = StreamSubscription(self, consumer, since, name)
        self.subscribers.add(sub)
        sub.start()
        return sub

    def message(self, entry_id: bytes, fields: list[bytes]) -> Message:
        """An entry as a message: the C{field} value is the body, other fields attributes."""
        eid = entry_id.decode()
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        data = pairs.pop(self.field, None)
        if data is None:
            # An entry written by another program: its fields are the message.
            body = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                    for k, v in pairs.items()}
            return Message(eid, self.name, json_object(body), None, eid)
        attributes = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                      for k, v in pairs.items()} or None
        return Message(eid, self.name, as_json(data), attributes, eid)

    def remove(self, ids: list[str], name: str | None = None) -> None:
        """Group mode, acked (by the consumer C{name}): XACK."""
        if ids:
            self._settling(name, self.conn.command("XACK", self.key, self.group, *ids),
                           "XACK")

    def give_back(self, ids: list, name: str | None = None) -> None:
        """Group mode, not written: claimable by the next XAUTOCLAIM of any client."""
        if ids and self.group:
            self._settling(name, self.conn.command(
                "XCLAIM", self.key, self.group, f"{self.instance}:returned", 0, *ids,
                "IDLE", RETURNED_IDLE_MS, "JUSTID"), "give back")

    def _settling(self, name: str | None, d: Deferred, what: str) -> None:
        """C{d} takes entries out of C{name}'s pending ones: L{settled} waits for it."""
        d.addErrback(self._lost, what)
        if name is None:
            return
        ops = self.settling.setdefault(name, set())
        ops.add(d)

        def done(_) -> None:
            ops.discard(d)
            if not ops and self.settling.get(name) is ops:
                del self.settling[name]

        d.addCallback(done)

    def settled(self, name: str) -> Deferred:
        """Fires once what was sent so far to settle C{name}'s entries was answered."""
        ops = self.settling.get(name)
        return DeferredList(list(ops)) if ops else succeed(None)

    def skip(self, sub: StreamSubscription, messages) -> None:
        """
        Group mode, a client's filter rejected these: offered to the other clients;
        an entry no client wants stays pending in the group, claimable by any
        streamd's XAUTOCLAIM after C{claim_idle}.
        """
        offers, unwanted = share_out(sub, self.subscribers, messages, self.refused)
        for target, msgs in offers.items():
            # The entry becomes the target's in the group now (not at its next refresh:
            # our name may go to another client before that).
            ids = [m.handle for m in msgs]
            target.took(i.encode() for i in ids)
            self._settling(sub.consumer_name, self.conn.command(
                "XCLAIM", self.key, self.group, target.consumer_name, 0, *ids, "JUSTID"),
                "skip")
            target.consumer.deliver(msgs)
        if unwanted:
            self._settling(sub.consumer_name, self.conn.command(
                "XCLAIM", self.key, self.group, f"{self.instance}:returned", 0,
                *[m.handle for m in unwanted], "JUSTID"), "skip")

    def _lost(self, failure, what: str) -> None:
        if self.faults is not None:
            self.faults.error()
        # Still pending in the group: claimed by XAUTOCLAIM after claim_idle.
        log.warn("redis-stream {name}: {what} failed: {e}", name=self.name, what=what,
                 e=failure.getErrorMessage())

    def publish(self, payloads: list[bytes], params=None) -> Deferred:
        """XADD each payload (pipelined), trimming to about C{maxlen}; the entry ids."""
        if not self.conn.up:
            raise SourceDown(self.conn.status()[1] or "redis is down")
        given = param(params, "maxlen")
        if given is None:
            maxlen = self.maxlen
        else:
            if not given.isdigit():
                raise InvalidRequest(f"maxlen: expected a whole number, got {given!r}")
            maxlen = int(given)
        trim = ["MAXLEN", "~", maxlen] if maxlen else []
        d = gatherResults([
            self.conn.command("XADD", self.key, *trim, "*", self.field, p) for p in payloads
        ], consumeErrors=True)
        return d.addCallback(lambda ids: [i.decode() for i in ids])
