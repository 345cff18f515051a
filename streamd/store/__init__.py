"""
The event store (C{[store]} in the config): events indexed by a few keys, queried
newest first, and tailed live. Backends: C{sqlite} (the embedded default, in
C{--data-dir}), C{memory}, C{redis} (shared by several instances).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # streamd.config imports streamd.store.base
    from streamd.config import Settings


def make_store(settings: Settings, reactor):
    """Build the L{streamd.interfaces.IStore} the validated settings describe."""
    conf = settings.store
    backend = conf.backend
    if backend == "memory":
        from streamd.store.memory import MemoryStore

        return MemoryStore(conf.keys, reactor, max_events=conf.max_events,
                           max_age=conf.max_age)
    if backend == "redis":
        from streamd.store.redis import RedisStore

        return RedisStore.from_settings(settings, reactor, max_events=conf.max_events,
                                        max_age=conf.max_age)
    from streamd.store.sqlite import SQLiteStore

    path = os.path.join(settings.data_dir, "events.sqlite3")
    return SQLiteStore(conf.keys, reactor, path, max_events=conf.max_events,
                       max_age=conf.max_age)
