"""
The SQLite event store: the embedded default, in C{<data_dir>/events.sqlite3}.

Every call runs on one dedicated thread (a Twisted thread pool of size 1), so the
reactor never waits on the disk and the connection is only ever used by one thread
at a time; calls run in submission order, which keeps ids increasing and lets a live
tail trust that a query sees every insert made before it.

Layout: C{events(id, ts, data, pairs)} plus one table per indexed key,
C{"idx:KEY"(value, id)} with primary key C{(value, id)} (WITHOUT ROWID), so
"user is 23" is an index range read newest first, and "kind is friend" for a
candidate id is one primary-key probe. A query walks the key with the fewest
candidate rows (by a capped count) and probes the other keys with EXISTS.
"""

from __future__ import annotations

import heapq
import json
import os
import sqlite3

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from streamd.interfaces import IStore
from streamd.store.base import (
    SEQ,
    Event,
    Filters,
    NewEvent,
    Query,
    StoreUnavailable,
    horizon,
    index_pairs,
)
from streamd.store.listeners import InsertListeners

log = Logger()

#: Count at most this many rows of a value when choosing which key to walk.
ESTIMATE_CAP = 2048

#: Rows pruned per statement batch (bounds one transaction's size).
PRUNE_BATCH = 10_000


def _table(key: str) -> str:
    return '"idx:' + key.replace('"', '""') + '"'


@implementer(IStore)
class SQLiteStore:
    """
    @ivar path: the database file; created (with its directory) on first use, so a
        server whose event store is never used writes nothing.
    @ivar pool: the one-thread pool every database call runs on.
    """

    backend = "sqlite"

    def __init__(self, keys, reactor, path: str, max_events: int = 0,
                 max_age: float = 0.0, pool: ThreadPool | None = None) -> None:
        self.keys = tuple(keys)
        self.reactor = reactor
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self.pool = pool or ThreadPool(0, 1, name="streamd-events-sqlite")
        self._own_pool = pool is None
        self.listeners = InsertListeners()
        self.listen = self.listeners.listen
        # Touched only on the pool's thread:
        self._db: sqlite3.Connection | None = None
        self._last = 0
        self._count = 0
        self._pruned = 0
        self._error: str | None = None

    # -- life cycle (reactor thread) ---------------------------------------------------

    def start(self) -> None:
        # The thread starts with the first call: an unused store costs nothing.
        pass

    async def stop(self) -> None:
        if not self.pool.started:
            return
        await self._run(self._close)
        if self._own_pool:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self.pool.stop()

    def status(self):
        if self._error:
            return ("down", self._error)
        return ("ok", None)

    def _run(self, f, *args):
        if not self.pool.started:
            self.pool.start()
            if self._own_pool:
                # Its thread would keep the process alive if nobody called stop().
                self._trigger = self.reactor.addSystemEventTrigger(
                    "during", "shutdown", self.pool.stop)
        return deferToThreadPool(self.reactor, self.pool, self._call, f, *args)

    def _call(self, f, *args):
        if self._db is None and f != self._close:
            try:
                self._open()
            except (sqlite3.Error, OSError) as e:
                self._error = f"cannot open {self.path}: {e}"
                raise StoreUnavailable(self._error) from None
            self._error = None
        return f(*args)

    # -- the public operations (reactor thread) ---------------------------------------

    async def insert(self, events: list[NewEvent]) -> list[Event]:
        stored = await self._run(self._insert, events, self.reactor.seconds())
        self.listeners.notify(stored)
        return stored

    async def query(self, query: Query) -> list[Event]:
        above = horizon(self.reactor.seconds(), self.max_age) - 1
        found = await self._run(self._select, query.filters, query.before, above,
                                query.end, True)
        return found[query.start : query.end]

    async def after(self, filters: Filters, since: int, limit: int) -> list[Event]:
        since = max(since, horizon(self.reactor.seconds(), self.max_age) - 1)
        return await self._run(self._select, filters, None, since, limit, False)

    async def pruned(self) -> int:
        return await self._run(lambda: self._pruned)

    async def count(self) -> int:
        return await self._run(lambda: self._count)

    # -- on the pool's thread ----------------------------------------------------------

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=NORMAL: a committed insert survives a crash of the
        # process (not necessarily of the machine), at a fraction of FULL's cost.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Index inserts land all over the per-key tables: a 64 MiB page cache (the
        # default is 2 MiB) keeps the hot inner pages in memory at a million events.
        db.execute("PRAGMA cache_size=-65536")
        db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
            " data BLOB NOT NULL, pairs TEXT NOT NULL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        for key in self.keys:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_table(key)} (value TEXT NOT NULL,"
                " id INTEGER NOT NULL, PRIMARY KEY (value, id)) WITHOUT ROWID"
            )
        row = db.execute("SELECT value FROM meta WHERE name = 'keys'").fetchone()
        stored_keys = tuple(json.loads(row[0])) if row else None
        self._db = db
        if stored_keys is not None and stored_keys != self.keys:
            self._reindex(stored_keys)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('keys', ?)", (json.dumps(self.keys),))
        self._last = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        self._count = db.execute("SELECT count(*) FROM events").fetchone()[0]
        row = db.execute("SELECT value FROM meta WHERE name = 'pruned'").fetchone()
        self._pruned = int(row[0]) if row else 0

    def _reindex(self, old_keys: tuple[str, ...]) -> None:
        """The indexed keys changed since the last run: rebuild the index tables."""
        log.info("events: re-indexing for keys {keys} (were {old})", keys=self.keys,
                 old=old_keys)
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        for key in set(old_keys) - set(self.keys):
            db.execute(f"DROP TABLE IF EXISTS {_table(key)}")
        for key in self.keys:
            db.execute(f"DELETE FROM {_table(key)}")
        rows = db.execute("SELECT id, data FROM events").fetchall()
        for eid, data in rows:
            pairs = index_pairs(json.loads(data), self.keys)
            db.execute("UPDATE events SET pairs = ? WHERE id = ?",
                       (json.dumps(sorted(pairs)), eid))
            for key, value in pairs:
                db.execute(f"INSERT OR IGNORE INTO {_table(key)} VALUES (?, ?)", (value, eid))
        db.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        """The open connection: L{_call} opens it before any operation runs."""
        assert self._db is not None, "used before _call opened the database"
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _insert(self, events: list[NewEvent], now: float) -> list[Event]:
        db = self._connection()
        first = max(int(now * 1000) * SEQ, self._last + 1)
        stored = [Event(first + i, now, e.data, e.pairs) for i, e in enumerate(events)]
        by_key: dict[str, list[tuple[str, int]]] = {k: [] for k in self.keys}
        for ev in stored:
            for key, value in ev.pairs:
                by_key[key].append((value, ev.id))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?)",
                [(ev.id, now, ev.data, json.dumps(sorted(ev.pairs))) for ev in stored],
            )
            for key, rows in by_key.items():
                if rows:
                    db.executemany(f"INSERT OR IGNORE INTO {_table(key)} VALUES (?, ?)", rows)
            self._count += len(stored)
            self._prune(now)
        except BaseException:
            db.execute("ROLLBACK")
            self._count = db.execute("SELECT count(*) FROM events").fetchone()[0]
            row = db.execute("SELECT value FROM meta WHERE name = 'pruned'").fetchone()
            self._pruned = int(row[0]) if row else 0
            raise
        db.execute("COMMIT")
        self._last = stored[-1].id
        return stored

    def _prune(self, now: float) -> None:
        """Retention, inside the insert's transaction: oldest first."""
        db = self._connection()
        cut = horizon(now, self.max_age)
        while True:
            excess = self._count - self.max_events if self.max_events else 0
            n = min(PRUNE_BATCH, max(excess, 0))
            rows = db.execute(
                "SELECT id, pairs FROM events ORDER BY id LIMIT ?", (n,)
            ).fetchall() if n else []
            if cut and len(rows) < PRUNE_BATCH:
                rows += db.execute(
                    "SELECT id, pairs FROM events WHERE id < ? AND id > ? ORDER BY id LIMIT ?",
                    (cut, rows[-1][0] if rows else -1, PRUNE_BATCH - len(rows)),
                ).fetchall()
            if not rows:
                return
            by_key: dict[str, list[tuple[str, int]]] = {}
            for eid, pairs in rows:
                for key, value in json.loads(pairs):
                    by_key.setdefault(key, []).append((value, eid))
            for key, pairs in by_key.items():
                if key in self.keys:
                    db.executemany(
                        f"DELETE FROM {_table(key)} WHERE value = ? AND id = ?", pairs
                    )
            db.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._pruned = rows[-1][0]
            db.execute("INSERT OR REPLACE INTO meta VALUES ('pruned', ?)", (str(self._pruned),))
            if len(rows) < PRUNE_BATCH:
                return

    def _estimate(self, key: str, values: tuple[str, ...]) -> int:
        sql = f"SELECT count(*) FROM (SELECT 1 FROM {_table(key)} WHERE value = ? LIMIT ?)"
        db = self._connection()
        return sum(db.execute(sql, (v, ESTIMATE_CAP)).fetchone()[0] for v in values)

    def _select(self, filters: Filters, below: int | None, above: int, limit: int,
                newest_first: bool) -> list[Event]:
        db = self._connection()
        order = "DESC" if newest_first else "ASC"
        below = (1 << 63) - 1 if below is None else below
        if limit <= 0:
            return []
        if not filters:
            rows = db.execute(
                f"SELECT id, ts, data FROM events WHERE id < ? AND id > ?"
                f" ORDER BY id {order} LIMIT ?", (below, above, limit)
            ).fetchall()
            return [Event(*row) for row in rows]
        # Walk the key with the fewest rows; probe the others by primary key.
        sized = sorted((self._estimate(k, vs), k, vs) for k, vs in filters)
        if sized[0][0] == 0:
            return []
        _, walk_key, walk_values = sized[0]
        probes = []
        params: list = []
        for key, values in filters:
            if key == walk_key:
                continue
            marks = ", ".join("?" * len(values))
            probes.append(
                f" AND EXISTS (SELECT 1 FROM {_table(key)} x WHERE x.value IN ({marks})"
                " AND x.id = w.id)"
            )
            params.extend(values)
        sql = (
            f"SELECT w.id FROM {_table(walk_key)} w WHERE w.value = ? AND w.id < ?"
            f" AND w.id > ?{''.join(probes)} ORDER BY w.id {order} LIMIT ?"
        )
        streams = [
            [r[0] for r in db.execute(sql, (v, below, above, *params, limit))]
            for v in walk_values
        ]
        ids: list[int] = []
        for eid in heapq.merge(*streams, reverse=newest_first):
            if not ids or ids[-1] != eid:  # a list value indexed under two asked values
                ids.append(eid)
                if len(ids) >= limit:
                    break
        if not ids:
            return []
        rows = db.execute(
            f"SELECT id, ts, data FROM events WHERE id IN ({', '.join('?' * len(ids))})", ids
        ).fetchall()
        by_id = {row[0]: Event(*row) for row in rows}
        return [by_id[i] for i in ids if i in by_id]
